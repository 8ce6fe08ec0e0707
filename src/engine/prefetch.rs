//! Reads asked ahead in batches, where every read is a round trip
//! (Postgres): a check then costs about one round trip per level of the
//! graph it explores, not one per relation and object it reads.
//!
//! Check is a depth-first search (`check.rs`): on its own it reads one
//! relation of one object at a time. Before evaluating a node (and before
//! following a relation's usersets or an arrow to their objects) the
//! evaluator *plans* the reads that node's evaluation starts with — the
//! same filters `check_relation` and `check_arrow` will ask for — and asks
//! them in one [`Datastore::query_many`](crate::store::Datastore::query_many).
//! It then follows the rows it got the way evaluation would (userset rows
//! to their members, arrow rows to their objects) and plans the next level
//! the same way, breadth first, so a whole neighbourhood arrives in as many
//! statements as it has levels.
//!
//! What is asked ahead is exactly what [`Evaluator::read`] would have read
//! (same filter, same revision), kept until that read takes it; evaluation,
//! its order, short-circuits and cycle handling do not change. Rows count
//! against the request's budget when evaluation takes them, so asking ahead
//! never fails a request that reading one by one would answer. What is
//! held ahead is bounded ([`MAX_WAITING_ROWS`], [`MAX_ROUND_READS`]); past
//! the bound, evaluation reads as before and plans again from where it is.
//! Nodes whose answer is in the shared cache or that are on the current
//! path (a cycle) are not planned: evaluation will not read for them.

use std::collections::{HashMap, HashSet};

use super::check::Path;
use super::{Error, Evaluator};
use crate::model::WILDCARD_ID;
use crate::model::{ObjectRef, Relationship, RelationshipFilter, SubjectFilter, SubjectRef};
use crate::schema::{AllowedType, MemberKind, Rewrite};
use crate::store::QUERY_MANY_CHUNK;

/// The most rows one request holds read ahead and not yet taken.
const MAX_WAITING_ROWS: usize = 10_000;
/// The most reads one level of planning asks for (in statements of
/// [`QUERY_MANY_CHUNK`]).
const MAX_ROUND_READS: usize = 1_024;
/// How deep planning follows permissions of one object into each other.
const PLAN_DEPTH: u32 = 16;

/// One request's reads asked ahead.
#[derive(Default)]
pub(crate) struct Prefetched {
    waiting: HashMap<RelationshipFilter, Vec<Relationship>>,
    rows: usize,
    /// Nodes (object, member, subject) already planned in this request.
    planned: HashSet<(ObjectRef, String, SubjectRef)>,
}

/// Where a planned read's rows lead evaluation next.
enum Follow {
    /// Nowhere (a direct read).
    Nothing,
    /// To `member` of each row's subject object: a relation's usersets
    /// (`t#member`) or an arrow's relation (`->member`).
    To(String),
}

struct Planned {
    filter: RelationshipFilter,
    follow: Follow,
}

/// The read of `resource#relation`'s usersets `t#r` (`check_relation`).
pub(super) fn userset_read(
    resource: &ObjectRef,
    relation: &str,
    t: &str,
    r: &str,
) -> RelationshipFilter {
    let mut filter =
        RelationshipFilter::resource_relation(&resource.object_type, &resource.object_id, relation);
    filter.subject = Some(SubjectFilter {
        subject_type: t.to_string(),
        relation: Some(Some(r.to_string())),
        ..Default::default()
    });
    filter
}

impl Evaluator<'_> {
    /// `check_relation`'s direct read: the subject itself or its type's
    /// wildcard on `resource#relation`. `None` when the relation allows no
    /// subject of that type at all (stored relationships always match the
    /// schema at their revision, so the read would find nothing).
    pub(super) fn direct_read(
        &self,
        resource: &ObjectRef,
        relation: &str,
        subject: &SubjectRef,
    ) -> Option<RelationshipFilter> {
        let subject_type = &subject.object.object_type;
        let allowed = self
            .schema
            .relation(&resource.object_type, relation)?
            .allowed
            .iter()
            .any(|a| match a {
                AllowedType::Direct(t) | AllowedType::Wildcard(t) | AllowedType::Userset(t, _) => {
                    t == subject_type
                }
            });
        if !allowed {
            return None;
        }
        let mut filter = RelationshipFilter::resource_relation(
            &resource.object_type,
            &resource.object_id,
            relation,
        );
        filter.subject = Some(SubjectFilter {
            subject_type: subject_type.clone(),
            subject_ids: vec![subject.object.object_id.clone(), WILDCARD_ID.to_string()],
            ..Default::default()
        });
        Some(filter)
    }

    /// A read asked ahead for `filter`, taken (evaluation reads it once).
    pub(super) fn take_prefetched(&self, filter: &RelationshipFilter) -> Option<Vec<Relationship>> {
        let mut p = self
            .prefetched
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let rows = p.waiting.remove(filter)?;
        p.rows = p.rows.saturating_sub(rows.len());
        Some(rows)
    }

    /// The reads evaluating `resource#member` for `subject` starts with,
    /// before it follows any relationship to another object: a relation's
    /// direct and userset reads; a permission's, through the relations and
    /// permissions of the same object it names and the relations its
    /// arrows read. Mirrors `check_relation` and `check_arrow`.
    fn plan_reads(
        &self,
        resource: &ObjectRef,
        member: &str,
        subject: &SubjectRef,
        depth: u32,
        out: &mut Vec<Planned>,
    ) {
        let Some(def) = self.schema.definition(&resource.object_type) else {
            return;
        };
        match def.member_kind(member) {
            Some(MemberKind::Relation) => {
                if let Some(filter) = self.direct_read(resource, member, subject) {
                    out.push(Planned {
                        filter,
                        follow: Follow::Nothing,
                    });
                }
                let allowed = def.relations.get(member).map(|r| r.allowed.as_slice());
                for a in allowed.unwrap_or_default() {
                    if let AllowedType::Userset(t, r) = a {
                        out.push(Planned {
                            filter: userset_read(resource, member, t, r),
                            follow: Follow::To(r.clone()),
                        });
                    }
                }
            }
            Some(MemberKind::Permission) if depth < PLAN_DEPTH => {
                let Some(permission) = def.permissions.get(member) else {
                    return;
                };
                let mut stack = vec![&permission.rewrite];
                while let Some(rewrite) = stack.pop() {
                    match rewrite {
                        Rewrite::Nil => {}
                        Rewrite::Ref(name) => {
                            self.plan_reads(resource, name, subject, depth + 1, out)
                        }
                        Rewrite::Union(children) | Rewrite::Intersection(children) => {
                            stack.extend(children.iter().rev())
                        }
                        Rewrite::Exclusion(base, subtract) => {
                            stack.push(subtract);
                            stack.push(base);
                        }
                        Rewrite::Arrow {
                            relation, target, ..
                        } => out.push(Planned {
                            filter: RelationshipFilter::resource_relation(
                                &resource.object_type,
                                &resource.object_id,
                                relation,
                            ),
                            follow: Follow::To(target.clone()),
                        }),
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `object#member` still needs planning: not planned yet in
    /// this request, not on the path (a cycle, cut without reading), not
    /// answered by the shared cache. Marks it planned.
    fn needs_plan(
        &self,
        p: &mut Prefetched,
        object: &ObjectRef,
        member: &str,
        subject: &SubjectRef,
        path: Option<&Path<'_>>,
    ) -> bool {
        let has_member = self
            .schema
            .definition(&object.object_type)
            .is_some_and(|d| d.member_kind(member).is_some());
        if !has_member || path.is_some_and(|p| p.find(object, member).is_some()) {
            return false;
        }
        let key = (object.clone(), member.to_string(), subject.clone());
        if p.planned.contains(&key) {
            return false;
        }
        if self
            .engine
            .cache
            .contains_key(&self.cache_key(object, member, subject))
        {
            return false;
        }
        p.planned.insert(key);
        true
    }

    /// Asks ahead, level by level, the reads that evaluating `nodes`
    /// (each `object#member`) for `subject` will make, where reads are
    /// round trips. See the module docs.
    pub(super) async fn prefetch<'o>(
        &self,
        nodes: impl Iterator<Item = (&'o ObjectRef, &'o str)>,
        subject: &SubjectRef,
        path: Option<&Path<'_>>,
    ) -> Result<(), Error> {
        let Some(prefetched) = &self.prefetched else {
            return Ok(());
        };
        let mut level = Vec::new();
        {
            let mut p = prefetched.lock().unwrap_or_else(|e| e.into_inner());
            for (object, member) in nodes {
                if self.needs_plan(&mut p, object, member, subject, path) {
                    self.plan_reads(object, member, subject, 0, &mut level);
                }
            }
        }
        for _ in 0..self.max_depth {
            // Ask what is neither waiting nor asked twice in this level.
            let wanted: Vec<RelationshipFilter> = {
                let p = prefetched.lock().unwrap_or_else(|e| e.into_inner());
                if p.rows >= MAX_WAITING_ROWS {
                    break;
                }
                let mut seen = HashSet::new();
                level
                    .iter()
                    .map(|planned| &planned.filter)
                    .filter(|f| !p.waiting.contains_key(*f) && seen.insert(*f))
                    .take(MAX_ROUND_READS)
                    .cloned()
                    .collect()
            };
            if !wanted.is_empty() {
                self.fetch(&wanted).await?;
            }
            // Follow what arrived to the next level's nodes.
            let mut next = Vec::new();
            {
                let mut p = prefetched.lock().unwrap_or_else(|e| e.into_inner());
                let mut nodes: Vec<(ObjectRef, String)> = Vec::new();
                for planned in &level {
                    let Follow::To(member) = &planned.follow else {
                        continue;
                    };
                    for rel in p.waiting.get(&planned.filter).into_iter().flatten() {
                        nodes.push((rel.subject.object.clone(), member.clone()));
                    }
                }
                for (object, member) in &nodes {
                    if self.needs_plan(&mut p, object, member, subject, path) {
                        self.plan_reads(object, member, subject, 0, &mut next);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(())
    }

    /// One batch of reads, kept until evaluation takes them.
    async fn fetch(&self, wanted: &[RelationshipFilter]) -> Result<(), Error> {
        let Some(prefetched) = &self.prefetched else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        self.engine.metrics.datastore_queries.fetch_add(
            wanted.len().div_ceil(QUERY_MANY_CHUNK) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let span = tracing::trace_span!(
            "datastore.query_many",
            queries = wanted.len(),
            rows = tracing::field::Empty
        );
        let results = tracing::Instrument::instrument(
            self.engine.store.query_many(&self.at, wanted),
            span.clone(),
        )
        .await?;
        let rows: usize = results.iter().map(Vec::len).sum();
        span.record("rows", rows);
        metrics::histogram!("kinbar_datastore_query_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let mut p = prefetched.lock().unwrap_or_else(|e| e.into_inner());
        p.rows = p.rows.saturating_add(rows);
        p.waiting.extend(wanted.iter().cloned().zip(results));
        Ok(())
    }
}
