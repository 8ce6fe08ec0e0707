//! The datastore conformance suite against the memory store, plus
//! memory-specific retention (GC) tests and relationship-parser fuzzing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::Duration;

use kinbar::model::Relationship;
use kinbar::store::memory::{MemoryOptions, MemoryStore};
use kinbar::store::{Datastore, Page, RelationshipFilter, StoreError};
use proptest::prelude::*;

async fn memory() -> Arc<dyn Datastore> {
    Arc::new(MemoryStore::default())
}

kinbar::datastore_conformance_tests!(memory);

#[tokio::test]
async fn revisions_outside_retention_are_reported_too_old() {
    let store = MemoryStore::new(MemoryOptions {
        gc_window: Duration::from_secs(3600),
        max_retained_revisions: 3,
    });
    let mut revs = Vec::new();
    for i in 0..6 {
        let txn = kinbar::store::WriteTxn {
            updates: vec![kinbar::store::Update {
                operation: kinbar::store::Operation::Touch,
                relationship: format!("doc:{i}#viewer@user:a").parse().unwrap(),
            }],
            ..Default::default()
        };
        revs.push(store.write(txn).await.unwrap().revision);
    }
    assert_eq!(store.retained_revisions(), 3);
    match store
        .query(&revs[0], &RelationshipFilter::default(), &Page::default())
        .await
    {
        Err(StoreError::RevisionTooOld { requested, oldest }) => {
            assert_eq!(requested, revs[0]);
            assert_eq!(oldest, revs[3]);
        }
        other => panic!("expected too old, got {other:?}"),
    }
    let at_oldest = store
        .query(&revs[3], &RelationshipFilter::default(), &Page::default())
        .await
        .unwrap();
    assert_eq!(at_oldest.len(), 4);
    // A zero window keeps only the head.
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.gc_with_window(Duration::ZERO).unwrap();
    assert_eq!(store.retained_revisions(), 1);
    assert!(store.check_revision(revs.last().unwrap()).await.is_ok());
    assert!(store.check_revision(&revs[4]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_a_revision_never_sees_later_writes() {
    let store: Arc<dyn Datastore> = memory().await;
    let txn = |i: usize| kinbar::store::WriteTxn {
        updates: vec![kinbar::store::Update {
            operation: kinbar::store::Operation::Touch,
            relationship: format!("doc:{i}#viewer@user:a").parse().unwrap(),
        }],
        ..Default::default()
    };
    store.write(txn(0)).await.unwrap();
    let at = store.head_revision().await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..500 {
                store.write(txn(i)).await.unwrap();
            }
        })
    };
    for _ in 0..200 {
        let seen = store
            .query(&at, &RelationshipFilter::default(), &Page::default())
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    let head = store.head_revision().await.unwrap();
    assert_eq!(
        store
            .query(&head, &RelationshipFilter::default(), &Page::default())
            .await
            .unwrap()
            .len(),
        500
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn relationship_parser_never_panics(s in "\\PC{0,80}") {
        if let Err(e) = s.parse::<Relationship>() {
            prop_assert!(!e.message.is_empty());
            prop_assert!(e.column <= e.input.len());
        }
    }

    #[test]
    fn relationship_parser_near_misses(s in "[a-z/]{0,4}[:#@*]{0,2}[a-z0-9_|=+.\\-]{0,4}[:#@*. ]{0,2}[a-z]{0,3}[#@:]{0,2}[a-z*.]{0,4}") {
        match s.parse::<Relationship>() {
            Ok(r) => prop_assert_eq!(r.to_string().parse::<Relationship>().unwrap(), r),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn valid_relationships_round_trip(
        rt in "[a-z][a-z0-9_]{0,5}(/[a-z][a-z0-9_]{0,5})?",
        rid in "[A-Za-z0-9/_|=+@.:\\-]{1,20}",
        rel in "[a-z][a-z0-9_]{0,8}",
        st in "[a-z][a-z0-9_]{0,5}",
        sid in "[A-Za-z0-9/_|=+@.:\\-]{1,20}|\\*",
        srel in proptest::option::of("[a-z][a-z0-9_]{0,8}"),
    ) {
        let srel = if sid == "*" { None } else { srel };
        let text = match &srel {
            Some(r) => format!("{rt}:{rid}#{rel}@{st}:{sid}#{r}"),
            None => format!("{rt}:{rid}#{rel}@{st}:{sid}"),
        };
        let parsed: Relationship = text.parse().unwrap();
        prop_assert_eq!(parsed.to_string(), text);
    }
}
