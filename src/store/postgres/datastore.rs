//! The `Datastore` trait over Postgres: revisions, reads at a snapshot,
//! writes with bounded retry, the audit, Watch and GC entry points.

use super::seal::audit_record;
use super::write::Attempt;
use super::*;

#[async_trait]
impl Datastore for PostgresStore {
    fn id(&self) -> &str {
        &self.id
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        Ok(Revision::new(self.current_snapshot().await?.to_string()))
    }

    async fn ready(&self) -> Result<(), StoreError> {
        super::check_migrations(&self.pool).await?;
        super::check_transaction_ids(&self.pool).await?;
        self.current_snapshot().await.map(|_| ())
    }

    async fn stats(&self) -> crate::store::DatastoreStats {
        let p = &self.progress;
        // Unsealed committed transactions: the sealer's backlog. A failure
        // here (database down) leaves the figure out rather than failing.
        let unsealed: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM transactions WHERE audit_seq IS NULL")
                .fetch_one(&self.pool)
                .await
                .ok();
        crate::store::DatastoreStats {
            pool_connections: Some(u64::from(self.pool.size())),
            pool_idle: Some(self.pool.num_idle() as u64),
            pool_max: Some(u64::from(self.options.max_connections)),
            write_conflict_retries: self.conflict_retries.load(Ordering::Relaxed),
            audit_sealed: p.sealed.load(Ordering::Relaxed),
            audit_unsealed: unsealed.map(|n| n.max(0) as u64),
            gc_passes: p.gc_passes.load(Ordering::Relaxed),
            gc_failures: p.gc_failures.load(Ordering::Relaxed),
            gc_deleted: p.gc_deleted.load(Ordering::Relaxed),
            gc_last_pass_unix_ms: p.gc_last_pass_ms.load(Ordering::Relaxed),
        }
    }

    async fn optimized_revision(&self, quantum: Duration) -> Result<Revision, StoreError> {
        let q = quantum.as_millis() as u64;
        if q == 0 {
            return self.head_revision().await;
        }
        let now = now_ms();
        let window_start = now - now % q;
        if let Ok(cached) = self.optimized.lock()
            && let Some((w, cq, rev)) = cached.as_ref()
            && (*w, *cq) == (window_start, q)
        {
            return Ok(rev.clone());
        }
        // The first request of a window takes the snapshot every later one
        // in that window shares: at most one quantum old.
        let rev = self.head_revision().await?;
        if let Ok(mut cached) = self.optimized.lock() {
            *cached = Some((window_start, q, rev.clone()));
        }
        Ok(rev)
    }

    async fn check_revision(&self, at: &Revision) -> Result<(), StoreError> {
        self.readable(at).await.map(|_| ())
    }

    async fn at_least_as_fresh(
        &self,
        wanted: &Revision,
        candidate: Revision,
    ) -> Result<Revision, StoreError> {
        let w = self.readable(wanted).await?;
        let c = parse_rev(&candidate)?;
        Ok(if c.sees(&w) {
            candidate
        } else {
            wanted.clone()
        })
    }

    async fn read_schema(&self, at: &Revision) -> Result<Option<StoredSchema>, StoreError> {
        let started = Instant::now();
        let snap = self.readable(at).await?;
        if let Ok(cached) = self.schema_at.lock()
            && let Some((rev, schema)) = cached.as_ref()
            && rev == at
        {
            return Ok(schema.clone());
        }
        let row = sqlx::query(
            "SELECT text, written_rev FROM schema_versions \
             WHERE pg_visible_in_snapshot(created_xid, $1::pg_snapshot) \
             AND (deleted_xid IS NULL OR NOT pg_visible_in_snapshot(deleted_xid, $1::pg_snapshot))",
        )
        .bind(at.as_str())
        .fetch_optional(self.reader(&snap).await)
        .await
        .map_err(db_err)?;
        self.still_readable(at, &snap, started).await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.try_get(0).map_err(db_err)?;
                let rev: String = r.try_get(1).map_err(db_err)?;
                let schema = Some(StoredSchema {
                    text: text.into(),
                    written_at: Revision::new(rev),
                });
                if let Ok(mut cached) = self.schema_at.lock() {
                    *cached = Some((at.clone(), schema.clone()));
                }
                Ok(schema)
            }
        }
    }

    async fn query(
        &self,
        at: &Revision,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, StoreError> {
        let started = Instant::now();
        let snap = self.readable(at).await?;
        let mut qb = QueryBuilder::new(format!("SELECT {COLS} FROM relationships WHERE "));
        push_visible(&mut qb, at);
        push_filter(&mut qb, filter);
        push_after(&mut qb, page.after.as_ref());
        qb.push(format!(" ORDER BY {COLS}"));
        if let Some(l) = page.limit {
            qb.push(" LIMIT ")
                .push_bind(l.min(i64::MAX as usize) as i64);
        }
        let rows = qb
            .build()
            .fetch_all(self.reader(&snap).await)
            .await
            .map_err(db_err)?;
        self.still_readable(at, &snap, started).await?;
        rows.iter().map(row_rel).collect()
    }

    fn batches_reads(&self) -> bool {
        true
    }

    async fn record_security_events(
        &self,
        events: &[crate::audit::SecurityEvent],
    ) -> Result<(), StoreError> {
        for e in events {
            sqlx::query(
                "INSERT INTO security_events \
                   (at_ms, key_name, peer, method, code, reason, count, aggregate) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (aggregate) DO UPDATE SET \
                   count = security_events.count + EXCLUDED.count, \
                   at_ms = EXCLUDED.at_ms, method = EXCLUDED.method, \
                   code = EXCLUDED.code, reason = EXCLUDED.reason",
            )
            .bind(i64::try_from(e.at_ms).unwrap_or(i64::MAX))
            .bind(&e.key)
            .bind(&e.peer)
            .bind(&e.method)
            .bind(&e.code)
            .bind(&e.reason)
            .bind(i64::try_from(e.count).unwrap_or(i64::MAX))
            .bind(&e.aggregate)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    async fn read_security_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::StoredSecurityEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, key_name, peer, method, code, reason, count, aggregate \
             FROM security_events WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let n = |i: usize| -> Result<u64, StoreError> {
                    let v: i64 = r.try_get(i).map_err(db_err)?;
                    Ok(u64::try_from(v).unwrap_or_default())
                };
                let t = |i: usize| -> Result<String, StoreError> { r.try_get(i).map_err(db_err) };
                Ok(crate::audit::StoredSecurityEvent {
                    id: n(0)?,
                    event: crate::audit::SecurityEvent {
                        at_ms: n(1)?,
                        key: t(2)?,
                        peer: t(3)?,
                        method: t(4)?,
                        code: t(5)?,
                        reason: t(6)?,
                        count: n(7)?,
                        aggregate: r.try_get(8).map_err(db_err)?,
                    },
                })
            })
            .collect()
    }

    /// One statement per [`QUERY_MANY_CHUNK`] filters: a `UNION ALL` of
    /// each filter's own query (scalar binds, so each branch seeks its
    /// index like a single read does), its rows tagged with its position.
    async fn query_many(
        &self,
        at: &Revision,
        filters: &[RelationshipFilter],
    ) -> Result<Vec<Vec<Relationship>>, StoreError> {
        let started = Instant::now();
        let snap = self.readable(at).await?;
        let mut out: Vec<Vec<Relationship>> = vec![Vec::new(); filters.len()];
        for (chunk_no, chunk) in filters.chunks(QUERY_MANY_CHUNK).enumerate() {
            let mut qb = QueryBuilder::new("");
            for (i, filter) in chunk.iter().enumerate() {
                if i > 0 {
                    qb.push(" UNION ALL ");
                }
                // SQL-SAFE: `i` is an integer literal of ours.
                qb.push(format!(
                    "(SELECT {COLS}, {i} AS q FROM relationships WHERE "
                ));
                push_visible(&mut qb, at);
                push_filter(&mut qb, filter);
                qb.push(")");
            }
            qb.push(format!(" ORDER BY q, {COLS}"));
            let rows = qb
                .build()
                .fetch_all(self.reader(&snap).await)
                .await
                .map_err(db_err)?;
            let base = chunk_no * QUERY_MANY_CHUNK;
            for row in &rows {
                let q: i32 = row.try_get(6).map_err(db_err)?;
                let slot = usize::try_from(q)
                    .ok()
                    .and_then(|q| out.get_mut(base + q))
                    .ok_or_else(|| StoreError::Internal(format!("query_many: bad branch {q}")))?;
                slot.push(row_rel(row)?);
            }
        }
        self.still_readable(at, &snap, started).await?;
        Ok(out)
    }

    async fn write(&self, txn: &WriteTxn) -> Result<CommittedTxn, StoreError> {
        let mut backoff = Duration::from_millis(4);
        for attempt in 1..=MAX_WRITE_ATTEMPTS {
            match self.try_write(txn).await {
                Ok(c) => return Ok(c),
                Err(Attempt::Store(e)) => return Err(e),
                Err(Attempt::Db(e)) if retryable(&e) && attempt < MAX_WRITE_ATTEMPTS => {
                    self.conflict_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, error = %e, "write conflicted; retrying");
                    // Full jitter: colliding writers spread out instead of
                    // colliding again in lockstep.
                    let cap = backoff.as_micros() as u64;
                    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % cap.max(1)))
                        .await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(Attempt::Db(e)) if retryable(&e) => {
                    return Err(StoreError::Unavailable(format!(
                        "the write conflicted with concurrent writes {MAX_WRITE_ATTEMPTS} times; retry: {e}"
                    )));
                }
                Err(Attempt::Db(e)) => return Err(db_err(e)),
            }
        }
        Err(StoreError::Internal("unreachable retry loop exit".into()))
    }

    async fn read_audit(
        &self,
        after: u64,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.seal().await?;
        let mut out = Vec::new();
        let mut cursor = after.min(i64::MAX as u64) as i64;
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        while out.len() < limit {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {TXN_COLS} FROM transactions WHERE audit_seq > $1 ORDER BY audit_seq LIMIT 256"
            )))
            .bind(cursor)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            if rows.is_empty() {
                break;
            }
            let txns: Vec<TxnRow> = rows.iter().map(txn_row).collect::<Result<_, _>>()?;
            let changes =
                load_changes(&mut conn, &txns.iter().map(|t| t.xid).collect::<Vec<_>>()).await?;
            for t in &txns {
                cursor = t.audit_seq.unwrap_or(cursor);
                let record = audit_record(t, changes.get(&t.xid).cloned().unwrap_or_default());
                if filter.matches(&record) {
                    out.push(record);
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn collect_garbage(&self, window: Duration) -> Result<GcStats, StoreError> {
        self.gc_with_window(window).await
    }

    async fn changes_since(
        &self,
        after: &Revision,
        limit: usize,
    ) -> Result<Vec<CommittedTxn>, StoreError> {
        let from = parse_rev(after)?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let now_text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let now = server_snapshot(&now_text)?;
        if from.xmax > now.xmax {
            return Err(StoreError::RevisionInFuture(after.clone()));
        }
        self.seen_xmax.fetch_max(now.xmax, Ordering::Relaxed);
        // Transactions visible now (the transaction's own snapshot) that
        // `after` does not see: all have xid >= after.xmin.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TXN_COLS} FROM transactions WHERE xid >= $1::text::xid8 \
             AND NOT pg_visible_in_snapshot(xid, $2::pg_snapshot) ORDER BY xid LIMIT $3"
        )))
        .bind(from.xmin.to_string())
        .bind(after.as_str())
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let txns: Vec<TxnRow> = rows.iter().map(txn_row).collect::<Result<_, _>>()?;
        let changes =
            load_changes(&mut tx, &txns.iter().map(|t| t.xid).collect::<Vec<_>>()).await?;
        tx.commit().await.map_err(db_err)?;
        let mut out = Vec::with_capacity(txns.len());
        for t in &txns {
            let position = Snapshot::watch_position(&from, &now, t.xid as u64);
            let mut list = Vec::new();
            for (op, rel) in changes.get(&t.xid).cloned().unwrap_or_default() {
                list.push(Change {
                    operation: operation(&op)?,
                    relationship: rel.parse().map_err(|e| {
                        StoreError::Internal(format!("stored change `{rel}` does not parse: {e}"))
                    })?,
                });
            }
            out.push(CommittedTxn {
                revision: Revision::new(position.to_string()),
                committed_at_ms: t.committed_at_ms.max(0) as u64,
                metadata: TxnMetadata {
                    actor: t.actor.clone(),
                    request_id: t.request_id.clone(),
                    fields: t.fields(),
                },
                changes: list,
                schema_change: t.schema_changed.then(|| {
                    (
                        t.old_schema.clone(),
                        t.new_schema.clone().unwrap_or_default(),
                    )
                }),
            });
        }
        Ok(out)
    }
}
