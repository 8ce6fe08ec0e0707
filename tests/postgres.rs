//! The datastore conformance suite against Postgres, plus Postgres-only
//! behaviour: migrations, GC, the audit chain and tampering, snapshot
//! revisions under concurrency. One throwaway cluster per test binary
//! (started on first use), one fresh database per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::Duration;

use kinbar::store::Datastore;
use kinbar::store::postgres::{PostgresOptions, PostgresStore};
#[macro_use]
mod common;

use common::{cluster, database};

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

kinbar::datastore_conformance_tests!(postgres, skip_if kinbar::testing::skip_postgres_tests);

#[tokio::test]
async fn refuses_unmigrated_and_newer_databases() {
    skip_without_postgres!();
    let url = cluster().fresh_database().await.unwrap();
    let err = PostgresStore::open(&url, quiet()).await.err().unwrap();
    assert!(err.to_string().contains("kinbar migrate"), "{err}");
    let applied = PostgresStore::migrate(&url).await.unwrap();
    assert_eq!(applied, vec![1, 2, 3]);
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
    skip_without_postgres!();
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

/// The validation corpus (ours, the vendored SpiceDB phase-1 files and the
/// advisory regressions of tests/advisories)
/// passes on Postgres exactly as on memory, each file in its own fresh
/// database, exhaustively (Check ⇔ Expand ⇔ lookups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_corpus_passes_on_postgres() {
    skip_without_postgres!();
    let ours: Vec<std::path::PathBuf> = std::fs::read_dir("tests/validation")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(ours.len(), 4, "our validation files: {ours:?}");
    let corpus = std::path::Path::new("tests/conformance");
    let list = std::fs::read_to_string(corpus.join("phase1.txt")).unwrap();
    let spicedb: Vec<std::path::PathBuf> = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| corpus.join("spicedb").join(l.trim()))
        .collect();
    assert_eq!(spicedb.len(), 50, "vendored phase-1 files");
    let advisories: Vec<std::path::PathBuf> = std::fs::read_dir("tests/advisories")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(advisories.len(), 5, "advisory files: {advisories:?}");
    let mut files = ours;
    files.extend(spicedb);
    files.extend(advisories);
    files.sort();
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

fn rel(s: &str) -> kinbar::Relationship {
    s.parse().unwrap()
}

fn txn(ops: &[(kinbar::store::Operation, &str)], reason: &str) -> kinbar::store::WriteTxn {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("reason".to_string(), serde_json::json!(reason));
    kinbar::store::WriteTxn {
        updates: ops
            .iter()
            .map(|(operation, r)| kinbar::store::Update {
                operation: *operation,
                relationship: rel(r),
            })
            .collect(),
        metadata: kinbar::store::TxnMetadata {
            actor: "tester".into(),
            request_id: format!("req-{reason}"),
            fields,
        },
        ..Default::default()
    }
}

async fn verify(store: &PostgresStore) -> kinbar::audit::Verification {
    let records = store
        .read_audit(0, &Default::default(), usize::MAX)
        .await
        .unwrap();
    let mut v = kinbar::audit::Verifier::default();
    for r in &records {
        if let Err(broken) = v.push(r) {
            return broken;
        }
    }
    v.finish()
}

/// Old versions are collected after the window; reading a revision older
/// than the GC horizon is refused, the head is unaffected, and the audit
/// keeps every change.
#[tokio::test]
async fn gc_removes_dead_versions_and_refuses_old_revisions() {
    skip_without_postgres!();
    use kinbar::store::{Operation::*, Page, RelationshipFilter, StoreError};
    let store = PostgresStore::open(&database().await, quiet())
        .await
        .unwrap();
    let r1 = store
        .write(&txn(
            &[
                (Touch, "doc:1#viewer@user:a"),
                (Touch, "doc:1#viewer@user:b"),
            ],
            "one",
        ))
        .await
        .unwrap()
        .revision;
    store
        .write(&txn(&[(Delete, "doc:1#viewer@user:a")], "two"))
        .await
        .unwrap();
    let dead = |s: &PostgresStore| {
        let pool = s.pool_ref().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM relationships WHERE deleted_xid IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(dead(&store).await, 1);
    // A long window collects nothing and keeps r1 readable.
    let stats = store
        .gc_with_window(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(stats.relationships_deleted, 0);
    assert_eq!(stats.horizon, 0);
    store.check_revision(&r1).await.unwrap();
    // A zero window: the first run publishes the horizon, the next collects.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // One more write so a transaction exists whose snapshot is past the delete.
    store
        .write(&txn(&[(Touch, "doc:2#viewer@user:c")], "three"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first = store.gc_with_window(Duration::ZERO).await.unwrap();
    assert_eq!(first.relationships_deleted, 0);
    assert!(first.horizon > 0);
    let early = store.gc_with_window(Duration::ZERO).await.unwrap();
    assert_eq!(
        early.relationships_deleted, 0,
        "nothing is collected below a horizon readers may not have seen yet"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = store.gc_with_window(Duration::ZERO).await.unwrap();
    assert_eq!(second.relationships_deleted, 1);
    assert_eq!(dead(&store).await, 0);
    // Fresh stores (no cached horizon) refuse r1 with a clear error.
    let fresh = PostgresStore::open(&database_url_of(&store).await, quiet())
        .await
        .unwrap();
    match fresh
        .query(&r1, &RelationshipFilter::default(), &Page::default())
        .await
    {
        Err(StoreError::RevisionTooOld { .. }) => {}
        other => panic!("expected RevisionTooOld, got {other:?}"),
    }
    let head = fresh.head_revision().await.unwrap();
    let live = fresh
        .query(&head, &RelationshipFilter::default(), &Page::default())
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
    let audit = fresh.read_audit(0, &Default::default(), 100).await.unwrap();
    assert_eq!(audit.len(), 3, "the audit is not garbage-collected");
    assert_eq!(audit[1].changes[0].operation, "delete");
}

async fn database_url_of(store: &PostgresStore) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(store.pool_ref())
        .await
        .unwrap();
    cluster().url(&name)
}

/// Every write is audited in its transaction with who, why and what; the
/// chain verifies; altering any audit row in SQL breaks it at that record.
#[tokio::test]
async fn audit_chain_is_sealed_and_detects_sql_tampering() {
    skip_without_postgres!();
    use kinbar::store::Operation::*;
    let store = PostgresStore::open(&database().await, quiet())
        .await
        .unwrap();
    for i in 0..5 {
        store
            .write(&txn(
                &[
                    (Touch, &format!("doc:{i}#viewer@user:a")),
                    (Touch, "doc:x#viewer@user:b"),
                ],
                &format!("r{i}"),
            ))
            .await
            .unwrap();
    }
    // Unicode and JSON-special characters in the reason survive the round
    // trip through jsonb and the hash.
    let odd_reason = "Übergabe an Jörg ✓ \"quoted\" \\ back\nslash 🚀";
    store
        .write(&txn(&[(Touch, "doc:u#viewer@user:z")], odd_reason))
        .await
        .unwrap();
    let failed = store
        .write(&txn(&[(Create, "doc:0#viewer@user:a")], "dup"))
        .await;
    assert!(failed.is_err());
    let records = store.read_audit(0, &Default::default(), 100).await.unwrap();
    assert_eq!(records.len(), 6, "a failed write leaves no audit row");
    assert_eq!(records[5].metadata["reason"], serde_json::json!(odd_reason));
    assert_eq!(records[0].actor, "tester");
    assert_eq!(records[0].request_id, "req-r0");
    assert_eq!(records[0].metadata["reason"], serde_json::json!("r0"));
    assert_eq!(records[0].changes.len(), 2);
    assert_eq!(
        records[1].changes.len(),
        1,
        "touching an existing tuple is no change"
    );
    assert!(matches!(
        verify(&store).await,
        kinbar::audit::Verification::Intact { records: 6, .. }
    ));

    let pool = store.pool_ref().clone();
    sqlx::query("UPDATE audit_changes SET relationship = 'doc:9#viewer@user:mallory' WHERE xid = (SELECT xid FROM transactions WHERE audit_seq = 3) AND ord = 0")
        .execute(&pool)
        .await
        .unwrap();
    match verify(&store).await {
        kinbar::audit::Verification::Broken { sequence, .. } => assert_eq!(sequence, 3),
        other => panic!("tampering not detected: {other:?}"),
    }
    // Deleting a whole transaction is detected too (a gap in the chain).
    let url = database().await;
    let store = PostgresStore::open(&url, quiet()).await.unwrap();
    for i in 0..3 {
        store
            .write(&txn(&[(Touch, &format!("doc:{i}#viewer@user:a"))], "x"))
            .await
            .unwrap();
    }
    store.seal().await.unwrap();
    // A sealed record is final: the trigger refuses even the table owner...
    let refused = sqlx::query("UPDATE transactions SET actor = 'someone-else' WHERE audit_seq = 2")
        .execute(store.pool_ref())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("is sealed"), "{refused}");
    // ...until someone with the migration role disables it: verify finds it.
    sqlx::raw_sql(
        "ALTER TABLE transactions DISABLE TRIGGER transactions_sealed_is_final; \
         UPDATE transactions SET actor = 'someone-else' WHERE audit_seq = 2",
    )
    .execute(store.pool_ref())
    .await
    .unwrap();
    match verify(&store).await {
        kinbar::audit::Verification::Broken { sequence, .. } => assert_eq!(sequence, 2),
        other => panic!("tampering not detected: {other:?}"),
    }
}

/// Many writers on the same relationships: every write is applied exactly
/// once or cleanly refused, and replaying the audit reproduces the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_storm_applies_each_write_once_or_refuses_it() {
    skip_without_postgres!();
    use kinbar::store::{Operation, Page, RelationshipFilter, StoreError};
    let store = Arc::new(
        PostgresStore::open(&database().await, quiet())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for w in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..30 {
                let op = match (w + i) % 3 {
                    0 => Operation::Create,
                    1 => Operation::Touch,
                    _ => Operation::Delete,
                };
                let target = format!("doc:hot#viewer@user:u{}", i % 4);
                let other = format!("doc:hot#editor@user:w{w}");
                let result = store
                    .write(&txn(&[(op, &target), (Operation::Touch, &other)], "storm"))
                    .await;
                match result {
                    Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(StoreError::Unavailable(m)) if m.contains("conflicted") => {}
                    Err(e) => panic!("unexpected error in the storm: {e}"),
                }
                outcomes.push(());
            }
            outcomes.len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 30);
    }
    // Replay the audit (commit order) from empty and compare with the state.
    let records = store
        .read_audit(0, &Default::default(), usize::MAX)
        .await
        .unwrap();
    let mut state = std::collections::BTreeSet::new();
    for r in &records {
        for c in &r.changes {
            match c.operation.as_str() {
                "delete" => assert!(
                    state.remove(&c.relationship),
                    "delete of absent {}",
                    c.relationship
                ),
                _ => assert!(
                    state.insert(c.relationship.clone()),
                    "double insert of {}",
                    c.relationship
                ),
            }
        }
    }
    let head = store.head_revision().await.unwrap();
    let live: std::collections::BTreeSet<String> = store
        .query(&head, &RelationshipFilter::default(), &Page::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(live, state);
    assert!(matches!(
        verify(&store).await,
        kinbar::audit::Verification::Intact { .. }
    ));
}

/// Writers on disjoint relationships rarely conflict (and never fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_writers_do_not_fail() {
    skip_without_postgres!();
    use kinbar::store::Operation::*;
    let store = Arc::new(
        PostgresStore::open(&database().await, quiet())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                store
                    .write(&txn(
                        &[(Touch, &format!("doc:t{w}i{i}#viewer@user:u{}", i % 7))],
                        "d",
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let retries = store
        .conflict_retries
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("retries: {retries} for 600 writes");
}

/// A check costs a round trip per evaluation step, not one per relation
/// and object read: the reads one step makes (the relations a permission
/// names, its arrows' relations, and the same reads on every sibling the
/// step reaches) go to Postgres as one statement. 20 teams of 2 levels
/// under one document: ~120 reads one by one, a handful in batches — and
/// the same answers as the memory store's fast path.
#[tokio::test]
async fn a_check_costs_round_trips_per_step_not_per_read() {
    skip_without_postgres!();
    let schema = "definition user {}
definition team {
    relation member: user | team#member
    relation lead: user
    permission membership = member + lead
}
definition folder {
    relation reader: user
    permission view = reader
}
definition doc {
    relation parent: folder
    relation owner: user
    relation reader: user | team#membership
    relation blocked: user
    permission view = (owner + reader + parent->view) - blocked
}";
    let mut rels = vec!["doc:d#parent@folder:f".to_string()];
    for i in 0..20 {
        rels.push(format!("doc:d#reader@team:t{i}#membership"));
        rels.push(format!("team:t{i}#member@team:s{i}#member"));
        rels.push(format!("team:t{i}#lead@user:lead{i}"));
        rels.push(format!("team:s{i}#member@user:u{i}"));
    }
    let updates: Vec<kinbar::store::Update> = rels
        .iter()
        .map(|r| kinbar::store::Update {
            operation: kinbar::store::Operation::Touch,
            relationship: r.parse().unwrap(),
        })
        .collect();
    let pg = kinbar::Engine::new(postgres().await, kinbar::EngineConfig::default());
    let mem = kinbar::in_memory();
    for e in [&pg, &mem] {
        e.write_schema(schema, Default::default()).await.unwrap();
        e.write_relationships(updates.clone(), vec![], Default::default())
            .await
            .unwrap();
    }
    let doc: kinbar::ObjectRef = "doc:d".parse().unwrap();
    for (subject, want) in [
        ("user:nobody", kinbar::Decision::Denied),
        ("user:u19", kinbar::Decision::Allowed),
        ("user:lead7", kinbar::Decision::Allowed),
    ] {
        let subject: kinbar::SubjectRef = subject.parse().unwrap();
        let before = pg
            .metrics
            .datastore_queries
            .load(std::sync::atomic::Ordering::Relaxed);
        let got = pg.check(&doc, "view", &subject).await.unwrap();
        let queries = pg
            .metrics
            .datastore_queries
            .load(std::sync::atomic::Ordering::Relaxed)
            - before;
        assert_eq!(got, want, "{subject} on Postgres");
        assert_eq!(mem.check(&doc, "view", &subject).await.unwrap(), want);
        // The doc's reads (owner, reader, reader's usersets, parent,
        // blocked), then teams t* and folder f (61 reads: 2 statements of
        // at most 32), then teams s* (40 reads: 2). One by one: 105.
        assert!(
            queries <= 5,
            "{subject}: {queries} datastore statements for one check"
        );
    }
}
