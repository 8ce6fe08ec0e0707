//! One write transaction: SERIALIZABLE, seeks only, preconditions, deletes
//! by filter, updates in order, the schema change, the transaction row and
//! its audit changes — all or nothing. `try_write` is the sequence of those
//! steps over one transaction; the caller (`Datastore::write`) retries
//! `Attempt::Db` serialization failures.

use super::*;

/// Why one attempt failed: a database error (maybe retryable) or a
/// definite refusal.
pub(super) enum Attempt {
    Db(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for Attempt {
    fn from(e: sqlx::Error) -> Self {
        Attempt::Db(e)
    }
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Store(e)
    }
}

type Tx = sqlx::Transaction<'static, Postgres>;

/// The schema in force: `(text, revision that wrote it)`.
type CurrentSchema = Option<(String, String)>;

/// `(old, new)` schema text when the transaction changes the schema.
type SchemaChange = Option<(Option<String>, String)>;

impl PostgresStore {
    /// One attempt at a write transaction.
    pub(super) async fn try_write(&self, txn: &WriteTxn) -> Result<CommittedTxn, Attempt> {
        let mut tx = begin_write(&self.pool).await?;
        let (xid, snapshot) = own_xid_and_snapshot(&mut tx).await?;
        let current = current_schema(&mut tx).await?;
        check_expected_schema(txn.expected_schema.as_ref(), &current)?;
        check_preconditions(&mut tx, &txn.preconditions).await?;
        let mut changes = delete_by_filters(&mut tx, &txn.deletes).await?;
        apply_updates(&mut tx, &txn.updates, &mut changes).await?;
        // The revision: this transaction's snapshot, with itself committed.
        let own = server_snapshot(&snapshot)?.with_committed(xid as u64);
        let revision = own.to_string();
        let schema_change = replace_schema(&mut tx, txn, current, &revision).await?;
        let committed_at_ms =
            insert_transaction(&mut tx, &revision, &txn.metadata, &schema_change).await?;
        insert_audit_changes(&mut tx, &changes).await?;
        tx.commit().await?;
        self.seen_xmax.fetch_max(own.xmax, Ordering::Relaxed);
        Ok(CommittedTxn {
            revision: Revision::new(revision),
            committed_at_ms: committed_at_ms.max(0) as u64,
            metadata: txn.metadata.clone(),
            changes,
            schema_change,
        })
    }
}

/// Begins a SERIALIZABLE transaction that only seeks. Sequential scans take
/// relation-level predicate locks (every pair of concurrent writers would
/// conflict) and hash or merge joins read whole indexes; plans are made per
/// execution, since a generic plan cached while the table was small scans
/// it whole once it is large.
async fn begin_write(pool: &PgPool) -> Result<Tx, Attempt> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off; SET LOCAL plan_cache_mode = force_custom_plan",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// The transaction id and snapshot, taken in one statement so the revision
/// counts few ids between them as in progress.
async fn own_xid_and_snapshot(tx: &mut Tx) -> Result<(i64, String), Attempt> {
    let row = sqlx::query("SELECT pg_current_xact_id()::text::bigint, pg_current_snapshot()::text")
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn current_schema(tx: &mut Tx) -> Result<CurrentSchema, Attempt> {
    let row =
        sqlx::query("SELECT text, written_rev FROM schema_versions WHERE deleted_xid IS NULL")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match row {
        Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
        None => None,
    })
}

/// Refuses the write if the schema is no longer the one it was validated
/// against.
fn check_expected_schema(
    expected: Option<&Option<Revision>>,
    current: &CurrentSchema,
) -> Result<(), Attempt> {
    if let Some(expected) = expected
        && current.as_ref().map(|(_, rev)| rev.as_str()) != expected.as_ref().map(Revision::as_str)
    {
        return Err(Attempt::Store(StoreError::SchemaChanged));
    }
    Ok(())
}

async fn check_preconditions(tx: &mut Tx, preconditions: &[Precondition]) -> Result<(), Attempt> {
    for (index, p) in preconditions.iter().enumerate() {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {COLS} FROM relationships WHERE deleted_xid IS NULL"
        ));
        push_filter(&mut qb, &p.filter);
        qb.push(" LIMIT 1");
        let found = qb.build().fetch_optional(&mut **tx).await?;
        match (p.kind, found) {
            (PreconditionKind::MustMatch, None) => {
                return Err(Attempt::Store(StoreError::PreconditionFailed {
                    index,
                    reason: "no relationship matches the MUST_MATCH filter".into(),
                    example: None,
                }));
            }
            (PreconditionKind::MustNotMatch, Some(row)) => {
                let rel = row_rel(&row)?;
                return Err(Attempt::Store(StoreError::PreconditionFailed {
                    index,
                    reason: format!("relationship `{rel}` matches the MUST_NOT_MATCH filter"),
                    example: Some(Box::new(rel)),
                }));
            }
            _ => {}
        }
    }
    Ok(())
}

/// DeleteRelationships: every live relationship matching each filter (at
/// most its limit, or refused past it), as changes.
async fn delete_by_filters(
    tx: &mut Tx,
    deletes: &[DeleteByFilter],
) -> Result<Vec<Change>, Attempt> {
    let mut changes = Vec::new();
    for d in deletes {
        let mut qb = QueryBuilder::new(format!(
            "SELECT {COLS} FROM relationships WHERE deleted_xid IS NULL"
        ));
        push_filter(&mut qb, &d.filter);
        qb.push(format!(" ORDER BY {COLS}"));
        if let Some(l) = d.limit {
            qb.push(" LIMIT ").push_bind(l.saturating_add(1) as i64);
        }
        let rows = qb.build().fetch_all(&mut **tx).await?;
        let mut matched: Vec<Relationship> = rows.iter().map(row_rel).collect::<Result<_, _>>()?;
        if let Some(l) = d.limit
            && d.expect_exactly
            && matched.len() != l
        {
            return Err(Attempt::Store(StoreError::ChangedConcurrently {
                matched: matched.len(),
                expected: l,
            }));
        }
        if let Some(l) = d.limit
            && matched.len() > l
        {
            if !d.allow_partial {
                return Err(Attempt::Store(StoreError::TooManyToDelete {
                    matched: matched.len(),
                    limit: l,
                }));
            }
            matched.truncate(l);
        }
        let deleted = delete_keys(tx, &matched).await?;
        changes.extend(deletions(matched, &deleted));
    }
    Ok(changes)
}

/// The relationships of `rels` that were really deleted, as changes.
fn deletions(
    rels: Vec<Relationship>,
    deleted: &HashSet<Relationship>,
) -> impl Iterator<Item = Change> {
    rels.into_iter()
        .filter(|r| deleted.contains(r))
        .map(|r| Change {
            operation: Operation::Delete,
            relationship: r,
        })
}

/// Updates apply in order; consecutive updates of one kind on distinct
/// relationships go in one statement. A CREATE of an existing relationship
/// refuses the whole write.
async fn apply_updates(
    tx: &mut Tx,
    updates: &[Update],
    changes: &mut Vec<Change>,
) -> Result<(), Attempt> {
    let mut i = 0;
    while i < updates.len() {
        let deleting = updates[i].operation == Operation::Delete;
        let mut seen = HashSet::new();
        let mut j = i;
        while j < updates.len()
            && (updates[j].operation == Operation::Delete) == deleting
            && seen.insert(&updates[j].relationship)
        {
            j += 1;
        }
        let run = &updates[i..j];
        let rels: Vec<Relationship> = run.iter().map(|u| u.relationship.clone()).collect();
        if deleting {
            let deleted = delete_keys(tx, &rels).await?;
            changes.extend(deletions(rels, &deleted));
        } else {
            let inserted = insert_keys(tx, &rels).await?;
            for u in run {
                if inserted.contains(&u.relationship) {
                    changes.push(Change {
                        operation: u.operation,
                        relationship: u.relationship.clone(),
                    });
                } else if u.operation == Operation::Create {
                    return Err(Attempt::Store(StoreError::AlreadyExists(Box::new(
                        u.relationship.clone(),
                    ))));
                }
            }
        }
        i = j;
    }
    Ok(())
}

/// Installs the transaction's schema, if any, versioned like relationships.
async fn replace_schema(
    tx: &mut Tx,
    txn: &WriteTxn,
    current: CurrentSchema,
    revision: &str,
) -> Result<SchemaChange, Attempt> {
    let Some(s) = &txn.schema else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE schema_versions SET deleted_xid = pg_current_xact_id() WHERE deleted_xid IS NULL",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO schema_versions (text, written_rev) VALUES ($1, $2)")
        .bind(&s.text)
        .bind(revision)
        .execute(&mut **tx)
        .await?;
    Ok(Some((current.map(|(t, _)| t), s.text.clone())))
}

/// The transaction's row (the audit record before sealing); returns its
/// commit time in milliseconds.
async fn insert_transaction(
    tx: &mut Tx,
    revision: &str,
    metadata: &TxnMetadata,
    schema_change: &SchemaChange,
) -> Result<i64, Attempt> {
    let fields = serde_json::Value::Object(metadata.fields.clone().into_iter().collect());
    Ok(sqlx::query_scalar(
        "INSERT INTO transactions (revision, actor, request_id, metadata, \
         schema_changed, old_schema, new_schema) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         RETURNING (extract(epoch from committed_at) * 1000)::bigint",
    )
    .bind(revision)
    .bind(&metadata.actor)
    .bind(&metadata.request_id)
    .bind(&fields)
    .bind(schema_change.is_some())
    .bind(schema_change.as_ref().and_then(|(old, _)| old.clone()))
    .bind(schema_change.as_ref().map(|(_, new)| new.clone()))
    .fetch_one(&mut **tx)
    .await?)
}

/// One `audit_changes` row per changed relationship, in order.
async fn insert_audit_changes(tx: &mut Tx, changes: &[Change]) -> Result<(), Attempt> {
    if changes.is_empty() {
        return Ok(());
    }
    let ords: Vec<i32> = (0..changes.len() as i32).collect();
    let ops: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
    let rels: Vec<String> = changes.iter().map(|c| c.relationship.to_string()).collect();
    sqlx::query(
        "INSERT INTO audit_changes (xid, ord, operation, relationship) \
         SELECT pg_current_xact_id(), * FROM UNNEST($1::int[], $2::text[], $3::text[])",
    )
    .bind(&ords)
    .bind(&ops)
    .bind(&rels)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
