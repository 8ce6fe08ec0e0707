//! Check: is `subject` a member of `resource#member` at a revision?
//!
//! Membership is the least fixpoint of the schema's rules over the stored
//! relationships (DESIGN.md §4). Evaluation is a depth-first search that cuts
//! a branch when it meets a `(resource, member)` already on the current path:
//! for unions, intersections and arrows a shortest derivation never repeats a
//! node on a path, so cutting cycles loses nothing and data cycles neither
//! hang nor error. A result computed under such a cut is *cycle-dependent*:
//! it is exact for the question asked but not reusable on its own, so it is
//! never cached.
//!
//! Depth (hops through relations and permissions) is bounded; exceeding the
//! bound is an error, never an answer.

use std::collections::BTreeSet;

use futures::future::BoxFuture;

use super::{Decision, Error, Evaluator};
use crate::model::{ObjectRef, SubjectRef};
use crate::schema::{ArrowKind, MemberKind, Rewrite};
use crate::store::RelationshipFilter;

/// A result plus whether it depended on a cycle cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub decision: Decision,
    pub cycle_dependent: bool,
}

impl Outcome {
    fn of(decision: Decision) -> Self {
        Outcome {
            decision,
            cycle_dependent: false,
        }
    }
}

/// The path of `(resource, member)` pairs being evaluated, innermost first.
pub(crate) struct Path<'p> {
    resource: &'p ObjectRef,
    member: &'p str,
    parent: Option<&'p Path<'p>>,
}

impl Path<'_> {
    fn contains(&self, resource: &ObjectRef, member: &str) -> bool {
        let mut cur = Some(self);
        while let Some(p) = cur {
            if p.resource == resource && p.member == member {
                return true;
            }
            cur = p.parent;
        }
        false
    }
}

impl Evaluator<'_> {
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
            if path.is_some_and(|p| p.contains(resource, member)) {
                return Ok(Outcome {
                    decision: Decision::Denied,
                    cycle_dependent: true,
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
            let here = Path {
                resource,
                member,
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
            if !top && !outcome.cycle_dependent {
                self.engine.cache.insert(key, outcome.decision).await;
            }
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
        let mut cycle_dependent = false;
        for (object, r) in usersets {
            let o = self.check(object, r, subject, depth + 1, Some(here)).await?;
            if o.decision == Decision::Allowed {
                return Ok(Outcome::of(Decision::Allowed));
            }
            cycle_dependent |= o.cycle_dependent;
        }
        Ok(Outcome {
            decision: Decision::Denied,
            cycle_dependent,
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
                        acc.cycle_dependent |= o.cycle_dependent;
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
                        acc.cycle_dependent |= o.cycle_dependent;
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
                        cycle_dependent: b.cycle_dependent || s.cycle_dependent,
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
        let mut cycle_dependent = false;
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
            cycle_dependent |= o.cycle_dependent;
            match (kind, o.decision) {
                (ArrowKind::Any, Decision::Allowed) => return Ok(Outcome::of(Decision::Allowed)),
                (ArrowKind::All, Decision::Denied) => {
                    return Ok(Outcome {
                        decision: Decision::Denied,
                        cycle_dependent,
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
        Ok(Outcome {
            decision,
            cycle_dependent,
        })
    }
}
