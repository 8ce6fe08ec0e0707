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
        ..Default::default()
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
        revs.push(store.write(&txn).await.unwrap().revision);
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
    store.write(&txn(0)).await.unwrap();
    let at = store.head_revision().await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 1..500 {
                store.write(&txn(i)).await.unwrap();
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

/// One generated write: updates over a small universe (so they collide,
/// recreate and delete), and maybe a delete by filter first.
#[derive(Debug, Clone)]
struct GenTxn {
    delete_resource: Option<u8>,
    delete_subject: Option<u8>,
    updates: Vec<(u8, u8, u8, u8)>,
}

fn gen_txn() -> impl Strategy<Value = GenTxn> {
    (
        proptest::option::weighted(0.15, 0u8..4),
        proptest::option::weighted(0.1, 0u8..5),
        prop::collection::vec((0u8..3, 0u8..4, 0u8..2, 0u8..5), 0..6),
    )
        .prop_map(|(delete_resource, delete_subject, updates)| GenTxn {
            delete_resource,
            delete_subject,
            updates,
        })
}

const SUBJECTS: [&str; 5] = ["user:b", "user:a", "group:g#member", "user:*", "group:g"];

fn gen_rel(doc: u8, relation: u8, subject: u8) -> Relationship {
    let relation = ["viewer", "editor"][relation as usize];
    format!("doc:{doc}#{relation}@{}", SUBJECTS[subject as usize])
        .parse()
        .unwrap()
}

fn subject_filter(subject: u8) -> kinbar::store::SubjectFilter {
    let s: kinbar::model::SubjectRef = SUBJECTS[subject as usize].parse().unwrap();
    kinbar::store::SubjectFilter {
        subject_type: s.object.object_type.clone(),
        subject_ids: vec![s.object.object_id.clone()],
        relation: Some(s.relation.clone()),
        exclude_wildcard: false,
    }
}

/// Applies `t` to `state` as the store must: deletes by filter, then the
/// updates in order; a CREATE of an existing relationship refuses it all.
fn reference_apply(
    state: &std::collections::BTreeSet<Relationship>,
    t: &GenTxn,
) -> Option<std::collections::BTreeSet<Relationship>> {
    let mut next = state.clone();
    if let Some(d) = t.delete_resource {
        next.retain(|r| r.resource.object_id != d.to_string());
    }
    if let Some(s) = t.delete_subject {
        let f = subject_filter(s);
        next.retain(|r| !f.matches(&r.subject));
    }
    for &(op, doc, rel, subject) in &t.updates {
        let r = gen_rel(doc, rel, subject);
        match op {
            0 if next.contains(&r) => return None,
            0 | 1 => {
                next.insert(r);
            }
            _ => {
                next.remove(&r);
            }
        }
    }
    Some(next)
}

/// Everything `filter` matches at `rev`, read in pages of `page`.
async fn read_paged(
    store: &MemoryStore,
    rev: &kinbar::Revision,
    filter: &RelationshipFilter,
    page: usize,
) -> Vec<Relationship> {
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let got = store
            .query(
                rev,
                filter,
                &Page {
                    after: after.clone(),
                    limit: Some(page),
                },
            )
            .await
            .unwrap();
        after = got.last().cloned();
        let done = got.len() < page;
        paged.extend(got);
        if done {
            return paged;
        }
    }
}

async fn model_run(txns: Vec<GenTxn>, page: usize) -> Result<(), TestCaseError> {
    use kinbar::store::{DeleteByFilter, Operation, Update, WriteTxn};
    let store = MemoryStore::new(MemoryOptions {
        gc_window: Duration::from_secs(3600),
        max_retained_revisions: 4,
        ..Default::default()
    });
    let mut states = vec![(
        store.head_revision().await.unwrap(),
        std::collections::BTreeSet::new(),
    )];
    for t in &txns {
        let mut deletes = Vec::new();
        if let Some(d) = t.delete_resource {
            deletes.push(DeleteByFilter {
                filter: RelationshipFilter {
                    resource_type: Some("doc".into()),
                    resource_ids: vec![d.to_string()],
                    ..Default::default()
                },
                limit: None,
                allow_partial: false,
                expect_exactly: false,
            });
        }
        if let Some(s) = t.delete_subject {
            deletes.push(DeleteByFilter {
                filter: RelationshipFilter {
                    subject: Some(subject_filter(s)),
                    ..Default::default()
                },
                limit: None,
                allow_partial: false,
                expect_exactly: false,
            });
        }
        let updates = t
            .updates
            .iter()
            .map(|&(op, doc, rel, subject)| Update {
                operation: [Operation::Create, Operation::Touch, Operation::Delete][op as usize],
                relationship: gen_rel(doc, rel, subject),
            })
            .collect();
        let head = store.head_revision().await.unwrap();
        let expected = reference_apply(&states.last().unwrap().1, t);
        let result = store
            .write(&WriteTxn {
                updates,
                deletes,
                ..Default::default()
            })
            .await;
        match (expected, result) {
            (Some(next), Ok(committed)) => states.push((committed.revision, next)),
            (None, Err(StoreError::AlreadyExists(_))) => {
                // All or nothing: the head and what it holds are unchanged.
                prop_assert_eq!(store.head_revision().await.unwrap(), head);
            }
            (e, r) => prop_assert!(false, "reference {:?} but store {:?}", e.is_some(), r),
        }
        // Every retained revision reads exactly its state, whole, paged, by
        // resource and by subject; older ones are refused.
        let retained = store.retained_revisions();
        let first_kept = states.len().saturating_sub(retained);
        for (i, (rev, state)) in states.iter().enumerate() {
            let all = store
                .query(rev, &RelationshipFilter::default(), &Page::default())
                .await;
            if i < first_kept {
                let too_old = matches!(all, Err(StoreError::RevisionTooOld { .. }));
                prop_assert!(too_old, "revision {} should be too old", rev);
                continue;
            }
            let want: Vec<Relationship> = state.iter().cloned().collect();
            prop_assert_eq!(&all.unwrap(), &want);
            let docs = RelationshipFilter {
                resource_type: Some("doc".into()),
                ..Default::default()
            };
            let paged = read_paged(&store, rev, &docs, page).await;
            prop_assert_eq!(&paged, &want);
            for s in 0..SUBJECTS.len() as u8 {
                let f = RelationshipFilter {
                    subject: Some(subject_filter(s)),
                    ..Default::default()
                };
                let by_subject = store.query(rev, &f, &Page::default()).await.unwrap();
                let want: Vec<Relationship> =
                    state.iter().filter(|r| f.matches(r)).cloned().collect();
                prop_assert_eq!(&by_subject, &want);
                // Paged, also for two subjects at once (the store merges
                // its by-subject groups from the cursor).
                let mut two = subject_filter(s);
                let other = subject_filter((s + 1) % SUBJECTS.len() as u8);
                if other.subject_type == two.subject_type && other.relation == two.relation {
                    two.subject_ids.extend(other.subject_ids);
                }
                let any_relation = kinbar::store::SubjectFilter {
                    relation: None,
                    ..subject_filter(s)
                };
                for f in [
                    f.clone(),
                    RelationshipFilter {
                        subject: Some(two),
                        ..Default::default()
                    },
                    RelationshipFilter {
                        subject: Some(any_relation),
                        ..Default::default()
                    },
                ] {
                    let want: Vec<Relationship> =
                        state.iter().filter(|r| f.matches(r)).cloned().collect();
                    let paged = read_paged(&store, rev, &f, page).await;
                    prop_assert_eq!(paged, want);
                }
            }
            for doc in 0..4u8 {
                let f = RelationshipFilter {
                    resource_type: Some("doc".into()),
                    resource_ids: vec![doc.to_string()],
                    relation: Some("viewer".into()),
                    subject: Some(kinbar::store::SubjectFilter {
                        subject_type: "user".into(),
                        subject_ids: vec!["a".into(), "*".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let seek = store.query(rev, &f, &Page::default()).await.unwrap();
                let want: Vec<Relationship> =
                    state.iter().filter(|r| f.matches(r)).cloned().collect();
                prop_assert_eq!(seek, want);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The compact MVCC store against a reference that keeps a whole set
    /// per revision: every retained revision reads its own state (also
    /// after versions are recreated, deleted by filter and collected),
    /// paging concatenates, failed writes change nothing.
    #[test]
    fn memory_store_matches_a_set_per_revision(
        txns in prop::collection::vec(gen_txn(), 1..25),
        page in 1usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(model_run(txns, page))?;
    }
}
