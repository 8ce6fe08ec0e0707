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

pub mod conformance;
pub mod memory;
pub mod pgsnap;
pub mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{Relationship, Revision, SubjectRef};

/// Selects relationships. Every `None`/empty field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelationshipFilter {
    pub resource_type: Option<String>,
    /// Any of these ids (empty: any id).
    pub resource_ids: Vec<String>,
    pub resource_id_prefix: Option<String>,
    pub relation: Option<String>,
    pub subject: Option<SubjectFilter>,
}

/// Selects subjects of relationships.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectFilter {
    pub subject_type: String,
    /// Any of these ids (empty: any id, wildcard included).
    pub subject_ids: Vec<String>,
    /// `None`: any relation. `Some(None)`: no relation (`...`). `Some(Some(r))`: exactly `r`.
    pub relation: Option<Option<String>>,
    /// Leave wildcard subjects (`type:*`) out.
    pub exclude_wildcard: bool,
}

impl RelationshipFilter {
    /// All relationships of `resource#relation`.
    pub fn resource_relation(object_type: &str, object_id: &str, relation: &str) -> Self {
        RelationshipFilter {
            resource_type: Some(object_type.to_string()),
            resource_ids: vec![object_id.to_string()],
            relation: Some(relation.to_string()),
            ..Default::default()
        }
    }

    /// Exactly this relationship.
    pub fn exact(rel: &Relationship) -> Self {
        RelationshipFilter {
            resource_type: Some(rel.resource.object_type.clone()),
            resource_ids: vec![rel.resource.object_id.clone()],
            relation: Some(rel.relation.clone()),
            resource_id_prefix: None,
            subject: Some(SubjectFilter {
                subject_type: rel.subject.object.object_type.clone(),
                subject_ids: vec![rel.subject.object.object_id.clone()],
                relation: Some(rel.subject.relation.clone()),
                exclude_wildcard: false,
            }),
        }
    }

    pub fn matches(&self, rel: &Relationship) -> bool {
        if let Some(t) = &self.resource_type
            && *t != rel.resource.object_type
        {
            return false;
        }
        if !self.resource_ids.is_empty() && !self.resource_ids.contains(&rel.resource.object_id) {
            return false;
        }
        if let Some(p) = &self.resource_id_prefix
            && !rel.resource.object_id.starts_with(p.as_str())
        {
            return false;
        }
        if let Some(r) = &self.relation
            && *r != rel.relation
        {
            return false;
        }
        match &self.subject {
            None => true,
            Some(s) => s.matches(&rel.subject),
        }
    }
}

impl SubjectFilter {
    pub fn matches(&self, subject: &SubjectRef) -> bool {
        if self.subject_type != subject.object.object_type {
            return false;
        }
        if !self.subject_ids.is_empty() && !self.subject_ids.contains(&subject.object.object_id) {
            return false;
        }
        if self.exclude_wildcard && subject.is_wildcard() {
            return false;
        }
        match &self.relation {
            None => true,
            Some(r) => *r == subject.relation,
        }
    }
}

/// How an update applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Insert; fails if the relationship exists.
    Create,
    /// Insert or keep (idempotent).
    Touch,
    /// Remove if present (idempotent).
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Touch => "touch",
            Operation::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub operation: Operation,
    pub relationship: Relationship,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreconditionKind {
    MustMatch,
    MustNotMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    pub kind: PreconditionKind,
    pub filter: RelationshipFilter,
}

/// Delete everything matching a filter (DeleteRelationships).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteByFilter {
    pub filter: RelationshipFilter,
    /// At most this many; `None` for all.
    pub limit: Option<usize>,
    /// If more than `limit` match: delete `limit` of them (true) or fail (false).
    pub allow_partial: bool,
}

/// Who made a change and why; recorded with the transaction for the audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnMetadata {
    /// The authenticated key name (or `anonymous`).
    pub actor: String,
    pub request_id: String,
    /// `optional_transaction_metadata` of the request, as JSON (includes `reason`).
    pub fields: BTreeMap<String, serde_json::Value>,
}

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

/// One relationship change in a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `Create` or `Touch` (as requested) for an insert, `Delete` for a removal.
    pub operation: Operation,
    pub relationship: Relationship,
}

/// A committed transaction, as Watch and the audit see it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedTxn {
    pub revision: Revision,
    /// Milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    pub metadata: TxnMetadata,
    pub changes: Vec<Change>,
    /// `(old, new)` schema text if the transaction changed the schema.
    pub schema_change: Option<(Option<String>, String)>,
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

/// Paging for reads: resume strictly after `after`, return at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<Relationship>,
    pub limit: Option<usize>,
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
    #[error("the schema changed during the transaction; retry")]
    SchemaChanged,
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

/// The storage boundary. Implementations must give snapshot isolation: a
/// read at revision R sees exactly the transactions committed at or before R.
#[async_trait]
pub trait Datastore: Send + Sync + 'static {
    /// A unique id for this datastore (carried in consistency tokens).
    fn id(&self) -> &str;

    /// The newest committed revision.
    async fn head_revision(&self) -> Result<Revision, StoreError>;

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

    /// Commits a transaction; returns it as committed (its revision and changes).
    async fn write(&self, txn: WriteTxn) -> Result<CommittedTxn, StoreError>;

    /// Sealed audit records after sequence `after`, matching `filter`, in
    /// sequence order, at most `limit`. Never garbage-collected.
    async fn read_audit(
        &self,
        after: u64,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, StoreError>;

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
