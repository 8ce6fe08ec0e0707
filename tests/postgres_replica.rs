//! Reads from a hot-standby replica: served there once it has replayed the
//! revision asked for, from the primary while it lags — never stale.
//! Its own test binary: it runs a primary and a streaming replica.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use kinbar::store::postgres::{PostgresOptions, PostgresStore};
use kinbar::store::{Datastore, Operation, Page, RelationshipFilter, Update, WriteTxn};

fn touch_txn(text: &str) -> WriteTxn {
    WriteTxn {
        updates: vec![Update {
            operation: Operation::Touch,
            relationship: text.parse().unwrap(),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_are_never_stale() {
    skip_without_postgres!();
    let url = database().await;
    let replica = cluster().start_replica().unwrap();
    let db = url
        .split('/')
        .nth(3)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let replica_url = replica.url(&db);
    let store = PostgresStore::open(
        &url,
        PostgresOptions {
            read_replica_url: Some(replica_url.clone()),
            seal_interval: None,
            gc_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let all = RelationshipFilter::default();
    // Each read at a write's revision sees that write, wherever it is served.
    for i in 0..50 {
        let rev = store
            .write(&touch_txn(&format!("doc:{i}#viewer@user:a")))
            .await
            .unwrap()
            .revision;
        let got = store.query(&rev, &all, &Page::default()).await.unwrap();
        assert_eq!(got.len(), i + 1, "read at write {i} is stale");
    }
    // Once caught up, reads at an older revision are served by the replica.
    let rev = store.head_revision().await.unwrap();
    let mut served = 0;
    for _ in 0..100 {
        store.query(&rev, &all, &Page::default()).await.unwrap();
        served = store.replica_stats().unwrap().0;
        if served > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 0, "the replica never served a read");
    // Pause replay: new revisions go to the primary, still correct.
    let paused = sqlx::PgPool::connect(&replica_url).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&paused)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, behind_before) = store.replica_stats().unwrap();
    let rev = store
        .write(&touch_txn("doc:late#viewer@user:b"))
        .await
        .unwrap()
        .revision;
    let got = store.query(&rev, &all, &Page::default()).await.unwrap();
    assert_eq!(got.len(), 51, "a lagging replica served a stale read");
    let (_, behind_after) = store.replica_stats().unwrap();
    assert!(
        behind_after > behind_before,
        "the read did not fall back to the primary"
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&paused)
        .await
        .unwrap();
}
