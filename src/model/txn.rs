//! Transactions as requests describe them (updates, preconditions, deletes
//! by filter, who and why) and as they are committed (changes at a
//! revision) — the vocabulary of writes, Watch and the audit.

use std::collections::BTreeMap;

use super::filter::RelationshipFilter;
use super::{Relationship, Revision};

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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteByFilter {
    pub filter: RelationshipFilter,
    /// At most this many; `None` for all.
    pub limit: Option<usize>,
    /// If more than `limit` match: delete `limit` of them (true) or fail (false).
    pub allow_partial: bool,
    /// With `limit`: fail with [`StoreError::ChangedConcurrently`] unless
    /// exactly `limit` match at commit (offboarding: the set read before
    /// the write is the set deleted, or nothing happens).
    ///
    /// [`StoreError::ChangedConcurrently`]: crate::store::StoreError::ChangedConcurrently
    pub expect_exactly: bool,
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

/// One relationship change in a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `Create` or `Touch` (as requested) for an insert, `Delete` for a removal.
    pub operation: Operation,
    pub relationship: Relationship,
}

/// What a bulk import committed: one transaction creating every
/// relationship of the import (the changes themselves go to Watch and the
/// audit; an import does not hand a million of them back to its caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub revision: Revision,
    /// Milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    /// Relationships created.
    pub count: usize,
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
