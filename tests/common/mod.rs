//! Helpers shared by the gRPC-level test binaries: request builders and a
//! throwaway Postgres cluster per binary.
#![allow(dead_code)] // each binary uses a subset

use std::sync::OnceLock;
use std::time::Duration;

pub mod recursive;

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::testing::TempPostgres;
use tonic::transport::Channel;

/// Returns from the enclosing test (with a notice) when the Postgres server
/// binaries are absent; see `kinbar::testing::skip_postgres_tests`.
#[allow(unused_macros)] // only the Postgres binaries use it
macro_rules! skip_without_postgres {
    () => {
        if kinbar::testing::skip_postgres_tests() {
            return;
        }
    };
}

pub fn cluster() -> &'static TempPostgres {
    static CLUSTER: OnceLock<TempPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| TempPostgres::start().expect("throwaway Postgres cluster"))
}

/// A migrated, empty database on this binary's cluster.
pub async fn database() -> String {
    let url = cluster().fresh_database().await.expect("fresh database");
    kinbar::store::postgres::PostgresStore::migrate(&url)
        .await
        .expect("migrate");
    url
}

pub fn rel(text: &str) -> pb::Relationship {
    let r: kinbar::Relationship = text.parse().expect("relationship literal");
    kinbar::api::convert::relationship_pb(&r)
}

pub fn update(op: pb::relationship_update::Operation, text: &str) -> pb::RelationshipUpdate {
    pb::RelationshipUpdate {
        operation: op as i32,
        relationship: Some(rel(text)),
    }
}

pub fn write(
    op: pb::relationship_update::Operation,
    texts: &[&str],
    reason: &str,
) -> pb::WriteRelationshipsRequest {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("reason".to_string(), serde_json::json!(reason));
    pb::WriteRelationshipsRequest {
        updates: texts.iter().map(|t| update(op, t)).collect(),
        optional_preconditions: vec![],
        optional_transaction_metadata: Some(kinbar::api::convert::json_struct(&meta)),
    }
}

/// Touches, without transaction metadata.
pub fn touch_all(texts: &[&str]) -> pb::WriteRelationshipsRequest {
    pb::WriteRelationshipsRequest {
        updates: texts
            .iter()
            .map(|t| update(pb::relationship_update::Operation::Touch, t))
            .collect(),
        optional_preconditions: vec![],
        optional_transaction_metadata: None,
    }
}

pub fn touch(texts: &[&str], reason: &str) -> pb::WriteRelationshipsRequest {
    write(pb::relationship_update::Operation::Touch, texts, reason)
}

pub fn consistency(r: pb::consistency::Requirement) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(r),
    })
}

pub fn full() -> Option<pb::Consistency> {
    consistency(pb::consistency::Requirement::FullyConsistent(true))
}

pub fn fresh(t: &pb::ZedToken) -> Option<pb::Consistency> {
    consistency(pb::consistency::Requirement::AtLeastAsFresh(t.clone()))
}

pub fn exact(t: &pb::ZedToken) -> Option<pb::Consistency> {
    consistency(pb::consistency::Requirement::AtExactSnapshot(t.clone()))
}

pub fn check(
    resource: &str,
    permission: &str,
    subject: &str,
    consistency: Option<pb::Consistency>,
) -> pb::CheckPermissionRequest {
    let r: kinbar::Relationship = format!("{resource}#{permission}@{subject}")
        .parse()
        .expect("check literal");
    let p = kinbar::api::convert::relationship_pb(&r);
    pb::CheckPermissionRequest {
        consistency,
        resource: p.resource,
        permission: permission.into(),
        subject: p.subject,
        context: None,
        with_tracing: false,
    }
}

/// The same as [`check`], under the name the API tests use.
pub fn check_req(
    resource: &str,
    permission: &str,
    subject: &str,
    consistency: Option<pb::Consistency>,
) -> pb::CheckPermissionRequest {
    check(resource, permission, subject, consistency)
}

/// One CheckBulkPermissions item, `resource permission subject` as text.
pub fn bulk_item(
    resource: &str,
    permission: &str,
    subject: &str,
) -> pb::CheckBulkPermissionsRequestItem {
    let c = check(resource, permission, subject, None);
    pb::CheckBulkPermissionsRequestItem {
        resource: c.resource,
        permission: c.permission,
        subject: c.subject,
        context: None,
    }
}

/// The permissionship of each bulk pair; panics on an error pair.
pub fn bulk_answers(r: &pb::CheckBulkPermissionsResponse) -> Vec<i32> {
    r.pairs
        .iter()
        .map(|p| match p.response.as_ref().expect("a response") {
            pb::check_bulk_permissions_pair::Response::Item(i) => i.permissionship,
            pb::check_bulk_permissions_pair::Response::Error(e) => panic!("{e:?}"),
        })
        .collect()
}

pub fn obj(t: &str, id: &str) -> Option<pb::ObjectReference> {
    Some(pb::ObjectReference {
        object_type: t.into(),
        object_id: id.into(),
    })
}

pub fn subj(t: &str, id: &str, rel: &str) -> Option<pb::SubjectReference> {
    Some(pb::SubjectReference {
        object: obj(t, id),
        optional_relation: rel.into(),
    })
}

/// A request carrying `token` as its bearer key.
pub fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii header"),
        );
    }
    r
}

pub fn has(r: &pb::CheckPermissionResponse) -> bool {
    r.permissionship == pb::check_permission_response::Permissionship::HasPermission as i32
}

/// Connects to `addr`, retrying while the server comes up.
pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    let mut last = String::new();
    for _ in 0..200 {
        match Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} did not come up: {last}");
}

/// An in-process server on 127.0.0.1:0 with its shutdown handle.
pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), kinbar::server::ServerError>>,
}

impl Server {
    pub async fn start(config: kinbar::config::Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(kinbar::server::run(config, listener, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            handle,
        }
    }

    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    /// A server with `config` whose schema is `schema`, and its channel.
    pub async fn with_schema(config: kinbar::config::Config, schema: &str) -> (Server, Channel) {
        let server = Server::start(config).await;
        let ch = server.channel().await;
        kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient::new(
            ch.clone(),
        )
        .write_schema(pb::WriteSchemaRequest {
            schema: schema.into(),
        })
        .await
        .expect("write schema");
        (server, ch)
    }

    /// Graceful shutdown; fails the test if the server ended with an error.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("server task").expect("server");
    }
}

/// Starts an in-process server on 127.0.0.1:0 over `datastore`.
pub async fn serve(datastore: &str) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The throwaway cluster's role is a superuser: allowed here, refused
    // by default (tests/postgres_server.rs::least_privilege_runtime_role).
    let config = kinbar::config::Config {
        datastore: datastore.to_string(),
        allow_privileged_datastore_role: true,
        ..Default::default()
    };
    tokio::spawn(kinbar::server::run(config, listener, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

type Client =
    kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient<
        Channel,
    >;

/// Writes and returns the `written_at` token.
pub async fn written(client: &mut Client, req: pb::WriteRelationshipsRequest) -> pb::ZedToken {
    client
        .write_relationships(req)
        .await
        .expect("write")
        .into_inner()
        .written_at
        .expect("written_at")
}

/// Whether the check is HAS_PERMISSION.
pub async fn allowed(client: &mut Client, req: pb::CheckPermissionRequest) -> bool {
    has(&client
        .check_permission(req)
        .await
        .expect("check")
        .into_inner())
}

/// A free local port for a listener the server binds itself (`--metrics-addr`).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last = String::new();
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                let req =
                    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.expect("send");
                let mut buf = String::new();
                s.read_to_string(&mut buf).await.expect("read");
                let code = buf
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .expect("status line");
                let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                return (code, body.to_string());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no HTTP listener at {addr}: {last}");
}

/// The gRPC health status of the whole server ("").
pub async fn health_status(ch: Channel) -> Result<i32, tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// Every relationship matching `filter` at `consistency` (all pages).
pub async fn read_all(
    client: &mut Client,
    consistency: Option<pb::Consistency>,
    filter: pb::RelationshipFilter,
) -> Vec<pb::Relationship> {
    let mut s = client
        .read_relationships(pb::ReadRelationshipsRequest {
            consistency,
            relationship_filter: Some(filter),
            optional_limit: 0,
            optional_cursor: None,
        })
        .await
        .expect("read relationships")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await.expect("read stream") {
        out.extend(r.relationship);
    }
    out
}

/// Offboarding (kinbar.v1.AdminService/Offboard) of a subject holding more
/// than 5,000 relationships: one audited transaction, the successor holds
/// exactly what was handed over, the leaving user can see nothing, bad
/// input is INVALID_ARGUMENT.
/// Needs `doc#viewer: user`, `doc#banned: user` and a `doc#view` permission.
pub async fn offboarding_scenario(ch: Channel) {
    use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
    use kinbar::api::proto::kinbar::v1 as kpb;
    use kinbar::api::proto::kinbar::v1::admin_service_client::AdminServiceClient;
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let mut perms = PermissionsServiceClient::new(ch.clone());
    let mut admin = AdminServiceClient::new(ch.clone());
    const N: usize = 5_001;
    let texts: Vec<String> = (0..N)
        .map(|i| format!("doc:d{i:05}#viewer@user:leaver"))
        .collect();
    for chunk in texts.chunks(1_000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        perms.write_relationships(touch_all(&refs)).await.unwrap();
    }
    perms
        .write_relationships(touch_all(&[
            "doc:extra#banned@user:leaver",
            "doc:keep#viewer@user:other",
        ]))
        .await
        .unwrap();
    let req = |dry_run: bool| kpb::OffboardRequest {
        subject: "user:leaver".into(),
        optional_successor: "user:successor".into(),
        dry_run,
        reason: "offboarding ticket HR-12".into(),
    };
    // A dry run reports and changes nothing.
    let dry = admin.offboard(req(true)).await.unwrap().into_inner();
    assert!(!dry.committed);
    assert_eq!(dry.relationships.len(), N + 1);
    let done = admin.offboard(req(false)).await.unwrap().into_inner();
    assert!(done.committed);
    assert_eq!(done.relationships, dry.relationships);
    let at = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtExactSnapshot(
            pb::ZedToken {
                token: done.revision_token.clone(),
            },
        )),
    });
    let held_by = |who: &str| {
        let mut p = perms.clone();
        let at = at.clone();
        let filter = pb::RelationshipFilter {
            optional_subject_filter: Some(pb::SubjectFilter {
                subject_type: "user".into(),
                optional_subject_id: who.to_string(),
                optional_relation: None,
            }),
            ..Default::default()
        };
        async move {
            let mut v: Vec<String> = read_all(&mut p, at, filter)
                .await
                .into_iter()
                .map(|r| {
                    let o = r.resource.unwrap();
                    format!("{}:{}#{}", o.object_type, o.object_id, r.relation)
                })
                .collect();
            v.sort();
            v
        }
    };
    assert!(held_by("leaver").await.is_empty());
    let mut want: Vec<String> = done
        .relationships
        .iter()
        .map(|r| r.split('@').next().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(held_by("successor").await, want);
    let mut lookup = perms
        .lookup_resources(pb::LookupResourcesRequest {
            consistency: at.clone(),
            resource_object_type: "doc".into(),
            permission: "view".into(),
            subject: subj("user", "leaver", ""),
            context: None,
            optional_limit: 0,
            optional_cursor: None,
            with_debug: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        lookup.message().await.unwrap().is_none(),
        "the leaver sees nothing"
    );
    // One audit transaction with every change and the reason.
    let mut audit = AuditServiceClient::new(ch);
    let mut s = audit
        .read_audit(kpb::ReadAuditRequest {
            optional_subject: "user:leaver".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(r) = s.message().await.unwrap() {
        last = r.transaction;
    }
    let last = last.unwrap();
    assert_eq!(last.revision_token, done.revision_token);
    assert_eq!(last.changes.len(), 2 * (N + 1));
    let reason = format!("{:?}", last.metadata);
    assert!(reason.contains("offboarding ticket HR-12"), "{reason}");
    // Nothing left: a second offboarding is a no-op; bad input is refused.
    let again = admin.offboard(req(false)).await.unwrap().into_inner();
    assert!(!again.committed && again.relationships.is_empty());
    for (subject, successor) in [
        ("user:*", ""),
        ("user:leaver", "doc:extra"),
        ("user:leaver", "user:leaver"),
        ("not a subject", ""),
    ] {
        let e = admin
            .offboard(kpb::OffboardRequest {
                subject: subject.into(),
                optional_successor: successor.into(),
                dry_run: false,
                reason: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::InvalidArgument,
            "{subject} → {successor}: {e:?}"
        );
    }
}
