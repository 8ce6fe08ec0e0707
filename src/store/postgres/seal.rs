//! The audit sealer: links unsealed committed transactions into the
//! SHA-256 chain in xid order, under an advisory lock.

use super::*;

impl PostgresStore {
    /// Links every unsealed, committed transaction into the audit chain.
    /// Safe to run from many processes at once (advisory lock).
    pub async fn seal(&self) -> Result<u64, StoreError> {
        let mut sealed = 0;
        loop {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SEAL_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let last = sqlx::query(
                "SELECT audit_seq, hash FROM transactions WHERE audit_seq IS NOT NULL \
                 ORDER BY audit_seq DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let (mut seq, mut previous) = match last {
                Some(row) => (
                    row.try_get::<i64, _>(0).map_err(db_err)?,
                    hash32(row.try_get(1).map_err(db_err)?),
                ),
                None => (0, [0u8; 32]),
            };
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {TXN_COLS} FROM transactions WHERE audit_seq IS NULL ORDER BY xid LIMIT 500"
            )))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            if rows.is_empty() {
                tx.commit().await.map_err(db_err)?;
                return Ok(sealed);
            }
            let txns: Vec<TxnRow> = rows.iter().map(txn_row).collect::<Result<_, _>>()?;
            let changes =
                load_changes(&mut tx, &txns.iter().map(|t| t.xid).collect::<Vec<_>>()).await?;
            for t in &txns {
                seq += 1;
                let mut record = audit_record(t, changes.get(&t.xid).cloned().unwrap_or_default());
                record.sequence = seq as u64;
                record.seal(previous);
                sqlx::query(
                    "UPDATE transactions SET audit_seq = $1, previous_hash = $2, hash = $3 \
                     WHERE xid = $4::text::xid8 AND audit_seq IS NULL",
                )
                .bind(seq)
                .bind(record.previous_hash.to_vec())
                .bind(record.hash.to_vec())
                .bind(t.xid.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                previous = record.hash;
                sealed += 1;
            }
            tx.commit().await.map_err(db_err)?;
            self.progress
                .sealed
                .fetch_add(txns.len() as u64, Ordering::Relaxed);
        }
    }
}

pub(super) fn audit_record(t: &TxnRow, changes: Vec<(String, String)>) -> AuditRecord {
    AuditRecord {
        sequence: t.audit_seq.unwrap_or(0).max(0) as u64,
        revision: t.revision.clone(),
        committed_at_ms: t.committed_at_ms.max(0) as u64,
        actor: t.actor.clone(),
        request_id: t.request_id.clone(),
        metadata: t.fields(),
        changes: changes
            .into_iter()
            .map(|(operation, relationship)| AuditChange {
                operation,
                relationship,
            })
            .collect(),
        old_schema: t.old_schema.clone(),
        new_schema: if t.schema_changed {
            t.new_schema.clone()
        } else {
            None
        },
        previous_hash: hash32(t.previous_hash.clone()),
        hash: hash32(t.hash.clone()),
    }
}
