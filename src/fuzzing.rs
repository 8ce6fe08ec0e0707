//! Fuzz harnesses: one function per parser and decoder, each taking raw
//! bytes and panicking only on a broken invariant. The cargo-fuzz targets
//! in `fuzz/` call them, and `tests/fuzz_corpus.rs` replays the committed
//! corpora and crash artifacts through them in plain `cargo test`.
//!
//! - [`schema`]: the schema language; an accepted schema formats to text
//!   that compiles again and formats to itself (fmt → parse round trip);
//!   a refused one renders its diagnostic.
//! - [`relationship`]: the relationship text form; print → parse is the
//!   identity.
//! - [`zedtoken`]: ZedToken decoding never panics; encode → decode is the
//!   identity for any revision text.
//! - [`validation_yaml`]: a whole validation file, run against a memory
//!   store (assertions, expected relations), never panics.
//! - [`request`]: the first byte picks a request of `authzed.api.v1` or
//!   `kinbar.v1` (every method but Watch and a followed ReadAudit, which
//!   never end, and ImportBulkRelationships, a client stream); the rest is decoded with
//!   prost and, if it decodes, served in process against a memory store
//!   holding a small schema and data. Writes, deletes and offboarding run
//!   with a precondition that cannot hold or as a dry run, so every input
//!   sees the same data.

// A harness reports a broken invariant by panicking: that is what the
// fuzzer (and the corpus replay) catch.
#![allow(clippy::panic)]

use std::sync::OnceLock;

use prost::Message;

use crate::api::proto::authzed::api::v1 as pb;
use crate::api::proto::authzed::api::v1::permissions_service_server::PermissionsService;
use crate::api::proto::authzed::api::v1::schema_service_server::SchemaService;
use crate::api::proto::kinbar::v1 as kpb;
use crate::api::proto::kinbar::v1::admin_service_server::AdminService;
use crate::api::proto::kinbar::v1::audit_service_server::AuditService;

/// Fuzz inputs longer than this are skipped (the limits that refuse them
/// are tested elsewhere; the fuzzer should spend its time on structure).
const MAX_INPUT: usize = 64 * 1024;

fn text(data: &[u8]) -> Option<&str> {
    if data.len() > MAX_INPUT {
        return None;
    }
    std::str::from_utf8(data).ok()
}

/// The schema language: compile, and round-trip what compiles.
pub fn schema(data: &[u8]) {
    let Some(src) = text(data) else { return };
    let limits = crate::schema::Limits::default();
    match crate::schema::compile(src, &limits) {
        Ok(compiled) => {
            let formatted = crate::schema::format::format_source(src, &compiled.ast);
            let again = crate::schema::compile(&formatted, &limits).unwrap_or_else(|e| {
                panic!(
                    "formatted schema does not compile: {}\n--- input\n{src}\n--- formatted\n{formatted}",
                    e.render("fuzz")
                )
            });
            let twice = crate::schema::format::format_source(&formatted, &again.ast);
            assert_eq!(formatted, twice, "formatting is not idempotent");
            assert_eq!(
                compiled.schema, again.schema,
                "formatting changed the compiled schema"
            );
        }
        Err(e) => {
            assert!(!e.render("fuzz").is_empty());
        }
    }
}

/// The relationship text form: parse, and round-trip what parses.
pub fn relationship(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(r) = s.parse::<crate::model::Relationship>() {
        let printed = r.to_string();
        let back: crate::model::Relationship = printed
            .parse()
            .unwrap_or_else(|e| panic!("`{printed}` (from `{s}`) does not parse: {e}"));
        assert_eq!(back, r);
    }
}

/// ZedTokens: decode arbitrary text; encode → decode any revision text.
pub fn zedtoken(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let _ = crate::api::token::decode(s, "mem-fuzz");
    let revision = crate::model::Revision::new(s);
    let token = crate::api::token::encode(&revision, "mem-fuzz");
    assert_eq!(
        crate::api::token::decode(&token, "mem-fuzz").as_ref(),
        Ok(&revision)
    );
    assert!(crate::api::token::decode(&token, "mem-other").is_err());
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            // Building a current-thread runtime fails only without OS
            // resources, where no fuzzing can happen anyway.
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// A validation file, run against a fresh memory store.
pub fn validation_yaml(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let options = crate::validate::Options::default();
    let report = runtime().block_on(crate::validate::validate_text(
        std::path::Path::new("fuzz.yaml"),
        raw,
        &options,
    ));
    let _ = report.render();
}

const FUZZ_SCHEMA: &str = "definition user {}
definition group {
    relation member: user | group#member
}
definition document {
    relation parent: document
    relation viewer: user | user:* | group#member
    relation banned: user
    permission view = (viewer + parent->view) - banned
    permission all_view = parent.all(view)
}";

fn api() -> &'static crate::api::Api {
    static API: OnceLock<crate::api::Api> = OnceLock::new();
    API.get_or_init(|| {
        runtime().block_on(async {
            let engine = crate::in_memory();
            let ok = engine
                .write_schema(FUZZ_SCHEMA, crate::TxnMetadata::default())
                .await;
            assert!(ok.is_ok(), "fuzz schema: {ok:?}");
            let rels = [
                "document:d1#viewer@user:anna",
                "document:d1#viewer@group:g1#member",
                "group:g1#member@user:bob",
                "document:d2#parent@document:d1",
                "document:d2#banned@user:bob",
                "document:d3#viewer@user:*",
            ];
            let updates = rels
                .iter()
                .filter_map(|r| r.parse().ok())
                .map(|relationship| crate::Update {
                    operation: crate::Operation::Touch,
                    relationship,
                })
                .collect();
            let ok = engine
                .write_relationships(updates, vec![], crate::TxnMetadata::default())
                .await;
            assert!(ok.is_ok(), "fuzz data: {ok:?}");
            crate::api::Api::new(
                std::sync::Arc::new(engine),
                crate::api::auth::Authenticator::new(Vec::new()),
                crate::api::ApiLimits::default(),
            )
        })
    })
}

/// A request picked by the first byte, decoded from the rest and served in
/// process. Any status is fine; a panic is not.
pub fn request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if body.len() > MAX_INPUT {
        return;
    }
    let api = api();
    let perms = crate::api::PermissionsApi(api.clone());
    let schema = crate::api::SchemaApi(api.clone());
    let audit = crate::api::AuditApi(api.clone());
    let admin = crate::api::AdminApi(api.clone());
    // A precondition no input can satisfy: writes and deletes never commit.
    let never = || pb::Precondition {
        operation: pb::precondition::Operation::MustMatch as i32,
        filter: Some(pb::RelationshipFilter {
            resource_type: "document".into(),
            optional_resource_id: "never-written".into(),
            ..Default::default()
        }),
    };
    runtime().block_on(async {
        match which % 20 {
            0 => {
                if let Ok(m) = pb::CheckPermissionRequest::decode(body) {
                    let _ = perms.check_permission(tonic::Request::new(m)).await;
                }
            }
            1 => {
                if let Ok(m) = pb::CheckBulkPermissionsRequest::decode(body) {
                    let _ = perms.check_bulk_permissions(tonic::Request::new(m)).await;
                }
            }
            2 => {
                if let Ok(m) = pb::ExpandPermissionTreeRequest::decode(body) {
                    let _ = perms.expand_permission_tree(tonic::Request::new(m)).await;
                }
            }
            3 => {
                if let Ok(m) = pb::LookupResourcesRequest::decode(body)
                    && let Ok(r) = perms.lookup_resources(tonic::Request::new(m)).await
                {
                    drain(r.into_inner()).await;
                }
            }
            4 => {
                if let Ok(m) = pb::LookupSubjectsRequest::decode(body)
                    && let Ok(r) = perms.lookup_subjects(tonic::Request::new(m)).await
                {
                    drain(r.into_inner()).await;
                }
            }
            5 => {
                if let Ok(m) = pb::ReadRelationshipsRequest::decode(body)
                    && let Ok(r) = perms.read_relationships(tonic::Request::new(m)).await
                {
                    drain(r.into_inner()).await;
                }
            }
            6 => {
                // Writes only with preconditions that cannot hold, so the
                // data the other requests see stays the same.
                if let Ok(mut m) = pb::WriteRelationshipsRequest::decode(body) {
                    m.optional_preconditions.push(never());
                    let _ = perms.write_relationships(tonic::Request::new(m)).await;
                }
            }
            7 => {
                if let Ok(m) = pb::DiffSchemaRequest::decode(body) {
                    let _ = schema.diff_schema(tonic::Request::new(m)).await;
                }
            }
            8 => {
                if let Ok(mut m) = pb::DeleteRelationshipsRequest::decode(body) {
                    m.optional_preconditions.push(never());
                    let _ = perms.delete_relationships(tonic::Request::new(m)).await;
                }
            }
            9 => {
                if let Ok(m) = pb::ExportBulkRelationshipsRequest::decode(body)
                    && let Ok(r) = perms
                        .export_bulk_relationships(tonic::Request::new(m))
                        .await
                {
                    drain(r.into_inner()).await;
                }
            }
            10 => {
                if let Ok(m) = pb::ReadSchemaRequest::decode(body) {
                    let _ = schema.read_schema(tonic::Request::new(m)).await;
                }
            }
            11 => {
                // Compiled and refused or accepted, never stored: a schema
                // write would change what every other input sees.
                if let Ok(m) = pb::WriteSchemaRequest::decode(body) {
                    let _ = crate::schema::compile(&m.schema, &crate::schema::Limits::default());
                }
            }
            12 => {
                if let Ok(m) = pb::ReflectSchemaRequest::decode(body) {
                    let _ = schema.reflect_schema(tonic::Request::new(m)).await;
                }
            }
            13 => {
                if let Ok(m) = pb::ComputablePermissionsRequest::decode(body) {
                    let _ = schema.computable_permissions(tonic::Request::new(m)).await;
                }
            }
            14 => {
                if let Ok(m) = pb::DependentRelationsRequest::decode(body) {
                    let _ = schema.dependent_relations(tonic::Request::new(m)).await;
                }
            }
            15 => {
                // Not following: a followed audit stream never ends.
                if let Ok(mut m) = kpb::ReadAuditRequest::decode(body) {
                    m.follow = false;
                    if let Ok(r) = audit.read_audit(tonic::Request::new(m)).await {
                        drain(r.into_inner()).await;
                    }
                }
            }
            16 => {
                if let Ok(m) = kpb::VerifyAuditRequest::decode(body) {
                    let _ = audit.verify_audit(tonic::Request::new(m)).await;
                }
            }
            17 => {
                if let Ok(m) = kpb::ReadSecurityEventsRequest::decode(body)
                    && let Ok(r) = audit.read_security_events(tonic::Request::new(m)).await
                {
                    drain(r.into_inner()).await;
                }
            }
            18 => {
                if let Ok(mut m) = kpb::OffboardRequest::decode(body) {
                    m.dry_run = true;
                    let _ = admin.offboard(tonic::Request::new(m)).await;
                }
            }
            _ => {
                if let Ok(m) = pb::CheckPermissionRequest::decode(body) {
                    // The same question twice: the second may come from
                    // the cache and must agree.
                    let a = perms.check_permission(tonic::Request::new(m.clone())).await;
                    let b = perms.check_permission(tonic::Request::new(m)).await;
                    if let (Ok(a), Ok(b)) = (a, b) {
                        assert_eq!(
                            a.get_ref().permissionship,
                            b.get_ref().permissionship,
                            "a repeated check changed its answer"
                        );
                    }
                }
            }
        }
    });
}

async fn drain<S, T>(mut stream: S)
where
    S: futures::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use futures::StreamExt;
    while let Some(item) = stream.next().await {
        if item.is_err() {
            return;
        }
    }
}
