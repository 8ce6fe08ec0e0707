//! Garbage collection and the horizon readers check: versions dead below
//! the published horizon are deleted; revisions that do not see it are
//! refused as too old.

use super::*;

impl PostgresStore {
    pub(super) async fn gc_horizon(&self) -> Result<Option<Snapshot>, StoreError> {
        if let Ok(h) = self.horizon.lock()
            && let Some((at, value)) = h.as_ref()
            && at.elapsed() < HORIZON_TTL
        {
            return Ok(value.clone());
        }
        let value = self.published_horizon().await?;
        if let Ok(mut h) = self.horizon.lock() {
            *h = Some((Instant::now(), value.clone()));
        }
        Ok(value)
    }

    /// The published GC horizon: a snapshot every readable revision must
    /// see (`None` before the first collection).
    pub(super) async fn published_horizon(&self) -> Result<Option<Snapshot>, StoreError> {
        let text: String =
            sqlx::query_scalar("SELECT value FROM kinbar_metadata WHERE key = 'gc_horizon'")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        if text.is_empty() {
            return Ok(None);
        }
        Snapshot::parse(&text)
            .map(Some)
            .ok_or_else(|| StoreError::Internal(format!("bad gc_horizon `{text}`")))
    }

    /// Parses `at` and checks it is readable.
    pub(super) async fn readable(&self, at: &Revision) -> Result<Snapshot, StoreError> {
        let snap = parse_rev(at)?;
        if snap.xmax > self.seen_xmax.load(Ordering::Relaxed) {
            let now = self.current_snapshot().await?;
            if snap.xmax > now.xmax {
                return Err(StoreError::RevisionInFuture(at.clone()));
            }
        }
        if let Some(horizon) = self.gc_horizon().await?
            && !snap.sees(&horizon)
        {
            return Err(StoreError::RevisionTooOld {
                requested: at.clone(),
                oldest: Revision::new(horizon.to_string()),
            });
        }
        Ok(snap)
    }

    /// Closes the one gap the cached horizon leaves: GC deletes only below
    /// a horizon published at least 2 × HORIZON_TTL ago, and the cache is at
    /// most HORIZON_TTL old, so a read can only have raced a collection of
    /// its revision if more than HORIZON_TTL passed between its horizon check
    /// (`started`) and the end of its SQL. Such slow reads re-check against
    /// the published horizon, so they fail instead of answering from a
    /// collected state.
    pub(super) async fn still_readable(
        &self,
        at: &Revision,
        snap: &Snapshot,
        started: Instant,
    ) -> Result<(), StoreError> {
        if started.elapsed() < HORIZON_TTL {
            return Ok(());
        }
        match self.published_horizon().await? {
            Some(h) if !snap.sees(&h) => Err(StoreError::RevisionTooOld {
                requested: at.clone(),
                oldest: Revision::new(h.to_string()),
            }),
            _ => Ok(()),
        }
    }

    /// One garbage-collection run: deletes versions dead below the horizon
    /// published by the previous run, then publishes the next horizon.
    pub async fn gc(&self) -> Result<GcStats, StoreError> {
        self.gc_with_window(self.options.gc_window).await
    }

    pub async fn gc_with_window(&self, window: Duration) -> Result<GcStats, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(GC_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        if !locked {
            return Ok(GcStats::default());
        }
        let result = self.gc_locked(&mut conn, window).await;
        let p = &self.progress;
        match &result {
            Ok(stats) => {
                p.gc_passes.fetch_add(1, Ordering::Relaxed);
                p.gc_deleted.fetch_add(
                    stats.relationships_deleted + stats.schemas_deleted,
                    Ordering::Relaxed,
                );
                p.gc_last_pass_ms.store(now_ms(), Ordering::Relaxed);
            }
            Err(_) => {
                p.gc_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(GC_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // A session lock must not stay with a pooled connection: closing
            // the connection releases it.
            conn.close_on_drop();
        }
        result
    }

    pub(super) async fn gc_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        window: Duration,
    ) -> Result<GcStats, StoreError> {
        let horizon = self.published_horizon().await?;
        let mut stats = GcStats {
            horizon: horizon.as_ref().map(|h| h.xmax).unwrap_or(0),
            ..Default::default()
        };
        // Collect only below a horizon every process has seen: readers
        // cache it for HORIZON_TTL, so it must be older than that.
        let settled: bool = sqlx::query_scalar(
            "SELECT value::bigint <= (extract(epoch from clock_timestamp()) * 1000)::bigint - $1 \
             FROM kinbar_metadata WHERE key = 'gc_horizon_published_ms'",
        )
        .bind(2 * HORIZON_TTL.as_millis() as i64)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
        if let Some(h) = horizon.as_ref().filter(|_| settled) {
            for (table, counter) in [
                ("relationships", &mut stats.relationships_deleted),
                ("schema_versions", &mut stats.schemas_deleted),
            ] {
                loop {
                    // SQL-SAFE: `table` comes from the constant list above.
                    let done = sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} \
                         WHERE deleted_xid IS NOT NULL AND deleted_xid < $1::text::xid8 \
                         AND pg_visible_in_snapshot(deleted_xid, $2::pg_snapshot) LIMIT $3)"
                    )))
                    .bind(h.xmax.to_string())
                    .bind(h.to_string())
                    .bind(self.options.gc_batch)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?
                    .rows_affected();
                    *counter += done;
                    if done < self.options.gc_batch as u64 {
                        break;
                    }
                }
            }
        }
        // The next horizon: the revision of the newest transaction committed
        // before the window. Every revision taken after that commit sees it;
        // only revisions older than the window (or concurrent with that
        // transaction) are refused from now on.
        let next: Option<String> = sqlx::query_scalar(
            "SELECT revision FROM transactions \
             WHERE committed_at < clock_timestamp() - make_interval(secs => $1) \
             ORDER BY xid DESC LIMIT 1",
        )
        .bind(window.as_secs_f64())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        if let Some(next) = next.as_deref().and_then(Snapshot::parse)
            && horizon.as_ref().is_none_or(|h| next.sees(h) && next != *h)
        {
            sqlx::query(
                "UPDATE kinbar_metadata SET value = CASE key WHEN 'gc_horizon' THEN $1 \
                 ELSE (extract(epoch from clock_timestamp()) * 1000)::bigint::text END \
                 WHERE key IN ('gc_horizon', 'gc_horizon_published_ms')",
            )
            .bind(next.to_string())
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
            stats.horizon = next.xmax;
            if let Ok(mut h) = self.horizon.lock() {
                *h = Some((Instant::now(), Some(next)));
            }
        }
        Ok(stats)
    }
}
