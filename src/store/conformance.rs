//! The datastore conformance suite: one set of behaviours every backend must
//! show, run by `tests/store.rs` against each of them. Each check takes a
//! fresh, empty store and panics with a message on a violation (it is test
//! code that lives here so every backend's tests can call it).
#![allow(clippy::panic)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use crate::model::{Relationship, Revision};
use crate::store::*;

fn rel(s: &str) -> Relationship {
    // The suite's literals are valid relationships.
    #[allow(clippy::expect_used)]
    Relationship::parse(s).expect("valid relationship literal")
}

fn touch(rels: &[&str]) -> WriteTxn {
    WriteTxn {
        updates: rels
            .iter()
            .map(|r| Update {
                operation: Operation::Touch,
                relationship: rel(r),
            })
            .collect(),
        ..Default::default()
    }
}

fn all() -> RelationshipFilter {
    RelationshipFilter::default()
}

async fn read(store: &dyn Datastore, at: &Revision, filter: &RelationshipFilter) -> Vec<String> {
    store
        .query(at, filter, &Page::default())
        .await
        .unwrap_or_else(|e| panic!("query failed: {e}"))
        .iter()
        .map(|r| r.to_string())
        .collect()
}

fn delete(r: &str) -> WriteTxn {
    WriteTxn {
        updates: vec![Update {
            operation: Operation::Delete,
            relationship: rel(r),
        }],
        ..Default::default()
    }
}

async fn head(store: &dyn Datastore) -> Revision {
    store
        .head_revision()
        .await
        .unwrap_or_else(|e| panic!("head_revision failed: {e}"))
}

/// Whether `a` sees everything `b` sees, by the store's own ordering.
async fn sees(store: &dyn Datastore, a: &Revision, b: &Revision) -> bool {
    store
        .at_least_as_fresh(b, a.clone())
        .await
        .unwrap_or_else(|e| panic!("at_least_as_fresh failed: {e}"))
        == *a
}

async fn write(store: &dyn Datastore, txn: WriteTxn) -> CommittedTxn {
    store
        .write(&txn)
        .await
        .unwrap_or_else(|e| panic!("write failed: {e}"))
}

/// A read at revision R sees exactly the writes committed up to R.
pub async fn snapshot_isolation(store: Arc<dyn Datastore>) {
    let r1 = write(&*store, touch(&["doc:1#viewer@user:a"]))
        .await
        .revision;
    let r2 = write(&*store, touch(&["doc:1#viewer@user:b"]))
        .await
        .revision;
    let r3 = write(&*store, delete("doc:1#viewer@user:a")).await.revision;
    assert!(
        sees(&*store, &r2, &r1).await
            && sees(&*store, &r3, &r2).await
            && sees(&*store, &r3, &r1).await,
        "later revisions see earlier ones: {r1} {r2} {r3}"
    );
    assert!(
        !sees(&*store, &r1, &r2).await && !sees(&*store, &r2, &r3).await,
        "earlier revisions do not see later ones: {r1} {r2} {r3}"
    );
    assert_eq!(read(&*store, &r1, &all()).await, ["doc:1#viewer@user:a"]);
    assert_eq!(
        read(&*store, &r2, &all()).await,
        ["doc:1#viewer@user:a", "doc:1#viewer@user:b"]
    );
    assert_eq!(read(&*store, &r3, &all()).await, ["doc:1#viewer@user:b"]);
    assert_eq!(
        read(&*store, &head(&*store).await, &all()).await,
        ["doc:1#viewer@user:b"]
    );
    for garbage in ["", "not a revision", "99999999999999999999999", "1:2:3:4"] {
        let r = Revision::new(garbage);
        assert!(
            matches!(
                store.query(&r, &all(), &Page::default()).await,
                Err(StoreError::InvalidRevision(_) | StoreError::RevisionInFuture(_))
            ),
            "`{garbage}` must be refused as a revision"
        );
    }
}

/// Create fails on an existing relationship; touch does not; nothing of a
/// failed transaction is applied.
pub async fn create_touch_conflicts(store: Arc<dyn Datastore>) {
    write(&*store, touch(&["doc:1#viewer@user:a"])).await;
    let before = store.head_revision().await.ok();
    let txn = WriteTxn {
        updates: vec![
            Update {
                operation: Operation::Touch,
                relationship: rel("doc:2#viewer@user:a"),
            },
            Update {
                operation: Operation::Create,
                relationship: rel("doc:1#viewer@user:a"),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        store.write(&txn).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let before = before.unwrap_or_else(|| panic!("head revision"));
    let since = store
        .changes_since(&before, 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        since.is_empty(),
        "a failed write commits nothing: {since:?}"
    );
    let at = head(&*store).await;
    assert_eq!(read(&*store, &at, &all()).await, ["doc:1#viewer@user:a"]);
    // Touching an existing relationship is a no-op change.
    let c = write(&*store, touch(&["doc:1#viewer@user:a"])).await;
    assert!(c.changes.is_empty());
}

/// MUST_MATCH / MUST_NOT_MATCH are checked against the state before the write.
pub async fn preconditions(store: Arc<dyn Datastore>) {
    write(&*store, touch(&["doc:1#viewer@user:a"])).await;
    let pre = |kind, r: &str| Precondition {
        kind,
        filter: RelationshipFilter::exact(&rel(r)),
    };
    let mut txn = touch(&["doc:1#viewer@user:b"]);
    txn.preconditions = vec![pre(PreconditionKind::MustNotMatch, "doc:1#viewer@user:a")];
    match store.write(&txn).await {
        Err(StoreError::PreconditionFailed {
            index: 0,
            example: Some(e),
            ..
        }) => {
            assert_eq!(e.to_string(), "doc:1#viewer@user:a")
        }
        other => panic!("expected precondition failure, got {other:?}"),
    }
    let mut txn = touch(&["doc:1#viewer@user:b"]);
    txn.preconditions = vec![
        pre(PreconditionKind::MustMatch, "doc:1#viewer@user:a"),
        pre(PreconditionKind::MustNotMatch, "doc:1#viewer@user:b"),
    ];
    write(&*store, txn).await;
}

/// Delete by filter, with and without a limit; filters by subject use the
/// reverse index and agree with a full scan.
pub async fn delete_and_filters(store: Arc<dyn Datastore>) {
    write(
        &*store,
        touch(&[
            "doc:1#viewer@user:a",
            "doc:2#viewer@user:a",
            "doc:2#editor@user:a",
            "doc:3#viewer@team:x#member",
            "doc:3#viewer@user:*",
            "folder:1#viewer@user:a",
        ]),
    )
    .await;
    let at = head(&*store).await;
    let by_subject = RelationshipFilter {
        subject: Some(SubjectFilter {
            subject_type: "user".into(),
            subject_ids: vec!["a".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let got = read(&*store, &at, &by_subject).await;
    let everything = store
        .query(&at, &all(), &Page::default())
        .await
        .unwrap_or_default();
    let expected: Vec<String> = everything
        .iter()
        .filter(|r| by_subject.matches(r))
        .map(|r| r.to_string())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 4);
    let usersets = RelationshipFilter {
        subject: Some(SubjectFilter {
            subject_type: "team".into(),
            relation: Some(Some("member".into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        read(&*store, &at, &usersets).await,
        ["doc:3#viewer@team:x#member"]
    );
    let no_wildcard = RelationshipFilter {
        resource_type: Some("doc".into()),
        resource_ids: vec!["3".into()],
        subject: Some(SubjectFilter {
            subject_type: "user".into(),
            exclude_wildcard: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(read(&*store, &at, &no_wildcard).await.is_empty());
    // resource#relation@subject seeks (the engine's direct check).
    let mut seek = RelationshipFilter::resource_relation("doc", "3", "viewer");
    seek.subject = Some(SubjectFilter {
        subject_type: "user".into(),
        subject_ids: vec!["a".into(), "*".into()],
        ..Default::default()
    });
    assert_eq!(read(&*store, &at, &seek).await, ["doc:3#viewer@user:*"]);
    seek.subject = Some(SubjectFilter {
        subject_type: "team".into(),
        relation: Some(Some("member".into())),
        ..Default::default()
    });
    assert_eq!(
        read(&*store, &at, &seek).await,
        ["doc:3#viewer@team:x#member"]
    );
    let mut seek = RelationshipFilter::resource_relation("doc", "2", "viewer");
    seek.subject = Some(SubjectFilter {
        subject_type: "user".into(),
        subject_ids: vec!["a".into()],
        ..Default::default()
    });
    assert_eq!(read(&*store, &at, &seek).await, ["doc:2#viewer@user:a"]);
    let prefix = RelationshipFilter {
        resource_type: Some("doc".into()),
        resource_id_prefix: Some("2".into()),
        ..Default::default()
    };
    assert_eq!(
        read(&*store, &at, &prefix).await,
        ["doc:2#editor@user:a", "doc:2#viewer@user:a"]
    );

    let docs = RelationshipFilter {
        resource_type: Some("doc".into()),
        relation: Some("viewer".into()),
        ..Default::default()
    };
    let txn = WriteTxn {
        deletes: vec![DeleteByFilter {
            filter: docs.clone(),
            limit: Some(2),
            allow_partial: false,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(matches!(
        store.write(&txn).await,
        Err(StoreError::TooManyToDelete {
            matched: 3,
            limit: 2
        })
    ));
    // An exact expectation fails when more or fewer match (offboarding's
    // guard against concurrent grants and revokes), and changes nothing.
    for expected in [2, 5] {
        let txn = WriteTxn {
            deletes: vec![DeleteByFilter {
                filter: docs.clone(),
                limit: Some(expected),
                expect_exactly: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            matches!(
                store.write(&txn).await,
                Err(StoreError::ChangedConcurrently { matched, expected: e })
                    if e == expected && matched == 4.min(expected + 1)
            ),
            "expect exactly {expected}"
        );
    }
    let txn = WriteTxn {
        deletes: vec![DeleteByFilter {
            filter: docs.clone(),
            limit: None,
            allow_partial: false,
            ..Default::default()
        }],
        ..Default::default()
    };
    let c = write(&*store, txn).await;
    assert_eq!(c.changes.len(), 4);
    assert!(c.changes.iter().all(|ch| ch.operation == Operation::Delete));
    let at = head(&*store).await;
    assert_eq!(
        read(&*store, &at, &all()).await,
        ["doc:2#editor@user:a", "folder:1#viewer@user:a"]
    );
}

/// Paging with `after` and `limit` visits every relationship exactly once.
pub async fn paging(store: Arc<dyn Datastore>) {
    let rels: Vec<String> = (0..57)
        .map(|i| format!("doc:{:03}#viewer@user:u{}", i % 19, i))
        .collect();
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    write(&*store, touch(&refs)).await;
    let at = head(&*store).await;
    let mut seen = Vec::new();
    let mut page = Page {
        after: None,
        limit: Some(10),
    };
    loop {
        let batch = store.query(&at, &all(), &page).await.unwrap_or_default();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 10);
        page.after = batch.last().cloned();
        seen.extend(batch.into_iter().map(|r| r.to_string()));
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 57);
    assert_eq!(unique.len(), 57);
}

/// A thousand updates in one transaction; ids and names at their maximum
/// lengths; odd but legal characters.
pub async fn large_and_odd_writes(store: Arc<dyn Datastore>) {
    let rels: Vec<String> = (0..1000)
        .map(|i| format!("doc:{i}#viewer@user:u{i}"))
        .collect();
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let c = write(&*store, touch(&refs)).await;
    assert_eq!(c.changes.len(), 1000);
    let long_id = "x".repeat(crate::model::MAX_OBJECT_ID_LEN);
    let long_name = format!("a{}", "b".repeat(crate::model::MAX_NAME_LEN - 1));
    let odd = [
        format!("doc:{long_id}#{long_name}@user:{long_id}"),
        "ns/doc:a/b|c-d=e+f@g.h:i_j#viewer@ns/user:--=base64YWZ==".to_string(),
    ];
    let refs: Vec<&str> = odd.iter().map(String::as_str).collect();
    write(&*store, touch(&refs)).await;
    let at = head(&*store).await;
    for o in &odd {
        let r = rel(o);
        assert_eq!(
            read(&*store, &at, &RelationshipFilter::exact(&r)).await,
            std::slice::from_ref(o)
        );
    }
}

/// A bulk import: all or nothing; a duplicate or an existing relationship
/// fails it whole; its audit record verifies (the memory store seals it
/// from interned keys, readers rebuild it from strings) and lists every
/// relationship once.
/// Security events: one row each, except that events with the same
/// aggregate add up in one row (its time the latest); read in id order
/// after a cursor.
pub async fn security_events(store: Arc<dyn Datastore>) {
    use crate::audit::SecurityEvent;
    let event = |at_ms: u64, key: &str, aggregate: Option<&str>| SecurityEvent {
        at_ms,
        key: key.to_string(),
        peer: "10.0.0.7".to_string(),
        method: "/authzed.api.v1.PermissionsService/WriteRelationships".to_string(),
        code: "PermissionDenied".to_string(),
        reason: "key `reader` lacks the `write` scope".to_string(),
        count: 1,
        aggregate: aggregate.map(str::to_string),
    };
    let batches = [
        vec![event(1, "reader", None), event(2, "anonymous", Some("a|1"))],
        vec![event(3, "anonymous", Some("a|1")), event(4, "reader", None)],
        vec![SecurityEvent {
            count: 40,
            ..event(5, "anonymous", Some("a|1"))
        }],
    ];
    for b in &batches {
        store
            .record_security_events(b)
            .await
            .unwrap_or_else(|e| panic!("record_security_events failed: {e}"));
    }
    let all = store
        .read_security_events(0, 100)
        .await
        .unwrap_or_else(|e| panic!("read_security_events failed: {e}"));
    let seen: Vec<(String, u64, u64)> = all
        .iter()
        .map(|e| (e.event.key.clone(), e.event.count, e.event.at_ms))
        .collect();
    assert_eq!(
        seen,
        [
            ("reader".to_string(), 1, 1),
            ("anonymous".to_string(), 42, 5),
            ("reader".to_string(), 1, 4)
        ],
        "security events"
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    let later = store
        .read_security_events(all[1].id, 100)
        .await
        .unwrap_or_else(|e| panic!("read_security_events failed: {e}"));
    assert_eq!(later.len(), 1, "after a cursor");
    assert_eq!(
        later[0].event.reason,
        "key `reader` lacks the `write` scope"
    );
}

pub async fn imports(store: Arc<dyn Datastore>) {
    let schema = write(
        &*store,
        WriteTxn {
            schema: Some(SchemaWrite {
                text: "definition user {}".into(),
            }),
            ..Default::default()
        },
    )
    .await
    .revision;
    let import = |rels: Vec<String>| {
        let store = store.clone();
        let schema = schema.clone();
        async move {
            let meta = TxnMetadata {
                actor: "importer".into(),
                request_id: "r\"1".into(),
                fields: [("reason".to_string(), serde_json::json!("ünï \"load\""))].into(),
            };
            store
                .import(rels.iter().map(|r| rel(r)).collect(), schema, meta)
                .await
        }
    };
    // Enough to take a store's bulk path, with subject relations and a
    // wildcard among them.
    let mut rels: Vec<String> = (0..12_000)
        .map(|i| format!("doc:{}#viewer@user:u{}", i % 3_000, i / 3_000))
        .collect();
    rels.push("doc:x#viewer@group:g#member".into());
    rels.push("doc:y#viewer@user:*".into());
    let before = head(&*store).await;
    let mut dup = rels.clone();
    dup.push("doc:17#viewer@user:u2".into());
    match import(dup).await {
        Err(StoreError::DuplicateInImport(r)) => assert_eq!(r.to_string(), "doc:17#viewer@user:u2"),
        other => panic!("a duplicate in an import: {other:?}"),
    }
    assert_eq!(head(&*store).await, before, "a failed import committed");
    let done = import(rels.clone())
        .await
        .unwrap_or_else(|e| panic!("import failed: {e}"));
    assert_eq!(done.count, rels.len());
    let mut stored = read(&*store, &done.revision, &all()).await;
    let mut expected = rels.clone();
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
    let again = vec!["doc:new#viewer@user:a".to_string(), rels[5].clone()];
    match import(again).await {
        Err(StoreError::AlreadyExists(r)) => assert_eq!(r.to_string(), rels[5]),
        other => panic!("importing an existing relationship: {other:?}"),
    }
    assert!(
        read(
            &*store,
            &head(&*store).await,
            &RelationshipFilter::exact(&rel("doc:new#viewer@user:a"))
        )
        .await
        .is_empty(),
        "a failed import left a relationship behind"
    );
    let records = store
        .read_audit(0, &crate::audit::AuditFilter::default(), 10)
        .await
        .unwrap_or_else(|e| panic!("read_audit failed: {e}"));
    assert!(
        matches!(
            crate::audit::verify(&records),
            crate::audit::Verification::Intact { records: 2, .. }
        ),
        "the import's audit record does not verify: {:?}",
        crate::audit::verify(&records)
    );
    let record = &records[1];
    assert_eq!(
        (record.actor.as_str(), record.request_id.as_str()),
        ("importer", "r\"1")
    );
    let mut audited: Vec<String> = record
        .changes
        .iter()
        .map(|c| c.relationship.clone())
        .collect();
    audited.sort();
    assert_eq!(audited, expected);
    assert!(record.changes.iter().all(|c| c.operation == "create"));
}

/// Concurrent writers: no lost write, distinct revisions, and a log of
/// changes in commit order with no gap and no duplicate, where each
/// transaction's revision reads exactly the transactions up to it.
pub async fn concurrent_writers_and_changes(store: Arc<dyn Datastore>) {
    let before = head(&*store).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let r = format!("doc:w{w}#viewer@user:u{i}");
                revs.push(write(&*store, touch(&[r.as_str()])).await.revision);
            }
            revs
        }));
    }
    let mut all_revs = Vec::new();
    for t in tasks {
        all_revs.extend(t.await.unwrap_or_default());
    }
    let distinct: HashSet<Revision> = all_revs.iter().cloned().collect();
    assert_eq!(distinct.len(), 200, "every commit has its own revision");
    let at = head(&*store).await;
    assert_eq!(read(&*store, &at, &all()).await.len(), 200);
    let mut changes = Vec::new();
    let mut cursor = before.clone();
    loop {
        let batch = store
            .changes_since(&cursor, 37)
            .await
            .unwrap_or_else(|e| panic!("changes_since failed: {e}"));
        let Some(last) = batch.last() else { break };
        cursor = last.revision.clone();
        changes.extend(batch);
    }
    let rels: Vec<String> = changes
        .iter()
        .flat_map(|c| c.changes.iter().map(|ch| ch.relationship.to_string()))
        .collect();
    let unique: BTreeSet<&String> = rels.iter().collect();
    assert_eq!(rels.len(), 200, "every change once (no gap, no duplicate)");
    assert_eq!(unique.len(), 200);
    // Each position reads exactly the prefix of the log up to it.
    for i in [0, 57, 99, 199] {
        let mut expected: Vec<String> = rels[..=i].to_vec();
        expected.sort();
        assert_eq!(
            read(&*store, &changes[i].revision, &all()).await,
            expected,
            "the revision of change {i} reads the log up to it"
        );
    }
    let rest = store
        .changes_since(&changes[99].revision, 10_000)
        .await
        .unwrap_or_default();
    assert_eq!(
        rest.len(),
        100,
        "resuming after a revision continues without gap"
    );
    assert_eq!(rest[0].changes, changes[100].changes);
    // Resuming at a write's own revision yields what followed it.
    let own = &all_revs[0];
    let after_own = store.changes_since(own, 10_000).await.unwrap_or_default();
    assert!(after_own.len() < 200);
    assert!(
        after_own
            .iter()
            .all(|c| c.changes[0].relationship.to_string() != "doc:w0#viewer@user:u0"),
        "a write is not replayed after its own revision"
    );
}

/// Schema text is versioned like relationships; a stale expected schema is refused.
pub async fn schema_versions(store: Arc<dyn Datastore>) {
    assert!(
        store
            .read_schema(&head(&*store).await)
            .await
            .ok()
            .flatten()
            .is_none()
    );
    let c1 = write(
        &*store,
        WriteTxn {
            schema: Some(SchemaWrite {
                text: "definition a {}".into(),
            }),
            ..Default::default()
        },
    )
    .await;
    let c2 = write(
        &*store,
        WriteTxn {
            schema: Some(SchemaWrite {
                text: "definition b {} // ünïcödé ✓".into(),
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        c2.schema_change,
        Some((
            Some("definition a {}".into()),
            "definition b {} // ünïcödé ✓".into()
        ))
    );
    let s1 = store
        .read_schema(&c1.revision)
        .await
        .ok()
        .flatten()
        .map(|s| s.text.to_string());
    assert_eq!(s1.as_deref(), Some("definition a {}"));
    let stale = WriteTxn {
        expected_schema: Some(Some(c1.revision)),
        ..touch(&["a:1#r@b:2"])
    };
    assert!(matches!(
        store.write(&stale).await,
        Err(StoreError::SchemaChanged)
    ));
    let fresh = WriteTxn {
        expected_schema: Some(Some(c2.revision)),
        ..touch(&["a:1#r@b:2"])
    };
    write(&*store, fresh).await;
}

/// The optimized revision is the head without quantization, and otherwise a
/// readable revision no newer than the head, stable within its window.
pub async fn optimized_revisions(store: Arc<dyn Datastore>) {
    let newest = write(&*store, touch(&["doc:1#viewer@user:a"]))
        .await
        .revision;
    let opt = store
        .optimized_revision(std::time::Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        sees(&*store, &opt, &newest).await,
        "unquantized is the head"
    );
    let day = std::time::Duration::from_secs(86_400);
    let first = store
        .optimized_revision(day)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(store.check_revision(&first).await.is_ok());
    let now = head(&*store).await;
    assert!(sees(&*store, &now, &first).await, "no newer than the head");
    write(&*store, touch(&["doc:2#viewer@user:a"])).await;
    let again = store
        .optimized_revision(day)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sees(&*store, &again, &first).await);
    assert!(store.check_revision(&again).await.is_ok());
}

/// Garbage collection keeps everything revisions inside the window need,
/// and afterwards refuses revisions that needed what it removed (never a
/// wrong answer from a collected revision).
pub async fn gc_keeps_what_live_revisions_need(store: Arc<dyn Datastore>) {
    let r1 = write(
        &*store,
        touch(&["doc:1#viewer@user:a", "doc:1#viewer@user:b"]),
    )
    .await
    .revision;
    let r2 = write(&*store, delete("doc:1#viewer@user:a")).await.revision;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    write(&*store, touch(&["doc:2#viewer@user:c"])).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let hour = std::time::Duration::from_secs(3600);
    let gc = |window| {
        let store = store.clone();
        async move {
            store
                .collect_garbage(window)
                .await
                .unwrap_or_else(|e| panic!("gc failed: {e}"))
        }
    };
    // Passes may be staged: run two, more than the staging delay apart.
    gc(hour).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    gc(hour).await;
    let ab = ["doc:1#viewer@user:a", "doc:1#viewer@user:b"];
    assert_eq!(read(&*store, &r1, &all()).await, ab);
    assert_eq!(read(&*store, &r2, &all()).await, ["doc:1#viewer@user:b"]);
    gc(std::time::Duration::ZERO).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    gc(std::time::Duration::ZERO).await;
    match store.query(&r1, &all(), &Page::default()).await {
        Err(StoreError::RevisionTooOld { .. }) => {}
        Ok(rows) => assert_eq!(
            rows.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ab,
            "a read at a collected revision must fail, never answer differently"
        ),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let now = head(&*store).await;
    assert_eq!(
        read(&*store, &now, &all()).await,
        ["doc:1#viewer@user:b", "doc:2#viewer@user:c"]
    );
}

/// Defines one `#[tokio::test]` per check of this suite, each on a fresh
/// store from `$new_store` (an `async fn() -> Arc<dyn Datastore>`). Every
/// backend's test file invokes it once, so the list lives here only.
#[macro_export]
macro_rules! datastore_conformance_tests {
    ($new_store:path) => {
        $crate::datastore_conformance_tests!($new_store, skip_if || false);
    };
    ($new_store:path, skip_if $skip:expr) => {
        $crate::datastore_conformance_tests!(@each $new_store, $skip;
            snapshot_isolation,
            create_touch_conflicts,
            preconditions,
            delete_and_filters,
            paging,
            large_and_odd_writes,
            imports,
            security_events,
            concurrent_writers_and_changes,
            schema_versions,
            optimized_revisions,
            gc_keeps_what_live_revisions_need,
        );
    };
    (@each $new_store:path, $skip:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if ($skip)() {
                    return;
                }
                $crate::store::conformance::$name($new_store().await).await;
            }
        )*
    };
}
