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
//! Exclusion is not monotone, so a cut seen through the subtracted side of
//! an exclusion is tracked separately ([`Outcome::neg`]): a result that is
//! "allowed because a cut node was assumed denied" is kept with that
//! assumption even when allowed. When the assumed node completes *allowed*
//! the assumption was false and the question has no least fixpoint (the
//! node depends on its own negation): evaluation fails closed with
//! [`Error::CycleThroughExclusion`] instead of answering. When it completes
//! denied the assumption was self-consistent, but through an even number of
//! exclusions (`a = base - b`, `b = base - a`) the opposite assumption may
//! be self-consistent too, and then the answer depends on where evaluation
//! started. So the node is evaluated once more assuming itself *allowed* at
//! the cut: only if that comes out denied (the assumption refutes itself) is
//! "denied" the one consistent answer; otherwise it fails closed too.
//!
//! Depth (hops through relations and permissions) and the request's work
//! ([`super::Budget`]) are bounded; exceeding either is an error, never an
//! answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Decision, Error, Evaluator};
use crate::model::{ObjectRef, SubjectRef};
use crate::schema::{AllowedType, ArrowKind, MemberKind, Rewrite};

/// The path nodes (frame ids) a result assumed to be denied because
/// evaluation was cut there. Empty: the result is exact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cuts(BTreeSet<u64>);

impl Cuts {
    fn at(frame: u64) -> Self {
        Cuts(BTreeSet::from([frame]))
    }

    fn merge(mut self, other: Cuts) -> Cuts {
        if self.0.is_empty() {
            return other;
        }
        self.0.extend(other.0);
        self
    }

    fn is_none(&self) -> bool {
        self.0.is_empty()
    }
}

/// Cut frames whose assumed denial reached a result through the subtracted
/// side of an exclusion, each with the exclusion it went through
/// (`object#permission`, for the error message). Always a subset of the
/// outcome's `cuts`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Negated(BTreeMap<u64, Arc<str>>);

impl Negated {
    fn merge(mut self, other: Negated) -> Negated {
        if self.0.is_empty() {
            return other;
        }
        self.0.extend(other.0);
        self
    }
}

/// A result plus the cycle cuts it depended on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub decision: Decision,
    pub cuts: Cuts,
    pub neg: Negated,
}

impl Outcome {
    fn of(decision: Decision) -> Self {
        Outcome {
            decision,
            cuts: Cuts::default(),
            neg: Negated::default(),
        }
    }

    /// Allowed. Exact unless it went through an exclusion whose subtracted
    /// side was denied by assumption: then it keeps those assumptions.
    fn allowed(neg: Negated) -> Self {
        Outcome {
            decision: Decision::Allowed,
            cuts: Cuts(neg.0.keys().copied().collect()),
            neg,
        }
    }

    fn merge(mut self, other: Outcome) -> Outcome {
        self.cuts = self.cuts.merge(other.cuts);
        self.neg = self.neg.merge(other.neg);
        self
    }
}

/// The path of `(resource, member)` pairs being evaluated, innermost first.
pub(crate) struct Path<'p> {
    resource: &'p ObjectRef,
    member: &'p str,
    /// Unique within the request: tells re-entries of the same node apart.
    frame: u64,
    /// What a cycle back to this node assumes: denied (the least fixpoint),
    /// or allowed while testing whether a denial is the only consistent
    /// answer (see the module docs).
    assume_allowed: bool,
    parent: Option<&'p Path<'p>>,
}

impl Path<'_> {
    fn iter(&self) -> impl Iterator<Item = &Path<'_>> {
        std::iter::successors(Some(self), |p| p.parent)
    }

    pub(super) fn find(&self, resource: &ObjectRef, member: &str) -> Option<&Path<'_>> {
        self.iter()
            .find(|p| p.resource == resource && p.member == member)
    }

    fn has_frame(&self, frame: u64) -> bool {
        self.iter().any(|p| p.frame == frame)
    }
}

impl Evaluator<'_> {
    /// A memoised outcome still valid on `path`. An outcome that assumed
    /// some frames denied is valid while each of those frames is still on
    /// the path (same assumption) or has completed denied — in which case
    /// the assumption is replaced by that frame's own assumptions. A frame
    /// that completed allowed invalidates it.
    fn memo_get(&self, key: &super::MemoKey, path: Option<&Path<'_>>) -> Option<Outcome> {
        let memo = self.memo.lock().ok()?;
        let (decision, cuts, neg) = memo.entries.get(key)?.clone();
        if cuts.is_none() {
            return Some(Outcome {
                decision,
                cuts,
                neg,
            });
        }
        let path = path?;
        let mut resolved = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<u64> = cuts.0.into_iter().collect();
        while let Some(frame) = todo.pop() {
            if !seen.insert(frame) {
                continue;
            }
            if path.has_frame(frame) {
                resolved.insert(frame);
                continue;
            }
            match memo.frames.get(&frame) {
                Some((Decision::Denied, assumed)) => todo.extend(assumed.0.iter().copied()),
                _ => return None,
            }
        }
        // Conservatively, if any assumption went through an exclusion, all
        // the resolved ones are treated as if they did.
        let neg = match neg.0.values().next() {
            None => Negated::default(),
            Some(via) => Negated(resolved.iter().map(|f| (*f, via.clone())).collect()),
        };
        Some(Outcome {
            decision,
            cuts: Cuts(resolved),
            neg,
        })
    }

    fn memo_put_frame(&self, frame: u64, decision: Decision, cuts: Cuts) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.frames.insert(frame, (decision, cuts));
        }
    }

    /// One node's rule (its relation or permission), evaluated at `here`.
    async fn evaluate(
        &self,
        resource: &ObjectRef,
        member: &str,
        subject: &SubjectRef,
        depth: u32,
        here: &Path<'_>,
    ) -> Result<Outcome, Error> {
        let def = self
            .schema
            .definition(&resource.object_type)
            .ok_or_else(|| Error::UnknownType(resource.object_type.clone()))?;
        match def.member_kind(member) {
            Some(MemberKind::Relation) => {
                self.check_relation(resource, member, subject, depth, here)
                    .await
            }
            Some(MemberKind::Permission) => {
                let rewrite = &def.permissions[member].rewrite;
                self.check_rewrite(resource, rewrite, subject, depth, here)
                    .await
            }
            None => Err(Error::UnknownMember {
                object_type: resource.object_type.clone(),
                member: member.to_string(),
            }),
        }
    }

    fn memo_put(&self, key: super::MemoKey, frame: u64, outcome: &Outcome) {
        if let Ok(mut memo) = self.memo.lock() {
            memo.frames
                .insert(frame, (outcome.decision, outcome.cuts.clone()));
            memo.entries.insert(
                key,
                (outcome.decision, outcome.cuts.clone(), outcome.neg.clone()),
            );
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
        // One span per dispatch step; at `trace` level only (a check has
        // many), and its fields are not even formatted when disabled.
        let span = tracing::trace_span!(
            "dispatch",
            resource_type = %resource.object_type,
            member,
            depth,
            cache = tracing::field::Empty,
        );
        let in_span = span.clone();
        Box::pin(tracing::Instrument::instrument(
            async move {
                // A userset is a member of itself.
                if subject.object == *resource && subject.relation.as_deref() == Some(member) {
                    return Ok(Outcome::of(Decision::Allowed));
                }
                if let Some(node) = path.and_then(|p| p.find(resource, member)) {
                    if node.assume_allowed {
                        // Allowed by assumption: tracked as a negated assumption
                        // so that every allowed result built on it keeps it.
                        let via: Arc<str> = format!("{resource}#{member} (cycle)").into();
                        return Ok(Outcome {
                            decision: Decision::Allowed,
                            cuts: Cuts::at(node.frame),
                            neg: Negated(BTreeMap::from([(node.frame, via)])),
                        });
                    }
                    return Ok(Outcome {
                        decision: Decision::Denied,
                        cuts: Cuts::at(node.frame),
                        neg: Negated::default(),
                    });
                }
                self.deepest
                    .fetch_max(depth, std::sync::atomic::Ordering::Relaxed);
                if depth >= self.max_depth {
                    return Err(Error::DepthExceeded {
                        depth: self.max_depth,
                    });
                }
                // Only shared sub-problems are worth the shared cache: a node
                // reached by a hop to another object (a userset or an arrow:
                // a team's members, a department's managers) that is more than
                // a direct lookup. Top-level checks, same-object permissions and
                // direct-only relations cost less to compute than a cache miss.
                let cached = path.is_some_and(|p| p.resource != resource)
                    && !self.schema.is_direct_only(&resource.object_type, member);
                let key = cached.then(|| self.cache_key(resource, member, subject));
                if let Some(key) = &key {
                    if let Some((d, cost)) = self.engine.cache.get(key).await {
                        self.engine.metrics.cache_hit(cost);
                        in_span.record("cache", "hit");
                        return Ok(Outcome::of(d));
                    }
                    self.engine.metrics.cache_miss();
                    in_span.record("cache", "miss");
                }
                let memo_key = (resource.clone(), member.to_string(), subject.clone());
                if let Some(o) = self.memo_get(&memo_key, path) {
                    return Ok(o);
                }
                let started = key.is_some().then(std::time::Instant::now);
                self.prefetch(std::iter::once((resource, member)), subject, path)
                    .await?;
                let here = Path {
                    resource,
                    member,
                    frame: self.enter()?,
                    assume_allowed: false,
                    parent: path,
                };
                let mut outcome = self
                    .evaluate(resource, member, subject, depth, &here)
                    .await?;
                // A cut at this very node assumed it denied while computing it.
                // Through an exclusion, that assumption is only sound if the node
                // did come out denied and assuming it allowed does not come out
                // allowed as well; otherwise there is no defined answer.
                if let Some(via) = outcome.neg.0.remove(&here.frame) {
                    let undefined = outcome.decision != Decision::Denied || {
                        let again = Path {
                            resource,
                            member,
                            frame: self.enter()?,
                            assume_allowed: true,
                            parent: path,
                        };
                        let other = self
                            .evaluate(resource, member, subject, depth, &again)
                            .await?;
                        // Results memoised under "allowed" at that frame must
                        // never be reused: recording it as not denied makes
                        // `memo_get` drop them.
                        self.memo_put_frame(again.frame, Decision::Allowed, Cuts::default());
                        other.decision != Decision::Denied
                    };
                    if undefined {
                        return Err(Error::CycleThroughExclusion {
                            resource: resource.to_string(),
                            member: member.to_string(),
                            via: via.to_string(),
                        });
                    }
                }
                // The answer now stands on the other assumptions only.
                outcome.cuts.0.remove(&here.frame);
                if let Some(key) = key
                    && outcome.cuts.is_none()
                {
                    let cost = started.map_or(0, |s| {
                        u32::try_from(s.elapsed().as_micros()).unwrap_or(u32::MAX)
                    });
                    self.engine
                        .cache
                        .insert(key, (outcome.decision, cost))
                        .await;
                }
                self.memo_put(memo_key, here.frame, &outcome);
                Ok(outcome)
            },
            span,
        ))
    }

    /// The subject itself or a wildcard of its type (one indexed lookup),
    /// then the usersets the schema allows on the relation, one by one.
    async fn check_relation(
        &self,
        resource: &ObjectRef,
        relation: &str,
        subject: &SubjectRef,
        depth: u32,
        here: &Path<'_>,
    ) -> Result<Outcome, Error> {
        if let Some(filter) = self.direct_read(resource, relation, subject) {
            let direct = self.read(&filter).await?;
            if direct
                .iter()
                .any(|r| r.subject == *subject || r.subject.is_wildcard())
            {
                return Ok(Outcome::of(Decision::Allowed));
            }
        }
        let allowed = self
            .schema
            .relation(&resource.object_type, relation)
            .map(|r| r.allowed.as_slice())
            .unwrap_or_default();
        let mut acc = Outcome::of(Decision::Denied);
        for a in allowed {
            let AllowedType::Userset(t, r) = a else {
                continue;
            };
            let members = self
                .read(&super::prefetch::userset_read(resource, relation, t, r))
                .await?;
            self.prefetch(
                members.iter().map(|rel| (&rel.subject.object, r.as_str())),
                subject,
                Some(here),
            )
            .await?;
            for rel in members {
                let o = self
                    .check(&rel.subject.object, r, subject, depth + 1, Some(here))
                    .await?;
                if o.decision == Decision::Allowed {
                    return Ok(Outcome::allowed(o.neg));
                }
                acc = acc.merge(o);
            }
        }
        acc.decision = Decision::Denied;
        Ok(acc)
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
                        let o = self
                            .check_rewrite(resource, c, subject, depth, here)
                            .await?;
                        if o.decision == Decision::Allowed {
                            return Ok(Outcome::allowed(o.neg));
                        }
                        let d = acc.decision.or(o.decision);
                        acc = acc.merge(o);
                        acc.decision = d;
                    }
                    Ok(acc)
                }
                Rewrite::Intersection(children) => {
                    let mut acc = Outcome::of(Decision::Allowed);
                    for c in children {
                        let o = self
                            .check_rewrite(resource, c, subject, depth, here)
                            .await?;
                        // A denied child decides alone: the result rests on
                        // its assumptions only, not on its siblings'.
                        if o.decision == Decision::Denied {
                            return Ok(o);
                        }
                        let d = acc.decision.and(o.decision);
                        acc = acc.merge(o);
                        acc.decision = d;
                    }
                    Ok(acc)
                }
                Rewrite::Exclusion(base, subtract) => {
                    let b = self
                        .check_rewrite(resource, base, subject, depth, here)
                        .await?;
                    if b.decision == Decision::Denied {
                        return Ok(b);
                    }
                    let s = self
                        .check_rewrite(resource, subtract, subject, depth, here)
                        .await?;
                    if s.decision == Decision::Allowed {
                        // Denied by the subtracted side alone.
                        return Ok(Outcome {
                            decision: Decision::Denied,
                            ..s
                        });
                    }
                    let decision = b.decision.and(s.decision.negate());
                    // A subtracted side denied only by assumption makes the
                    // result hold only while those assumptions do.
                    let mut neg = Negated::default();
                    if s.decision != Decision::Allowed && !s.cuts.is_none() {
                        let via: Arc<str> =
                            format!("{}#{} (exclusion)", here.resource, here.member).into();
                        neg = Negated(s.cuts.0.iter().map(|f| (*f, via.clone())).collect());
                    }
                    let mut out = b.merge(s);
                    out.neg = out.neg.merge(neg);
                    out.decision = decision;
                    Ok(out)
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
        let rels = self.read_relation(resource, relation).await?;
        // Arrows follow relationships to their objects, ignoring subject relations.
        let objects: BTreeSet<&ObjectRef> = rels.iter().map(|r| &r.subject.object).collect();
        self.prefetch(objects.iter().map(|o| (*o, target)), subject, Some(here))
            .await?;
        let mut acc = Outcome::of(Decision::Denied);
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
            let decision = o.decision;
            if kind == ArrowKind::Any && decision == Decision::Allowed {
                return Ok(Outcome::allowed(o.neg));
            }
            if kind == ArrowKind::All && decision == Decision::Denied {
                // One object denied decides alone.
                return Ok(o);
            }
            acc = acc.merge(o);
        }
        let decision = match kind {
            ArrowKind::Any => Decision::Denied,
            // `.all()`: at least one object, and every one granted.
            ArrowKind::All if any_object => Decision::Allowed,
            ArrowKind::All => Decision::Denied,
        };
        acc.decision = decision;
        Ok(acc)
    }
}

/// Per-request memo: outcomes by node, and how each frame completed.
#[derive(Debug, Default)]
pub(crate) struct Memo {
    entries: std::collections::HashMap<super::MemoKey, (Decision, Cuts, Negated)>,
    frames: std::collections::HashMap<u64, (Decision, Cuts)>,
}
