//! The datastore conformance suite against Postgres, plus Postgres-only
//! behaviour: migrations, GC, the audit chain and tampering, snapshot
//! revisions under concurrency. One throwaway cluster per test binary
//! (started on first use), one fresh database per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kinbar::store::postgres::{PostgresOptions, PostgresStore};
use kinbar::store::{Datastore, conformance};
use kinbar::testing::TempPostgres;

fn cluster() -> &'static TempPostgres {
    static CLUSTER: OnceLock<TempPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| TempPostgres::start().expect("throwaway Postgres cluster"))
}

/// A migrated, empty database and its URL.
async fn database() -> String {
    let url = cluster().fresh_database().await.unwrap();
    PostgresStore::migrate(&url).await.unwrap();
    url
}

fn quiet() -> PostgresOptions {
    PostgresOptions {
        seal_interval: None,
        gc_interval: None,
        ..Default::default()
    }
}

async fn postgres() -> Arc<dyn Datastore> {
    Arc::new(
        PostgresStore::open(&database().await, quiet())
            .await
            .unwrap(),
    )
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                conformance::$name(postgres().await).await;
            }
        )*
    };
}

suite!(
    snapshot_isolation,
    create_touch_conflicts,
    preconditions,
    delete_and_filters,
    paging,
    large_and_odd_writes,
    concurrent_writers_and_changes,
    schema_versions,
    optimized_revisions,
);

#[tokio::test]
async fn refuses_unmigrated_and_newer_databases() {
    let url = cluster().fresh_database().await.unwrap();
    let err = PostgresStore::open(&url, quiet()).await.err().unwrap();
    assert!(err.to_string().contains("kinbar migrate"), "{err}");
    let applied = PostgresStore::migrate(&url).await.unwrap();
    assert_eq!(applied, vec![1]);
    assert!(
        PostgresStore::migrate(&url).await.unwrap().is_empty(),
        "idempotent"
    );
    let store = PostgresStore::open(&url, quiet()).await.unwrap();
    assert!(store.id().starts_with("pg-"));
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(store.pool_ref())
    .await
    .unwrap();
    let err = PostgresStore::open(&url, quiet()).await.err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn datastore_id_is_stable_across_opens() {
    let url = database().await;
    let a = PostgresStore::open(&url, quiet()).await.unwrap();
    let b = PostgresStore::open(&url, quiet()).await.unwrap();
    assert_eq!(a.id(), b.id());
    let other = PostgresStore::open(&database().await, quiet())
        .await
        .unwrap();
    assert_ne!(a.id(), other.id());
}

#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let err = PostgresStore::open(
        "postgres://postgres@localhost/x?host=/nonexistent-kinbar-dir",
        PostgresOptions {
            acquire_timeout: Duration::from_millis(500),
            ..quiet()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, kinbar::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
}

/// The validation corpus (ours, and SpiceDB's phase-1 files when present
/// beside the project) passes on Postgres exactly as on memory, each file
/// in its own fresh database, exhaustively (Check ⇔ Expand ⇔ lookups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_corpus_passes_on_postgres() {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("tests/validation")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let corpus = std::path::Path::new("../shared/conformance");
    if let Ok(list) = std::fs::read_to_string(corpus.join("phase1.txt")) {
        files.extend(
            list.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| corpus.join("spicedb").join(l.trim())),
        );
    }
    files.sort();
    assert!(files.len() >= 10, "corpus found: {files:?}");
    let options = kinbar::validate::Options { exhaustive: true };
    let mut failed = Vec::new();
    for f in &files {
        let report = kinbar::validate::validate_file_in(f, &options, postgres().await).await;
        if report.error.is_some() || !report.failures.is_empty() {
            failed.push(report.render());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
