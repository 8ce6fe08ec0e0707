//! The Postgres datastore (production).
//!
//! * Relationships carry `created_xid` / `deleted_xid` (`xid8`); a revision
//!   is a `pg_snapshot` ([`Snapshot`]) and a row is visible at it when its
//!   creator is visible and its deleter is not. Reads bind the snapshot and
//!   filter with `pg_visible_in_snapshot`, so a read at a revision sees
//!   exactly the transactions committed in it, whatever commits later.
//! * Writes run in `SERIALIZABLE` transactions, retried (bounded, with
//!   backoff) on serialization failures and deadlocks. A write's revision is
//!   its own snapshot with its own xid counted as committed.
//! * Every write inserts its `transactions` row and one `audit_changes` row
//!   per changed relationship in the same transaction. A sealer (background
//!   task, and before every audit read) links unsealed transactions into
//!   the SHA-256 chain in the order they become visible, under an advisory
//!   lock, never touching sealed rows.
//! * Watch (`changes_since`) takes a snapshot and returns the transactions
//!   it sees that the previous position did not, by xid; each one's
//!   revision is a position that sees exactly what was delivered so far.
//! * Garbage collection deletes versions whose deleter is visible in the GC
//!   horizon published by the previous run, then publishes a new horizon:
//!   the revision of the newest transaction older than the window. Reads at
//!   revisions that do not see the horizon are refused (too old).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

mod datastore;
mod gc;
mod replica;
mod seal;
pub mod snapshot;
mod sql;
mod write;

use replica::Replica;
pub use snapshot::Snapshot;
use sql::*;

use super::*;
use crate::audit::{AuditChange, AuditFilter, AuditRecord};
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};

/// The embedded, versioned migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How often a write is retried after a serialization failure.
const MAX_WRITE_ATTEMPTS: u32 = 20;
/// Advisory lock keys (arbitrary, fixed).
const SEAL_LOCK: i64 = 0x6b69_6e62_6172_0001;
const GC_LOCK: i64 = 0x6b69_6e62_6172_0002;
/// How long a cached GC horizon is trusted; GC deletes only below the
/// horizon published by its previous run, at least one interval earlier.
const HORIZON_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// Dead versions younger than this are kept (reads at them stay valid).
    pub gc_window: Duration,
    /// Rows deleted per GC statement.
    pub gc_batch: i64,
    /// A hot-standby replica for reads at a revision. A read goes there
    /// only when the replica's snapshot sees the revision (else to the
    /// primary), so a lagging replica never serves a stale answer.
    pub read_replica_url: Option<String>,
    /// Background sealing and GC intervals (`None`: no background task).
    pub seal_interval: Option<Duration>,
    pub gc_interval: Option<Duration>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            gc_window: Duration::from_secs(24 * 3600),
            gc_batch: 1000,
            read_replica_url: None,
            seal_interval: Some(Duration::from_millis(250)),
            gc_interval: Some(Duration::from_secs(60)),
        }
    }
}

pub struct PostgresStore {
    id: String,
    pool: PgPool,
    options: PostgresOptions,
    /// `(fetched at, horizon)`: revisions must see the horizon snapshot.
    horizon: Mutex<Option<(Instant, Option<Snapshot>)>>,
    /// The largest xmax seen in a current snapshot (revisions beyond are in the future).
    seen_xmax: AtomicU64,
    optimized: Mutex<Option<(u64, u64, Revision)>>,
    /// The schema read at the last revision asked for: requests share the
    /// quantized revision, so this saves a query per request.
    schema_at: Mutex<Option<(Revision, Option<StoredSchema>)>>,
    /// Background tasks end when the store is dropped.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Write attempts retried after a serialization failure or deadlock.
    pub conflict_retries: AtomicU64,
    /// Sealer and GC progress, for `/metrics`.
    progress: Progress,
    replica: Option<Replica>,
}

/// Background-work totals since the store was opened.
#[derive(Default)]
pub(super) struct Progress {
    pub sealed: AtomicU64,
    pub gc_passes: AtomicU64,
    pub gc_failures: AtomicU64,
    pub gc_deleted: AtomicU64,
    pub gc_last_pass_ms: AtomicU64,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl PostgresStore {
    /// Connects, and refuses a database that is not migrated to exactly
    /// this binary's schema version. Starts the background sealer and GC.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let pool = Self::pool(url, &options).await?;
        check_migrations(&pool).await?;
        check_transaction_ids(&pool).await?;
        let id: String =
            sqlx::query_scalar("SELECT value FROM kinbar_metadata WHERE key = 'datastore_id'")
                .fetch_one(&pool)
                .await
                .map_err(db_err)?;
        let replica = match &options.read_replica_url {
            Some(url) => Some(Replica {
                pool: Self::pool(url, &options).await?,
                seen: Mutex::new(None),
                served: AtomicU64::new(0),
                behind: AtomicU64::new(0),
            }),
            None => None,
        };
        let store = PostgresStore {
            id,
            replica,
            pool,
            options,
            horizon: Mutex::new(None),
            seen_xmax: AtomicU64::new(0),
            optimized: Mutex::new(None),
            schema_at: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            conflict_retries: AtomicU64::new(0),
            progress: Progress::default(),
        };
        Ok(store)
    }

    /// Starts the background sealer and garbage collector (when configured).
    /// They hold only a weak reference: dropping the store ends them.
    pub fn start_background(self: &std::sync::Arc<Self>) {
        let mut handles = Vec::new();
        if let Some(every) = self.options.seal_interval {
            let weak = std::sync::Arc::downgrade(self);
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(store) = weak.upgrade() else { return };
                    if let Err(e) = store.seal().await {
                        tracing::warn!(error = %e, "audit sealing failed; will retry");
                    }
                }
            }));
        }
        if let Some(every) = self.options.gc_interval {
            let weak = std::sync::Arc::downgrade(self);
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(HORIZON_TTL * 2));
                loop {
                    tick.tick().await;
                    let Some(store) = weak.upgrade() else { return };
                    match store.gc().await {
                        Ok(stats) if stats.relationships_deleted + stats.schemas_deleted > 0 => {
                            tracing::info!(
                                relationships_deleted = stats.relationships_deleted,
                                schemas_deleted = stats.schemas_deleted,
                                conflict_retries = store.conflict_retries.load(Ordering::Relaxed),
                                "garbage collection"
                            )
                        }
                        Ok(stats) => tracing::debug!(?stats, "garbage collection"),
                        Err(e) => {
                            tracing::warn!(error = %e, "garbage collection failed; will retry")
                        }
                    }
                }
            }));
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.extend(handles);
        }
    }

    async fn pool(url: &str, options: &PostgresOptions) -> Result<PgPool, StoreError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Internal(format!("invalid Postgres URL: {e}")))?
            .application_name("kinbar")
            .options([(
                "statement_timeout",
                format!("{}ms", options.statement_timeout.as_millis()),
            )]);
        PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(unavailable)
    }

    /// The grants a runtime role needs and nothing more (`kinbar migrate
    /// --print-grants ROLE`): reads and writes of relationships and schema
    /// versions, INSERT-only audit rows (plus filling the three chain
    /// columns of unsealed transactions, which a trigger forbids once
    /// sealed), the GC horizon. No DDL, no UPDATE/DELETE/TRUNCATE of audit
    /// rows. `role` must be a plain identifier.
    pub fn runtime_grants(role: &str) -> Result<String, String> {
        let plain = !role.is_empty()
            && role.len() <= 63
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !role.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(format!(
                "`{role}` is not a plain role name (lowercase letters, digits, _)"
            ));
        }
        Ok(format!(
            "-- Runtime grants for `kinbar serve` (run as the migration role).\n\
             GRANT USAGE ON SCHEMA public TO {role};\n\
             GRANT SELECT ON _sqlx_migrations, kinbar_metadata TO {role};\n\
             GRANT UPDATE (value) ON kinbar_metadata TO {role};\n\
             GRANT SELECT, INSERT, DELETE ON relationships, schema_versions TO {role};\n\
             GRANT UPDATE (deleted_xid) ON relationships, schema_versions TO {role};\n\
             GRANT SELECT, INSERT ON transactions, audit_changes TO {role};\n\
             GRANT UPDATE (audit_seq, previous_hash, hash) ON transactions TO {role};\n\
             GRANT SELECT, INSERT ON security_events TO {role};\n\
             GRANT UPDATE (at_ms, method, code, reason, count) ON security_events TO {role};\n\
             GRANT USAGE ON SEQUENCE security_events_id_seq TO {role};\n"
        ))
    }

    /// What the connected role may do beyond the runtime grants (empty:
    /// least privilege). `kinbar serve` refuses such a role unless told.
    pub async fn excess_privileges(&self) -> Result<Vec<String>, StoreError> {
        let row = sqlx::query(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, \
               has_schema_privilege('public', 'CREATE'), \
               EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' \
                 AND tablename IN ('relationships', 'transactions', 'audit_changes') \
                 AND tableowner = current_user), \
               has_table_privilege('transactions', 'UPDATE'), \
               has_table_privilege('transactions', 'DELETE'), \
               has_table_privilege('transactions', 'TRUNCATE'), \
               has_table_privilege('audit_changes', 'UPDATE'), \
               has_table_privilege('audit_changes', 'DELETE'), \
               has_table_privilege('audit_changes', 'TRUNCATE') \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let names = [
            "is a superuser",
            "can create roles",
            "can create databases",
            "can create objects in schema public (DDL)",
            "owns Kinbar's tables (DDL)",
            "can UPDATE audit transactions",
            "can DELETE audit transactions",
            "can TRUNCATE audit transactions",
            "can UPDATE audit changes",
            "can DELETE audit changes",
            "can TRUNCATE audit changes",
        ];
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if row.try_get::<bool, _>(i).map_err(db_err)? {
                out.push((*name).to_string());
            }
        }
        Ok(out)
    }

    /// Applies pending migrations (`kinbar migrate`). Returns the versions applied.
    pub async fn migrate(url: &str) -> Result<Vec<i64>, StoreError> {
        let pool = Self::pool(url, &PostgresOptions::default()).await?;
        let before = applied_versions(&pool).await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let after = applied_versions(&pool).await?;
        pool.close().await;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    pub fn pool_ref(&self) -> &PgPool {
        &self.pool
    }

    async fn current_snapshot(&self) -> Result<Snapshot, StoreError> {
        let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        let snap = server_snapshot(&text)?;
        self.seen_xmax.fetch_max(snap.xmax, Ordering::Relaxed);
        Ok(snap)
    }
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(pool)
        .await
        .map_err(db_err)
}

/// Refuses an unmigrated, partly migrated or newer database.
/// Refuses a database whose data was written by transaction ids this
/// cluster has not reached: revisions *are* transaction ids, so such rows
/// are invisible and every check would be denied. It happens when a
/// logical dump (`pg_dump`) is restored into another cluster, whose
/// transaction counter starts low; docs/OPERATIONS.md says how to restore.
pub(super) async fn check_transaction_ids(pool: &PgPool) -> Result<(), StoreError> {
    let ahead: Option<(String, String)> = sqlx::query_as(
        "SELECT t.xid::text, pg_snapshot_xmax(pg_current_snapshot())::text \
         FROM (SELECT xid FROM transactions ORDER BY xid DESC LIMIT 1) t \
         WHERE t.xid >= pg_snapshot_xmax(pg_current_snapshot())",
    )
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    match ahead {
        None => Ok(()),
        Some((newest, next)) => Err(StoreError::Internal(format!(
            "the database holds transaction {newest} but this Postgres cluster's next transaction id is {next}: \
             it was restored from a logical dump into another cluster, and its data would be invisible; \
             restore with a physical backup, or advance the cluster's transaction ids past {newest} \
             (see \"Backup and restore\" in docs/OPERATIONS.md)"
        ))),
    }
}

pub(super) async fn check_migrations(pool: &PgPool) -> Result<(), StoreError> {
    let applied = applied_versions(pool).await?;
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if let Some(v) = applied.iter().find(|v| !known.contains(v)) {
        return Err(StoreError::Internal(format!(
            "the database has migration {v}, which this kinbar does not know: it was migrated by a newer version; upgrade kinbar"
        )));
    }
    if applied.len() < known.len() {
        return Err(StoreError::Internal(format!(
            "the database is not migrated ({} of {} migrations applied); run `kinbar migrate --datastore <url>` first",
            applied.len(),
            known.len()
        )));
    }
    Ok(())
}
