//! The embedded in-memory datastore: the default for `kinbar serve` and tests.
//!
//! MVCC by persistent snapshots: every committed revision has its own
//! immutable snapshot (persistent B-trees from `imbl`, so a new revision
//! shares all unchanged nodes with the previous one and costs O(log n) per
//! changed relationship). A reader takes the snapshot of its revision under a
//! lock held only for an `Arc`-cheap clone and then reads without any lock, so
//! readers never block writers and never see a later write. Writers are
//! serialised by one mutex; each builds the next snapshot from the head and
//! publishes it atomically.
//!
//! Old snapshots are dropped once they are outside the GC window (time) or
//! beyond the retained-revision count; reading such a revision is
//! [`StoreError::RevisionTooOld`].

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use imbl::OrdSet;

use super::*;
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};

/// Tuning of the memory store.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Revisions younger than this stay readable.
    pub gc_window: Duration,
    /// At most this many revisions are retained, whatever their age.
    pub max_retained_revisions: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            gc_window: Duration::from_secs(24 * 3600),
            max_retained_revisions: 10_000,
        }
    }
}

#[derive(Clone, Default)]
struct Snapshot {
    forward: OrdSet<Relationship>,
    reverse: OrdSet<ReverseKey>,
    schema: Option<StoredSchema>,
}

/// The reverse (by-subject) index key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ReverseKey {
    subject: SubjectRef,
    resource_type: String,
    relation: String,
    resource_id: String,
}

impl ReverseKey {
    fn of(rel: &Relationship) -> Self {
        ReverseKey {
            subject: rel.subject.clone(),
            resource_type: rel.resource.object_type.clone(),
            relation: rel.relation.clone(),
            resource_id: rel.resource.object_id.clone(),
        }
    }

    fn relationship(&self) -> Relationship {
        Relationship::new(
            ObjectRef::new(self.resource_type.clone(), self.resource_id.clone()),
            self.relation.clone(),
            self.subject.clone(),
        )
    }
}

struct Versions {
    /// revision → (snapshot, commit time in ms)
    snapshots: BTreeMap<u64, (Snapshot, u64)>,
    /// `(revision number, transaction)` in commit order.
    log: VecDeque<(u64, Arc<CommittedTxn>)>,
    /// The audit chain: appended and sealed with each commit, never pruned.
    audit: Vec<Arc<crate::audit::AuditRecord>>,
    head: u64,
}

/// The in-memory MVCC datastore.
pub struct MemoryStore {
    id: String,
    options: MemoryOptions,
    versions: RwLock<Versions>,
    writer: Mutex<()>,
    /// `(window start, quantum, revision)` of the last optimized revision:
    /// every request in the same window shares it without scanning.
    optimized: Mutex<Option<(u64, u64, u64)>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(MemoryOptions::default())
    }
}

/// The text form of revision number `n`.
fn revision(n: u64) -> Revision {
    Revision::new(n.to_string())
}

/// The number of a memory revision; anything else is not one of ours.
fn number(r: &Revision) -> Result<u64, StoreError> {
    r.as_str().parse().map_err(|_| {
        StoreError::InvalidRevision(format!("`{r}` is not a revision of the memory datastore"))
    })
}

fn poisoned() -> StoreError {
    StoreError::Internal("memory store lock poisoned by a panic".into())
}

impl MemoryStore {
    pub fn new(options: MemoryOptions) -> Self {
        let mut snapshots = BTreeMap::new();
        snapshots.insert(0, (Snapshot::default(), now_ms()));
        MemoryStore {
            id: format!("mem-{:016x}", rand::random::<u64>()),
            options,
            versions: RwLock::new(Versions {
                snapshots,
                log: VecDeque::new(),
                audit: Vec::new(),
                head: 0,
            }),
            writer: Mutex::new(()),
            optimized: Mutex::new(None),
        }
    }

    fn snapshot(&self, at: &Revision) -> Result<Snapshot, StoreError> {
        let n = number(at)?;
        let v = self.versions.read().map_err(|_| poisoned())?;
        if n > v.head {
            return Err(StoreError::RevisionInFuture(at.clone()));
        }
        match v.snapshots.range(..=n).next_back() {
            Some((_, (snap, _))) => Ok(snap.clone()),
            None => Err(StoreError::RevisionTooOld {
                requested: at.clone(),
                oldest: revision(v.snapshots.keys().next().copied().unwrap_or(v.head)),
            }),
        }
    }

    /// Drops snapshots outside the retention bounds. The head is always kept,
    /// and so is the snapshot covering the oldest retained revision.
    fn prune(&self, v: &mut Versions, now: u64) {
        let window = self.options.gc_window.as_millis() as u64;
        while v.snapshots.len() > 1 {
            let Some((&oldest, &(_, at_ms))) = v.snapshots.iter().next() else {
                break;
            };
            let too_many = v.snapshots.len() > self.options.max_retained_revisions.max(1);
            let too_old = now.saturating_sub(at_ms) > window;
            if !(too_many || too_old) || oldest == v.head {
                break;
            }
            v.snapshots.remove(&oldest);
        }
        let oldest = v.snapshots.keys().next().copied().unwrap_or(v.head);
        while v.log.front().is_some_and(|(n, _)| *n < oldest) {
            v.log.pop_front();
        }
    }

    /// Number of retained revisions (for metrics and tests).
    pub fn retained_revisions(&self) -> usize {
        self.versions.read().map(|v| v.snapshots.len()).unwrap_or(0)
    }

    /// Garbage-collects now with `window` instead of the configured one.
    pub fn gc_with_window(&self, window: Duration) -> Result<u64, StoreError> {
        let mut removed = 0;
        let mut v = self.versions.write().map_err(|_| poisoned())?;
        let now = now_ms();
        let cutoff = window.as_millis() as u64;
        while v.snapshots.len() > 1 {
            let Some((&oldest, &(_, at_ms))) = v.snapshots.iter().next() else {
                break;
            };
            if oldest == v.head || now.saturating_sub(at_ms) <= cutoff {
                break;
            }
            v.snapshots.remove(&oldest);
            removed += 1;
        }
        Ok(removed)
    }
}

fn lower_bound(filter: &RelationshipFilter, id: Option<&str>) -> Relationship {
    Relationship::new(
        ObjectRef::new(
            filter.resource_type.clone().unwrap_or_default(),
            id.map(str::to_string)
                .or_else(|| filter.resource_id_prefix.clone())
                .unwrap_or_default(),
        ),
        if id.is_some() {
            filter.relation.clone().unwrap_or_default()
        } else {
            String::new()
        },
        SubjectRef::object(ObjectRef::new("", "")),
    )
}

/// Scans `set` from `lo` while `in_range` holds, collecting matches after `after`.
fn scan(
    set: &OrdSet<Relationship>,
    lo: Relationship,
    after: Option<&Relationship>,
    in_range: impl Fn(&Relationship) -> bool,
    filter: &RelationshipFilter,
    out: &mut Vec<Relationship>,
    limit: usize,
) {
    let start = match after {
        Some(a) if *a >= lo => Bound::Excluded(a.clone()),
        _ => Bound::Included(lo),
    };
    for rel in set.range((start, Bound::Unbounded)) {
        if out.len() >= limit || !in_range(rel) {
            break;
        }
        if filter.matches(rel) {
            out.push(rel.clone());
        }
    }
}

fn query_snapshot(snap: &Snapshot, filter: &RelationshipFilter, page: &Page) -> Vec<Relationship> {
    let limit = page.limit.unwrap_or(usize::MAX);
    let after = page.after.as_ref();
    let mut out = Vec::new();
    if let Some(t) = &filter.resource_type {
        if filter.resource_ids.is_empty() {
            scan(
                &snap.forward,
                lower_bound(filter, None),
                after,
                |r| {
                    r.resource.object_type == *t
                        && filter
                            .resource_id_prefix
                            .as_ref()
                            .is_none_or(|p| r.resource.object_id.starts_with(p.as_str()))
                },
                filter,
                &mut out,
                limit,
            );
        } else {
            let mut ids: Vec<&String> = filter.resource_ids.iter().collect();
            ids.sort();
            ids.dedup();
            for id in ids {
                match (&filter.relation, &filter.subject) {
                    // resource#relation@subject_type[:ids]: the key order lets
                    // us seek straight to those subjects.
                    (Some(rel), Some(sf)) => {
                        let mut sids: Vec<&str> =
                            sf.subject_ids.iter().map(String::as_str).collect();
                        sids.sort();
                        sids.dedup();
                        let seeks: Vec<Option<&str>> = if sids.is_empty() {
                            vec![None]
                        } else {
                            sids.into_iter().map(Some).collect()
                        };
                        for sid in seeks {
                            let lo = Relationship::new(
                                ObjectRef::new(t.clone(), id.clone()),
                                rel.clone(),
                                SubjectRef::object(ObjectRef::new(
                                    sf.subject_type.clone(),
                                    sid.unwrap_or_default(),
                                )),
                            );
                            scan(
                                &snap.forward,
                                lo,
                                after,
                                |r| {
                                    r.resource.object_type == *t
                                        && r.resource.object_id == *id
                                        && r.relation == *rel
                                        && r.subject.object.object_type == sf.subject_type
                                        && sid.is_none_or(|s| r.subject.object.object_id == s)
                                },
                                filter,
                                &mut out,
                                limit,
                            );
                        }
                    }
                    _ => scan(
                        &snap.forward,
                        lower_bound(filter, Some(id)),
                        after,
                        |r| {
                            r.resource.object_type == *t
                                && r.resource.object_id == *id
                                && filter
                                    .relation
                                    .as_ref()
                                    .is_none_or(|rel| r.relation == *rel)
                        },
                        filter,
                        &mut out,
                        limit,
                    ),
                }
            }
        }
    } else if let Some(s) = &filter.subject {
        // By subject: the reverse index, then back into relationship order.
        let mut found = Vec::new();
        let starts: Vec<ReverseKey> = if s.subject_ids.is_empty() {
            vec![ReverseKey {
                subject: SubjectRef::object(ObjectRef::new(s.subject_type.clone(), "")),
                resource_type: String::new(),
                relation: String::new(),
                resource_id: String::new(),
            }]
        } else {
            s.subject_ids
                .iter()
                .map(|id| ReverseKey {
                    subject: SubjectRef::object(ObjectRef::new(s.subject_type.clone(), id.clone())),
                    resource_type: String::new(),
                    relation: String::new(),
                    resource_id: String::new(),
                })
                .collect()
        };
        for start in starts {
            let id = start.subject.object.object_id.clone();
            for key in snap.reverse.range(start..) {
                if key.subject.object.object_type != s.subject_type
                    || (!s.subject_ids.is_empty() && key.subject.object.object_id != id)
                {
                    break;
                }
                let rel = key.relationship();
                if filter.matches(&rel) && after.is_none_or(|a| rel > *a) {
                    found.push(rel);
                }
            }
        }
        found.sort();
        found.dedup();
        found.truncate(limit);
        out = found;
    } else {
        scan(
            &snap.forward,
            lower_bound(filter, None),
            after,
            |_| true,
            filter,
            &mut out,
            limit,
        );
    }
    out
}

#[async_trait]
impl Datastore for MemoryStore {
    fn id(&self) -> &str {
        &self.id
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        Ok(revision(self.versions.read().map_err(|_| poisoned())?.head))
    }

    async fn optimized_revision(&self, quantum: Duration) -> Result<Revision, StoreError> {
        let v = self.versions.read().map_err(|_| poisoned())?;
        let q = quantum.as_millis() as u64;
        if q == 0 {
            return Ok(revision(v.head));
        }
        let now = now_ms();
        let window_start = now - now % q;
        if let Ok(cached) = self.optimized.lock()
            && let Some((w, cq, rev)) = *cached
            && (w, cq) == (window_start, q)
            && v.snapshots.contains_key(&rev)
        {
            return Ok(revision(rev));
        }
        let chosen = v
            .snapshots
            .iter()
            .rev()
            .find(|(_, (_, at_ms))| *at_ms <= window_start)
            .or_else(|| v.snapshots.iter().next())
            .map(|(rev, _)| *rev)
            .unwrap_or(v.head);
        if let Ok(mut cached) = self.optimized.lock() {
            *cached = Some((window_start, q, chosen));
        }
        Ok(revision(chosen))
    }

    async fn check_revision(&self, at: &Revision) -> Result<(), StoreError> {
        self.snapshot(at).map(|_| ())
    }

    async fn at_least_as_fresh(
        &self,
        wanted: &Revision,
        candidate: Revision,
    ) -> Result<Revision, StoreError> {
        let w = number(wanted)?;
        if w > self.versions.read().map_err(|_| poisoned())?.head {
            return Err(StoreError::RevisionInFuture(wanted.clone()));
        }
        Ok(if number(&candidate)? >= w {
            candidate
        } else {
            wanted.clone()
        })
    }

    async fn read_schema(&self, at: &Revision) -> Result<Option<StoredSchema>, StoreError> {
        Ok(self.snapshot(at)?.schema)
    }

    async fn query(
        &self,
        at: &Revision,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, StoreError> {
        let snap = self.snapshot(at)?;
        Ok(query_snapshot(&snap, filter, page))
    }

    async fn write(&self, txn: WriteTxn) -> Result<CommittedTxn, StoreError> {
        let _writer = self.writer.lock().map_err(|_| poisoned())?;
        let (head, mut snap) = {
            let v = self.versions.read().map_err(|_| poisoned())?;
            let snap = v
                .snapshots
                .get(&v.head)
                .map(|(s, _)| s.clone())
                .ok_or_else(|| StoreError::Internal("head snapshot missing".into()))?;
            (v.head, snap)
        };
        if let Some(expected) = txn.expected_schema
            && snap.schema.as_ref().map(|s| &s.written_at) != expected.as_ref()
        {
            return Err(StoreError::SchemaChanged);
        }
        for (index, p) in txn.preconditions.iter().enumerate() {
            let found = query_snapshot(
                &snap,
                &p.filter,
                &Page {
                    after: None,
                    limit: Some(1),
                },
            );
            match (p.kind, found.first()) {
                (PreconditionKind::MustMatch, None) => {
                    return Err(StoreError::PreconditionFailed {
                        index,
                        reason: "no relationship matches the MUST_MATCH filter".into(),
                        example: None,
                    });
                }
                (PreconditionKind::MustNotMatch, Some(rel)) => {
                    return Err(StoreError::PreconditionFailed {
                        index,
                        reason: format!("relationship `{rel}` matches the MUST_NOT_MATCH filter"),
                        example: Some(Box::new(rel.clone())),
                    });
                }
                _ => {}
            }
        }
        let number = head + 1;
        let revision = revision(number);
        let mut changes = Vec::new();
        for d in &txn.deletes {
            let limit = d.limit.map(|l| l.saturating_add(1));
            let matched = query_snapshot(&snap, &d.filter, &Page { after: None, limit });
            let take = match d.limit {
                Some(l) if d.expect_exactly && matched.len() != l => {
                    return Err(StoreError::ChangedConcurrently {
                        matched: matched.len(),
                        expected: l,
                    });
                }
                Some(l) if matched.len() > l => {
                    if !d.allow_partial {
                        return Err(StoreError::TooManyToDelete {
                            matched: matched.len(),
                            limit: l,
                        });
                    }
                    l
                }
                _ => matched.len(),
            };
            for rel in matched.into_iter().take(take) {
                snap.reverse.remove(&ReverseKey::of(&rel));
                snap.forward.remove(&rel);
                changes.push(Change {
                    operation: Operation::Delete,
                    relationship: rel,
                });
            }
        }
        for u in &txn.updates {
            let rel = &u.relationship;
            match u.operation {
                Operation::Create | Operation::Touch => {
                    if snap.forward.contains(rel) {
                        if u.operation == Operation::Create {
                            return Err(StoreError::AlreadyExists(Box::new(rel.clone())));
                        }
                        continue;
                    }
                    snap.reverse.insert(ReverseKey::of(rel));
                    snap.forward.insert(rel.clone());
                    changes.push(Change {
                        operation: u.operation,
                        relationship: rel.clone(),
                    });
                }
                Operation::Delete => {
                    if snap.forward.remove(rel).is_some() {
                        snap.reverse.remove(&ReverseKey::of(rel));
                        changes.push(Change {
                            operation: Operation::Delete,
                            relationship: rel.clone(),
                        });
                    }
                }
            }
        }
        let mut schema_change = None;
        if let Some(s) = &txn.schema {
            let old = snap.schema.as_ref().map(|o| o.text.to_string());
            schema_change = Some((old, s.text.clone()));
            snap.schema = Some(StoredSchema {
                text: Arc::from(s.text.as_str()),
                written_at: revision.clone(),
            });
        }
        let committed_at_ms = now_ms();
        let committed = CommittedTxn {
            revision,
            committed_at_ms,
            metadata: txn.metadata,
            changes,
            schema_change,
        };
        let mut v = self.versions.write().map_err(|_| poisoned())?;
        v.snapshots.insert(number, (snap, committed_at_ms));
        v.head = number;
        if !committed.changes.is_empty() || committed.schema_change.is_some() {
            // Same critical section as the commit: a change is never visible
            // without its audit record, and records are sealed in commit order.
            let sequence = v.audit.len() as u64 + 1;
            let previous = v.audit.last().map(|r| r.hash).unwrap_or([0; 32]);
            let mut record = crate::audit::AuditRecord::of(sequence, &committed);
            record.seal(previous);
            v.audit.push(Arc::new(record));
        }
        v.log.push_back((number, Arc::new(committed.clone())));
        self.prune(&mut v, committed_at_ms);
        Ok(committed)
    }

    async fn read_audit(
        &self,
        after: u64,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError> {
        let v = self.versions.read().map_err(|_| poisoned())?;
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(v.audit.len());
        Ok(v.audit[start..]
            .iter()
            .filter(|r| filter.matches(r))
            .take(limit)
            .map(|r| (**r).clone())
            .collect())
    }

    async fn collect_garbage(&self, window: Duration) -> Result<GcStats, StoreError> {
        Ok(GcStats {
            relationships_deleted: self.gc_with_window(window)?,
            ..Default::default()
        })
    }

    async fn changes_since(
        &self,
        after: &Revision,
        limit: usize,
    ) -> Result<Vec<CommittedTxn>, StoreError> {
        let n = number(after)?;
        let v = self.versions.read().map_err(|_| poisoned())?;
        if n > v.head {
            return Err(StoreError::RevisionInFuture(after.clone()));
        }
        let oldest = v.snapshots.keys().next().copied().unwrap_or(v.head);
        if n < oldest && n != 0 {
            return Err(StoreError::RevisionTooOld {
                requested: after.clone(),
                oldest: revision(oldest),
            });
        }
        Ok(v.log
            .iter()
            .filter(|(t, _)| *t > n)
            .take(limit)
            .map(|(_, t)| (**t).clone())
            .collect())
    }
}
