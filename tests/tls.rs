//! TLS and mTLS (rustls) on a real server, and configuration loading.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use kinbar::config::{Config, ServeArgs};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    /// The CA, to sign a renewed server certificate.
    ca: CertifiedIssuer<'static, KeyPair>,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["crm-service".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
        ca,
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn start(config: Config) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kinbar::server::run(config, listener, async {
        let _ = rx.await;
    }));
    // Wait until the listener accepts (the TLS handshake comes later).
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, tx)
}

async fn health(endpoint: String, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let mut e = Channel::from_shared(endpoint)
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    if let Some(t) = tls {
        e = e.tls_config(t).map_err(|e| e.to_string())?;
    }
    let ch = e.connect().await.map_err(|e| e.to_string())?;
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let p = pki();
    let path = |f: &str| Some(p.dir.path().join(f));
    let ca = || {
        ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
    };

    let (addr, _stop) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        ..Config::default()
    })
    .await;
    assert_eq!(health(format!("https://{addr}"), Some(ca())).await, Ok(1));
    assert!(
        health(format!("http://{addr}"), None).await.is_err(),
        "plaintext must not work against TLS"
    );

    let (addr, _stop2) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        tls_client_ca: path("ca.pem"),
        ..Config::default()
    })
    .await;
    assert!(
        health(format!("https://{addr}"), Some(ca())).await.is_err(),
        "mTLS needs a client certificate"
    );
    let with_identity = ca().identity(Identity::from_pem(&p.client_cert, &p.client_key));
    assert_eq!(
        health(format!("https://{addr}"), Some(with_identity)).await,
        Ok(1)
    );
}

/// Writes `contents` to `path` atomically (a Secret update by the kubelet
/// swaps a symlink; a rename is the same for a reader).
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Rotation under load (issue 17 acceptance): the certificate and key
/// files are replaced while a client calls without pause; the new
/// certificate serves new connections within seconds, open connections
/// carry on, not one call fails, and a broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_call() {
    let p = pki();
    let path = |f: &str| p.dir.path().join(f);
    let (addr, _stop) = start(Config {
        tls_cert: Some(path("server.pem")),
        tls_key: Some(path("server.key")),
        ..Config::default()
    })
    .await;
    let trusting = |domain: &str| {
        ClientTlsConfig::new()
            .domain_name(domain)
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
    };
    let endpoint = format!("https://{addr}");
    // Load: one open channel and a fresh connection every tenth call.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let endpoint = endpoint.clone();
        let tls = trusting("localhost");
        tokio::spawn(async move {
            let ch = Channel::from_shared(endpoint.clone())
                .unwrap()
                .tls_config(tls.clone())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = HealthClient::new(ch);
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = if i.is_multiple_of(10) {
                    health(endpoint.clone(), Some(tls.clone())).await
                } else {
                    client
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(|r| r.into_inner().status)
                        .map_err(|e| e.to_string())
                };
                match r {
                    Ok(1) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    assert!(
        health(endpoint.clone(), Some(trusting("kinbar-rotated.test")))
            .await
            .is_err(),
        "the first certificate does not name kinbar-rotated.test"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A renewed certificate from the same CA, naming one more host.
    let ca = &p.ca;
    let key = KeyPair::generate().unwrap();
    let renewed = CertificateParams::new(vec![
        "localhost".to_string(),
        "kinbar-rotated.test".to_string(),
    ])
    .unwrap()
    .signed_by(&key, ca)
    .unwrap();
    replace(&path("server.key"), &key.serialize_pem());
    replace(&path("server.pem"), &renewed.pem());
    let mut rotated = false;
    for _ in 0..50 {
        if health(endpoint.clone(), Some(trusting("kinbar-rotated.test"))).await == Ok(1) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the renewed certificate was not served within 5 s");

    // A broken file keeps the certificate in force.
    replace(
        &path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        health(endpoint.clone(), Some(trusting("kinbar-rotated.test"))).await,
        Ok(1)
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 20, "only {ok} calls under load");
}

/// The whole TLS handshake has a deadline, not only its first bytes: a
/// client that sends the start of a ClientHello and stalls is cut off.
#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pki();
    let path = |f: &str| Some(p.dir.path().join(f));
    let (addr, _stop) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        connection_preface_timeout_secs: 1,
        ..Config::default()
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A handshake record announcing 512 bytes, of which 40 are sent.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.resize(40, 0x2a);
    tcp.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled handshake was not closed: {closed:?}"
    );
    // Others are still served.
    let ca = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(&p.ca_pem));
    assert_eq!(health(format!("https://{addr}"), Some(ca)).await, Ok(1));
}

/// mTLS identities (DESIGN.md §9: the actor is the key name or the mTLS
/// identity): a call without a key from a client whose verified
/// certificate names a configured identity gets that identity's scopes,
/// and its changes are audited under that name; a key still wins when
/// both are presented; an unmapped certificate is unauthenticated.
#[tokio::test]
async fn a_client_certificate_identity_is_the_caller_and_the_audit_actor() {
    use kinbar::api::proto::authzed::api::v1 as pb;
    use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
    use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
    use kinbar::api::proto::kinbar::v1 as kpb;
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let p = pki();
    let path = |f: &str| Some(p.dir.path().join(f));
    // A channel presenting the client certificate (DNS name crm-service).
    let with_certificate = |addr: std::net::SocketAddr| {
        let tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
            .identity(Identity::from_pem(&p.client_cert, &p.client_key));
        async move {
            Channel::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    };
    let (addr, _stop) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        tls_client_ca: path("ca.pem"),
        tls_client_identities: vec!["crm-service:check,write".into()],
        preshared_keys: vec!["root:root-secret-1:admin".into()],
        ..Config::default()
    })
    .await;
    let ch = with_certificate(addr).await;
    fn keyed<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
        r.metadata_mut()
            .insert("authorization", "Bearer root-secret-1".parse().unwrap());
        r
    }
    SchemaServiceClient::new(ch.clone())
        .write_schema(keyed(tonic::Request::new(pb::WriteSchemaRequest {
            schema: "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }".into(),
        })))
        .await
        .unwrap();
    // The certificate alone: check and write scopes, not admin.
    let denied = SchemaServiceClient::new(ch.clone())
        .write_schema(pb::WriteSchemaRequest {
            schema: "definition user {}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("crm-service"), "{denied:?}");
    let r: kinbar::Relationship = "doc:1#viewer@user:anna".parse().unwrap();
    let mut perms = PermissionsServiceClient::new(ch.clone());
    perms
        .write_relationships(pb::WriteRelationshipsRequest {
            updates: vec![pb::RelationshipUpdate {
                operation: pb::relationship_update::Operation::Touch as i32,
                relationship: Some(kinbar::api::convert::relationship_pb(&r)),
            }],
            optional_preconditions: vec![],
            optional_transaction_metadata: None,
        })
        .await
        .unwrap();
    let mut stream = AuditServiceClient::new(ch.clone())
        .read_audit(keyed(tonic::Request::new(kpb::ReadAuditRequest::default())))
        .await
        .unwrap()
        .into_inner();
    let mut actors = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        actors.push(r.transaction.unwrap().actor);
    }
    assert_eq!(actors, ["root", "crm-service"]);

    // A certificate naming no configured identity, without a key.
    let (addr2, _stop2) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        tls_client_ca: path("ca.pem"),
        tls_client_identities: vec!["billing-service:check".into()],
        ..Config::default()
    })
    .await;
    let ch2 = with_certificate(addr2).await;
    let e = SchemaServiceClient::new(ch2)
        .read_schema(pb::ReadSchemaRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
}

/// A client certificate is named by its URI subject alternative names
/// (SPIFFE IDs, as service meshes issue them) and its subject's common
/// name as well as its DNS names: each maps to its identity's scopes (the
/// refusal of a scope it lacks names it), an unmapped one is
/// unauthenticated.
#[tokio::test]
async fn client_certificates_are_named_by_uri_and_common_name() {
    use kinbar::api::proto::authzed::api::v1 as pb;
    use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
    use rcgen::{DnType, SanType};
    let p = pki();
    let path = |f: &str| Some(p.dir.path().join(f));
    let spiffe = "spiffe://crm.example/ns/sales/sa/orders";
    let issue = |params: CertificateParams| {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &p.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let mut by_uri = CertificateParams::new(Vec::<String>::new()).unwrap();
    by_uri.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
    let mut by_cn = CertificateParams::new(Vec::<String>::new()).unwrap();
    by_cn
        .distinguished_name
        .push(DnType::CommonName, "reporting-job");
    let mut unmapped = CertificateParams::new(Vec::<String>::new()).unwrap();
    unmapped
        .distinguished_name
        .push(DnType::CommonName, "someone-else");
    let (addr, _stop) = start(Config {
        tls_cert: path("server.pem"),
        tls_key: path("server.key"),
        tls_client_ca: path("ca.pem"),
        tls_client_identities: vec![format!("{spiffe}:check"), "reporting-job:check".into()],
        ..Config::default()
    })
    .await;
    for (params, expected) in [
        (by_uri, Some(spiffe)),
        (by_cn, Some("reporting-job")),
        (unmapped, None),
    ] {
        let (cert, key) = issue(params);
        let tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&p.ca_pem))
            .identity(Identity::from_pem(cert, key));
        let ch = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = SchemaServiceClient::new(ch)
            .write_schema(pb::WriteSchemaRequest {
                schema: "definition user {}".into(),
            })
            .await
            .unwrap_err();
        match expected {
            Some(name) => {
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{name}: {e:?}");
                assert!(e.message().contains(name), "{name}: {e:?}");
            }
            None => assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}"),
        }
    }
}

#[test]
fn config_precedence_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kinbar.toml");
    std::fs::write(&file, "grpc_addr = \"127.0.0.1:7000\"\nmax_depth = 30\npreshared_keys = [\"a:aaaaaaaa:check\"]\nlog_format = \"json\"\n").unwrap();
    let args = ServeArgs {
        config: Some(file.clone()),
        max_depth: Some(40),
        ..Default::default()
    };
    let c = Config::load(&args).unwrap();
    assert_eq!(c.grpc_addr.port(), 7000, "from the file");
    assert_eq!(c.max_depth, 40, "flags win over the file");
    assert_eq!(c.log_format, "json");
    assert_eq!(c.preshared_keys, vec!["a:aaaaaaaa:check".to_string()]);
    assert_eq!(c.max_updates_per_write, 1000, "default");

    std::fs::write(&file, "grpc_adr = \"127.0.0.1:7000\"\n").unwrap();
    let e = Config::load(&ServeArgs {
        config: Some(file.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("unknown field `grpc_adr`"), "{e}");
    let e = Config::load(&ServeArgs {
        tls_cert: Some("x.pem".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("--tls-cert and --tls-key"), "{e}");
    let e = Config::load(&ServeArgs {
        preshared_keys: vec!["bad".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("NAME:KEY:SCOPES"), "{e}");
    let e = Config::load(&ServeArgs {
        preshared_keys: vec!["n:longenough:root".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.contains("unknown scope `root`"), "{e}");
}

#[test]
fn serve_reads_env_and_flags() {
    use clap::Parser;
    // Env and flags both reach ServeArgs through clap; flags win.
    let cli = kinbar::cli::Cli::try_parse_from([
        "kinbar",
        "serve",
        "--grpc-addr",
        "127.0.0.1:7001",
        "--preshared-key",
        "a:aaaaaaaa:check;b:bbbbbbbb:write",
    ])
    .unwrap();
    match cli.command {
        kinbar::cli::Command::Serve(args) => {
            let c = Config::load(&args).unwrap();
            assert_eq!(c.grpc_addr.port(), 7001);
            assert_eq!(c.preshared_keys.len(), 2);
        }
        other => panic!("parsed as {other:?}"),
    }
}
