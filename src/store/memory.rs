//! The embedded in-memory datastore: the default for `kinbar serve` and tests.
//!
//! Compact MVCC, as on Postgres: every relationship version is a row of six
//! interned symbols with the revisions it was created and deleted at, kept
//! in two sorted indexes (by resource and by subject; [`index`]). A read at
//! revision R sees the versions with `created <= R < deleted`, so a writer
//! never disturbs a reader's revision and no snapshot of the whole store is
//! kept per revision. One lock guards the state: a query holds it shared
//! for its own duration, a write exclusively while it applies (an error
//! midway undoes what it applied, so a transaction is all or nothing).
//!
//! Revisions are numbered; the retained ones are those inside the GC window
//! (time) and the retained-revision count. Versions deleted at or before the
//! oldest retained revision are invisible to every readable revision and are
//! removed (garbage collection); reading an older revision is
//! [`StoreError::RevisionTooOld`].
//!
//! The Watch log covers the retained revisions. The audit chain keeps its
//! newest records holding up to [`MemoryOptions::audit_max_changes`]
//! changes (a memory store's audit ends with the process anyway; Postgres
//! keeps every record): older records are pruned whole, and the store
//! reports where its chain now starts ([`Datastore::audit_horizon`]) so
//! verification anchors there. Both store changes as symbols (28 bytes a
//! change) and rebuild records when read.

mod index;

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use self::index::{Entry, Index, Interner, Key, LIVE, NONE, Probe};
use super::*;
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};
use crate::store::Sym;

/// Tuning of the memory store.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Revisions younger than this stay readable.
    pub gc_window: Duration,
    /// At most this many revisions are retained, whatever their age.
    pub max_retained_revisions: usize,
    /// The audit chain keeps its newest records up to this many changes in
    /// all (a schema write counts one); older records are pruned, whole.
    /// The newest record is always kept.
    pub audit_max_changes: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            gc_window: Duration::from_secs(24 * 3600),
            max_retained_revisions: 10_000,
            audit_max_changes: 10_000_000,
        }
    }
}

/// A committed transaction as kept for Watch and the audit.
struct Txn {
    number: u64,
    committed_at_ms: u64,
    metadata: TxnMetadata,
    /// Forward keys.
    changes: Vec<(Operation, Key)>,
    schema_change: Option<(Option<String>, String)>,
}

/// A sealed audit record: the transaction and its chain hashes.
struct Sealed {
    txn: Arc<Txn>,
    previous_hash: [u8; 32],
    hash: [u8; 32],
}

struct State {
    names: Interner,
    /// Keys `[resource type, resource id, relation, subject type, subject
    /// id, subject relation]`.
    forward: Index,
    /// Keys `[subject type, subject id, subject relation, resource type,
    /// relation, resource id]`.
    reverse: Index,
    /// Retained revisions: number → commit time (ms). Holds the head.
    revisions: BTreeMap<u64, u64>,
    /// Schema versions by the revision that wrote them.
    schemas: BTreeMap<u64, StoredSchema>,
    /// Deleted versions `(deleted at, forward key, created at)`, in order of
    /// deletion: what garbage collection removes first.
    dead: VecDeque<(u64, Key, u64)>,
    /// Transactions of the retained revisions, in commit order.
    log: VecDeque<Arc<Txn>>,
    /// The audit chain's retained records, oldest first: appended and
    /// sealed with each commit, pruned from the front (see
    /// [`MemoryOptions::audit_max_changes`]).
    audit: VecDeque<Sealed>,
    /// Records pruned from the front of `audit`: the first retained one has
    /// sequence `audit_pruned + 1`.
    audit_pruned: u64,
    /// Changes held by the records in `audit` (a schema write counts one).
    audit_changes: usize,
    head: u64,
}

/// The in-memory MVCC datastore.
pub struct MemoryStore {
    id: String,
    options: MemoryOptions,
    state: RwLock<State>,
    /// `(window start, quantum, revision)` of the last optimized revision:
    /// every request in the same window shares it without scanning.
    optimized: Mutex<Option<(u64, u64, u64)>>,
    security: Mutex<SecurityEvents>,
}

/// The memory store's security events: the newest
/// [`MAX_SECURITY_EVENTS`], with the aggregated ones findable by key.
#[derive(Default)]
struct SecurityEvents {
    events: VecDeque<crate::audit::StoredSecurityEvent>,
    next_id: u64,
    aggregates: std::collections::HashMap<String, u64>,
}

/// Security events the memory store keeps (the oldest are dropped).
const MAX_SECURITY_EVENTS: usize = 100_000;

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

/// A forward key written as its relationship's text (as
/// `Relationship`'s `Display`), straight from the interner.
struct KeyText<'a>(&'a Interner, &'a Key);

impl std::fmt::Display for KeyText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, k) = (self.0, self.1);
        let name = |s: Sym| n.resolve(s).unwrap_or("");
        write!(
            f,
            "{}:{}#{}@{}:{}",
            name(k[0]),
            name(k[1]),
            name(k[2]),
            name(k[3]),
            name(k[4])
        )?;
        match n.resolve(k[5]) {
            Some(r) => write!(f, "#{r}"),
            None => Ok(()),
        }
    }
}

/// The hash of `t`'s audit record (sequence `sequence`) after
/// `previous`, streamed from the interned keys: the same bytes as
/// [`AuditRecord`](crate::audit::AuditRecord)'s canonical form
/// (`State::audit_record` rebuilds it for readers), without building
/// a string per change.
fn record_hash(names: &Interner, sequence: u64, t: &Txn, previous: &[u8; 32]) -> [u8; 32] {
    use crate::audit::{ChangeView, RecordView};
    /// The changes as a JSON sequence, each written from its key.
    struct Changes<'a>(&'a Interner, &'a [(Operation, Key)]);
    impl serde::Serialize for Changes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.1.iter().map(|(operation, key)| ChangeView {
                operation: *operation,
                relationship: KeyText(self.0, key),
            }))
        }
    }
    let revision = t.number.to_string();
    RecordView {
        sequence,
        revision: &revision,
        committed_at_ms: t.committed_at_ms,
        actor: &t.metadata.actor,
        request_id: &t.metadata.request_id,
        metadata: &t.metadata.fields,
        changes: Changes(names, &t.changes),
        old_schema: t.schema_change.as_ref().and_then(|(old, _)| old.as_deref()),
        new_schema: t.schema_change.as_ref().map(|(_, new)| new.as_str()),
    }
    .hash(previous)
}

/// What an audit record counts against [`MemoryOptions::audit_max_changes`].
fn weight(t: &Txn) -> usize {
    t.changes.len().max(1)
}

/// A forward key's reverse-index key.
fn reverse_key(k: &Key) -> Key {
    [k[3], k[4], k[5], k[0], k[2], k[1]]
}

/// A reverse-index key's forward key (the inverse of [`reverse_key`]).
fn forward_key(k: &Key) -> Key {
    [k[3], k[5], k[4], k[0], k[1], k[2]]
}

fn probe_of(rel: &Relationship) -> Probe<'_> {
    [
        Some(&rel.resource.object_type),
        Some(&rel.resource.object_id),
        Some(&rel.relation),
        Some(&rel.subject.object.object_type),
        Some(&rel.subject.object.object_id),
        rel.subject.relation.as_deref(),
    ]
}

impl State {
    fn new() -> Self {
        State {
            names: Interner::default(),
            forward: Index::default(),
            reverse: Index::default(),
            revisions: BTreeMap::from([(0, now_ms())]),
            schemas: BTreeMap::new(),
            dead: VecDeque::new(),
            log: VecDeque::new(),
            audit: VecDeque::new(),
            audit_pruned: 0,
            audit_changes: 0,
            head: 0,
        }
    }

    fn oldest(&self) -> u64 {
        self.revisions.keys().next().copied().unwrap_or(self.head)
    }

    /// `at` as a readable revision number.
    fn readable(&self, at: &Revision) -> Result<u64, StoreError> {
        let n = number(at)?;
        if n > self.head {
            return Err(StoreError::RevisionInFuture(at.clone()));
        }
        if n < self.oldest() {
            return Err(StoreError::RevisionTooOld {
                requested: at.clone(),
                oldest: revision(self.oldest()),
            });
        }
        Ok(n)
    }

    fn schema_at(&self, n: u64) -> Option<&StoredSchema> {
        self.schemas.range(..=n).next_back().map(|(_, s)| s)
    }

    fn relationship(&self, k: &Key) -> Relationship {
        let n = &self.names;
        Relationship::new(
            ObjectRef::new(n.name(k[0]), n.name(k[1])),
            n.name(k[2]),
            SubjectRef {
                object: ObjectRef::new(n.name(k[3]), n.name(k[4])),
                relation: n.resolve(k[5]).map(str::to_string),
            },
        )
    }

    fn intern(&mut self, rel: &Relationship) -> Key {
        let n = &mut self.names;
        [
            n.intern(&rel.resource.object_type),
            n.intern(&rel.resource.object_id),
            n.intern(&rel.relation),
            n.intern(&rel.subject.object.object_type),
            n.intern(&rel.subject.object.object_id),
            match &rel.subject.relation {
                Some(r) => n.intern(r),
                None => NONE,
            },
        ]
    }

    fn committed(&self, t: &Txn) -> CommittedTxn {
        CommittedTxn {
            revision: revision(t.number),
            committed_at_ms: t.committed_at_ms,
            metadata: t.metadata.clone(),
            changes: t
                .changes
                .iter()
                .map(|(operation, k)| Change {
                    operation: *operation,
                    relationship: self.relationship(k),
                })
                .collect(),
            schema_change: t.schema_change.clone(),
        }
    }

    /// The audit record of `s`, sequence `sequence`.
    fn audit_record(&self, sequence: u64, s: &Sealed) -> crate::audit::AuditRecord {
        let mut record = crate::audit::AuditRecord::of(sequence, &self.committed(&s.txn));
        record.previous_hash = s.previous_hash;
        record.hash = s.hash;
        record
    }

    /// Forward entries from `lo` (or strictly after `after` when that is
    /// later) while `in_range` holds, visible at `at` and matching
    /// `filter`, at most `limit` in all in `out`.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        at: u64,
        lo: Probe<'_>,
        after: Option<&Relationship>,
        in_range: impl Fn(&[Option<&str>; 6]) -> bool,
        filter: &RelationshipFilter,
        out: &mut Vec<Relationship>,
        limit: usize,
    ) {
        let start = match after.map(probe_of) {
            Some(a) if a >= lo => self.forward.seek(&self.names, &a, true),
            _ => self.forward.seek(&self.names, &lo, false),
        };
        for e in self.forward.iter_from(start) {
            if out.len() >= limit {
                break;
            }
            let strs = e.key.map(|s| self.names.resolve(s));
            if !in_range(&strs) {
                break;
            }
            if !e.visible_at(at) {
                continue;
            }
            let rel = self.relationship(&e.key);
            if filter.matches(&rel) {
                out.push(rel);
            }
        }
    }

    /// Relationships matching `filter` at revision `at`, in relationship
    /// order, paged.
    fn query(&self, at: u64, filter: &RelationshipFilter, page: &Page) -> Vec<Relationship> {
        let limit = page.limit.unwrap_or(usize::MAX);
        let after = page.after.as_ref();
        let mut out = Vec::new();
        let Some(t) = filter.resource_type.as_deref() else {
            if let Some(s) = &filter.subject {
                return self.query_by_subject(at, filter, s, after, limit);
            }
            self.scan(at, [Some(""); 6], after, |_| true, filter, &mut out, limit);
            return out;
        };
        if filter.resource_ids.is_empty() {
            let prefix = filter.resource_id_prefix.as_deref().unwrap_or("");
            self.scan(
                at,
                [Some(t), Some(prefix), Some(""), Some(""), Some(""), None],
                after,
                |k| k[0] == Some(t) && k[1].is_some_and(|id| id.starts_with(prefix)),
                filter,
                &mut out,
                limit,
            );
            return out;
        }
        let mut ids: Vec<&str> = filter.resource_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            match (filter.relation.as_deref(), &filter.subject) {
                // resource#relation@subject_type[:ids]: the key order lets
                // us seek straight to those subjects.
                (Some(rel), Some(sf)) => {
                    let mut sids: Vec<&str> = sf.subject_ids.iter().map(String::as_str).collect();
                    sids.sort_unstable();
                    sids.dedup();
                    let seeks: Vec<Option<&str>> = if sids.is_empty() {
                        vec![None]
                    } else {
                        sids.into_iter().map(Some).collect()
                    };
                    let st = sf.subject_type.as_str();
                    for sid in seeks {
                        self.scan(
                            at,
                            [
                                Some(t),
                                Some(id),
                                Some(rel),
                                Some(st),
                                Some(sid.unwrap_or("")),
                                None,
                            ],
                            after,
                            |k| {
                                k[0] == Some(t)
                                    && k[1] == Some(id)
                                    && k[2] == Some(rel)
                                    && k[3] == Some(st)
                                    && sid.is_none_or(|s| k[4] == Some(s))
                            },
                            filter,
                            &mut out,
                            limit,
                        );
                    }
                }
                (rel, _) => self.scan(
                    at,
                    [
                        Some(t),
                        Some(id),
                        Some(rel.unwrap_or("")),
                        Some(""),
                        Some(""),
                        None,
                    ],
                    after,
                    |k| k[0] == Some(t) && k[1] == Some(id) && rel.is_none_or(|r| k[2] == Some(r)),
                    filter,
                    &mut out,
                    limit,
                ),
            }
        }
        out
    }

    /// Relationships whose subject matches `s` (and `filter`), in
    /// relationship order from `after`, at most `limit`. With subject ids,
    /// a merge: the reverse index holds each `(subject, subject relation,
    /// resource type, relation)` group sorted by resource id, i.e. in
    /// relationship order within the group; each group is entered just
    /// after the cursor and the groups' heads are merged, so a page costs
    /// its own rows plus a seek per group, not the subject's whole range.
    /// Without ids (every subject of a type), a scan of the type's range.
    fn query_by_subject(
        &self,
        at: u64,
        filter: &RelationshipFilter,
        s: &SubjectFilter,
        after: Option<&Relationship>,
        limit: usize,
    ) -> Vec<Relationship> {
        let st = s.subject_type.as_str();
        if s.subject_ids.is_empty() {
            return self.scan_subject_type(at, filter, st, after, limit);
        }
        let Some(st_sym) = self.names.get(st) else {
            return Vec::new();
        };
        let mut sids: Vec<Sym> = s
            .subject_ids
            .iter()
            .filter_map(|id| self.names.get(id))
            .collect();
        sids.sort_unstable();
        sids.dedup();
        // Every group of every subject, entered after the cursor.
        let mut groups = Vec::new();
        for sid in sids {
            let mut pos = self.reverse.seek_prefix(&self.names, &[st_sym, sid]);
            while let Some(first) = self.reverse.iter_from(pos).next() {
                if first.key[..2] != [st_sym, sid] {
                    break;
                }
                let g: [Sym; 5] = [
                    first.key[0],
                    first.key[1],
                    first.key[2],
                    first.key[3],
                    first.key[4],
                ];
                let end = self.reverse.seek_past_prefix(&self.names, &g);
                let from = match after {
                    Some(a) => self.group_start_after(&g, a, pos),
                    None => pos,
                };
                let entries = self
                    .reverse
                    .iter_from(from)
                    .take_while(move |e| e.key[..5] == g)
                    .filter(move |e| e.visible_at(at))
                    .peekable();
                groups.push(entries);
                pos = end;
            }
        }
        // Relationship order of two reverse keys: their forward keys'.
        let mut out = Vec::new();
        while out.len() < limit {
            let mut best: Option<(usize, Key)> = None;
            for (i, g) in groups.iter_mut().enumerate() {
                let Some(e) = g.peek() else { continue };
                let k = forward_key(&e.key);
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| self.names.cmp_keys(&k, b) == Ordering::Less)
                {
                    best = Some((i, k));
                }
            }
            let Some((i, k)) = best else { break };
            if let Some(g) = groups.get_mut(i) {
                g.next();
            }
            let rel = self.relationship(&k);
            if filter.matches(&rel) {
                out.push(rel);
            }
        }
        out
    }

    /// Where group `g` (a reverse-key prefix of five symbols, starting at
    /// `start`) continues after relationship `a`: its entries are ordered
    /// by resource id, which within the group is relationship order.
    fn group_start_after(&self, g: &[Sym; 5], a: &Relationship, start: index::Pos) -> index::Pos {
        let n = |s: Sym| self.names.resolve(s);
        let rtype = n(g[3]).unwrap_or_default();
        match rtype.cmp(a.resource.object_type.as_str()) {
            Ordering::Less => return self.reverse.seek_past_prefix(&self.names, g),
            Ordering::Greater => return start,
            Ordering::Equal => {}
        }
        // Same resource type: entries before `a`'s resource id come before
        // it, after it after it; at its id, the rest of the key decides.
        let rest = (
            n(g[4]).unwrap_or_default(),
            n(g[0]).unwrap_or_default(),
            n(g[1]).unwrap_or_default(),
            n(g[2]),
        );
        let theirs = (
            a.relation.as_str(),
            a.subject.object.object_type.as_str(),
            a.subject.object.object_id.as_str(),
            a.subject.relation.as_deref(),
        );
        let probe = [
            n(g[0]),
            n(g[1]),
            n(g[2]),
            Some(rtype),
            n(g[4]),
            Some(a.resource.object_id.as_str()),
        ];
        // At `a`'s id an entry is at or before `a` when the rest of its key is.
        self.reverse.seek(&self.names, &probe, rest <= theirs)
    }

    /// Relationships whose subject has type `st` (any id), matching
    /// `filter`, in relationship order after `after`, at most `limit`.
    fn scan_subject_type(
        &self,
        at: u64,
        filter: &RelationshipFilter,
        st: &str,
        after: Option<&Relationship>,
        limit: usize,
    ) -> Vec<Relationship> {
        let lo = [Some(st), Some(""), None, Some(""), Some(""), Some("")];
        let from = self.reverse.seek(&self.names, &lo, false);
        let mut found = Vec::new();
        for e in self.reverse.iter_from(from) {
            if self.names.resolve(e.key[0]) != Some(st) {
                break;
            }
            if !e.visible_at(at) {
                continue;
            }
            let rel = self.relationship(&forward_key(&e.key));
            if filter.matches(&rel) && after.is_none_or(|a| rel > *a) {
                found.push(rel);
            }
        }
        found.sort();
        found.truncate(limit);
        found
    }

    /// Adds version `(key, created)`, live, to both indexes.
    fn put_version(&mut self, key: Key, created: u64) {
        self.forward
            .insert(&self.names, Entry::new(key, created, LIVE));
        self.reverse
            .insert(&self.names, Entry::new(reverse_key(&key), created, LIVE));
    }

    /// Removes version `(key, created)` from both indexes.
    fn drop_version(&mut self, key: &Key, created: u64) {
        self.forward.remove(&self.names, key, created);
        self.reverse.remove(&self.names, &reverse_key(key), created);
    }

    /// Sets the deletion revision of version `(key, created)` in both indexes.
    fn mark_deleted(&mut self, key: &Key, created: u64, deleted: u64) {
        self.forward.set_deleted(&self.names, key, created, deleted);
        self.reverse
            .set_deleted(&self.names, &reverse_key(key), created, deleted);
    }

    /// Marks the live version of `key` deleted at `number` in both indexes.
    fn delete(&mut self, key: &Key, number: u64, undo: &mut Vec<Undo>) -> bool {
        let Some(live) = self.forward.live(&self.names, key) else {
            return false;
        };
        if live.created == number {
            // Created by this same transaction: no revision ever saw it, so
            // it goes (a version `number..number` would share its key and
            // revision with a re-creation in this transaction).
            self.drop_version(key, number);
            undo.push(Undo::Removed(*key, number));
            return true;
        }
        self.mark_deleted(key, live.created, number);
        undo.push(Undo::Deleted(*key, live.created));
        true
    }

    fn insert(&mut self, key: Key, number: u64, undo: &mut Vec<Undo>) {
        self.put_version(key, number);
        undo.push(Undo::Inserted(key, number));
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Deleted(k, created) => self.mark_deleted(&k, created, LIVE),
                Undo::Inserted(k, created) => self.drop_version(&k, created),
                Undo::Removed(k, created) => self.put_version(k, created),
            }
        }
    }

    /// Applies a transaction's deletes and updates at revision `number`;
    /// returns its changes (forward keys). On error, the caller rolls back.
    fn apply(
        &mut self,
        txn: &WriteTxn,
        number: u64,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<(Operation, Key)>, StoreError> {
        let mut changes = Vec::new();
        for d in &txn.deletes {
            let limit = d.limit.map(|l| l.saturating_add(1));
            // At `number`: this transaction's earlier deletes are gone.
            let matched = self.query(number, &d.filter, &Page { after: None, limit });
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
                let key = self.intern(&rel);
                if self.delete(&key, number, undo) {
                    changes.push((Operation::Delete, key));
                }
            }
        }
        // A large insert-only batch (an import) is sorted and merged in one
        // pass instead of inserted one by one.
        let bulk = txn.updates.len() > 10_000
            && txn.deletes.is_empty()
            && txn.updates.iter().all(|u| u.operation != Operation::Delete);
        let mut batch: std::collections::HashSet<Key, foldhash::fast::RandomState> =
            std::collections::HashSet::default();
        // A bulk batch into an empty store (a first import): nothing can
        // exist yet but what the batch itself holds.
        let empty = bulk && self.forward.is_empty();
        for u in &txn.updates {
            let key = self.intern(&u.relationship);
            let exists =
                batch.contains(&key) || (!empty && self.forward.live(&self.names, &key).is_some());
            match u.operation {
                Operation::Create | Operation::Touch => {
                    if exists {
                        if u.operation == Operation::Create {
                            return Err(StoreError::AlreadyExists(Box::new(
                                u.relationship.clone(),
                            )));
                        }
                        continue;
                    }
                    if bulk {
                        batch.insert(key);
                    } else {
                        self.insert(key, number, undo);
                    }
                    changes.push((u.operation, key));
                }
                Operation::Delete => {
                    if self.delete(&key, number, undo) {
                        changes.push((Operation::Delete, key));
                    }
                }
            }
        }
        // New names get ranks before a bulk sort (which then compares
        // integers; `insert_many` takes the new ranks) or when enough have
        // gathered (see `rerank_if_stale`); new ranks make the indexes'
        // cached ones stale until taken.
        if bulk {
            self.names.rerank();
        } else if self.names.rerank_if_stale() {
            self.forward.take_ranks(&self.names);
            self.reverse.take_ranks(&self.names);
        }
        if bulk {
            let entries = |reverse: bool| -> Vec<Entry> {
                batch
                    .iter()
                    .map(|k| Entry::new(if reverse { reverse_key(k) } else { *k }, number, LIVE))
                    .collect()
            };
            let (fwd, rev) = (entries(false), entries(true));
            self.forward.insert_many(&self.names, fwd);
            self.reverse.insert_many(&self.names, rev);
        }
        Ok(changes)
    }

    /// The sequence the next audit record gets.
    fn next_sequence(&self) -> u64 {
        self.audit_pruned + self.audit.len() as u64 + 1
    }

    /// The hash of the newest audit record (32 zero bytes before the first).
    fn audit_head(&self) -> [u8; 32] {
        self.audit.back().map(|r| r.hash).unwrap_or([0; 32])
    }

    /// Prunes the oldest audit records while more than `max` changes are
    /// held, always keeping the newest record.
    fn prune_audit(&mut self, max: usize) {
        while self.audit_changes > max && self.audit.len() > 1 {
            if let Some(old) = self.audit.pop_front() {
                self.audit_changes -= weight(&old.txn);
                self.audit_pruned += 1;
            }
        }
    }

    /// Makes revision `number` the head with these changes: the retained
    /// revisions, the Watch log and the sealed audit record, in the write's
    /// critical section (a change is never visible without its audit
    /// record, and records are sealed in commit order).
    /// `hash`: the audit record's hash if the caller computed it already
    /// (see [`State::import`]).
    fn commit(&mut self, options: &MemoryOptions, txn: Txn, hash: Option<[u8; 32]>) -> Arc<Txn> {
        let kept = Arc::new(txn);
        let (number, committed_at_ms) = (kept.number, kept.committed_at_ms);
        self.revisions.insert(number, committed_at_ms);
        self.head = number;
        self.prune(options, options.gc_window, committed_at_ms);
        if !kept.changes.is_empty() || kept.schema_change.is_some() {
            let previous = self.audit_head();
            let hash = hash.unwrap_or_else(|| {
                record_hash(&self.names, self.next_sequence(), &kept, &previous)
            });
            self.audit_changes += weight(&kept);
            self.audit.push_back(Sealed {
                txn: kept.clone(),
                previous_hash: previous,
                hash,
            });
            self.prune_audit(options.audit_max_changes);
        }
        self.log.push_back(kept.clone());
        kept
    }

    /// Takes an import in as revision `number` and commits it: interns
    /// each relationship and releases its strings at once (so the indexes
    /// reuse the caller's memory instead of growing past it), then — on
    /// both cores — ranks the new names, sorts the forward and reverse
    /// entries and hashes the audit record, refuses duplicates and existing
    /// relationships, and merges both indexes in one pass each. On error
    /// nothing is visible; only interned names remain (unreferenced,
    /// harmless).
    fn import(
        &mut self,
        options: &MemoryOptions,
        relationships: Vec<Relationship>,
        number: u64,
        metadata: TxnMetadata,
    ) -> Result<Arc<Txn>, StoreError> {
        let empty = self.forward.is_empty();
        let mut keys = Vec::with_capacity(relationships.len());
        // Type and relation names repeat from one relationship to the next:
        // compare with the last one's before hashing.
        let mut last: [(String, Sym); 4] = Default::default();
        for rel in relationships {
            let fields = [
                &rel.resource.object_type,
                &rel.relation,
                &rel.subject.object.object_type,
            ];
            let mut syms = [NONE; 4];
            for (i, name) in fields.into_iter().enumerate() {
                syms[i] = self.intern_repeated(&mut last[i], name);
            }
            if let Some(r) = &rel.subject.relation {
                syms[3] = self.intern_repeated(&mut last[3], r);
            }
            let key = [
                syms[0],
                self.names.intern(&rel.resource.object_id),
                syms[1],
                syms[2],
                self.names.intern(&rel.subject.object.object_id),
                syms[3],
            ];
            if !empty && self.forward.live(&self.names, &key).is_some() {
                return Err(StoreError::AlreadyExists(Box::new(rel)));
            }
            keys.push(key);
        }
        let txn = Txn {
            number,
            // Under the write lock: no earlier commit is later than now.
            committed_at_ms: now_ms(),
            metadata,
            changes: keys.into_iter().map(|k| (Operation::Create, k)).collect(),
            schema_change: None,
        };
        let sequence = self.next_sequence();
        let previous = self.audit_head();
        let names = &self.names;
        let (rank, fwd, rev, hash) = std::thread::scope(|s| {
            let hashing = s.spawn(|| record_hash(names, sequence, &txn, &previous));
            let rank = names.ranks();
            let entries = |reverse: bool| -> Vec<Entry> {
                txn.changes
                    .iter()
                    .map(|(_, k)| {
                        Entry::new(if reverse { reverse_key(k) } else { *k }, number, LIVE)
                    })
                    .collect()
            };
            // A panic in a sort of integers or in the hash of plain data
            // cannot happen; one would be re-raised here as it was.
            let (fwd, rev) = std::thread::scope(|t| {
                let reverse = t.spawn(|| {
                    let mut rev = entries(true);
                    Index::sort_by_ranks(&rank, &mut rev);
                    rev
                });
                let mut fwd = entries(false);
                Index::sort_by_ranks(&rank, &mut fwd);
                let rev = reverse
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (fwd, rev)
            });
            let hash = hashing
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (rank, fwd, rev, hash)
        });
        if let Some(w) = fwd.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(StoreError::DuplicateInImport(Box::new(
                self.relationship(&w[0].key),
            )));
        }
        self.names.set_ranks(rank);
        self.forward.insert_sorted(&self.names, fwd);
        self.reverse.insert_sorted(&self.names, rev);
        Ok(self.commit(options, txn, Some(hash)))
    }

    /// `name`'s symbol, `last` remembering the previous name asked here.
    fn intern_repeated(&mut self, last: &mut (String, Sym), name: &str) -> Sym {
        if last.1 == NONE || last.0 != name {
            *last = (name.to_string(), self.names.intern(name));
        }
        last.1
    }

    /// Drops retained revisions the options no longer keep (never the
    /// head), then garbage-collects. Returns versions removed.
    fn prune(&mut self, options: &MemoryOptions, window: Duration, now: u64) -> u64 {
        let window = window.as_millis() as u64;
        while self.revisions.len() > 1 {
            let Some((&oldest, &at_ms)) = self.revisions.iter().next() else {
                break;
            };
            let too_many = self.revisions.len() > options.max_retained_revisions.max(1);
            let too_old = now.saturating_sub(at_ms) > window;
            if !(too_many || too_old) || oldest == self.head {
                break;
            }
            self.revisions.remove(&oldest);
        }
        self.collect()
    }

    /// Removes what no retained revision can see: versions deleted at or
    /// before the oldest, schemas superseded by then, older Watch entries.
    fn collect(&mut self) -> u64 {
        let oldest = self.oldest();
        while self.log.front().is_some_and(|t| t.number < oldest) {
            self.log.pop_front();
        }
        let keep_from = self
            .schemas
            .range(..=oldest)
            .next_back()
            .map(|(n, _)| *n)
            .unwrap_or(0);
        if self.schemas.keys().next().is_some_and(|n| *n < keep_from) {
            self.schemas = self.schemas.split_off(&keep_from);
        }
        let mut removed = 0;
        while let Some(&(deleted, key, created)) = self.dead.front() {
            if deleted > oldest {
                break;
            }
            self.dead.pop_front();
            self.drop_version(&key, created);
            removed += 1;
        }
        removed
    }
}

/// What a failed write must undo.
enum Undo {
    Deleted(Key, u64),
    Inserted(Key, u64),
    /// A version inserted earlier in the same transaction, then deleted.
    Removed(Key, u64),
}

impl MemoryStore {
    pub fn new(options: MemoryOptions) -> Self {
        MemoryStore {
            id: format!("mem-{:016x}", rand::random::<u64>()),
            options,
            state: RwLock::new(State::new()),
            optimized: Mutex::new(None),
            security: Mutex::new(SecurityEvents::default()),
        }
    }

    /// Number of retained revisions (for metrics and tests).
    pub fn retained_revisions(&self) -> usize {
        self.state.read().map(|s| s.revisions.len()).unwrap_or(0)
    }

    /// Garbage-collects now with `window` instead of the configured one.
    /// Returns the relationship versions removed.
    pub fn gc_with_window(&self, window: Duration) -> Result<u64, StoreError> {
        let mut s = self.state.write().map_err(|_| poisoned())?;
        let options = MemoryOptions {
            max_retained_revisions: usize::MAX,
            ..self.options.clone()
        };
        Ok(s.prune(&options, window, now_ms()))
    }
}

/// A [`SymbolView`] of the state at one revision.
struct View<'s> {
    s: &'s State,
    at: u64,
    /// Where the rows of recently visited objects `(type, id)` start: a
    /// check asks several questions of one object (its owner, its teams,
    /// its org…), and an object's rows are adjacent, so after one seek the
    /// others search only near that start.
    regions: std::cell::Cell<[Option<(Sym, Sym, index::Pos)>; REGIONS]>,
    next_region: std::cell::Cell<usize>,
}

/// Objects whose row positions a [`View`] remembers.
const REGIONS: usize = 8;

impl<'s> View<'s> {
    fn new(s: &'s State, at: u64) -> Self {
        View {
            s,
            at,
            regions: std::cell::Cell::new([None; REGIONS]),
            next_region: std::cell::Cell::new(0),
        }
    }

    /// The first forward position at or after `prefix` (at least the
    /// resource type and id).
    fn seek(&self, prefix: &[Sym]) -> index::Pos {
        let (f, names) = (&self.s.forward, &self.s.names);
        let &[t, id, ..] = prefix else {
            return f.seek_prefix(names, prefix);
        };
        let mut regions = self.regions.get();
        let start = match regions.iter().flatten().find(|r| r.0 == t && r.1 == id) {
            Some(r) => r.2,
            None => {
                let pos = f.seek_object(names, t, id);
                let i = self.next_region.get();
                regions[i] = Some((t, id, pos));
                self.regions.set(regions);
                self.next_region.set((i + 1) % REGIONS);
                pos
            }
        };
        if prefix.len() == 2 {
            return start;
        }
        f.seek_prefix_from(names, start, prefix)
    }

    /// Whether every symbol of `key` was given out by this store.
    fn known(&self, key: &[Sym]) -> bool {
        let n = self.s.names.len();
        key.iter().all(|&k| k as usize <= n)
    }
}

impl SymbolView for View<'_> {
    fn sym(&self, name: &str) -> Option<Sym> {
        self.s.names.get(name)
    }

    fn contains(&self, key: &[Sym; 6]) -> bool {
        if !self.known(key) {
            return false;
        }
        let f = &self.s.forward;
        f.iter_from(self.seek(key))
            .take_while(|e| e.key == *key)
            .any(|e| e.visible_at(self.at))
    }

    fn subjects(&self, prefix: &[Sym], visit: &mut dyn FnMut(Sym, Sym, Sym) -> bool) -> u64 {
        if !self.known(prefix) {
            return 0;
        }
        let f = &self.s.forward;
        let mut seen = 0;
        for e in f
            .iter_from(self.seek(prefix))
            .take_while(|e| e.key.starts_with(prefix))
        {
            seen += 1;
            if e.visible_at(self.at) && !visit(e.key[3], e.key[4], e.key[5]) {
                break;
            }
        }
        seen
    }
}

impl SymbolReads for MemoryStore {
    fn with_view(
        &self,
        at: &Revision,
        f: &mut dyn FnMut(&dyn SymbolView),
    ) -> Result<(), StoreError> {
        let s = self.state.read().map_err(|_| poisoned())?;
        let at = s.readable(at)?;
        f(&View::new(&s, at));
        Ok(())
    }
}

#[async_trait]
impl Datastore for MemoryStore {
    fn id(&self) -> &str {
        &self.id
    }

    fn symbol_reads(&self) -> Option<&dyn SymbolReads> {
        Some(self)
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        Ok(revision(self.state.read().map_err(|_| poisoned())?.head))
    }

    async fn optimized_revision(&self, quantum: Duration) -> Result<Revision, StoreError> {
        let v = self.state.read().map_err(|_| poisoned())?;
        let q = quantum.as_millis() as u64;
        if q == 0 {
            return Ok(revision(v.head));
        }
        let now = now_ms();
        let window_start = now - now % q;
        if let Ok(cached) = self.optimized.lock()
            && let Some((w, cq, rev)) = *cached
            && (w, cq) == (window_start, q)
            && v.revisions.contains_key(&rev)
        {
            return Ok(revision(rev));
        }
        let chosen = v
            .revisions
            .iter()
            .rev()
            .find(|(_, at_ms)| **at_ms <= window_start)
            .or_else(|| v.revisions.iter().next())
            .map(|(rev, _)| *rev)
            .unwrap_or(v.head);
        if let Ok(mut cached) = self.optimized.lock() {
            *cached = Some((window_start, q, chosen));
        }
        Ok(revision(chosen))
    }

    async fn check_revision(&self, at: &Revision) -> Result<(), StoreError> {
        self.state
            .read()
            .map_err(|_| poisoned())?
            .readable(at)
            .map(|_| ())
    }

    async fn at_least_as_fresh(
        &self,
        wanted: &Revision,
        candidate: Revision,
    ) -> Result<Revision, StoreError> {
        let w = number(wanted)?;
        if w > self.state.read().map_err(|_| poisoned())?.head {
            return Err(StoreError::RevisionInFuture(wanted.clone()));
        }
        Ok(if number(&candidate)? >= w {
            candidate
        } else {
            wanted.clone()
        })
    }

    async fn read_schema(&self, at: &Revision) -> Result<Option<StoredSchema>, StoreError> {
        let s = self.state.read().map_err(|_| poisoned())?;
        let n = s.readable(at)?;
        Ok(s.schema_at(n).cloned())
    }

    async fn query(
        &self,
        at: &Revision,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, StoreError> {
        // Checked under the same lock as the read: garbage collection
        // cannot remove a version this revision sees in between.
        let s = self.state.read().map_err(|_| poisoned())?;
        let n = s.readable(at)?;
        Ok(s.query(n, filter, page))
    }

    async fn write(&self, txn: &WriteTxn) -> Result<CommittedTxn, StoreError> {
        let mut guard = self.state.write().map_err(|_| poisoned())?;
        let st = &mut *guard;
        let head = st.head;
        if let Some(expected) = &txn.expected_schema
            && st.schema_at(head).map(|s| &s.written_at) != expected.as_ref()
        {
            return Err(StoreError::SchemaChanged);
        }
        for (index, p) in txn.preconditions.iter().enumerate() {
            let one = Page {
                after: None,
                limit: Some(1),
            };
            let found = st.query(head, &p.filter, &one);
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
        let mut undo = Vec::new();
        let changes = match st.apply(txn, number, &mut undo) {
            Ok(changes) => changes,
            Err(e) => {
                st.rollback(undo);
                return Err(e);
            }
        };
        // Every version this write deleted, for garbage collection.
        for u in &undo {
            if let Undo::Deleted(key, created) = u {
                st.dead.push_back((number, *key, *created));
            }
        }
        let revision = revision(number);
        let mut schema_change = None;
        if let Some(s) = &txn.schema {
            let old = st.schema_at(head).map(|o| o.text.to_string());
            schema_change = Some((old, s.text.clone()));
            st.schemas.insert(
                number,
                StoredSchema {
                    text: Arc::from(s.text.as_str()),
                    written_at: revision.clone(),
                },
            );
        }
        let txn = Txn {
            number,
            committed_at_ms: now_ms(),
            metadata: txn.metadata.clone(),
            changes,
            schema_change,
        };
        let kept = st.commit(&self.options, txn, None);
        Ok(st.committed(&kept))
    }

    async fn import(
        &self,
        relationships: Vec<Relationship>,
        expected_schema: Revision,
        metadata: TxnMetadata,
    ) -> Result<Imported, StoreError> {
        let mut guard = self.state.write().map_err(|_| poisoned())?;
        let st = &mut *guard;
        if st.schema_at(st.head).map(|s| &s.written_at) != Some(&expected_schema) {
            return Err(StoreError::SchemaChanged);
        }
        let number = st.head + 1;
        let kept = st.import(&self.options, relationships, number, metadata)?;
        drop(guard);
        // The import's input is freed by now (its strings as they were
        // taken in, the gRPC messages as they were converted), scattered
        // below the new index in the arenas of whichever threads decoded
        // it: give those pages back (1M relationships imported over gRPC:
        // 312 → 140 resident bytes each, BENCHMARKS.md).
        kinbar_alloc::release_free_memory();
        Ok(Imported {
            revision: revision(number),
            committed_at_ms: kept.committed_at_ms,
            count: kept.changes.len(),
        })
    }

    async fn record_security_events(
        &self,
        events: &[crate::audit::SecurityEvent],
    ) -> Result<(), StoreError> {
        let mut s = self.security.lock().map_err(|_| poisoned())?;
        for e in events {
            if let Some(agg) = &e.aggregate
                && let Some(&id) = s.aggregates.get(agg)
                && let Some(first) = s.events.front().map(|f| f.id)
                && id >= first
                && let Some(stored) = s.events.get_mut((id - first) as usize)
            {
                stored.event.count += e.count;
                stored.event.at_ms = e.at_ms;
                continue;
            }
            s.next_id += 1;
            let id = s.next_id;
            if let Some(agg) = &e.aggregate {
                s.aggregates.insert(agg.clone(), id);
            }
            s.events.push_back(crate::audit::StoredSecurityEvent {
                id,
                event: e.clone(),
            });
            while s.events.len() > MAX_SECURITY_EVENTS {
                if let Some(old) = s.events.pop_front()
                    && let Some(agg) = &old.event.aggregate
                {
                    s.aggregates.remove(agg);
                }
            }
        }
        Ok(())
    }

    async fn read_security_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::StoredSecurityEvent>, StoreError> {
        let s = self.security.lock().map_err(|_| poisoned())?;
        Ok(s.events
            .iter()
            .filter(|e| e.id > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_audit(
        &self,
        after: u64,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError> {
        let v = self.state.read().map_err(|_| poisoned())?;
        // Records after `after` that are still retained.
        let first = after.max(v.audit_pruned);
        let start = usize::try_from(first - v.audit_pruned)
            .unwrap_or(usize::MAX)
            .min(v.audit.len());
        Ok(v.audit
            .range(start..)
            .zip(first + 1..)
            .map(|(sealed, sequence)| v.audit_record(sequence, sealed))
            .filter(|r| filter.matches(r))
            .take(limit)
            .collect())
    }

    async fn audit_horizon(&self) -> Result<Option<crate::audit::AuditHorizon>, StoreError> {
        let v = self.state.read().map_err(|_| poisoned())?;
        Ok(match (v.audit_pruned, v.audit.front()) {
            (0, _) | (_, None) => None,
            (pruned, Some(first)) => Some(crate::audit::AuditHorizon {
                first_sequence: pruned + 1,
                anchor: first.previous_hash,
            }),
        })
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
        let v = self.state.read().map_err(|_| poisoned())?;
        if n > v.head {
            return Err(StoreError::RevisionInFuture(after.clone()));
        }
        let oldest = v.oldest();
        if n < oldest && n != 0 {
            return Err(StoreError::RevisionTooOld {
                requested: after.clone(),
                oldest: revision(oldest),
            });
        }
        let from = v.log.partition_point(|t| t.number <= n);
        Ok(v.log
            .range(from..)
            .take(limit)
            .map(|t| v.committed(t))
            .collect())
    }
}
