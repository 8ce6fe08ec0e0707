//! Check: is `subject` a member of `resource#member` at a revision?
//!
//! Membership is the least fixpoint of the schema's rules over the stored
//! relationships (DESIGN.md §4). Evaluation is a depth-first search that cuts
//! a branch when it meets a `(resource, member)` already on the current path:
//! for unions, intersections and arrows a shortest derivation never repeats a
//! node on a path, so cutting cycles loses nothing and data cycles neither
//! hang nor error.
//!
//! A result computed under a cut of an *ancestor* depends on that ancestor
//! still being in evaluation: it is exact for the question asked but not on
//! its own, so it is never put in the shared cache. Within one request it is
//! memoised and reused while the ancestors it was cut at are still on the
//! path (same assumptions, so the same answer); this keeps dense cyclic data
//! (groups nested in each other) from exploring every path. A result whose
//! cuts all hit the node itself or its own descendants is exact and cached.
//!
//! Depth (hops through relations and permissions) is bounded; exceeding the
//! bound is an error, never an answer.

use std::collections::BTreeSet;

use futures::future::BoxFuture;

use super::{Decision, Error, Evaluator};
use crate::model::{ObjectRef, SubjectRef};
use crate::schema::{ArrowKind, MemberKind, Rewrite};
use crate::store::RelationshipFilter;

/// The cycle cuts a result depended on: the shallowest and the deepest path
/// node (depth, frame id) at which evaluation was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Cuts {
    shallowest: Option<u32>,
    deepest: Option<(u32, u64)>,
}

impl Cuts {
    fn at(depth: u32, frame: u64) -> Self {
        Cuts {
            shallowest: Some(depth),
            deepest: Some((depth, frame)),
        }
    }

    fn merge(self, other: Cuts) -> Cuts {
        Cuts {
            shallowest: match (self.shallowest, other.shallowest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            deepest: match (self.deepest, other.deepest) {
                (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
                (a, b) => a.or(b),
            },
        }
    }

    fn is_none(&self) -> bool {
        self.shallowest.is_none()
    }
}

/// A result plus the cycle cuts it depended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub decision: Decision,
    pub cuts: Cuts,
}

impl Outcome {
    fn of(decision: Decision) -> Self {
        Outcome {
            decision,
            cuts: Cuts::default(),
        }
    }
}

/// The path of `(resource, member)` pairs being evaluated, innermost first.
pub(crate) struct Path<'p> {
    resource: &'p ObjectRef,
    member: &'p str,
    depth: u32,
    /// Unique within the request: tells re-entries of the same node apart.
    frame: u64,
    parent: Option<&'p Path<'p>>,
}

impl Path<'_> {
    fn iter(&self) -> impl Iterator<Item = &Path<'_>> {
        std::iter::successors(Some(self), |p| p.parent)
    }

    fn find(&self, resource: &ObjectRef, member: &str) -> Option<&Path<'_>> {
        self.iter()
            .find(|p| p.resource == resource && p.member == member)
    }

    fn has_frame(&self, depth: u32, frame: u64) -> bool {
        self.iter()
            .find(|p| p.depth == depth)
            .is_some_and(|p| p.frame == frame)
    }
}

impl Evaluator<'_> {
    fn next_frame(&self) -> u64 {
        self.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A memoised outcome still valid on `path`: exact, or computed under
    /// cuts whose nodes are all still on the path (the deepest one being
    /// there implies every shallower one is).
    fn memo_get(&self, key: &super::MemoKey, path: Option<&Path<'_>>) -> Option<Outcome> {
        let memo = self.memo.lock().ok()?;
        let o = *memo.get(key)?;
        match o.cuts.deepest {
            None => Some(o),
            Some((depth, frame)) if path.is_some_and(|p| p.has_frame(depth, frame)) => Some(o),
            Some(_) => None,
        }
    }

    fn memo_put(&self, key: super::MemoKey, outcome: Outcome) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.insert(key, outcome);
        }
    }

    /// Is `subject` in `resource#member`?
    pub(crate) fn check<'a>(
        &'a self,
        resource: &'a ObjectRef,
        member: &'a str,
        subject: &'a SubjectRef,
        depth: u32,
        path: Option<&'a Path<'a>>,
    ) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            // A userset is a member of itself.
            if subject.object == *resource && subject.relation.as_deref() == Some(member) {
                return Ok(Outcome::of(Decision::Allowed));
            }
            if let Some(node) = path.and_then(|p| p.find(resource, member)) {
                return Ok(Outcome {
                    decision: Decision::Denied,
                    cuts: Cuts::at(node.depth, node.frame),
                });
            }
            if depth >= self.max_depth {
                return Err(Error::DepthExceeded {
                    depth: self.max_depth,
                });
            }
            // The top-level call runs inside the cache's own singleflight
            // (`Engine::check_at`), which reads and fills the entry itself.
            let top = path.is_none();
            let key = self.cache_key(resource, member, subject);
            if !top {
                if let Some(d) = self.engine.cache.get(&key).await {
                    self.engine.metrics.cache_hit();
                    return Ok(Outcome::of(d));
                }
                self.engine.metrics.cache_miss();
            }
            let memo_key = (resource.clone(), member.to_string(), subject.clone());
            if let Some(o) = self.memo_get(&memo_key, path) {
                return Ok(o);
            }
            let here = Path {
                resource,
                member,
                depth,
                frame: self.next_frame(),
                parent: path,
            };
            let def = self.schema.definition(&resource.object_type).ok_or_else(|| {
                Error::UnknownType(resource.object_type.clone())
            })?;
            let outcome = match def.member_kind(member) {
                Some(MemberKind::Relation) => {
                    self.check_relation(resource, member, subject, depth, &here)
                        .await?
                }
                Some(MemberKind::Permission) => {
                    let rewrite = &def.permissions[member].rewrite;
                    self.check_rewrite(resource, rewrite, subject, depth, &here)
                        .await?
                }
                None => {
                    return Err(Error::UnknownMember {
                        object_type: resource.object_type.clone(),
                        member: member.to_string(),
                    });
                }
            };
            let mut outcome = outcome;
            if outcome.cuts.shallowest.is_some_and(|d| d >= depth) {
                // Every cut hit this node or its own subtree: exact.
                outcome.cuts = Cuts::default();
            }
            if !top && outcome.cuts.is_none() {
                self.engine.cache.insert(key, outcome.decision).await;
            }
            self.memo_put(memo_key, outcome);
            Ok(outcome)
        })
    }

    /// Direct relationships, wildcards, then usersets one by one.
    async fn check_relation(
        &self,
        resource: &ObjectRef,
        relation: &str,
        subject: &SubjectRef,
        depth: u32,
        here: &Path<'_>,
    ) -> Result<Outcome, Error> {
        let filter = RelationshipFilter::resource_relation(
            &resource.object_type,
            &resource.object_id,
            relation,
        );
        let rels = self.read(&filter).await?;
        let mut usersets = Vec::new();
        for rel in &rels {
            let s = &rel.subject;
            if s == subject {
                return Ok(Outcome::of(Decision::Allowed));
            }
            if s.is_wildcard() && s.object.object_type == subject.object.object_type {
                return Ok(Outcome::of(Decision::Allowed));
            }
            if let Some(r) = &s.relation {
                usersets.push((&s.object, r.as_str()));
            }
        }
        let mut cuts = Cuts::default();
        for (object, r) in usersets {
            let o = self.check(object, r, subject, depth + 1, Some(here)).await?;
            if o.decision == Decision::Allowed {
                return Ok(Outcome::of(Decision::Allowed));
            }
            cuts = cuts.merge(o.cuts);
        }
        Ok(Outcome {
            decision: Decision::Denied,
            cuts,
        })
    }

    fn check_rewrite<'a>(
        &'a self,
        resource: &'a ObjectRef,
        rewrite: &'a Rewrite,
        subject: &'a SubjectRef,
        depth: u32,
        here: &'a Path<'a>,
    ) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            match rewrite {
                Rewrite::Nil => Ok(Outcome::of(Decision::Denied)),
                Rewrite::Ref(name) => {
                    self.check(resource, name, subject, depth + 1, Some(here))
                        .await
                }
                Rewrite::Union(children) => {
                    let mut acc = Outcome::of(Decision::Denied);
                    for c in children {
                        let o = self.check_rewrite(resource, c, subject, depth, here).await?;
                        acc.decision = acc.decision.or(o.decision);
                        acc.cuts = acc.cuts.merge(o.cuts);
                        if acc.decision == Decision::Allowed {
                            return Ok(Outcome::of(Decision::Allowed));
                        }
                    }
                    Ok(acc)
                }
                Rewrite::Intersection(children) => {
                    let mut acc = Outcome::of(Decision::Allowed);
                    for c in children {
                        let o = self.check_rewrite(resource, c, subject, depth, here).await?;
                        acc.decision = acc.decision.and(o.decision);
                        acc.cuts = acc.cuts.merge(o.cuts);
                        if acc.decision == Decision::Denied {
                            return Ok(acc);
                        }
                    }
                    Ok(acc)
                }
                Rewrite::Exclusion(base, subtract) => {
                    let b = self.check_rewrite(resource, base, subject, depth, here).await?;
                    if b.decision == Decision::Denied {
                        return Ok(b);
                    }
                    let s = self
                        .check_rewrite(resource, subtract, subject, depth, here)
                        .await?;
                    Ok(Outcome {
                        decision: b.decision.and(s.decision.not()),
                        cuts: b.cuts.merge(s.cuts),
                    })
                }
                Rewrite::Arrow {
                    relation,
                    target,
                    kind,
                } => {
                    self.check_arrow(resource, relation, target, *kind, subject, depth, here)
                        .await
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn check_arrow(
        &self,
        resource: &ObjectRef,
        relation: &str,
        target: &str,
        kind: ArrowKind,
        subject: &SubjectRef,
        depth: u32,
        here: &Path<'_>,
    ) -> Result<Outcome, Error> {
        let filter = RelationshipFilter::resource_relation(
            &resource.object_type,
            &resource.object_id,
            relation,
        );
        let rels = self.read(&filter).await?;
        // Arrows follow relationships to their objects, ignoring subject relations.
        let objects: BTreeSet<&ObjectRef> = rels.iter().map(|r| &r.subject.object).collect();
        let mut cuts = Cuts::default();
        let mut any_object = false;
        for object in objects {
            let has_target = self
                .schema
                .definition(&object.object_type)
                .is_some_and(|d| d.member_kind(target).is_some());
            let o = if has_target {
                self.check(object, target, subject, depth + 1, Some(here))
                    .await?
            } else {
                Outcome::of(Decision::Denied)
            };
            any_object = true;
            cuts = cuts.merge(o.cuts);
            match (kind, o.decision) {
                (ArrowKind::Any, Decision::Allowed) => return Ok(Outcome::of(Decision::Allowed)),
                (ArrowKind::All, Decision::Denied) => {
                    return Ok(Outcome {
                        decision: Decision::Denied,
                        cuts,
                    });
                }
                _ => {}
            }
        }
        let decision = match kind {
            ArrowKind::Any => Decision::Denied,
            // `.all()`: at least one object, and every one granted.
            ArrowKind::All if any_object => Decision::Allowed,
            ArrowKind::All => Decision::Denied,
        };
        Ok(Outcome { decision, cuts })
    }
}
