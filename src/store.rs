//! The datastore boundary: one [`Datastore`] trait, many backends.
//!
//! A datastore keeps relationships and the schema text, each versioned by
//! [`Revision`]. Every read happens at a revision and sees exactly the writes
//! committed at or before it (snapshot isolation). Writes are transactions:
//! preconditions, relationship updates, deletes by filter and an optional
//! schema change commit together at one new revision, or not at all.
//!
//! The store knows nothing of permissions, the schema language or gRPC: it
//! stores text and tuples. Only this module sees backend details.

#[cfg(feature = "test-util")]
pub mod conformance;
pub mod memory;

pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;

// The request vocabulary lives in `model`; re-exported here so backends
// and older paths (`store::RelationshipFilter`) keep working.
pub use crate::model::{
    Change, CommittedTxn, DeleteByFilter, Imported, Operation, Page, Precondition,
    PreconditionKind, RelationshipFilter, SubjectFilter, TxnMetadata, Update,
};
use crate::model::{Relationship, Revision};

/// A schema to install in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaWrite {
    pub text: String,
}

/// One write transaction. All of it commits at one new revision, or nothing does.
#[derive(Debug, Clone, Default)]
pub struct WriteTxn {
    /// Fail with [`StoreError::SchemaChanged`] unless the schema is still the
    /// one written at this revision (`Some(None)`: still no schema). Writers
    /// validate against a schema they read; this makes that read part of the
    /// transaction.
    pub expected_schema: Option<Option<Revision>>,
    pub preconditions: Vec<Precondition>,
    pub updates: Vec<Update>,
    pub deletes: Vec<DeleteByFilter>,
    pub schema: Option<SchemaWrite>,
    pub metadata: TxnMetadata,
}

/// The schema text stored at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    pub text: Arc<str>,
    /// The revision that wrote it (its version).
    pub written_at: Revision,
}

/// What a garbage-collection pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Dead relationship versions (Postgres) or retained revisions (memory).
    pub relationships_deleted: u64,
    /// Superseded schema versions (Postgres).
    pub schemas_deleted: u64,
    /// Backend-defined position of the horizon (Postgres: its xmax; 0: none).
    pub horizon: u64,
}

/// What operators watch of a datastore (exported on `/metrics`). Counters
/// are totals since the process started; fields a backend does not have
/// stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatastoreStats {
    /// Connection pool: open connections, idle ones, the configured maximum.
    pub pool_connections: Option<u64>,
    pub pool_idle: Option<u64>,
    pub pool_max: Option<u64>,
    /// Write attempts retried after a serialization failure or deadlock.
    pub write_conflict_retries: u64,
    /// Transactions linked into the audit chain by this process's sealer.
    pub audit_sealed: u64,
    /// Committed transactions not yet in the audit chain.
    pub audit_unsealed: Option<u64>,
    /// Garbage-collection passes finished, failed, and versions removed.
    pub gc_passes: u64,
    pub gc_failures: u64,
    pub gc_deleted: u64,
    /// When the last pass finished (Unix ms; 0: none yet).
    pub gc_last_pass_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "revision {requested} is older than the garbage-collection window (oldest readable: {oldest})"
    )]
    RevisionTooOld {
        requested: Revision,
        oldest: Revision,
    },
    #[error("{0}")]
    InvalidRevision(String),
    #[error("revision {0} is in the future of this datastore")]
    RevisionInFuture(Revision),
    #[error("relationship `{0}` already exists (CREATE of an existing relationship)")]
    AlreadyExists(Box<Relationship>),
    #[error("precondition {index} failed: {reason}")]
    PreconditionFailed {
        index: usize,
        reason: String,
        example: Option<Box<Relationship>>,
    },
    #[error(
        "{matched} relationships match the delete filter, more than the limit of {limit}, and partial deletion was not allowed"
    )]
    TooManyToDelete { matched: usize, limit: usize },
    #[error("relationship `{0}` appears more than once in the import")]
    DuplicateInImport(Box<Relationship>),
    #[error("the schema changed during the transaction; retry")]
    SchemaChanged,
    /// A delete expected an exact set and found another: the data changed
    /// since the caller read it.
    #[error(
        "{matched} relationships match the delete filter where exactly {expected} were expected: the data changed concurrently; retry"
    )]
    ChangedConcurrently { matched: usize, expected: usize },
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    #[error("datastore error: {0}")]
    Internal(String),
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An interned string of a datastore with symbol-level reads
/// ([`SymbolReads`]). 0 stands for "no subject relation"; a symbol, once
/// given to a string, never changes.
pub type Sym = u32;

/// The [`Sym`] of "no subject relation".
pub const NO_RELATION: Sym = 0;

/// The most filters a store with round trips should answer in one
/// statement of [`Datastore::query_many`] (Postgres: a `UNION ALL` of this
/// many branches); more are sent in chunks of this size.
pub const QUERY_MANY_CHUNK: usize = 32;

/// Synchronous reads by interned symbols: the engine's fast check path
/// (memory store). A check runs entirely inside one [`SymbolReads::with_view`]
/// call, so it sees one revision under one lock, with no allocation, no
/// strings and no `await` per step.
pub trait SymbolReads: Send + Sync {
    /// Runs `f` on a view at `at`, which is checked to be readable under
    /// the same lock (garbage collection cannot remove what it sees).
    fn with_view(
        &self,
        at: &Revision,
        f: &mut dyn FnMut(&dyn SymbolView),
    ) -> Result<(), StoreError>;
}

/// Relationships at one revision, by symbols. Keys are forward keys
/// `[resource type, resource id, relation, subject type, subject id,
/// subject relation]`. A symbol the store never gave out (e.g. a sentinel
/// for an id it does not hold) matches nothing.
pub trait SymbolView {
    /// The symbol of `name`, if the store holds it anywhere.
    fn sym(&self, name: &str) -> Option<Sym>;
    /// Whether the relationship `key` is visible.
    fn contains(&self, key: &[Sym; 6]) -> bool;
    /// Visits the subjects `(type, id, relation)` of the visible
    /// relationships whose key starts with `prefix` (three or four
    /// symbols), in key order, until `visit` returns false. Returns how
    /// many versions it looked at.
    fn subjects(&self, prefix: &[Sym], visit: &mut dyn FnMut(Sym, Sym, Sym) -> bool) -> u64;
}

/// The storage boundary. Implementations must give snapshot isolation: a
/// read at revision R sees exactly the transactions committed at or before R.
#[async_trait]
pub trait Datastore: Send + Sync + 'static {
    /// A unique id for this datastore (carried in consistency tokens).
    fn id(&self) -> &str;

    /// Symbol-level synchronous reads, where the backend has them (the
    /// memory store); the engine then answers most checks without the
    /// general evaluator. `None` (Postgres): every read goes through
    /// [`Datastore::query`].
    fn symbol_reads(&self) -> Option<&dyn SymbolReads> {
        None
    }

    /// The newest committed revision.
    async fn head_revision(&self) -> Result<Revision, StoreError>;

    /// Whether the store can serve: reachable and, where it has a schema of
    /// its own, migrated to exactly this binary's version.
    async fn ready(&self) -> Result<(), StoreError> {
        self.head_revision().await.map(|_| ())
    }

    /// Pool, audit-sealer and GC figures for `/metrics`.
    async fn stats(&self) -> DatastoreStats {
        DatastoreStats::default()
    }

    /// A recent revision chosen so that many requests share it (and the
    /// cache): the newest revision committed at or before the start of the
    /// current `quantum`-long window; the head if `quantum` is zero.
    async fn optimized_revision(
        &self,
        quantum: std::time::Duration,
    ) -> Result<Revision, StoreError>;

    /// Fails if `at` is not readable (garbage-collected, in the future, or
    /// not a revision of this backend).
    async fn check_revision(&self, at: &Revision) -> Result<(), StoreError>;

    /// A revision that sees everything `wanted` sees: `candidate` (typically
    /// the optimized revision, so caches are shared) if it is at least as
    /// fresh, else `wanted` itself. Only the store can order its revisions.
    async fn at_least_as_fresh(
        &self,
        wanted: &Revision,
        candidate: Revision,
    ) -> Result<Revision, StoreError>;

    /// The schema in force at `at`, if any was written.
    async fn read_schema(&self, at: &Revision) -> Result<Option<StoredSchema>, StoreError>;

    /// Relationships matching `filter` at `at`, in a stable order, paged.
    async fn query(
        &self,
        at: &Revision,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, StoreError>;

    /// Stores refused calls (security events): one row each, except that
    /// events with the same `aggregate` add up in one row.
    async fn record_security_events(
        &self,
        events: &[crate::audit::SecurityEvent],
    ) -> Result<(), StoreError>;

    /// Security events with an id above `after`, oldest first, at most
    /// `limit`.
    async fn read_security_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::StoredSecurityEvent>, StoreError>;

    /// Whether every [`Datastore::query`] is a round trip worth saving: the
    /// engine then asks the reads of one evaluation step together through
    /// [`Datastore::query_many`] (Postgres). The memory store answers a
    /// read in well under a microsecond and says no.
    fn batches_reads(&self) -> bool {
        false
    }

    /// Several unpaged queries at one revision, answered in the order
    /// asked: `result[i]` is exactly what `query(at, &filters[i], &Page::default())`
    /// returns. A store with round trips answers them in one; this default
    /// asks them one by one.
    async fn query_many(
        &self,
        at: &Revision,
        filters: &[RelationshipFilter],
    ) -> Result<Vec<Vec<Relationship>>, StoreError> {
        let mut out = Vec::with_capacity(filters.len());
        for f in filters {
            out.push(self.query(at, f, &Page::default()).await?);
        }
        Ok(out)
    }

    /// Commits a transaction; returns it as committed (its revision and changes).
    async fn write(&self, txn: &WriteTxn) -> Result<CommittedTxn, StoreError>;

    /// A bulk import: creates every relationship in one audited
    /// transaction, all or nothing — one that exists already
    /// ([`StoreError::AlreadyExists`]) or appears twice
    /// ([`StoreError::DuplicateInImport`]) fails the whole import, as does a
    /// schema other than `expected_schema` (the revision that wrote the
    /// schema the caller validated against; [`StoreError::SchemaChanged`]).
    /// Takes the relationships by value so that a store can release each
    /// one's strings as soon as it has taken it in: the caller's copy is
    /// the largest allocation of an import. This default writes them as
    /// one [`WriteTxn`] of creates.
    async fn import(
        &self,
        relationships: Vec<Relationship>,
        expected_schema: Revision,
        metadata: TxnMetadata,
    ) -> Result<Imported, StoreError> {
        let mut seen: std::collections::HashSet<&Relationship, foldhash::quality::RandomState> =
            std::collections::HashSet::with_capacity_and_hasher(
                relationships.len(),
                foldhash::quality::RandomState::default(),
            );
        for r in &relationships {
            if !seen.insert(r) {
                return Err(StoreError::DuplicateInImport(Box::new(r.clone())));
            }
        }
        drop(seen);
        let txn = WriteTxn {
            updates: relationships
                .into_iter()
                .map(|relationship| Update {
                    operation: Operation::Create,
                    relationship,
                })
                .collect(),
            expected_schema: Some(Some(expected_schema)),
            metadata,
            ..Default::default()
        };
        let c = self.write(&txn).await?;
        Ok(Imported {
            revision: c.revision,
            committed_at_ms: c.committed_at_ms,
            count: c.changes.len(),
        })
    }

    /// Sealed audit records after sequence `after`, matching `filter`, in
    /// sequence order, at most `limit`. Never garbage-collected with
    /// relationships; a store that prunes its oldest records (the memory
    /// store's retention) returns the retained ones and says where they
    /// start in [`Datastore::audit_horizon`].
    async fn read_audit(
        &self,
        after: u64,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError>;

    /// Where the retained audit chain starts if older records were pruned
    /// (`None`: the chain is whole, from sequence 1). Verification then
    /// starts at the horizon's first record, anchored at its previous hash.
    async fn audit_horizon(&self) -> Result<Option<crate::audit::AuditHorizon>, StoreError> {
        Ok(None)
    }

    /// Removes what no revision younger than `window` needs. Reads at
    /// revisions that needed it fail with [`StoreError::RevisionTooOld`]
    /// from then on. Backends may stage it (Postgres collects what the
    /// previous pass, at least two seconds earlier, made collectable).
    async fn collect_garbage(&self, window: std::time::Duration) -> Result<GcStats, StoreError>;

    /// Transactions committed after `after`, in commit order, at most `limit`.
    /// Each returned transaction's `revision` is a valid resume point: the
    /// changes since it are exactly the transactions that follow it here.
    async fn changes_since(
        &self,
        after: &Revision,
        limit: usize,
    ) -> Result<Vec<CommittedTxn>, StoreError>;
}
