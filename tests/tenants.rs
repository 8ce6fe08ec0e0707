//! Namespace-scoped keys (issue 17 item 6, SECURITY.md "Tenants"): two CRM
//! tenants in one Kinbar, keys confined to `acme/` and `globex/`, the same
//! ids and the same schema shape on both sides. Every RPC naming the other
//! tenant's types is PERMISSION_DENIED (whether or not the type exists), no
//! read shows the other tenant, schema writes replace only the writer's
//! definitions, and answers never cross.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use kinbar::api::proto::authzed::api::v1::watch_service_client::WatchServiceClient;
use kinbar::api::proto::kinbar::v1 as kpb;
use kinbar::api::proto::kinbar::v1::admin_service_client::AdminServiceClient;
use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
use kinbar::config::Config;
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::{Server, check_req, full, rel, with_token};

const ACME: Option<&str> = Some("acme-secret-1");
const GLOBEX: Option<&str> = Some("globex-secret-1");
const ROOT: Option<&str> = Some("root-secret-1");

fn schema(tenant: &str) -> String {
    format!(
        "/** {tenant}'s people. */
definition {tenant}/user {{}}

// {tenant}'s documents
definition {tenant}/doc {{
    relation viewer: {tenant}/user
    relation owner: {tenant}/user
    permission view = viewer + owner
}}
"
    )
}

fn touch(texts: &[&str]) -> pb::WriteRelationshipsRequest {
    common::touch_all(texts)
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) => assert_eq!(
            s.code(),
            Code::PermissionDenied,
            "{what}: {} {}",
            s.code(),
            s.message()
        ),
        Ok(v) => panic!("{what}: answered {v:?}"),
    }
}

async fn start() -> (Server, Channel) {
    let server = Server::start(Config {
        preshared_keys: vec![
            "acme-api:acme-secret-1:admin:acme/".into(),
            "globex-api:globex-secret-1:admin:globex/".into(),
            "root:root-secret-1:admin".into(),
        ],
        ..Config::default()
    })
    .await;
    let ch = server.channel().await;
    (server, ch)
}

async fn written(
    perms: &mut PermissionsServiceClient<Channel>,
    key: Option<&str>,
    texts: &[&str],
) -> pb::ZedToken {
    perms
        .write_relationships(with_token(touch(texts), key))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap()
}

async fn allowed(
    perms: &mut PermissionsServiceClient<Channel>,
    key: Option<&str>,
    resource: &str,
    subject: &str,
) -> Result<bool, tonic::Status> {
    let r = perms
        .check_permission(with_token(
            check_req(resource, "view", subject, full()),
            key,
        ))
        .await?;
    Ok(common::has(&r.into_inner()))
}

#[tokio::test]
async fn tenants_see_and_name_only_their_own_types() {
    let (server, ch) = start().await;
    let mut schemas = SchemaServiceClient::new(ch.clone());
    let mut perms = PermissionsServiceClient::new(ch.clone());

    // Schema writes replace only the writer's definitions, comments kept.
    for (key, tenant) in [(ACME, "acme"), (GLOBEX, "globex")] {
        schemas
            .write_schema(with_token(
                pb::WriteSchemaRequest {
                    schema: schema(tenant),
                },
                key,
            ))
            .await
            .unwrap();
    }
    // Written again (acme changes its own): globex's definitions stay.
    schemas
        .write_schema(with_token(
            pb::WriteSchemaRequest {
                schema: schema("acme").replace("viewer + owner", "owner + viewer"),
            },
            ACME,
        ))
        .await
        .unwrap();
    let read = |key| {
        let mut schemas = schemas.clone();
        async move {
            schemas
                .read_schema(with_token(pb::ReadSchemaRequest {}, key))
                .await
                .unwrap()
                .into_inner()
                .schema_text
        }
    };
    let all = read(ROOT).await;
    assert!(
        all.contains("definition acme/doc") && all.contains("definition globex/doc"),
        "{all}"
    );
    assert!(all.contains("// globex's documents"), "{all}");
    let acme_view = read(ACME).await;
    assert!(acme_view.contains("definition acme/doc"), "{acme_view}");
    assert!(acme_view.contains("owner + viewer"), "{acme_view}");
    assert!(acme_view.contains("/** acme's people. */"), "{acme_view}");
    assert!(!acme_view.contains("globex"), "{acme_view}");
    let globex_view = read(GLOBEX).await;
    assert!(!globex_view.contains("acme"), "{globex_view}");

    // Same ids on both sides.
    let t0 = written(
        &mut perms,
        ACME,
        &[
            "acme/doc:1#viewer@acme/user:anna",
            "acme/doc:2#owner@acme/user:anna",
        ],
    )
    .await;
    written(&mut perms, GLOBEX, &["globex/doc:1#viewer@globex/user:bob"]).await;

    // Answers never cross (and the cache, keyed by type, cannot mix them).
    for _ in 0..2 {
        assert!(
            allowed(&mut perms, ACME, "acme/doc:1", "acme/user:anna")
                .await
                .unwrap()
        );
        assert!(
            !allowed(&mut perms, GLOBEX, "globex/doc:1", "globex/user:anna")
                .await
                .unwrap()
        );
        assert!(
            allowed(&mut perms, GLOBEX, "globex/doc:1", "globex/user:bob")
                .await
                .unwrap()
        );
        assert!(
            !allowed(&mut perms, ACME, "acme/doc:1", "acme/user:bob")
                .await
                .unwrap()
        );
    }

    // Naming the other tenant's types, or types of no tenant, existing or not.
    for (resource, subject) in [
        ("globex/doc:1", "globex/user:bob"),
        ("acme/doc:1", "globex/user:bob"),
        ("globex/doc:1", "acme/user:anna"),
        ("globex/nothing:1", "acme/user:anna"),
        ("doc:1", "acme/user:anna"),
    ] {
        denied(
            &format!("check {resource} {subject}"),
            allowed(&mut perms, ACME, resource, subject).await,
        );
    }
    let bulk = perms
        .check_bulk_permissions(with_token(
            pb::CheckBulkPermissionsRequest {
                consistency: full(),
                items: vec![
                    common::bulk_item("acme/doc:1", "view", "acme/user:anna"),
                    common::bulk_item("globex/doc:1", "view", "globex/user:bob"),
                ],
                with_tracing: false,
            },
            ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    use pb::check_bulk_permissions_pair::Response as R;
    match &bulk.pairs[0].response {
        Some(R::Item(i)) => assert_eq!(
            i.permissionship,
            pb::check_permission_response::Permissionship::HasPermission as i32
        ),
        other => panic!("acme item: {other:?}"),
    }
    match &bulk.pairs[1].response {
        Some(R::Error(e)) => assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}"),
        other => panic!("globex item: {other:?}"),
    }
    denied(
        "expand",
        perms
            .expand_permission_tree(with_token(
                pb::ExpandPermissionTreeRequest {
                    consistency: full(),
                    resource: common::obj("globex/doc", "1"),
                    permission: "view".into(),
                },
                ACME,
            ))
            .await,
    );
    for (resource_type, subject_type) in [("globex/doc", "acme/user"), ("acme/doc", "globex/user")]
    {
        denied(
            "lookup resources",
            perms
                .lookup_resources(with_token(
                    pb::LookupResourcesRequest {
                        consistency: full(),
                        resource_object_type: resource_type.into(),
                        permission: "view".into(),
                        subject: common::subj(subject_type, "anna", ""),
                        ..Default::default()
                    },
                    ACME,
                ))
                .await,
        );
    }
    denied(
        "lookup subjects",
        perms
            .lookup_subjects(with_token(
                pb::LookupSubjectsRequest {
                    consistency: full(),
                    resource: common::obj("acme/doc", "1"),
                    permission: "view".into(),
                    subject_object_type: "globex/user".into(),
                    ..Default::default()
                },
                ACME,
            ))
            .await,
    );
    // Writes naming another tenant change nothing.
    for text in [
        "acme/doc:9#viewer@globex/user:bob",
        "globex/doc:9#viewer@globex/user:bob",
    ] {
        denied(
            text,
            perms
                .write_relationships(with_token(touch(&[text]), ACME))
                .await,
        );
    }
    denied(
        "precondition on another tenant's type",
        perms
            .write_relationships(with_token(
                pb::WriteRelationshipsRequest {
                    updates: touch(&["acme/doc:9#viewer@acme/user:anna"]).updates,
                    optional_preconditions: vec![pb::Precondition {
                        operation: pb::precondition::Operation::MustNotMatch as i32,
                        filter: Some(pb::RelationshipFilter {
                            resource_type: "globex/doc".into(),
                            ..Default::default()
                        }),
                    }],
                    optional_transaction_metadata: None,
                },
                ACME,
            ))
            .await,
    );
    denied(
        "delete",
        perms
            .delete_relationships(with_token(
                pb::DeleteRelationshipsRequest {
                    relationship_filter: Some(pb::RelationshipFilter {
                        resource_type: "globex/doc".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ACME,
            ))
            .await,
    );
    let import = tokio_stream::iter(vec![pb::ImportBulkRelationshipsRequest {
        relationships: vec![
            rel("acme/doc:7#viewer@acme/user:anna"),
            rel("globex/doc:7#viewer@globex/user:bob"),
        ],
    }]);
    denied(
        "import",
        perms
            .import_bulk_relationships(with_token(import, ACME))
            .await,
    );
    // A schema naming another tenant's type, or defining one.
    for text in [
        schema("acme").replace("relation owner: acme/user", "relation owner: globex/user"),
        format!("{}\ndefinition globex/extra {{}}", schema("acme")),
    ] {
        denied(
            "schema",
            schemas
                .write_schema(with_token(pb::WriteSchemaRequest { schema: text }, ACME))
                .await,
        );
    }

    // Reads without a type show the caller's tenant only.
    let rows = |key| {
        let mut perms = perms.clone();
        async move {
            let mut stream = perms
                .export_bulk_relationships(with_token(
                    pb::ExportBulkRelationshipsRequest {
                        consistency: full(),
                        ..Default::default()
                    },
                    key,
                ))
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(batch) = stream.message().await.unwrap() {
                for r in batch.relationships {
                    out.push(
                        kinbar::api::convert::relationship(Some(&r), "r")
                            .unwrap()
                            .to_string(),
                    );
                }
            }
            out
        }
    };
    assert_eq!(
        rows(ACME).await,
        [
            "acme/doc:1#viewer@acme/user:anna",
            "acme/doc:2#owner@acme/user:anna"
        ]
    );
    assert_eq!(rows(GLOBEX).await, ["globex/doc:1#viewer@globex/user:bob"]);
    assert_eq!(rows(ROOT).await.len(), 3);

    // Watch from before both tenants wrote: only acme's changes.
    let mut watch = WatchServiceClient::new(ch.clone());
    let mut stream = watch
        .watch(with_token(
            pb::WatchRequest {
                optional_start_cursor: Some(pb::ZedToken {
                    token: t0.token.clone(),
                }),
                ..Default::default()
            },
            ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    written(&mut perms, GLOBEX, &["globex/doc:3#viewer@globex/user:bob"]).await;
    // globex changes its own definitions: not news for acme.
    schemas
        .write_schema(with_token(
            pb::WriteSchemaRequest {
                schema: schema("globex").replace("viewer + owner", "owner + viewer"),
            },
            GLOBEX,
        ))
        .await
        .unwrap();
    written(&mut perms, ACME, &["acme/doc:3#viewer@acme/user:anna"]).await;
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let names: Vec<String> = next
        .updates
        .iter()
        .map(|u| format!("{:?}", u.relationship))
        .collect();
    assert_eq!(next.updates.len(), 1, "{names:?}");
    assert!(!next.schema_updated, "another tenant's schema change");
    assert!(
        names[0].contains("acme/doc") && names[0].contains("\"3\""),
        "{names:?}"
    );
    denied(
        "watch of another tenant's type",
        watch
            .watch(with_token(
                pb::WatchRequest {
                    optional_object_types: vec!["globex/doc".into()],
                    ..Default::default()
                },
                ACME,
            ))
            .await,
    );

    // The audit trail: acme reads only its own changes, cannot verify the
    // shared chain; an unconfined admin can.
    let mut audit = AuditServiceClient::new(ch.clone());
    let mut stream = audit
        .read_audit(with_token(kpb::ReadAuditRequest::default(), ACME))
        .await
        .unwrap()
        .into_inner();
    let mut changes = Vec::new();
    let mut schema_records = 0;
    while let Some(r) = stream.message().await.unwrap() {
        let t = r.transaction.unwrap();
        assert!(!t.new_schema.contains("globex"), "{}", t.new_schema);
        schema_records += usize::from(t.schema_changed);
        changes.extend(t.changes.into_iter().map(|c| c.relationship));
    }
    assert_eq!(schema_records, 2, "acme's two schema writes");
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        changes.iter().all(|c| c.starts_with("acme/")),
        "{changes:?}"
    );
    denied(
        "verify audit",
        audit
            .verify_audit(with_token(
                kpb::VerifyAuditRequest { complete: false },
                ACME,
            ))
            .await,
    );
    audit
        .verify_audit(with_token(kpb::VerifyAuditRequest { complete: true }, ROOT))
        .await
        .unwrap();

    // Offboarding another tenant's user.
    let mut admin = AdminServiceClient::new(ch.clone());
    denied(
        "offboard",
        admin
            .offboard(with_token(
                kpb::OffboardRequest {
                    subject: "acme/user:anna".into(),
                    dry_run: true,
                    ..Default::default()
                },
                GLOBEX,
            ))
            .await,
    );
    let done = admin
        .offboard(with_token(
            kpb::OffboardRequest {
                subject: "acme/user:anna".into(),
                dry_run: true,
                ..Default::default()
            },
            ACME,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.relationships.len(), 3, "{:?}", done.relationships);
    server.stop().await;
}

#[test]
fn prefixes_are_type_name_prefixes() {
    use kinbar::api::auth::{PresharedKey, Tenant};
    let key = PresharedKey::parse("acme-api:s3cretkey:check:acme/,acme_eu").unwrap();
    assert!(key.tenant.allows("acme/doc"));
    assert!(key.tenant.allows("acme_eu/doc"));
    assert!(!key.tenant.allows("acmex/doc"));
    assert!(!key.tenant.allows("doc"));
    assert!(
        !PresharedKey::parse("x:s3cretkey:check")
            .unwrap()
            .tenant
            .is_confined()
    );
    for bad in ["Acme/", "acme//", "1acme/", "ac-me/"] {
        assert!(Tenant::parse(bad).is_err(), "{bad}");
    }
}
