//! Engine semantics (DESIGN.md §4) and validated writes, through the public
//! library API over the memory store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use kinbar::engine::{ExpandKind, ExpandTree};
use kinbar::store::{
    DeleteByFilter, Operation, Precondition, PreconditionKind, RelationshipFilter, StoreError,
    TxnMetadata, Update,
};
use kinbar::{Decision, Engine, EngineConfig, Error, ObjectRef, Relationship, SubjectRef};

fn obj(s: &str) -> ObjectRef {
    s.parse().unwrap()
}

fn subj(s: &str) -> SubjectRef {
    s.parse().unwrap()
}

fn touch(rels: &[&str]) -> Vec<Update> {
    rels.iter()
        .map(|r| Update {
            operation: Operation::Touch,
            relationship: r.parse().unwrap(),
        })
        .collect()
}

async fn engine_with(schema: &str, rels: &[&str]) -> Engine {
    let e = kinbar::in_memory();
    e.write_schema(schema, TxnMetadata::default())
        .await
        .unwrap();
    if !rels.is_empty() {
        e.write_relationships(touch(rels), vec![], TxnMetadata::default())
            .await
            .unwrap();
    }
    e
}

async fn check(e: &Engine, rel: &str) -> Result<Decision, Error> {
    let r: Relationship = rel.parse().unwrap();
    e.check(&r.resource, &r.relation, &r.subject).await
}

const GROUPS: &str = "definition user {}
definition group {
    relation member: user | group#member
}
definition doc {
    relation viewer: user | user:* | group#member
    relation parent: doc
    relation banned: user
    permission view = viewer + parent->view
    permission view_unbanned = view - banned
    permission both = parent.all(view)
    permission view_rev = parent->view_rev + viewer
    permission both_rev = parent.all(view_rev)
}";

#[tokio::test]
async fn data_cycles_are_least_fixpoint_not_errors() {
    let e = engine_with(
        GROUPS,
        &[
            "group:a#member@group:b#member",
            "group:b#member@group:c#member",
            "group:c#member@group:a#member",
            "group:c#member@user:anna",
            "doc:1#parent@doc:2",
            "doc:2#parent@doc:1",
        ],
    )
    .await;
    for g in ["a", "b", "c"] {
        assert_eq!(
            check(&e, &format!("group:{g}#member@user:anna"))
                .await
                .unwrap(),
            Decision::Allowed
        );
        assert_eq!(
            check(&e, &format!("group:{g}#member@user:bob"))
                .await
                .unwrap(),
            Decision::Denied
        );
    }
    assert_eq!(
        check(&e, "doc:1#view@user:anna").await.unwrap(),
        Decision::Denied
    );
}

#[tokio::test]
async fn dense_cycles_finish() {
    // Every group in every other: exponential if each path were explored.
    let mut rels = Vec::new();
    for a in 0..14 {
        for b in 0..14 {
            if a != b {
                rels.push(format!("group:g{a}#member@group:g{b}#member"));
            }
        }
    }
    rels.push("group:g13#member@user:anna".into());
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let e = engine_with(GROUPS, &refs).await;
    assert_eq!(
        check(&e, "group:g0#member@user:bob").await.unwrap(),
        Decision::Denied
    );
    assert_eq!(
        check(&e, "group:g0#member@user:anna").await.unwrap(),
        Decision::Allowed
    );
}

#[tokio::test]
async fn result_cut_at_an_ancestor_is_recomputed_elsewhere() {
    // doc:1 (A) and doc:3 (B) are parents of doc:0; doc:2 (X) cycles with A.
    // Evaluating A visits X with A on the path (X looks denied); B later
    // needs X's real answer, which goes through A.
    let e = engine_with(
        GROUPS,
        &[
            "doc:0#parent@doc:1",
            "doc:0#parent@doc:3",
            "doc:1#parent@doc:2",
            "doc:2#parent@doc:1",
            "doc:1#viewer@user:anna",
            "doc:3#parent@doc:2",
        ],
    )
    .await;
    assert_eq!(
        check(&e, "doc:0#both_rev@user:anna").await.unwrap(),
        Decision::Allowed
    );
    assert_eq!(
        check(&e, "doc:3#view_rev@user:anna").await.unwrap(),
        Decision::Allowed
    );
    assert_eq!(
        check(&e, "doc:0#both@user:anna").await.unwrap(),
        Decision::Allowed
    );
}

#[tokio::test]
async fn depth_limit_is_an_error_not_an_answer() {
    let mut rels: Vec<String> = (0..60)
        .map(|i| format!("group:g{i}#member@group:g{}#member", i + 1))
        .collect();
    rels.push("group:g60#member@user:anna".into());
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let e = engine_with(GROUPS, &refs).await;
    match check(&e, "group:g0#member@user:anna").await {
        Err(Error::DepthExceeded { depth: 50 }) => {}
        other => panic!("expected depth exceeded, got {other:?}"),
    }
    // Within the limit it answers.
    assert_eq!(
        check(&e, "group:g20#member@user:anna").await.unwrap(),
        Decision::Allowed
    );
    // A configurable limit.
    let deep = e.reconfigured(EngineConfig {
        max_depth: 100,
        ..Default::default()
    });
    assert_eq!(
        check(&deep, "group:g0#member@user:anna").await.unwrap(),
        Decision::Allowed
    );
}

#[tokio::test]
async fn wildcards_usersets_and_exclusion() {
    let e = engine_with(
        GROUPS,
        &[
            "doc:pub#viewer@user:*",
            "doc:pub#banned@user:eve",
            "doc:team#viewer@group:eng#member",
            "group:eng#member@user:anna",
        ],
    )
    .await;
    assert!(
        check(&e, "doc:pub#view@user:anyone")
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(
        check(&e, "doc:pub#view_unbanned@user:anyone")
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(
        !check(&e, "doc:pub#view_unbanned@user:eve")
            .await
            .unwrap()
            .is_allowed()
    );
    // A wildcard also matches userset subjects of its type.
    assert!(
        check(&e, "doc:team#view@user:anna")
            .await
            .unwrap()
            .is_allowed()
    );
    // A userset is a member of itself, and of what it is granted.
    assert!(
        check(&e, "group:eng#member@group:eng#member")
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(
        check(&e, "doc:team#view@group:eng#member")
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(
        !check(&e, "doc:pub#view@group:eng#member")
            .await
            .unwrap()
            .is_allowed()
    );
    // Checking the wildcard itself is a bad request.
    assert!(matches!(
        check(&e, "doc:pub#view@user:*").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn arrows_ignore_subject_relations() {
    let e = engine_with(
        "definition user {}
         definition org { relation admin: user  relation member: user  permission manage = admin }
         definition doc { relation owner_org: org | org#member  permission manage = owner_org->manage }",
        &["doc:1#owner_org@org:acme#member", "org:acme#admin@user:ada"],
    )
    .await;
    assert!(
        check(&e, "doc:1#manage@user:ada")
            .await
            .unwrap()
            .is_allowed()
    );
}

#[tokio::test]
async fn all_requires_at_least_one_object() {
    let e = engine_with(
        GROUPS,
        &[
            "doc:1#parent@doc:2",
            "doc:1#parent@doc:3",
            "doc:2#viewer@user:a",
            "doc:3#viewer@user:a",
            "doc:3#viewer@user:b",
        ],
    )
    .await;
    assert!(check(&e, "doc:1#both@user:a").await.unwrap().is_allowed());
    assert!(!check(&e, "doc:1#both@user:b").await.unwrap().is_allowed());
    assert!(!check(&e, "doc:9#both@user:a").await.unwrap().is_allowed());
}

#[tokio::test]
async fn unknown_names_in_requests_are_errors() {
    let e = engine_with(GROUPS, &[]).await;
    assert!(
        matches!(check(&e, "nope:1#view@user:a").await, Err(Error::UnknownType(t)) if t == "nope")
    );
    assert!(matches!(
        check(&e, "doc:1#nope@user:a").await,
        Err(Error::UnknownMember { .. })
    ));
    assert!(matches!(
        check(&e, "doc:1#view@nope:a").await,
        Err(Error::UnknownType(_))
    ));
    assert!(matches!(
        check(&e, "doc:1#view@group:a#nope").await,
        Err(Error::UnknownMember { .. })
    ));
    let empty = kinbar::in_memory();
    assert!(matches!(
        check(&empty, "doc:1#view@user:a").await,
        Err(Error::NoSchema)
    ));
}

#[tokio::test]
async fn writes_are_validated_against_the_schema() {
    let e = engine_with(GROUPS, &[]).await;
    let write = |rels: &[&str]| e.write_relationships(touch(rels), vec![], TxnMetadata::default());
    let msg = |r: Result<_, Error>| r.map(|_| ()).unwrap_err().to_string();
    assert!(msg(write(&["doc:1#view@user:a"]).await).contains("is a permission"));
    assert!(msg(write(&["doc:1#nope@user:a"]).await).contains("relation `nope` not found"));
    assert!(msg(write(&["doc:1#banned@user:*"]).await).contains("`user:*` are not allowed"));
    assert!(msg(write(&["doc:1#banned@group:x#member"]).await).contains("allowed: user"));
    assert!(msg(write(&["nope:1#viewer@user:a"]).await).contains("`nope` not found"));
    // Nothing of a failed write is applied.
    let bad = write(&[
        "doc:1#viewer@user:a",
        "doc:1#viewer@user:*",
        "doc:1#nope@user:a",
    ])
    .await;
    assert!(bad.is_err());
    assert!(!check(&e, "doc:1#view@user:a").await.unwrap().is_allowed());
    // Duplicates in one request are refused.
    assert!(
        msg(write(&["doc:1#viewer@user:a", "doc:1#viewer@user:a"]).await)
            .contains("more than once")
    );
}

#[tokio::test]
async fn create_touch_delete_and_preconditions() {
    let e = engine_with(GROUPS, &["doc:1#viewer@user:a"]).await;
    let update = |op, r: &str| Update {
        operation: op,
        relationship: r.parse().unwrap(),
    };
    let meta = TxnMetadata::default;
    // CREATE of an existing relationship fails; TOUCH does not.
    let r = e
        .write_relationships(
            vec![update(Operation::Create, "doc:1#viewer@user:a")],
            vec![],
            meta(),
        )
        .await;
    assert!(matches!(r, Err(Error::Store(StoreError::AlreadyExists(_)))));
    e.write_relationships(
        vec![update(Operation::Touch, "doc:1#viewer@user:a")],
        vec![],
        meta(),
    )
    .await
    .unwrap();
    // Preconditions.
    let must = |kind, f: &str| Precondition {
        kind,
        filter: RelationshipFilter::exact(&f.parse().unwrap()),
    };
    let r = e
        .write_relationships(
            vec![update(Operation::Touch, "doc:1#viewer@user:b")],
            vec![must(PreconditionKind::MustMatch, "doc:1#banned@user:x")],
            meta(),
        )
        .await;
    assert!(matches!(
        r,
        Err(Error::Store(StoreError::PreconditionFailed {
            index: 0,
            ..
        }))
    ));
    assert!(!check(&e, "doc:1#view@user:b").await.unwrap().is_allowed());
    e.write_relationships(
        vec![update(Operation::Touch, "doc:1#viewer@user:b")],
        vec![
            must(PreconditionKind::MustMatch, "doc:1#viewer@user:a"),
            must(PreconditionKind::MustNotMatch, "doc:1#banned@user:b"),
        ],
        meta(),
    )
    .await
    .unwrap();
    assert!(check(&e, "doc:1#view@user:b").await.unwrap().is_allowed());
    // DELETE.
    e.write_relationships(
        vec![update(Operation::Delete, "doc:1#viewer@user:b")],
        vec![],
        meta(),
    )
    .await
    .unwrap();
    assert!(!check(&e, "doc:1#view@user:b").await.unwrap().is_allowed());
    // Delete by filter, with a limit.
    e.write_relationships(
        touch(&["doc:2#viewer@user:a", "doc:3#viewer@user:a"]),
        vec![],
        meta(),
    )
    .await
    .unwrap();
    let filter = RelationshipFilter {
        resource_type: Some("doc".into()),
        relation: Some("viewer".into()),
        ..Default::default()
    };
    let r = e
        .delete_relationships(
            DeleteByFilter {
                filter: filter.clone(),
                limit: Some(2),
                allow_partial: false,
                expect_exactly: false,
            },
            vec![],
            meta(),
        )
        .await;
    assert!(matches!(
        r,
        Err(Error::Store(StoreError::TooManyToDelete {
            matched: 3,
            limit: 2
        }))
    ));
    let c = e
        .delete_relationships(
            DeleteByFilter {
                filter: filter.clone(),
                limit: Some(2),
                allow_partial: true,
                expect_exactly: false,
            },
            vec![],
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(c.changes.len(), 2);
    let c = e
        .delete_relationships(
            DeleteByFilter {
                filter,
                limit: None,
                allow_partial: false,
                expect_exactly: false,
            },
            vec![],
            meta(),
        )
        .await
        .unwrap();
    assert_eq!(c.changes.len(), 1);
}

#[tokio::test]
async fn schema_change_that_orphans_relationships_is_refused() {
    let e = engine_with(GROUPS, &["doc:1#banned@user:eve", "doc:1#viewer@user:*"]).await;
    let without_banned = GROUPS
        .replace("    relation banned: user\n", "")
        .replace("    permission view_unbanned = view - banned\n", "");
    let err = e
        .write_schema(&without_banned, TxnMetadata::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::SchemaWouldOrphan(_)));
    assert!(
        msg.contains("doc#banned") && msg.contains("doc:1#banned@user:eve"),
        "{msg}"
    );
    let without_wildcard = GROUPS.replace("user | user:* | group#member", "user | group#member");
    let msg = e
        .write_schema(&without_wildcard, TxnMetadata::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`user:*`") && msg.contains("doc:1#viewer@user:*"),
        "{msg}"
    );
    // Compatible changes pass; after deleting, the removal passes too.
    let with_more = GROUPS.replace(
        "relation banned: user",
        "relation banned: user | group#member",
    );
    e.write_schema(&with_more, TxnMetadata::default())
        .await
        .unwrap();
    e.write_relationships(
        vec![Update {
            operation: Operation::Delete,
            relationship: "doc:1#banned@user:eve".parse().unwrap(),
        }],
        vec![],
        TxnMetadata::default(),
    )
    .await
    .unwrap();
    e.write_schema(&without_banned, TxnMetadata::default())
        .await
        .unwrap();
    // Invalid schemas are refused with diagnostics.
    assert!(matches!(
        e.write_schema("definition {", TxnMetadata::default()).await,
        Err(Error::Schema(_))
    ));
}

#[tokio::test]
async fn expand_returns_the_userset_tree() {
    let e = engine_with(
        GROUPS,
        &[
            "doc:1#viewer@user:a",
            "doc:1#viewer@group:eng#member",
            "doc:1#parent@doc:2",
            "doc:2#viewer@user:b",
            "doc:1#banned@user:a",
        ],
    )
    .await;
    let tree = e.expand(&obj("doc:1"), "view_unbanned").await.unwrap();
    let leaf = |o: &str, r: &str, s: &[&str]| ExpandTree {
        object: obj(o),
        relation: r.into(),
        kind: ExpandKind::Leaf(s.iter().map(|x| subj(x)).collect()),
    };
    let expected = ExpandTree {
        object: obj("doc:1"),
        relation: "view_unbanned".into(),
        kind: ExpandKind::Exclusion(vec![
            ExpandTree {
                object: obj("doc:1"),
                relation: "view".into(),
                kind: ExpandKind::Union(vec![
                    leaf("doc:1", "viewer", &["group:eng#member", "user:a"]),
                    ExpandTree {
                        object: obj("doc:1"),
                        relation: "view".into(),
                        kind: ExpandKind::Union(vec![ExpandTree {
                            object: obj("doc:2"),
                            relation: "view".into(),
                            kind: ExpandKind::Union(vec![
                                leaf("doc:2", "viewer", &["user:b"]),
                                ExpandTree {
                                    object: obj("doc:2"),
                                    relation: "view".into(),
                                    kind: ExpandKind::Union(vec![]),
                                },
                            ]),
                        }]),
                    },
                ]),
            },
            leaf("doc:1", "banned", &["user:a"]),
        ]),
    };
    assert_eq!(tree, expected, "{}", tree.render());
    assert!(tree.render().contains("doc:1#view_unbanned (exclusion)"));
}

#[tokio::test]
async fn concurrent_checks_and_writes_see_consistent_snapshots() {
    let e = std::sync::Arc::new(engine_with(GROUPS, &[]).await);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                // Each write adds a pair atomically: viewer and banned for the same user.
                let rels = [
                    format!("doc:{w}#viewer@user:u{i}"),
                    format!("doc:{w}#banned@user:u{i}"),
                ];
                let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
                e.write_relationships(touch(&refs), vec![], TxnMetadata::default())
                    .await
                    .unwrap();
                // Never see half of a write: view_unbanned is never granted.
                let at = e.head_revision().await.unwrap();
                for j in 0..=i {
                    let d = e
                        .check_at(
                            at.clone(),
                            &obj(&format!("doc:{w}")),
                            "view_unbanned",
                            &subj(&format!("user:u{j}")),
                        )
                        .await
                        .unwrap();
                    assert_eq!(d, Decision::Denied);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in 0..4 {
        for i in 0..50 {
            assert!(
                check(&e, &format!("doc:{w}#view@user:u{i}"))
                    .await
                    .unwrap()
                    .is_allowed()
            );
        }
    }
}

const PARADOX: &str = "definition user {}
definition document {
    relation viewer_direct: user
    relation restricted: user | document#viewer
    permission viewer = viewer_direct - restricted
}";

/// jon is a viewer only if he is not one: no least fixpoint. An
/// authorization service must not grant on an undefined answer (issue 17).
#[tokio::test]
async fn a_cycle_through_an_exclusion_fails_closed() {
    let e = engine_with(
        PARADOX,
        &[
            "document:1#viewer_direct@user:jon",
            "document:1#restricted@document:1#viewer",
        ],
    )
    .await;
    let err = check(&e, "document:1#viewer@user:jon").await.unwrap_err();
    assert!(
        matches!(err, Error::CycleThroughExclusion { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("document:1#viewer"), "{text}");
    // Asked again (memo and cache must not have kept a "yes").
    assert!(check(&e, "document:1#viewer@user:jon").await.is_err());
    // Someone not granted directly is simply denied: no cycle is reached
    // that could make the answer depend on itself.
    assert_eq!(
        check(&e, "document:1#viewer@user:ann").await.unwrap(),
        Decision::Denied
    );
    // Without the cycle-closing relationship, the ordinary answer.
    let ok = engine_with(PARADOX, &["document:1#viewer_direct@user:jon"]).await;
    assert_eq!(
        check(&ok, "document:1#viewer@user:jon").await.unwrap(),
        Decision::Allowed
    );
}

/// A cycle through an exclusion whose assumption holds (the node does come
/// out denied) is answered: only contradictions fail.
#[tokio::test]
async fn a_consistent_cycle_through_an_exclusion_is_answered() {
    let schema = "definition user {}
definition document {
    relation gate: user
    relation other: user
    relation restricted: user | document#viewer
    permission viewer = (other - restricted) & gate
}";
    // jon passes the exclusion (assuming he is not a viewer) but not the
    // gate: he is not a viewer, so the assumption held.
    let e = engine_with(
        schema,
        &[
            "document:1#other@user:jon",
            "document:1#restricted@document:1#viewer",
        ],
    )
    .await;
    assert_eq!(
        check(&e, "document:1#viewer@user:jon").await.unwrap(),
        Decision::Denied
    );
    // Through an arrow and a longer cycle the contradiction is still found.
    let schema = "definition user {}
definition folder {
    relation parent: folder
    relation owner: user
    relation banned: user | folder#view
    permission view = (owner + parent->view) - banned
}";
    let e = engine_with(
        schema,
        &[
            "folder:a#owner@user:jon",
            "folder:b#parent@folder:a",
            "folder:a#banned@folder:b#view",
        ],
    )
    .await;
    let err = check(&e, "folder:b#view@user:jon").await.unwrap_err();
    assert!(
        matches!(err, Error::CycleThroughExclusion { .. }),
        "{err:?}"
    );
}

/// Two permissions each excluding the other (`a = base - b`, `b = base - a`)
/// have two self-consistent answers; which one a depth-first evaluation
/// finds depends on where it starts. Both must fail closed, from either
/// side, and a gate that makes "denied" the only answer is still answered.
#[tokio::test]
async fn an_even_cycle_of_exclusions_with_two_answers_fails_closed() {
    let schema = "definition user {}
definition document {
    relation base: user
    relation gate: user
    relation blocked_a: user | document#b
    relation blocked_b: user | document#a
    permission a = (base - blocked_a) & gate
    permission b = base - blocked_b
}";
    let rels = [
        "document:1#base@user:jon",
        "document:1#gate@user:jon",
        "document:1#blocked_a@document:1#b",
        "document:1#blocked_b@document:1#a",
    ];
    let e = engine_with(schema, &rels).await;
    for q in ["document:1#a@user:jon", "document:1#b@user:jon"] {
        let err = check(&e, q).await.unwrap_err();
        assert!(
            matches!(err, Error::CycleThroughExclusion { .. }),
            "{q}: {err:?}"
        );
    }
    // Without the gate `a` is denied whatever `b` is, so `b` is allowed:
    // one consistent answer each.
    let e = engine_with(
        schema,
        &rels[..1]
            .iter()
            .chain(&rels[2..])
            .copied()
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(
        check(&e, "document:1#a@user:jon").await.unwrap(),
        Decision::Denied
    );
    assert_eq!(
        check(&e, "document:1#b@user:jon").await.unwrap(),
        Decision::Allowed
    );
}

/// Recursive permissions through arrows over a dense cycle: Expand shares
/// each (object, permission) node, so the tree is linear in the nodes
/// reached (it was exponential: one request allocated gigabytes), and a
/// request over its budget is refused cleanly.
#[tokio::test]
async fn expand_is_linear_on_recursive_cycles_and_bounded() {
    let schema = "definition user {}
definition node {
    relation parent: node
    relation viewer: user
    permission a = viewer + parent->b + parent->c
    permission b = parent->a + parent->c
    permission c = parent->a + parent->b
}";
    // 12 nodes × 3 permissions: every path stays under the depth limit.
    let n = 12;
    let mut rels = Vec::new();
    for i in 0..n {
        for d in [1, 2, 7] {
            rels.push(format!("node:n{i}#parent@node:n{}", (i + d) % n));
        }
        rels.push(format!("node:n{i}#viewer@user:u{i}"));
    }
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let e = engine_with(schema, &refs).await;
    let tree = e.expand(&obj("node:n0"), "a").await.unwrap();
    fn size(t: &ExpandTree) -> usize {
        match &t.kind {
            ExpandKind::Leaf(s) => 1 + s.len(),
            ExpandKind::Union(c) | ExpandKind::Intersection(c) | ExpandKind::Exclusion(c) => {
                1 + c.iter().map(size).sum::<usize>()
            }
        }
    }
    // 3 permissions × 12 nodes, each with at most 2 arrows × 3 parents
    // (plus leaves): a few thousand elements, never exponential.
    let elements = size(&tree);
    assert!(elements < 3 * n * 20, "{elements} elements");
    // Every user is in the tree exactly as Check says (u0 directly; the
    // others through the cycle, as userset leaves resolved by Check).
    for i in [0, 1, 6, 11] {
        let s = subj(&format!("user:u{i}"));
        assert_eq!(
            e.check(&obj("node:n0"), "a", &s).await.unwrap(),
            Decision::Allowed
        );
    }
    // A small budget: a clean, named refusal.
    let small = e.reconfigured(EngineConfig {
        budget: kinbar::engine::Budget {
            max_expand_elements: 100,
            ..Default::default()
        },
        ..Default::default()
    });
    let err = small.expand(&obj("node:n0"), "a").await.unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded { .. }), "{err:?}");
    assert!(err.to_string().contains("max_expand_elements"), "{err}");
    let tiny = e.reconfigured(EngineConfig {
        budget: kinbar::engine::Budget {
            max_subproblems: 10,
            ..Default::default()
        },
        ..Default::default()
    });
    let err = check(&tiny, "node:n0#a@user:nobody").await.unwrap_err();
    assert!(err.to_string().contains("max_subproblems"), "{err}");
    let few_rows = e.reconfigured(EngineConfig {
        budget: kinbar::engine::Budget {
            max_rows_read: 20,
            ..Default::default()
        },
        ..Default::default()
    });
    let err = check(&few_rows, "node:n0#a@user:nobody").await.unwrap_err();
    assert!(err.to_string().contains("max_rows_per_request"), "{err}");
}

/// A caller's deadline (`grpc-timeout`, carried in a task-local by the
/// server) stops an evaluation that never yields: DEADLINE_EXCEEDED, not
/// an answer after the caller gave up.
#[tokio::test]
async fn the_callers_deadline_stops_evaluation() {
    let schema = "definition user {}
definition group {
    relation member: user
}
definition doc {
    relation viewer: group#member
    permission view = viewer
}";
    let rels: Vec<String> = (0..400)
        .flat_map(|i| {
            [
                format!("doc:1#viewer@group:g{i}#member"),
                format!("group:g{i}#member@user:u{i}"),
            ]
        })
        .collect();
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let e = engine_with(schema, &refs).await;
    let passed = std::time::Instant::now();
    let err = kinbar::engine::REQUEST_DEADLINE
        .scope(passed, check(&e, "doc:1#view@user:nobody"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded), "{err:?}");
    // Without a deadline the same question is answered.
    assert_eq!(
        check(&e, "doc:1#view@user:nobody").await.unwrap(),
        Decision::Denied
    );
    // A deadline in the future changes nothing.
    let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
    assert_eq!(
        kinbar::engine::REQUEST_DEADLINE
            .scope(later, check(&e, "doc:1#view@user:u399"))
            .await
            .unwrap(),
        Decision::Allowed
    );
}

/// The vendored CRM sample (benches/data/crm-small): 20,000 checks whose
/// answers were computed independently of Kinbar; every LookupResources of
/// a checked user and LookupSubjects of a checked customer agrees with them.
#[tokio::test]
async fn crm_sample_checks_and_lookups_agree_with_independent_answers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/crm-small");
    let schema = std::fs::read_to_string(dir.join("schema.zed")).unwrap();
    let rels: Vec<Relationship> = std::fs::read_to_string(dir.join("relationships.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let e = kinbar::in_memory();
    e.write_schema(&schema, TxnMetadata::default())
        .await
        .unwrap();
    e.import_relationships(rels, TxnMetadata::default())
        .await
        .unwrap();
    let at = e.head_revision().await.unwrap();
    let mut by_user: std::collections::BTreeMap<(SubjectRef, String), Vec<(String, bool)>> =
        Default::default();
    let mut by_resource: std::collections::BTreeMap<(ObjectRef, String), Vec<(String, bool)>> =
        Default::default();
    let text = std::fs::read_to_string(dir.join("checks.txt")).unwrap();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (r, p, s, want) = (obj(f[0]), f[1], subj(f[2]), f[3] == "true");
        let got = e.check_at(at.clone(), &r, p, &s).await.unwrap();
        assert_eq!(got.is_allowed(), want, "{line}");
        by_user
            .entry((s.clone(), p.to_string()))
            .or_default()
            .push((r.to_string(), want));
        by_resource
            .entry((r, p.to_string()))
            .or_default()
            .push((s.object.object_id.clone(), want));
    }
    for ((s, p), answers) in by_user.iter().take(300) {
        let t = answers[0].0.split(':').next().unwrap();
        let ids = e
            .lookup_resources_at(at.clone(), t, p, s, None, usize::MAX)
            .await
            .unwrap();
        for (r, want) in answers {
            let id = r.split_once(':').unwrap().1;
            assert_eq!(
                ids.iter().any(|i| i == id),
                *want,
                "LookupResources {t}#{p} {s}: {r}"
            );
        }
    }
    for ((r, p), answers) in by_resource.iter().take(300) {
        let page = e
            .lookup_subjects_at(at.clone(), r, p, "user", None, None, usize::MAX)
            .await
            .unwrap();
        for (id, want) in answers {
            let listed = page.subject_ids.contains(id)
                || page.wildcard.as_ref().is_some_and(|ex| !ex.contains(id));
            assert_eq!(listed, *want, "LookupSubjects {r}#{p}: user:{id}");
        }
    }
}

/// A large answer is not a runaway evaluation: LookupResources for a user
/// who may see many resources takes more walk steps than one check's
/// sub-problem budget, and still answers (bounded by rows and time).
#[tokio::test]
async fn large_lookup_answers_are_not_refused_by_the_check_budget() {
    let texts: Vec<String> = (0..300)
        .map(|i| format!("doc:d{i:03}#viewer@user:reader"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let e = engine_with(
        "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }",
        &refs,
    )
    .await;
    let small = e.reconfigured(EngineConfig {
        budget: kinbar::engine::Budget {
            max_subproblems: 50,
            ..Default::default()
        },
        ..Default::default()
    });
    let at = small.head_revision().await.unwrap();
    let all = small
        .lookup_resources_at(
            at.clone(),
            "doc",
            "view",
            &subj("user:reader"),
            None,
            usize::MAX,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 300);
    let candidates = small
        .resource_candidates_at(at, "doc", "view", &subj("user:reader"))
        .await
        .unwrap();
    assert_eq!(candidates.len(), 300);
    // The rows budget still bounds the walk.
    let few_rows = e.reconfigured(EngineConfig {
        budget: kinbar::engine::Budget {
            max_rows_read: 100,
            ..Default::default()
        },
        ..Default::default()
    });
    let at = few_rows.head_revision().await.unwrap();
    let err = few_rows
        .lookup_resources_at(at, "doc", "view", &subj("user:reader"), None, usize::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BudgetExceeded { .. }), "{err:?}");
}

/// The fast check path (memory store, symbol reads) agrees with the general
/// evaluator across writes that intern thousands of new ids, so the
/// store's string-order ranks are rebuilt several times in between (and the
/// ranks cached in its indexes retaken): an ordering mistake there would
/// make a seek miss a relationship and deny.
#[tokio::test]
async fn fast_path_agrees_with_the_evaluator_across_reranks() {
    let schema = "definition user {}
definition group {
    relation member: user | group#member
}
definition doc {
    relation owner: user
    relation viewer: user | group#member | user:*
    relation public: user:*
    permission view = owner + viewer + public
    permission edit = owner & viewer
    permission no_public = view - public
}";
    let e = engine_with(schema, &[]).await;
    let general = e.reconfigured(EngineConfig {
        fast_path: false,
        ..e.config().clone()
    });
    // Ids interned out of string order, in batches large enough to rerank.
    let id = |i: usize| format!("{:05}", (i * 7_919) % 10_007);
    let mut all = Vec::new();
    for batch in 0..14 {
        let mut rels = Vec::new();
        for i in batch * 250..(batch + 1) * 250 {
            rels.push(format!("doc:d{}#owner@user:u{}", id(i), id(i + 1)));
            rels.push(format!(
                "doc:d{}#viewer@group:g{}#member",
                id(i),
                id(i % 97)
            ));
            rels.push(format!("group:g{}#member@user:u{}", id(i % 97), id(i + 2)));
            if i % 5 == 0 {
                rels.push(format!("doc:d{}#public@user:*", id(i)));
                rels.push(format!("doc:d{}#viewer@user:u{}", id(i), id(i + 1)));
            }
        }
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        e.write_relationships(touch(&refs), vec![], TxnMetadata::default())
            .await
            .unwrap();
        all.extend(rels);
    }
    let mut allowed = 0;
    for i in (0..3_500).step_by(7) {
        for p in ["view", "edit", "no_public"] {
            for u in [i + 1, i + 2, i + 3] {
                let rel = format!("doc:d{}#{p}@user:u{}", id(i), id(u));
                let fast = check(&e, &rel).await.unwrap();
                let slow = check(&general, &rel).await.unwrap();
                assert_eq!(fast, slow, "{rel}");
                allowed += usize::from(fast.is_allowed());
            }
        }
    }
    // Every owner may view: the answers are not all denials.
    assert!(allowed >= 500, "{allowed}");
    // Each engine answered the way it was configured to.
    let count = |e: &Engine| {
        (
            e.metrics
                .fast_answers
                .load(std::sync::atomic::Ordering::Relaxed),
            e.metrics
                .general_answers
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    assert_eq!(count(&e), (4_500, 0));
    assert_eq!(count(&general), (0, 4_500));
    assert!(all.len() > 7_000);
}

/// A LookupResources resumed from a cursor at the same revision confirms
/// from where it left off: a large walk is kept (by revision and query)
/// and not redone, and the pages still concatenate to the whole answer.
#[tokio::test]
async fn a_resumed_large_lookup_reuses_its_walk() {
    let schema = "definition user {}
definition group {
    relation member: user
}
definition doc {
    relation viewer: user | group#member
    relation banned: user
    permission view = viewer - banned
}";
    let e = engine_with(schema, &["group:g#member@user:ann"]).await;
    for batch in 0..2 {
        let rels: Vec<String> = (batch * 800..(batch + 1) * 800)
            .flat_map(|i| {
                let mut r = vec![format!("doc:d{i:05}#viewer@group:g#member")];
                if i % 10 == 0 {
                    r.push(format!("doc:d{i:05}#banned@user:ann"));
                }
                r
            })
            .collect();
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        e.write_relationships(touch(&refs), vec![], TxnMetadata::default())
            .await
            .unwrap();
    }
    let at = e.head_revision().await.unwrap();
    let ann = subj("user:ann");
    let reused = || {
        e.metrics
            .walk_reuses
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut paged: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let page = e
            .lookup_resources_at(
                at.clone(),
                "doc",
                "view",
                &ann,
                paged.last().map(String::as_str),
                500,
            )
            .await
            .unwrap();
        pages += 1;
        let done = page.len() < 500;
        paged.extend(page);
        if done {
            break;
        }
    }
    let want: Vec<String> = (0..1_600)
        .filter(|i| i % 10 != 0)
        .map(|i| format!("d{i:05}"))
        .collect();
    assert_eq!(paged, want);
    assert_eq!(pages, 3);
    // The first page walked; the two resumed pages took the kept walk.
    assert_eq!(reused(), 2);
    // A later revision is another walk.
    e.write_relationships(
        touch(&["doc:d99999#viewer@user:ann"]),
        vec![],
        TxnMetadata::default(),
    )
    .await
    .unwrap();
    let head = e.head_revision().await.unwrap();
    let all = e
        .lookup_resources_at(head, "doc", "view", &ann, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.len(), want.len() + 1);
    assert_eq!(reused(), 2);
}

/// The shared cache keys by revision: an answer cached at one revision is
/// served at that revision (counted as a hit, with the time it saved) and
/// never at a later one where a write changed it, in either direction.
#[tokio::test]
async fn a_cached_answer_is_never_served_at_a_revision_where_it_changed() {
    // The general evaluator (the one that uses the cache; the fast path
    // does not), a nested group so that `group:eng#member` is a shared
    // sub-problem reached by a hop.
    let base = engine_with(
        GROUPS,
        &[
            "doc:1#viewer@group:eng#member",
            "doc:2#viewer@group:eng#member",
            "group:eng#member@group:core#member",
            "group:core#member@user:ann",
        ],
    )
    .await;
    let e = base.reconfigured(EngineConfig {
        fast_path: false,
        ..EngineConfig::default()
    });
    let (doc, ann) = (obj("doc:1"), subj("user:ann"));
    let before = e.head_revision().await.unwrap();
    let ask = |r: &kinbar::Revision, d: &ObjectRef| {
        let (e, r, d, ann) = (&e, r.clone(), d.clone(), ann.clone());
        async move { e.check_at(r, &d, "view", &ann).await.unwrap() }
    };
    assert_eq!(ask(&before, &doc).await, Decision::Allowed);
    let hits = e
        .metrics
        .cache_hits
        .load(std::sync::atomic::Ordering::Relaxed);
    // doc:2 reaches the same cached `group:eng#member` sub-problem.
    assert_eq!(ask(&before, &obj("doc:2")).await, Decision::Allowed);
    let m = &e.metrics;
    assert!(
        m.cache_hits.load(std::sync::atomic::Ordering::Relaxed) > hits,
        "the shared sub-problem was not served from the cache"
    );
    // Ann leaves core: at the new revision the cached "yes" must not serve.
    let removed = e
        .write_relationships(
            vec![Update {
                operation: Operation::Delete,
                relationship: "group:core#member@user:ann".parse().unwrap(),
            }],
            vec![],
            TxnMetadata::default(),
        )
        .await
        .unwrap()
        .revision;
    assert_eq!(ask(&removed, &doc).await, Decision::Denied);
    assert_eq!(ask(&removed, &obj("doc:2")).await, Decision::Denied);
    // The old revision still answers as it did.
    assert_eq!(ask(&before, &doc).await, Decision::Allowed);
    // Back in: the cached "no" must not serve either.
    let restored = e
        .write_relationships(
            touch(&["group:core#member@user:ann"]),
            vec![],
            TxnMetadata::default(),
        )
        .await
        .unwrap()
        .revision;
    assert_eq!(ask(&restored, &doc).await, Decision::Allowed);
    assert_eq!(ask(&removed, &obj("doc:2")).await, Decision::Denied);
}
