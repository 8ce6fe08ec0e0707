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
