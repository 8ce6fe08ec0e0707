//! The optional hot-standby read replica: a read at a revision goes there
//! only once the replica has replayed every transaction the revision sees.

use super::*;

pub(super) struct Replica {
    pub(super) pool: PgPool,
    /// The newest snapshot seen on the replica.
    pub(super) seen: Mutex<Option<Snapshot>>,
    /// Reads served by the replica, and reads it could not serve yet.
    pub(super) served: AtomicU64,
    pub(super) behind: AtomicU64,
}

impl PostgresStore {
    /// `(served, behind)`: reads served by the replica, and reads sent to
    /// the primary because the replica had not replayed the revision yet.
    pub fn replica_stats(&self) -> Option<(u64, u64)> {
        self.replica.as_ref().map(|r| {
            (
                r.served.load(Ordering::Relaxed),
                r.behind.load(Ordering::Relaxed),
            )
        })
    }

    /// The pool to read `at` from: the replica if it has replayed every
    /// transaction `at` sees, else the primary.
    pub(super) async fn reader(&self, at: &Snapshot) -> &PgPool {
        let Some(r) = &self.replica else {
            return &self.pool;
        };
        let known = r.seen.lock().ok().and_then(|s| s.clone());
        if known.is_some_and(|s| s.sees(at)) {
            r.served.fetch_add(1, Ordering::Relaxed);
            return &r.pool;
        }
        let fresh: Result<String, _> = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&r.pool)
            .await;
        match fresh.ok().as_deref().and_then(Snapshot::parse) {
            Some(s) => {
                let ok = s.sees(at);
                if let Ok(mut seen) = r.seen.lock() {
                    *seen = Some(s);
                }
                if ok {
                    r.served.fetch_add(1, Ordering::Relaxed);
                    &r.pool
                } else {
                    r.behind.fetch_add(1, Ordering::Relaxed);
                    &self.pool
                }
            }
            None => {
                r.behind.fetch_add(1, Ordering::Relaxed);
                &self.pool
            }
        }
    }
}
