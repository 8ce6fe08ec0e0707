//! The audit trail (DESIGN.md §9): one record per committed change
//! transaction — who, when, why, what — chained with SHA-256 in commit order
//! so that any later alteration is detectable.
//!
//! A record's hash is `SHA-256(previous hash ‖ canonical bytes)`, where the
//! canonical bytes are the record without its hashes as compact JSON with
//! keys in a fixed order. The first record's previous hash is 32 zero bytes.
//! Stores write records in the same transaction as the change they describe
//! and seal them (assign the hashes) in commit order; sealing never rewrites
//! an already sealed record. Audit records are never garbage-collected with
//! relationships.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::CommittedTxn;
use crate::model::Revision;

/// One changed relationship in an audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditChange {
    /// `create`, `touch` or `delete`.
    pub operation: String,
    /// The relationship in text form.
    pub relationship: String,
}

/// One audited transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, in commit order.
    pub sequence: u64,
    /// The datastore's revision text (opaque; as in ZedTokens).
    pub revision: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub committed_at_ms: u64,
    /// The authenticated key name (`anonymous` without keys).
    pub actor: String,
    pub request_id: String,
    /// `optional_transaction_metadata` (e.g. `reason`).
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub changes: Vec<AuditChange>,
    /// Schema text before and after, for schema writes.
    pub old_schema: Option<String>,
    pub new_schema: Option<String>,
    #[serde(skip)]
    pub previous_hash: [u8; 32],
    #[serde(skip)]
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// An unsealed record for a committed transaction.
    pub fn of(sequence: u64, txn: &CommittedTxn) -> AuditRecord {
        AuditRecord {
            sequence,
            revision: txn.revision.to_string(),
            committed_at_ms: txn.committed_at_ms,
            actor: txn.metadata.actor.clone(),
            request_id: txn.metadata.request_id.clone(),
            metadata: txn.metadata.fields.clone(),
            changes: txn
                .changes
                .iter()
                .map(|c| AuditChange {
                    operation: c.operation.as_str().to_string(),
                    relationship: c.relationship.to_string(),
                })
                .collect(),
            old_schema: txn.schema_change.as_ref().and_then(|(old, _)| old.clone()),
            new_schema: txn.schema_change.as_ref().map(|(_, new)| new.clone()),
            previous_hash: [0; 32],
            hash: [0; 32],
        }
    }

    /// The bytes the hash covers: every field but the hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing plain data (strings, numbers, JSON values) cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `SHA-256(previous ‖ canonical bytes)`, the bytes streamed into the
    /// hash (an import's record is tens of megabytes of JSON).
    pub fn compute_hash(&self, previous: &[u8; 32]) -> [u8; 32] {
        streamed_hash(previous, self)
    }

    /// Links this record after `previous` (the previous record's hash).
    pub fn seal(&mut self, previous: [u8; 32]) {
        self.previous_hash = previous;
        self.hash = self.compute_hash(&previous);
    }

    pub fn revision(&self) -> Revision {
        Revision::new(self.revision.as_str())
    }
}

/// `SHA-256(previous ‖ compact JSON of value)`, the JSON streamed into the
/// hash instead of collected in a buffer.
fn streamed_hash(previous: &[u8; 32], value: &impl Serialize) -> [u8; 32] {
    /// Feeds whatever is written into the hash.
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    h.0.update(previous);
    // Serializing plain data into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut h, value);
    h.0.finalize().into()
}

/// A record described without materializing its changes: a store that
/// keeps changes in its own form (the memory store's interned keys) seals
/// with [`RecordView::hash`] and gets the hash of the [`AuditRecord`] it
/// would build, byte for byte — the field names and order below are
/// `AuditRecord`'s.
#[derive(Serialize)]
pub struct RecordView<'a, C: Serialize> {
    pub sequence: u64,
    pub revision: &'a str,
    pub committed_at_ms: u64,
    pub actor: &'a str,
    pub request_id: &'a str,
    pub metadata: &'a BTreeMap<String, serde_json::Value>,
    /// Serializes as `AuditRecord::changes` does: see [`ChangeView`].
    pub changes: C,
    pub old_schema: Option<&'a str>,
    pub new_schema: Option<&'a str>,
}

impl<C: Serialize> RecordView<'_, C> {
    /// The hash its `AuditRecord` would have after `previous`.
    pub fn hash(&self, previous: &[u8; 32]) -> [u8; 32] {
        streamed_hash(previous, self)
    }
}

/// One change of a [`RecordView`]: serialized as an [`AuditChange`], the
/// relationship written through its `Display` (no string built).
pub struct ChangeView<D: std::fmt::Display> {
    pub operation: crate::model::Operation,
    pub relationship: D,
}

impl<D: std::fmt::Display> Serialize for ChangeView<D> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("AuditChange", 2)?;
        s.serialize_field("operation", self.operation.as_str())?;
        s.serialize_field("relationship", &Collected(&self.relationship))?;
        s.end()
    }
}

/// A `Display` value serialized as a string, written straight into the
/// output.
struct Collected<'a, D: std::fmt::Display>(&'a D);

impl<D: std::fmt::Display> Serialize for Collected<'_, D> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// Where a pruned audit chain starts: its first retained record and the
/// hash that record links to (the last pruned record's hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHorizon {
    pub first_sequence: u64,
    pub anchor: [u8; 32],
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every record links to the one before and matches its hash.
    Intact { records: u64, head: [u8; 32] },
    /// The first record whose content or link does not match.
    Broken {
        sequence: u64,
        revision: String,
        reason: String,
    },
}

/// Checks a chain record by record, in sequence order from the first (or
/// from a pruned chain's horizon).
#[derive(Debug, Clone)]
pub struct Verifier {
    previous: [u8; 32],
    next_sequence: u64,
    verified: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            previous: [0; 32],
            next_sequence: 1,
            verified: 0,
        }
    }
}

impl Verifier {
    /// A verifier of a chain whose records before the horizon were pruned:
    /// it starts at the horizon's first record and takes its anchor as the
    /// hash before it (which only a hash recorded earlier, outside the
    /// store, can vouch for).
    pub fn from_horizon(h: AuditHorizon) -> Self {
        Verifier {
            previous: h.anchor,
            next_sequence: h.first_sequence,
            verified: 0,
        }
    }

    /// Checks the next record; `Err` is the broken link.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Verification> {
        let broken = |reason: String| Verification::Broken {
            sequence: r.sequence,
            revision: r.revision.clone(),
            reason,
        };
        if r.sequence != self.next_sequence {
            return Err(broken(format!(
                "sequence {} where {} was expected (a record is missing or was inserted)",
                r.sequence, self.next_sequence
            )));
        }
        if r.previous_hash != self.previous {
            return Err(broken(
                "its previous-hash does not match the record before it".into(),
            ));
        }
        if r.compute_hash(&self.previous) != r.hash {
            return Err(broken(
                "its content does not match its hash (the record was altered)".into(),
            ));
        }
        self.previous = r.hash;
        self.next_sequence += 1;
        self.verified += 1;
        Ok(())
    }

    pub fn finish(self) -> Verification {
        Verification::Intact {
            records: self.verified,
            head: self.previous,
        }
    }
}

/// Completeness: replays the relationship changes of the chain in order
/// and compares the result with the relationships the store holds. The
/// chain proves records were not altered; the replay proves every stored
/// relationship was written through an audited transaction (a row whose
/// transaction record was deleted, or a relationship inserted behind
/// Kinbar's back, shows up here) and that every recorded change was
/// possible (an insert of a live relationship or a delete of an absent one
/// means records were lost in between).
#[derive(Debug, Default)]
pub struct Replay {
    live: std::collections::HashSet<String>,
    anomalies: Vec<String>,
}

impl Replay {
    /// Applies one record's changes (records in sequence order).
    pub fn push(&mut self, r: &AuditRecord) {
        for c in &r.changes {
            let known = if c.operation == "delete" {
                self.live.remove(&c.relationship)
            } else {
                self.live.insert(c.relationship.clone())
            };
            if !known {
                let what = if c.operation == "delete" {
                    "deletes a relationship the audit never created"
                } else {
                    "creates a relationship the audit already holds"
                };
                self.anomalies.push(format!(
                    "audit transaction {} {what}: `{}`",
                    r.sequence, c.relationship
                ));
            }
        }
    }

    /// Compares with the relationships stored at a revision that sees
    /// exactly the replayed records; returns every discrepancy, sorted
    /// (empty: complete).
    pub fn finish(mut self, stored: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut out = std::mem::take(&mut self.anomalies);
        let mut unaccounted = Vec::new();
        for rel in stored {
            if !self.live.remove(&rel) {
                unaccounted.push(format!(
                    "relationship `{rel}` is stored but no audit transaction created it"
                ));
            }
        }
        let mut missing: Vec<String> = self
            .live
            .into_iter()
            .map(|rel| format!("the audit holds `{rel}` but the store does not"))
            .collect();
        unaccounted.sort();
        missing.sort();
        out.extend(unaccounted);
        out.extend(missing);
        out
    }
}

/// Recomputes the chain over `records` (in sequence order, from the first).
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Verification {
    let mut v = Verifier::default();
    for r in records {
        if let Err(broken) = v.push(r) {
            return broken;
        }
    }
    v.finish()
}

/// Which audit records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Commit time bounds, milliseconds since the Unix epoch (inclusive, exclusive).
    pub from_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub actor: Option<String>,
    /// `type:id`: records touching this object as resource or subject.
    pub object: Option<String>,
    pub relation: Option<String>,
    /// `type:id[#relation]`: records with this subject.
    pub subject: Option<String>,
}

impl AuditFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        if self.from_ms.is_some_and(|t| r.committed_at_ms < t)
            || self.until_ms.is_some_and(|t| r.committed_at_ms >= t)
            || self.actor.as_ref().is_some_and(|a| *a != r.actor)
        {
            return false;
        }
        if self.object.is_none() && self.relation.is_none() && self.subject.is_none() {
            return true;
        }
        r.changes.iter().any(|c| {
            let Ok(rel) = c.relationship.parse::<crate::model::Relationship>() else {
                return false;
            };
            self.object.as_ref().is_none_or(|o| {
                rel.resource.to_string() == *o || rel.subject.object.to_string() == *o
            }) && self.relation.as_ref().is_none_or(|x| rel.relation == *x)
                && self
                    .subject
                    .as_ref()
                    .is_none_or(|s| rel.subject.to_string() == *s)
        })
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-23T21:05:48.034Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Operation, TxnMetadata};

    #[test]
    fn streamed_hash_is_the_hash_of_the_canonical_bytes() {
        for record in chain(3) {
            let previous = [7u8; 32];
            let mut h = Sha256::new();
            h.update(previous);
            h.update(record.canonical_bytes());
            let whole: [u8; 32] = h.finalize().into();
            assert_eq!(record.compute_hash(&previous), whole);
        }
    }

    #[test]
    fn a_record_view_hashes_as_its_record() {
        let mut records = chain(2);
        // Strings JSON must escape, a schema change, another operation.
        records[1].changes[0].operation = "delete".into();
        records[1].request_id = "r\"\n\u{1}é".into();
        records[1].old_schema = Some("definition user {}".into());
        records[1].new_schema = Some("definition user {}\n// \"x\"".into());
        let ops = [Operation::Touch, Operation::Delete];
        for (r, op) in records.iter().zip(ops) {
            let rel: crate::model::Relationship = r.changes[0].relationship.parse().unwrap();
            let view = RecordView {
                sequence: r.sequence,
                revision: &r.revision,
                committed_at_ms: r.committed_at_ms,
                actor: &r.actor,
                request_id: &r.request_id,
                metadata: &r.metadata,
                changes: [ChangeView {
                    operation: op,
                    relationship: &rel,
                }],
                old_schema: r.old_schema.as_deref(),
                new_schema: r.new_schema.as_deref(),
            };
            let previous = [9u8; 32];
            assert_eq!(view.hash(&previous), r.compute_hash(&previous));
        }
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_horizon_anchor() {
        let records = chain(6);
        let horizon = AuditHorizon {
            first_sequence: 4,
            anchor: records[2].hash,
        };
        let mut v = Verifier::from_horizon(horizon);
        for r in &records[3..] {
            v.push(r).unwrap();
        }
        assert_eq!(
            v.finish(),
            Verification::Intact {
                records: 3,
                head: records[5].hash
            }
        );
        // Another anchor, or a suffix that does not start at the horizon,
        // is a broken link.
        let mut wrong = Verifier::from_horizon(AuditHorizon {
            anchor: records[1].hash,
            ..horizon
        });
        assert!(wrong.push(&records[3]).is_err());
        let mut late = Verifier::from_horizon(horizon);
        assert!(late.push(&records[4]).is_err());
        // From sequence 1, a suffix is missing its start.
        assert!(Verifier::default().push(&records[3]).is_err());
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|i| {
                let txn = CommittedTxn {
                    revision: Revision::new(i.to_string()),
                    committed_at_ms: 1_000 * i,
                    metadata: TxnMetadata {
                        actor: "admin".into(),
                        request_id: format!("r{i}"),
                        fields: [("reason".to_string(), serde_json::json!("ticket 42"))].into(),
                    },
                    changes: vec![Change {
                        operation: Operation::Touch,
                        relationship: format!("doc:{i}#viewer@user:a").parse().unwrap(),
                    }],
                    schema_change: None,
                };
                let mut r = AuditRecord::of(i, &txn);
                r.seal(prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_471_146_017), "2026-11-23T21:59:06.017Z");
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        assert!(matches!(
            verify(&c),
            Verification::Intact { records: 5, .. }
        ));
    }

    #[test]
    fn any_alteration_names_the_first_broken_record() {
        let mut c = chain(5);
        c[2].actor = "mallory".into();
        assert!(matches!(
            verify(&c),
            Verification::Broken { sequence: 3, .. }
        ));
        let mut c = chain(5);
        c[1].metadata
            .insert("reason".into(), serde_json::json!("nothing to see"));
        assert!(matches!(
            verify(&c),
            Verification::Broken { sequence: 2, .. }
        ));
        let mut c = chain(5);
        c.remove(3);
        assert!(matches!(
            verify(&c),
            Verification::Broken { sequence: 5, .. }
        ));
        // Re-sealing an altered record does not help: the next link breaks.
        let mut c = chain(5);
        c[1].changes[0].relationship = "doc:2#viewer@user:eve".into();
        let prev = c[0].hash;
        c[1].seal(prev);
        assert!(matches!(
            verify(&c),
            Verification::Broken { sequence: 3, .. }
        ));
    }

    #[test]
    fn replay_names_every_discrepancy() {
        let records = chain(3);
        // Complete: the store holds exactly what the audit created.
        let mut r = Replay::default();
        records.iter().for_each(|x| r.push(x));
        let stored: Vec<String> = (1..=3).map(|i| format!("doc:{i}#viewer@user:a")).collect();
        assert!(r.finish(stored.clone()).is_empty());
        // The newest record lost: its relationship is unaccounted for.
        let mut r = Replay::default();
        records[..2].iter().for_each(|x| r.push(x));
        assert_eq!(
            r.finish(stored.clone()),
            ["relationship `doc:3#viewer@user:a` is stored but no audit transaction created it"]
        );
        // A relationship the audit holds but the store lost.
        let mut r = Replay::default();
        records.iter().for_each(|x| r.push(x));
        assert_eq!(
            r.finish(stored[..2].to_vec()),
            ["the audit holds `doc:3#viewer@user:a` but the store does not"]
        );
        // Impossible sequences: a second create, a delete of nothing.
        let mut twice = records[0].clone();
        twice.sequence = 9;
        let mut gone = records[1].clone();
        gone.sequence = 10;
        gone.changes[0].operation = "delete".into();
        gone.changes[0].relationship = "doc:7#viewer@user:a".into();
        let mut r = Replay::default();
        r.push(&records[0]);
        r.push(&twice);
        r.push(&gone);
        let found = r.finish(["doc:1#viewer@user:a".to_string()]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("transaction 9 creates a relationship the audit already holds"));
        assert!(found[1].contains("transaction 10 deletes a relationship the audit never created"));
    }
}

/// A call Kinbar refused (SECURITY.md "Security events"): who (a key's
/// name, or `anonymous` when no valid key was presented), from where, which
/// method, the status code and its message — never the presented token.
/// `count` > 1: the refusals without a valid key from one peer in one
/// minute, aggregated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecurityEvent {
    /// Milliseconds since the Unix epoch (the latest, when aggregated).
    pub at_ms: u64,
    pub key: String,
    pub peer: String,
    pub method: String,
    pub code: String,
    pub reason: String,
    pub count: u64,
    /// Set on aggregated events: `peer|minute`; events with the same
    /// aggregate are one row whose count adds up.
    #[serde(skip)]
    pub aggregate: Option<String>,
}

/// A stored [`SecurityEvent`] and its place in the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredSecurityEvent {
    pub id: u64,
    #[serde(flatten)]
    pub event: SecurityEvent,
}
