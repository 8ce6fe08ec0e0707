//! The gRPC API end to end: a real server on 127.0.0.1:0 and real tonic
//! clients, for every method, every scope/key combination and each class of
//! bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use kinbar::api::proto::authzed::api::v1::watch_service_client::WatchServiceClient;
use kinbar::config::Config;
use tonic::transport::Channel;
use tonic::{Code, Request};

mod common;
use common::{
    Server, bulk_item, check_req, exact, fresh, full, obj, rel, subj, touch_all as touch, update,
    with_token,
};

const SCHEMA: &str = "definition user {}
definition team {
    relation member: user | team#member
}
definition doc {
    relation viewer: user | user:* | team#member
    relation banned: user
    relation parent: doc
    permission view = viewer + parent->view
    permission view_unbanned = view - banned
}";

const HAS: i32 = pb::check_permission_response::Permissionship::HasPermission as i32;
const NO: i32 = pb::check_permission_response::Permissionship::NoPermission as i32;

/// A server with the schema and a few relationships; long quantum so that
/// only tokens make writes visible deterministically.
async fn seeded() -> (
    Server,
    PermissionsServiceClient<Channel>,
    SchemaServiceClient<Channel>,
    pb::ZedToken,
) {
    let (server, ch) = Server::with_schema(
        Config {
            revision_quantum_ms: 60_000,
            ..Config::default()
        },
        SCHEMA,
    )
    .await;
    let schema = SchemaServiceClient::new(ch.clone());
    let mut perms = PermissionsServiceClient::new(ch);
    let written = perms
        .write_relationships(touch(&[
            "doc:1#viewer@user:anna",
            "doc:1#viewer@team:eng#member",
            "team:eng#member@user:bob",
            "doc:2#parent@doc:1",
            "doc:pub#viewer@user:*",
            "doc:pub#banned@user:eve",
        ]))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    (server, perms, schema, written)
}

#[tokio::test]
async fn check_allowed_denied_and_tokens() {
    let (server, mut perms, _, written) = seeded().await;
    let check = |p: &mut PermissionsServiceClient<Channel>, req| {
        let mut p = p.clone();
        async move { p.check_permission(req).await.map(|r| r.into_inner()) }
    };
    for (res, perm, s, want) in [
        ("doc:1", "view", "user:anna", HAS),
        ("doc:1", "view", "user:bob", HAS),
        ("doc:2", "view", "user:bob", HAS),
        ("doc:1", "view", "user:carl", NO),
        ("doc:pub", "view_unbanned", "user:zed", HAS),
        ("doc:pub", "view_unbanned", "user:eve", NO),
        ("doc:1", "view", "team:eng#member", HAS),
    ] {
        let r = check(&mut perms, check_req(res, perm, s, fresh(&written)))
            .await
            .unwrap();
        assert_eq!(r.permissionship, want, "{res}#{perm}@{s}");
        assert!(r.checked_at.is_some());
    }
    // A later write is seen at its token and not at an older exact snapshot.
    let w2 = perms
        .write_relationships(touch(&["doc:3#viewer@user:carl"]))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let r = check(
        &mut perms,
        check_req("doc:3", "view", "user:carl", fresh(&w2)),
    )
    .await
    .unwrap();
    assert_eq!(r.permissionship, HAS);
    let r = check(
        &mut perms,
        check_req("doc:3", "view", "user:carl", exact(&written)),
    )
    .await
    .unwrap();
    assert_eq!(r.permissionship, NO);
    assert_eq!(r.checked_at.unwrap(), written);
    let r = check(&mut perms, check_req("doc:3", "view", "user:carl", full()))
        .await
        .unwrap();
    assert_eq!(r.permissionship, HAS);
    // Garbage and foreign tokens are INVALID_ARGUMENT.
    let bad = pb::ZedToken {
        token: "not-a-token".into(),
    };
    assert_eq!(
        check(
            &mut perms,
            check_req("doc:1", "view", "user:anna", fresh(&bad))
        )
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    let foreign = pb::ZedToken {
        token: kinbar::api::token::encode(&kinbar::Revision::new("1"), "another-store"),
    };
    let e = check(
        &mut perms,
        check_req("doc:1", "view", "user:anna", fresh(&foreign)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("another datastore"), "{}", e.message());
    server.stop().await;
}

#[tokio::test]
async fn bulk_checks_mix_results_and_errors() {
    let (server, mut perms, _, written) = seeded().await;
    let item = bulk_item;
    let req = pb::CheckBulkPermissionsRequest {
        consistency: fresh(&written),
        items: vec![
            item("doc:1", "view", "user:anna"),
            item("doc:1", "view", "user:carl"),
            item("doc:1", "nope", "user:anna"),
            item("nope:1", "view", "user:anna"),
        ],
        with_tracing: false,
    };
    let r = perms
        .check_bulk_permissions(req)
        .await
        .unwrap()
        .into_inner();
    use pb::check_bulk_permissions_pair::Response as R;
    let got: Vec<_> = r
        .pairs
        .iter()
        .map(|p| match p.response.as_ref().unwrap() {
            R::Item(i) => Ok(i.permissionship),
            R::Error(e) => Err(e.code),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            Ok(HAS),
            Ok(NO),
            Err(Code::FailedPrecondition as i32),
            Err(Code::FailedPrecondition as i32)
        ]
    );
    assert_eq!(r.pairs[0].request.as_ref().unwrap().permission, "view");
    // Too many items is refused as a whole.
    let many = pb::CheckBulkPermissionsRequest {
        consistency: None,
        items: vec![item("doc:1", "view", "user:anna"); 1001],
        with_tracing: false,
    };
    assert_eq!(
        perms.check_bulk_permissions(many).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test]
async fn expand_returns_a_tree() {
    let (server, mut perms, _, written) = seeded().await;
    let r = perms
        .expand_permission_tree(pb::ExpandPermissionTreeRequest {
            consistency: fresh(&written),
            resource: obj("doc", "1"),
            permission: "view".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    kinbar::cli::client::render_tree(r.tree_root.as_ref().unwrap(), 0, &mut text);
    assert_eq!(
        text,
        "doc:1#view (union)\n  doc:1#viewer: [team:eng#member, user:anna]\n  doc:1#view (union)\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn writes_with_preconditions_create_and_delete() {
    use pb::precondition::Operation as P;
    use pb::relationship_update::Operation as O;
    let (server, mut perms, _, _) = seeded().await;
    let pre = |op: P, f: &str| {
        let r: kinbar::Relationship = f.parse().unwrap();
        pb::Precondition {
            operation: op as i32,
            filter: Some(pb::RelationshipFilter {
                resource_type: r.resource.object_type.clone(),
                optional_resource_id: r.resource.object_id.clone(),
                optional_resource_id_prefix: String::new(),
                optional_relation: r.relation.clone(),
                optional_subject_filter: Some(pb::SubjectFilter {
                    subject_type: r.subject.object.object_type.clone(),
                    optional_subject_id: r.subject.object.object_id.clone(),
                    optional_relation: None,
                }),
            }),
        }
    };
    let write = |pres: Vec<pb::Precondition>| pb::WriteRelationshipsRequest {
        updates: vec![update(O::Touch, "doc:9#viewer@user:zoe")],
        optional_preconditions: pres,
        optional_transaction_metadata: None,
    };
    let e = perms
        .write_relationships(write(vec![pre(P::MustMatch, "doc:1#banned@user:anna")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_WRITE_OR_DELETE_PRECONDITION_FAILURE")
    );
    let e = perms
        .write_relationships(write(vec![pre(P::MustNotMatch, "doc:1#viewer@user:anna")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    perms
        .write_relationships(write(vec![
            pre(P::MustMatch, "doc:1#viewer@user:anna"),
            pre(P::MustNotMatch, "doc:1#banned@user:anna"),
        ]))
        .await
        .unwrap();
    // CREATE of an existing relationship.
    let create = pb::WriteRelationshipsRequest {
        updates: vec![update(O::Create, "doc:9#viewer@user:zoe")],
        optional_preconditions: vec![],
        optional_transaction_metadata: None,
    };
    let e = perms.write_relationships(create).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // Schema violations.
    let e = perms
        .write_relationships(touch(&["doc:1#view@user:anna"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("is a permission"), "{}", e.message());
    // Too many updates.
    let many: Vec<String> = (0..1001)
        .map(|i| format!("doc:{i}#viewer@user:x"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = perms.write_relationships(touch(&refs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST")
    );
    // Delete by filter: partial, then complete.
    perms
        .write_relationships(touch(&[
            "doc:7#viewer@user:a",
            "doc:7#viewer@user:b",
            "doc:7#viewer@user:c",
        ]))
        .await
        .unwrap();
    let del = |limit, partial| pb::DeleteRelationshipsRequest {
        relationship_filter: Some(pb::RelationshipFilter {
            resource_type: "doc".into(),
            optional_resource_id: "7".into(),
            ..Default::default()
        }),
        optional_preconditions: vec![],
        optional_limit: limit,
        optional_allow_partial_deletions: partial,
        optional_transaction_metadata: None,
    };
    assert_eq!(
        perms
            .delete_relationships(del(2, false))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let r = perms
        .delete_relationships(del(2, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.relationships_deleted_count, 2);
    assert_eq!(
        r.deletion_progress,
        pb::delete_relationships_response::DeletionProgress::Partial as i32
    );
    let r = perms
        .delete_relationships(del(0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.relationships_deleted_count, 1);
    assert_eq!(
        r.deletion_progress,
        pb::delete_relationships_response::DeletionProgress::Complete as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn read_relationships_pages_with_cursors() {
    let (server, mut perms, _, _) = seeded().await;
    let rels: Vec<String> = (0..25)
        .map(|i| format!("doc:page{i:02}#viewer@user:u{i}"))
        .collect();
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let w = perms
        .write_relationships(touch(&refs))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let filter = Some(pb::RelationshipFilter {
        resource_type: "doc".into(),
        optional_resource_id_prefix: "page".into(),
        ..Default::default()
    });
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let req = pb::ReadRelationshipsRequest {
            consistency: fresh(&w),
            relationship_filter: filter.clone(),
            optional_limit: 10,
            optional_cursor: cursor.clone(),
        };
        let mut stream = perms.read_relationships(req).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(r) = stream.message().await.unwrap() {
            n += 1;
            cursor = r.after_result_cursor.clone();
            seen.push(
                kinbar::api::convert::relationship(r.relationship.as_ref(), "r")
                    .unwrap()
                    .to_string(),
            );
        }
        if n < 10 {
            break;
        }
    }
    assert_eq!(seen, rels);
    let bad = pb::ReadRelationshipsRequest {
        consistency: None,
        relationship_filter: filter,
        optional_limit: 0,
        optional_cursor: Some(pb::Cursor {
            token: "???".into(),
        }),
    };
    assert_eq!(
        perms.read_relationships(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // A cursor belongs to its query: replayed with another filter it is refused.
    let other = pb::ReadRelationshipsRequest {
        consistency: None,
        relationship_filter: Some(pb::RelationshipFilter {
            resource_type: "doc".into(),
            ..Default::default()
        }),
        optional_limit: 0,
        optional_cursor: cursor,
    };
    let e = perms.read_relationships(other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("different query"), "{}", e.message());
    // Filters naming what the schema does not define are refused, not empty.
    for (resource_type, relation, subject_type, subject_relation) in [
        ("nope", "", "", ""),
        ("doc", "nope", "", ""),
        ("doc", "viewer", "nope", ""),
        ("doc", "viewer", "team", "nope"),
    ] {
        let req = pb::ReadRelationshipsRequest {
            consistency: fresh(&w),
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: resource_type.into(),
                optional_relation: relation.into(),
                optional_subject_filter: (!subject_type.is_empty()).then(|| pb::SubjectFilter {
                    subject_type: subject_type.into(),
                    optional_relation: (!subject_relation.is_empty()).then(|| {
                        pb::subject_filter::RelationFilter {
                            relation: subject_relation.into(),
                        }
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            optional_limit: 0,
            optional_cursor: None,
        };
        let e = perms.read_relationships(req).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::FailedPrecondition,
            "{resource_type}#{relation}@{subject_type}#{subject_relation}: {}",
            e.message()
        );
        assert!(e.message().contains("nope"), "{}", e.message());
    }
    server.stop().await;
}

#[tokio::test]
async fn schema_read_write_reflect_diff_and_refusals() {
    let (server, perms, mut schema, _) = seeded().await;
    let text = schema
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .schema_text;
    assert_eq!(text, SCHEMA);
    // Orphaning change refused, naming the relationships.
    let e = schema
        .write_schema(pb::WriteSchemaRequest {
            schema: SCHEMA
                .replace("    relation banned: user\n", "")
                .replace("    permission view_unbanned = view - banned\n", ""),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("doc:pub#banned@user:eve"),
        "{}",
        e.message()
    );
    // Syntax and type errors.
    let e = schema
        .write_schema(pb::WriteSchemaRequest {
            schema: "definition user {".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_SCHEMA_PARSE_ERROR")
    );
    assert!(e.message().contains("schema:1:18"), "{}", e.message());
    let e = schema
        .write_schema(pb::WriteSchemaRequest {
            schema: "definition doc { relation v: usr }".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_SCHEMA_TYPE_ERROR")
    );
    // Reflect and diff.
    let r = schema
        .reflect_schema(pb::ReflectSchemaRequest {
            consistency: full(),
            optional_filters: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = r.definitions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["doc", "team", "user"]);
    let doc = &r.definitions[0];
    assert_eq!(
        doc.relations
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["banned", "parent", "viewer"]
    );
    assert_eq!(doc.permissions.len(), 2);
    let d = schema
        .diff_schema(pb::DiffSchemaRequest {
            consistency: full(),
            comparison_schema: format!("{SCHEMA}\ndefinition extra {{}}"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.diffs.len(), 1);
    assert!(
        matches!(d.diffs[0].diff, Some(pb::reflection_schema_diff::Diff::DefinitionAdded(ref x)) if x.name == "extra")
    );
    // An empty server has no schema.
    let empty = Server::start(Config::default()).await;
    let mut s2 = SchemaServiceClient::new(empty.channel().await);
    assert_eq!(
        s2.read_schema(pb::ReadSchemaRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut p2 = PermissionsServiceClient::new(empty.channel().await);
    assert_eq!(
        p2.check_permission(check_req("doc:1", "view", "user:a", full()))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    empty.stop().await;
    drop(perms);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_maps_to_precise_codes() {
    let (server, mut perms, _, _) = seeded().await;
    let c = |req| {
        let mut p = perms.clone();
        async move { p.check_permission(req).await.unwrap_err() }
    };
    let mut missing = check_req("doc:1", "view", "user:a", full());
    missing.resource = None;
    assert_eq!(c(missing).await.code(), Code::InvalidArgument);
    let mut bad_id = check_req("doc:1", "view", "user:a", full());
    bad_id.resource = obj("doc", "has space");
    let e = c(bad_id).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("resource.object_id"),
        "{}",
        e.message()
    );
    let e = c(check_req("nope:1", "view", "user:a", full())).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_UNKNOWN_DEFINITION")
    );
    let e = c(check_req("doc:1", "nope", "user:a", full())).await;
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION")
    );
    let mut wildcard = check_req("doc:1", "view", "user:a", full());
    wildcard.subject = subj("user", "*", "");
    assert_eq!(c(wildcard).await.code(), Code::InvalidArgument);
    let mut ctx = check_req("doc:1", "view", "user:a", full());
    ctx.context = Some(prost_types::Struct {
        fields: [(
            "k".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    });
    assert_eq!(c(ctx).await.code(), Code::InvalidArgument);
    // Writes that do not fit the schema: each kind has its own reason
    // (decided by the violation's kind, not its wording).
    for (text, reason) in [
        ("doc:1#view@user:a", "ERROR_REASON_CANNOT_UPDATE_PERMISSION"),
        ("doc:1#viewer@doc:2", "ERROR_REASON_INVALID_SUBJECT_TYPE"),
        (
            "doc:1#nope@user:a",
            "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION",
        ),
        ("nope:1#viewer@user:a", "ERROR_REASON_UNKNOWN_DEFINITION"),
    ] {
        let e = perms.write_relationships(touch(&[text])).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{text}: {e:?}");
        assert_eq!(
            kinbar::api::status::reason_of(&e).as_deref(),
            Some(reason),
            "{text}: {}",
            e.message()
        );
    }
    // Depth exceeded.
    let chain: Vec<String> = (0..60)
        .map(|i| format!("team:t{i}#member@team:t{}#member", i + 1))
        .collect();
    let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
    perms.write_relationships(touch(&refs)).await.unwrap();
    let mut deep = check_req("team:t0", "member", "user:a", full());
    deep.consistency = full();
    let e = perms.check_permission(deep).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        kinbar::api::status::reason_of(&e).as_deref(),
        Some("ERROR_REASON_MAXIMUM_DEPTH_EXCEEDED")
    );
    assert!(e.message().contains("50"), "{}", e.message());
    // An oversized request (over the 4 MiB default).
    let mut schema = SchemaServiceClient::new(server.channel().await);
    let e = schema
        .write_schema(pb::WriteSchemaRequest {
            schema: "x".repeat(5 * 1024 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A request that cannot be decoded.
    let ch = server.channel().await;
    let mut raw = tonic::client::Grpc::new(ch);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/authzed.api.v1.PermissionsService/CheckPermission",
    );
    let e = raw
        .unary::<Vec<u8>, Vec<u8>, RawCodec>(
            Request::new(vec![0xff, 0xff, 0xff, 0x0f, 0x01]),
            path,
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A method that does not exist: UNIMPLEMENTED, saying which and where
    // to look (tonic alone sends no message).
    for method in [
        "/authzed.api.v1.PermissionsService/NoSuchMethod",
        "/no.such.Service/Call",
    ] {
        raw.ready().await.unwrap();
        let e = raw
            .unary::<Vec<u8>, Vec<u8>, RawCodec>(
                Request::new(vec![]),
                tonic::codegen::http::uri::PathAndQuery::from_static(method),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
        assert!(
            e.message().contains(method) && e.message().contains("reflection"),
            "{}",
            e.message()
        );
    }
    server.stop().await;
}

/// Sends raw bytes as a gRPC message (to test undecodable requests).
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn every_scope_and_key_combination() {
    let keys = vec![
        "reader:reader-secret:check".to_string(),
        "writer:writer-secret:write".to_string(),
        "root:root-secret-1:admin".to_string(),
        "both:both-secret:check,write".to_string(),
    ];
    let server = Server::start(Config {
        preshared_keys: keys,
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    let mut schema = SchemaServiceClient::new(ch.clone());
    let mut perms = PermissionsServiceClient::new(ch);
    schema
        .write_schema(with_token(
            pb::WriteSchemaRequest {
                schema: SCHEMA.into(),
            },
            Some("root-secret-1"),
        ))
        .await
        .unwrap();
    let tokens = [
        None,
        Some("wrong-secret"),
        Some("reader-secret"),
        Some("writer-secret"),
        Some("root-secret-1"),
        Some("both-secret"),
    ];
    for token in tokens {
        let code = |r: Result<(), tonic::Status>| r.err().map(|e| e.code()).unwrap_or(Code::Ok);
        let check = code(
            perms
                .check_permission(with_token(
                    check_req("doc:1", "view", "user:a", full()),
                    token,
                ))
                .await
                .map(|_| ()),
        );
        let write = code(
            perms
                .write_relationships(with_token(touch(&["doc:1#viewer@user:a"]), token))
                .await
                .map(|_| ()),
        );
        let schema_w = code(
            schema
                .write_schema(with_token(
                    pb::WriteSchemaRequest {
                        schema: SCHEMA.into(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        );
        let read = code(
            schema
                .read_schema(with_token(pb::ReadSchemaRequest {}, token))
                .await
                .map(|_| ()),
        );
        let expected = match token {
            None | Some("wrong-secret") => [Code::Unauthenticated; 4],
            Some("reader-secret") => [
                Code::Ok,
                Code::PermissionDenied,
                Code::PermissionDenied,
                Code::Ok,
            ],
            Some("writer-secret") => [
                Code::PermissionDenied,
                Code::Ok,
                Code::PermissionDenied,
                Code::PermissionDenied,
            ],
            Some("root-secret-1") => [Code::Ok; 4],
            Some("both-secret") => [Code::Ok, Code::Ok, Code::PermissionDenied, Code::Ok],
            Some(_) => unreachable!(),
        };
        assert_eq!([check, write, schema_w, read], expected, "token {token:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_servers_only_listen_on_loopback() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = kinbar::server::run(Config::default(), listener, async {})
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("refusing to serve without authentication"),
        "{e}"
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let ok = Config {
        insecure_allow_unauthenticated: true,
        ..Config::default()
    };
    kinbar::server::run(ok, listener, async {}).await.unwrap();
    let e = kinbar::server::run(
        Config {
            preshared_keys: vec!["x:short:check".into()],
            ..Config::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        async {},
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("shorter than 8"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_with_metadata() {
    let (server, mut perms, _, written) = seeded().await;
    let mut watch = WatchServiceClient::new(server.channel().await);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut req = touch(&["doc:w#viewer@user:wendy"]);
        req.optional_transaction_metadata = Some(prost_types::Struct {
            fields: [(
                "reason".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("onboarding".into())),
                },
            )]
            .into(),
        });
        perms.write_relationships(req).await.unwrap();
    });
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        watch.watch(pb::WatchRequest {
            optional_object_types: vec![],
            optional_start_cursor: Some(written),
            optional_relationship_filters: vec![],
            optional_update_kinds: vec![],
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    writer.await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.updates.len(), 1);
    assert_eq!(
        msg.updates[0].operation,
        pb::relationship_update::Operation::Touch as i32
    );
    let meta = msg.optional_transaction_metadata.unwrap();
    assert!(
        matches!(meta.fields["reason"].kind, Some(prost_types::value::Kind::StringValue(ref s)) if s == "onboarding")
    );
    assert!(
        matches!(meta.fields["actor"].kind, Some(prost_types::value::Kind::StringValue(ref s)) if s == "anonymous")
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_graceful_shutdown() {
    let server = Server::start(Config::default()).await;
    let ch = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "authzed.api.v1.PermissionsService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

/// `--metrics-addr`: `/healthz`, `/readyz` and Prometheus `/metrics`, whose
/// request counters move with the calls made.
#[tokio::test]
async fn metrics_health_and_readiness_over_http() {
    let metrics = common::free_addr();
    let config = Config {
        metrics_addr: Some(metrics),
        ..Default::default()
    };
    let (server, ch) = Server::with_schema(config, SCHEMA).await;
    assert_eq!(common::http_get(metrics, "/healthz").await.0, 200);
    let (code, body) = common::http_get(metrics, "/readyz").await;
    assert_eq!((code, body.trim()), (200, "ready"));
    let count = |body: &str, code: &str| -> u64 {
        body.lines()
            .find(|l| {
                l.starts_with("kinbar_grpc_requests_total")
                    && l.contains("CheckPermission")
                    && l.contains(&format!("code=\"{code}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = common::http_get(metrics, "/metrics").await.1;
    let mut perms = PermissionsServiceClient::new(ch);
    for _ in 0..3 {
        perms
            .check_permission(common::check("doc:1", "view", "user:anna", full()))
            .await
            .unwrap();
    }
    let e = perms
        .check_permission(common::check("nope:1", "view", "user:anna", full()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let after = common::http_get(metrics, "/metrics").await.1;
    assert_eq!(count(&after, "Ok") - count(&before, "Ok"), 3, "{after}");
    assert_eq!(
        count(&after, "FailedPrecondition") - count(&before, "FailedPrecondition"),
        1
    );
    assert!(
        after.lines().any(
            |l| l.starts_with("kinbar_grpc_request_duration_seconds_bucket")
                && l.contains("CheckPermission")
                && l.contains("code=\"FailedPrecondition\"")
        ),
        "{after}"
    );
    assert!(after.contains("kinbar_datastore_query_duration_seconds_bucket"));
    assert!(
        after.contains("kinbar_dispatch_subproblems_bucket"),
        "{after}"
    );
    assert!(after.contains("kinbar_dispatch_depth_bucket"), "{after}");
    assert!(after.contains("kinbar_datastore_ready 1"));
    assert_eq!(common::http_get(metrics, "/nope").await.0, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_checkers_see_no_torn_writes() {
    let (server, perms, _, _) = seeded().await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut p = perms.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                // Viewer and banned land together or not at all.
                p.write_relationships(touch(&[
                    &format!("doc:c{w}#viewer@user:u{i}"),
                    &format!("doc:c{w}#banned@user:u{i}"),
                ]))
                .await
                .unwrap();
            }
        }));
    }
    for w in 0..4 {
        let mut p = perms.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let r = p
                    .check_permission(check_req(
                        &format!("doc:c{w}"),
                        "view_unbanned",
                        &format!("user:u{i}"),
                        full(),
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.permissionship, NO, "a torn write was visible");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut p = perms.clone();
    for w in 0..4 {
        for i in 0..30 {
            let r = p
                .check_permission(check_req(
                    &format!("doc:c{w}"),
                    "view",
                    &format!("user:u{i}"),
                    full(),
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.permissionship, HAS, "lost write doc:c{w} u{i}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn import_then_export_round_trips() {
    let (server, mut perms, _, _) = seeded().await;
    let texts: Vec<String> = (0..2500)
        .map(|i| format!("doc:imp{i:04}#viewer@user:u{}", i % 7))
        .collect();
    let batches: Vec<pb::ImportBulkRelationshipsRequest> = texts
        .chunks(1000)
        .map(|c| pb::ImportBulkRelationshipsRequest {
            relationships: c.iter().map(|t| rel(t)).collect(),
        })
        .collect();
    let r = perms
        .import_bulk_relationships(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.num_loaded, 2500);
    // Importing an existing relationship fails the whole import.
    let again = vec![pb::ImportBulkRelationshipsRequest {
        relationships: vec![rel("doc:new#viewer@user:a"), rel(&texts[0])],
    }];
    assert_eq!(
        perms
            .import_bulk_relationships(tokio_stream::iter(again))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let r = perms
        .check_permission(check_req("doc:new", "view", "user:a", full()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.permissionship, NO,
        "nothing of a failed import is applied"
    );
    // Export everything under the prefix, in pages, resuming from cursors.
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let req = pb::ExportBulkRelationshipsRequest {
            consistency: full(),
            optional_limit: 1000,
            optional_cursor: cursor.clone(),
            optional_relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "doc".into(),
                optional_resource_id_prefix: "imp".into(),
                ..Default::default()
            }),
        };
        let mut stream = perms
            .export_bulk_relationships(req)
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(batch) = stream.message().await.unwrap() {
            n += batch.relationships.len();
            cursor = batch.after_result_cursor.clone();
            got.extend(batch.relationships.iter().map(|r| {
                kinbar::api::convert::relationship(Some(r), "r")
                    .unwrap()
                    .to_string()
            }));
        }
        if n < 1000 {
            break;
        }
    }
    assert_eq!(got, texts);
    server.stop().await;
}

#[tokio::test]
async fn lookups_agree_with_check_and_page() {
    let (server, mut perms, _, _) = seeded().await;
    let texts: Vec<String> = (0..250)
        .map(|i| format!("doc:l{i:03}#viewer@team:eng#member"))
        .collect();
    let mut refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    refs.push("doc:pub#viewer@user:zoe");
    let w = perms
        .write_relationships(touch(&refs))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    // LookupResources for bob (member of team eng): paged by 60 with cursors.
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let req = pb::LookupResourcesRequest {
            consistency: fresh(&w),
            resource_object_type: "doc".into(),
            permission: "view".into(),
            subject: subj("user", "bob", ""),
            context: None,
            optional_limit: 60,
            optional_cursor: cursor.clone(),
            with_debug: false,
        };
        let mut stream = perms.lookup_resources(req).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(r) = stream.message().await.unwrap() {
            n += 1;
            cursor = r.after_result_cursor.clone();
            got.push(r.resource_object_id);
        }
        if n < 60 {
            break;
        }
    }
    let mut want: Vec<String> = (0..250).map(|i| format!("l{i:03}")).collect();
    want.insert(0, "2".into()); // doc:2's parent doc:1 has team eng
    want.insert(0, "1".into());
    want.push("pub".into()); // doc:pub is public (user:*)
    assert_eq!(got, want);
    // LookupSubjects: the wildcard with its exclusions, and concrete subjects.
    let req = pb::LookupSubjectsRequest {
        consistency: fresh(&w),
        resource: obj("doc", "pub"),
        permission: "view_unbanned".into(),
        subject_object_type: "user".into(),
        optional_subject_relation: String::new(),
        context: None,
        optional_concrete_limit: 0,
        optional_cursor: None,
        wildcard_option: 0,
    };
    let rows: Vec<pb::LookupSubjectsResponse> = {
        let mut s = perms
            .lookup_subjects(req.clone())
            .await
            .unwrap()
            .into_inner();
        let mut v = Vec::new();
        while let Some(r) = s.message().await.unwrap() {
            v.push(r);
        }
        v
    };
    assert_eq!(rows[0].subject.as_ref().unwrap().subject_object_id, "*");
    assert_eq!(
        rows[0]
            .excluded_subjects
            .iter()
            .map(|e| e.subject_object_id.as_str())
            .collect::<Vec<_>>(),
        ["eve"]
    );
    let concrete: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.subject.as_ref().unwrap().subject_object_id.as_str())
        .collect();
    // Concrete subjects are those found below doc:pub (SpiceDB's answer);
    // anna and bob, granted only through the wildcard, are not listed.
    assert_eq!(concrete, ["zoe"], "the concrete subjects below doc:pub");
    let mut without = req.clone();
    without.wildcard_option = pb::lookup_subjects_request::WildcardOption::ExcludeWildcards as i32;
    let mut s = perms.lookup_subjects(without).await.unwrap().into_inner();
    assert_ne!(s.message().await.unwrap().unwrap().subject_object_id, "*");
    // Usersets as subjects.
    let mut sets = req.clone();
    sets.resource = obj("doc", "1");
    sets.permission = "view".into();
    sets.subject_object_type = "team".into();
    sets.optional_subject_relation = "member".into();
    let mut s = perms.lookup_subjects(sets).await.unwrap().into_inner();
    assert_eq!(
        s.message()
            .await
            .unwrap()
            .unwrap()
            .subject
            .unwrap()
            .subject_object_id,
        "eng"
    );
    // A LookupResources cursor replayed with another permission or subject
    // is refused.
    let first = pb::LookupResourcesRequest {
        consistency: fresh(&w),
        resource_object_type: "doc".into(),
        permission: "view".into(),
        subject: subj("user", "bob", ""),
        context: None,
        optional_limit: 1,
        optional_cursor: None,
        with_debug: false,
    };
    let mut stream = perms
        .lookup_resources(first.clone())
        .await
        .unwrap()
        .into_inner();
    let cursor = stream.message().await.unwrap().unwrap().after_result_cursor;
    let mut same = first.clone();
    same.optional_cursor = cursor.clone();
    assert!(perms.lookup_resources(same).await.is_ok());
    for change in [0, 1] {
        let mut other = first.clone();
        other.optional_cursor = cursor.clone();
        if change == 0 {
            other.permission = "edit".into();
        } else {
            other.subject = subj("user", "anna", "");
        }
        let e = perms.lookup_resources(other).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("different query"), "{}", e.message());
    }
    // Bad requests fail with a status before streaming.
    let mut bad = req.clone();
    bad.subject_object_type = "nope".into();
    assert_eq!(
        perms.lookup_subjects(bad).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    server.stop().await;
}

#[tokio::test]
async fn computable_permissions_and_dependent_relations() {
    let (server, _, mut schema, _) = seeded().await;
    let names = |v: &[pb::ReflectionRelationReference]| -> Vec<String> {
        v.iter()
            .map(|r| {
                format!(
                    "{}#{}{}",
                    r.definition_name,
                    r.relation_name,
                    if r.is_permission { " (p)" } else { "" }
                )
            })
            .collect()
    };
    let r = schema
        .dependent_relations(pb::DependentRelationsRequest {
            consistency: full(),
            definition_name: "doc".into(),
            permission_name: "view_unbanned".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&r.relations),
        [
            "doc#banned",
            "doc#parent",
            "doc#view (p)",
            "doc#viewer",
            "team#member"
        ]
    );
    let r = schema
        .computable_permissions(pb::ComputablePermissionsRequest {
            consistency: full(),
            definition_name: "team".into(),
            relation_name: "member".into(),
            optional_definition_name_filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names(&r.permissions),
        ["doc#view (p)", "doc#view_unbanned (p)", "doc#viewer"]
    );
    let e = schema
        .dependent_relations(pb::DependentRelationsRequest {
            consistency: full(),
            definition_name: "doc".into(),
            permission_name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn every_change_is_audited_with_actor_and_reason() {
    use kinbar::api::proto::kinbar::v1 as kpb;
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let keys = vec![
        "root:root-secret-1:admin".to_string(),
        "crm:crm-secret-1:write,check".to_string(),
    ];
    let server = Server::start(Config {
        preshared_keys: keys,
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    let mut schema = SchemaServiceClient::new(ch.clone());
    let mut perms = PermissionsServiceClient::new(ch.clone());
    let mut audit = AuditServiceClient::new(ch);
    schema
        .write_schema(with_token(
            pb::WriteSchemaRequest {
                schema: SCHEMA.into(),
            },
            Some("root-secret-1"),
        ))
        .await
        .unwrap();
    let mut req = touch(&["doc:1#viewer@user:anna", "doc:1#banned@user:eve"]);
    req.optional_transaction_metadata = Some(prost_types::Struct {
        fields: [(
            "reason".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("ticket CRM-7".into())),
            },
        )]
        .into(),
    });
    perms
        .write_relationships(with_token(req, Some("crm-secret-1")))
        .await
        .unwrap();
    let mut del = touch(&[]);
    del.updates.push(update(
        pb::relationship_update::Operation::Delete,
        "doc:1#banned@user:eve",
    ));
    perms
        .write_relationships(with_token(del, Some("crm-secret-1")))
        .await
        .unwrap();
    // A write that changes nothing leaves no record; a failed one neither.
    perms
        .write_relationships(with_token(
            touch(&["doc:1#viewer@user:anna"]),
            Some("crm-secret-1"),
        ))
        .await
        .unwrap();
    assert!(
        perms
            .write_relationships(with_token(
                touch(&["doc:1#nope@user:x"]),
                Some("crm-secret-1")
            ))
            .await
            .is_err()
    );

    let read = |req: kpb::ReadAuditRequest| {
        let mut a = audit.clone();
        async move {
            let mut s = a
                .read_audit(with_token(req, Some("root-secret-1")))
                .await
                .unwrap()
                .into_inner();
            let mut v = Vec::new();
            while let Some(r) = s.message().await.unwrap() {
                v.push(r.transaction.unwrap());
            }
            v
        }
    };
    let all = read(kpb::ReadAuditRequest::default()).await;
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(
        (
            all[0].actor.as_str(),
            all[0].schema_changed,
            all[0].new_schema.as_str()
        ),
        ("root", true, SCHEMA)
    );
    assert_eq!(all[1].actor, "crm");
    assert!(
        matches!(all[1].metadata.as_ref().unwrap().fields["reason"].kind, Some(prost_types::value::Kind::StringValue(ref s)) if s == "ticket CRM-7")
    );
    let ops: Vec<(&str, &str)> = all[1]
        .changes
        .iter()
        .map(|c| (c.operation.as_str(), c.relationship.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("touch", "doc:1#viewer@user:anna"),
            ("touch", "doc:1#banned@user:eve")
        ]
    );
    assert_eq!(all[2].changes[0].operation, "delete");
    assert_eq!(all[1].previous_hash, all[0].hash);
    // Filters.
    let eve = read(kpb::ReadAuditRequest {
        optional_object: "user:eve".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(eve.iter().map(|t| t.sequence).collect::<Vec<_>>(), [2, 3]);
    let root = read(kpb::ReadAuditRequest {
        optional_actor: "root".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(root.len(), 1);
    let page = read(kpb::ReadAuditRequest {
        optional_limit: 1,
        optional_cursor: "1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(page.iter().map(|t| t.sequence).collect::<Vec<_>>(), [2]);
    // Verify, and the scope.
    let v = audit
        .verify_audit(with_token(
            kpb::VerifyAuditRequest { complete: false },
            Some("root-secret-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified_transactions, 3);
    assert_eq!(v.head_hash, all[2].hash);
    // Complete: the replayed changes are exactly what the store holds.
    let v = audit
        .verify_audit(with_token(
            kpb::VerifyAuditRequest { complete: true },
            Some("root-secret-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact && v.discrepancies.is_empty(), "{v:?}");
    assert!(v.relationships_checked > 0, "{v:?}");
    assert!(v.message.contains("complete"), "{v:?}");
    let e = audit
        .verify_audit(with_token(
            kpb::VerifyAuditRequest { complete: false },
            Some("crm-secret-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Follow: a new change arrives on an open tail.
    let mut tail = audit
        .read_audit(with_token(
            kpb::ReadAuditRequest {
                optional_cursor: "3".into(),
                follow: true,
                ..Default::default()
            },
            Some("root-secret-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    perms
        .write_relationships(with_token(
            touch(&["doc:2#viewer@user:tom"]),
            Some("crm-secret-1"),
        ))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), tail.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.transaction.unwrap().sequence, 4);
    drop(tail);
    server.stop().await;
}

/// Issue 17: an undefined answer (a permission that depends on its own
/// exclusion) is FAILED_PRECONDITION, never "allowed"; a recursive Expand
/// that used to abort the process is answered, and over its budget is
/// RESOURCE_EXHAUSTED naming the limit — with the server still serving.
#[tokio::test]
async fn paradoxes_fail_closed_and_expand_is_bounded() {
    let (server, ch) = Server::with_schema(
        Config {
            max_expand_elements: 200,
            ..Config::default()
        },
        "definition user {}
definition document {
    relation viewer_direct: user
    relation restricted: user | document#viewer
    permission viewer = viewer_direct - restricted
}
definition node {
    relation parent: node
    relation viewer: user
    permission a = viewer + parent->b + parent->c
    permission b = parent->a + parent->c
    permission c = parent->a + parent->b
}",
    )
    .await;
    let mut perms = PermissionsServiceClient::new(ch);
    let mut rels = vec![
        "document:1#viewer_direct@user:jon".to_string(),
        "document:1#restricted@document:1#viewer".to_string(),
    ];
    for i in 0..12 {
        for d in [1, 2, 7] {
            rels.push(format!("node:n{i}#parent@node:n{}", (i + d) % 12));
        }
        rels.push(format!("node:n{i}#viewer@user:u{i}"));
    }
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    let written = perms
        .write_relationships(touch(&refs))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let err = perms
        .check_permission(check_req(
            "document:1",
            "viewer",
            "user:jon",
            fresh(&written),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("cycle"), "{}", err.message());
    let expand = |p: &str| pb::ExpandPermissionTreeRequest {
        consistency: fresh(&written),
        resource: obj("node", "n0"),
        permission: p.into(),
    };
    let err = perms.expand_permission_tree(expand("a")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_expand_elements"),
        "{}",
        err.message()
    );
    // Still serving: a check on the same data answers.
    let ok = perms
        .check_permission(check_req("node:n0", "a", "user:u5", fresh(&written)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.permissionship, HAS);
    server.stop().await;
}

/// Offboarding (kinbar.v1.AdminService/Offboard) of a subject holding more
/// than 5,000 relationships, on the memory store (`tests/postgres_server.rs`
/// runs the same on Postgres).
#[tokio::test]
async fn offboarding_hands_over_everything_in_one_audited_transaction() {
    let (server, ch) = Server::with_schema(Config::default(), SCHEMA).await;
    common::offboarding_scenario(ch).await;
    server.stop().await;
}

/// An Expand through a 120-deep arrow chain stays decodable by protobuf
/// clients (which refuse nesting past 100 levels): nodes past the nesting
/// cap come back as userset leaves, and expanding those reaches the end.
#[tokio::test]
async fn deep_expand_trees_stay_decodable() {
    let (server, ch) = Server::with_schema(
        Config {
            max_depth: 500,
            ..Default::default()
        },
        SCHEMA,
    )
    .await;
    let mut perms = PermissionsServiceClient::new(ch);
    let mut texts: Vec<String> = (0..120)
        .map(|i| format!("doc:c{i}#parent@doc:c{}", i + 1))
        .collect();
    texts.push("doc:c120#viewer@user:deep".into());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    perms.write_relationships(touch(&refs)).await.unwrap();
    fn nesting(t: &pb::PermissionRelationshipTree) -> usize {
        match &t.tree_type {
            Some(pb::permission_relationship_tree::TreeType::Intermediate(s)) => {
                1 + s.children.iter().map(nesting).max().unwrap_or(0)
            }
            _ => 1,
        }
    }
    fn userset_leaves(t: &pb::PermissionRelationshipTree, out: &mut Vec<(String, String)>) {
        match &t.tree_type {
            Some(pb::permission_relationship_tree::TreeType::Intermediate(s)) => {
                s.children.iter().for_each(|c| userset_leaves(c, out))
            }
            Some(pb::permission_relationship_tree::TreeType::Leaf(l)) => {
                for s in &l.subjects {
                    let o = s.object.as_ref().unwrap();
                    out.push((
                        format!("{}:{}", o.object_type, o.object_id),
                        s.optional_relation.clone(),
                    ));
                }
            }
            None => {}
        }
    }
    let mut next = Some("c0".to_string());
    let mut rounds = 0;
    let mut reached = false;
    while let Some(id) = next.take() {
        rounds += 1;
        assert!(rounds < 10, "never reached the end of the chain");
        let tree = perms
            .expand_permission_tree(pb::ExpandPermissionTreeRequest {
                consistency: full(),
                resource: obj("doc", &id),
                permission: "view".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("expand doc:{id}: {e:?}"))
            .into_inner()
            .tree_root
            .unwrap();
        assert!(nesting(&tree) <= 41, "nesting {}", nesting(&tree));
        let mut leaves = Vec::new();
        userset_leaves(&tree, &mut leaves);
        reached |= leaves.iter().any(|(o, _)| o == "user:deep");
        next = leaves
            .iter()
            .find(|(o, r)| r == "view" && o.starts_with("doc:c"))
            .map(|(o, _)| o.trim_start_matches("doc:").to_string());
    }
    assert!(reached, "user:deep found by following the userset leaves");
    assert!(rounds >= 2, "the chain was cut at least once");
    server.stop().await;
}

/// Whether the server closes `tcp` within `within` (EOF or reset on read).
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server's own HTTP/2 SETTINGS: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

/// `max_connections`: a connection over the limit is closed on accept
/// while the open ones keep working, and a slot frees when one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_on_accept() {
    let config = Config {
        max_connections: 3,
        ..Default::default()
    };
    let (server, ch) = Server::with_schema(config, SCHEMA).await;
    let mut perms = PermissionsServiceClient::new(ch);
    let check = || common::check("doc:1", "view", "user:anna", full());
    perms.check_permission(check()).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut over = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        "the fourth connection was not closed"
    );
    // The established client is unaffected.
    perms.check_permission(check()).await.unwrap();
    // Closing an idle one frees its slot.
    drop(idle.pop());
    let mut fits = None;
    for _ in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if !closed_within(&mut tcp, Duration::from_millis(300)).await {
            fits = Some(tcp);
            break;
        }
    }
    assert!(fits.is_some(), "a slot freed when a connection closed");
    // Raw connections would hold graceful shutdown until keep-alive ends.
    drop((idle, fits, over));
    server.stop().await;
}

/// `connection_preface_timeout_secs`: a connection that sends nothing is
/// closed; one that sends the HTTP/2 preface in time is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_preface_are_closed() {
    use tokio::io::AsyncWriteExt;
    let config = Config {
        connection_preface_timeout_secs: 1,
        ..Default::default()
    };
    let (server, _ch) = Server::with_schema(config, SCHEMA).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut polite = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    polite
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a silent connection stayed open"
    );
    assert!(
        !closed_within(&mut polite, Duration::from_millis(1500)).await,
        "a connection that sent its preface was closed"
    );
    drop((silent, polite));
    server.stop().await;
}

/// Per-key rate limits: a key over its burst gets RESOURCE_EXHAUSTED with
/// `RetryInfo` (and a message naming the key), another key is untouched,
/// a lookup costs more than a check, health is never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_rate_limit() {
    let server = Server::start(Config {
        preshared_keys: vec![
            "a:secret-a:admin".into(),
            "b:secret-b:check".into(),
            "c:secret-c:check".into(),
            "d:secret-d:check".into(),
        ],
        rate_limit_per_key: 1,
        rate_limit_burst: 5,
        rate_limit_expensive_cost: 5,
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    write_schema_as(&ch, "secret-a").await;
    let mut perms = PermissionsServiceClient::new(ch.clone());
    let check = |token| {
        with_token(
            common::check("doc:1", "view", "user:anna", full()),
            Some(token),
        )
    };
    for _ in 0..5 {
        perms.check_permission(check("secret-b")).await.unwrap();
    }
    let refused = perms.check_permission(check("secret-b")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("key `b`"),
        "{}",
        refused.message()
    );
    let retry = kinbar::api::status::retry_after_of(&refused).expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another key still has its whole burst.
    for _ in 0..5 {
        perms.check_permission(check("secret-c")).await.unwrap();
    }
    // Health is never limited.
    assert!(common::health_status(ch.clone()).await.is_ok());
    // A lookup costs the whole burst: after one check, a fresh key's
    // lookup does not fit (until a second has refilled a token).
    perms.check_permission(check("secret-d")).await.unwrap();
    let lookup = perms
        .lookup_resources(with_token(
            pb::LookupResourcesRequest {
                consistency: full(),
                resource_object_type: "doc".into(),
                permission: "view".into(),
                subject: common::subj("user", "anna", ""),
                ..Default::default()
            },
            Some("secret-d"),
        ))
        .await;
    let err = match lookup {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("costs 5"), "{}", err.message());

    // A key hammering past its limit is a handful of security events (per
    // key, address and minute), not one row per refused call.
    let mut refusals = 1u64;
    for _ in 0..30 {
        if perms.check_permission(check("secret-b")).await.is_err() {
            refusals += 1;
        }
    }
    use kinbar::api::proto::kinbar::v1 as kpb;
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let mut audit = AuditServiceClient::new(ch.clone());
    let mut seen = Vec::new();
    for _ in 0..10 {
        // Stored by the server's flush, once a second (and key a may
        // read once a second too).
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let mut stream = audit
            .read_security_events(with_token(
                kpb::ReadSecurityEventsRequest::default(),
                Some("secret-a"),
            ))
            .await
            .unwrap()
            .into_inner();
        seen.clear();
        while let Some(r) = stream.message().await.unwrap() {
            let e = r.event.unwrap();
            if e.key == "b" {
                seen.push((e.code, e.count));
            }
        }
        if seen.iter().map(|(_, n)| n).sum::<u64>() >= refusals {
            break;
        }
    }
    assert_eq!(
        seen.iter().map(|(_, n)| n).sum::<u64>(),
        refusals,
        "every refusal counted: {seen:?}"
    );
    assert!(
        (1..=2).contains(&seen.len()) && seen.iter().all(|(code, _)| code == "ResourceExhausted"),
        "{refusals} refusals of key b in one aggregated event (two across a minute boundary): {seen:?}"
    );
    server.stop().await;
}

/// Key rotation without a restart: the keys file is re-read while serving.
/// A client keeps working through the rotation (its new key is added
/// before the old one goes), the removed key is refused soon after the
/// file changes, and a broken or empty file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_keys_file_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "crm:old-secret-123:admin\n").unwrap();
    let server = Server::start(Config {
        preshared_keys_file: Some(file.clone()),
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    write_schema_as(&ch, "old-secret-123").await;
    let mut perms = PermissionsServiceClient::new(ch);
    let check = |token| {
        with_token(
            common::check("doc:1", "view", "user:anna", full()),
            Some(token),
        )
    };
    // Poll (bounded) until `token` gets `code`.
    async fn until(
        perms: &mut PermissionsServiceClient<Channel>,
        check: &dyn Fn(&'static str) -> Request<pb::CheckPermissionRequest>,
        token: &'static str,
        code: Code,
    ) {
        for _ in 0..100 {
            let got = match perms.check_permission(check(token)).await {
                Ok(_) => Code::Ok,
                Err(e) => e.code(),
            };
            if got == code {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{token} never got {code:?}");
    }
    // Step 1: both keys. The old one keeps working meanwhile.
    std::fs::write(
        &file,
        "crm:old-secret-123:admin\ncrm:new-secret-456:admin\n",
    )
    .unwrap();
    until(&mut perms, &check, "new-secret-456", Code::Ok).await;
    perms
        .check_permission(check("old-secret-123"))
        .await
        .unwrap();
    // Step 2: only the new key; the client on it never fails.
    std::fs::write(&file, "crm:new-secret-456:admin\n").unwrap();
    for _ in 0..100 {
        perms
            .check_permission(check("new-secret-456"))
            .await
            .unwrap();
        if perms
            .check_permission(check("old-secret-123"))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(&mut perms, &check, "old-secret-123", Code::Unauthenticated).await;
    // A broken file, then an empty one: nothing changes.
    for broken in ["crm:short:nonsense-scope\n", "\n"] {
        std::fs::write(&file, broken).unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        perms
            .check_permission(check("new-secret-456"))
            .await
            .unwrap();
        let e = perms
            .check_permission(check("old-secret-123"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    server.stop().await;
}

/// Above the memory watermark new calls are shed with RetryInfo naming the
/// setting; health still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_shed_above_the_memory_watermark() {
    let server = Server::start(Config {
        memory_watermark_bytes: 1,
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    let e = SchemaServiceClient::new(ch.clone())
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("memory_watermark_bytes"),
        "{}",
        e.message()
    );
    assert!(kinbar::api::status::retry_after_of(&e).is_some());
    assert!(common::health_status(ch).await.is_ok());
    server.stop().await;
}

/// Writes [`SCHEMA`] with the preshared key `token`.
async fn write_schema_as(ch: &Channel, token: &str) {
    SchemaServiceClient::new(ch.clone())
        .write_schema(with_token(
            pb::WriteSchemaRequest {
                schema: SCHEMA.into(),
            },
            Some(token),
        ))
        .await
        .unwrap();
}

/// The memory store's audit retention: the oldest records go, whole; reads
/// start at the first retained one; verification starts there too, anchored
/// at the hash an auditor recorded before the pruning, and names it;
/// completeness is refused rather than reported on half a chain.
#[tokio::test]
async fn a_pruned_memory_audit_verifies_from_its_horizon() {
    use kinbar::api::proto::kinbar::v1 as kpb;
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let (server, ch) = Server::with_schema(
        Config {
            audit_max_changes: 10,
            ..Config::default()
        },
        SCHEMA,
    )
    .await;
    let perms = PermissionsServiceClient::new(ch.clone());
    let mut audit = AuditServiceClient::new(ch);
    let read = |audit: &mut AuditServiceClient<Channel>, cursor: &str| {
        let mut audit = audit.clone();
        let cursor = cursor.to_string();
        async move {
            let mut s = audit
                .read_audit(kpb::ReadAuditRequest {
                    optional_cursor: cursor,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut v = Vec::new();
            while let Some(r) = s.message().await.unwrap() {
                v.push(r.transaction.unwrap());
            }
            v
        }
    };
    // Record 1 is the schema write (weight 1); then writes of 3 changes.
    let write = |i: usize| {
        let rels: Vec<String> = (0..3)
            .map(|j| format!("doc:{i}#viewer@user:u{j}"))
            .collect();
        let req = touch(&rels.iter().map(String::as_str).collect::<Vec<_>>());
        let mut perms = perms.clone();
        async move { perms.write_relationships(req).await.unwrap() }
    };
    write(0).await;
    write(1).await;
    // 1 + 3 + 3 = 7 changes: nothing pruned yet; an auditor records hashes.
    let early = read(&mut audit, "").await;
    assert_eq!(
        early.iter().map(|t| t.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let v = audit
        .verify_audit(kpb::VerifyAuditRequest { complete: true })
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact && v.verified_transactions == 3, "{v:?}");
    for i in 2..8 {
        write(i).await;
    }
    // 8 writes of 3 after the schema: only the newest 3 records (9 changes)
    // fit in 10.
    let kept = read(&mut audit, "").await;
    assert_eq!(
        kept.iter().map(|t| t.sequence).collect::<Vec<_>>(),
        [7, 8, 9]
    );
    assert_eq!(
        read(&mut audit, "2").await.len(),
        3,
        "a cursor in the pruned range"
    );
    assert_eq!(read(&mut audit, "7").await.len(), 2);
    let v = audit
        .verify_audit(kpb::VerifyAuditRequest { complete: false })
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.verified_transactions, 3);
    assert_eq!(v.head_hash, kept[2].hash);
    assert!(
        v.message.contains("1..6") && v.message.contains(&kept[0].previous_hash),
        "{v:?}"
    );
    let e = audit
        .verify_audit(kpb::VerifyAuditRequest { complete: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("pruned transactions 1..6"), "{e:?}");
    server.stop().await;
}
