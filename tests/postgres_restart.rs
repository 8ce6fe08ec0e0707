//! A Postgres restart while Kinbar serves: requests fail with UNAVAILABLE
//! (never a wrong answer), and Kinbar recovers by itself when Postgres is
//! back. Its own test binary: it stops its cluster, which would disturb
//! other tests sharing one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_gives_unavailable_then_recovers() {
    skip_without_postgres!();
    let url = database().await;
    let metrics = free_addr();
    let server = Server::start(kinbar::config::Config {
        datastore: url.clone(),
        allow_privileged_datastore_role: true,
        metrics_addr: Some(metrics),
        readiness_interval_ms: 100,
        ..Default::default()
    })
    .await;
    let channel = server.channel().await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(health_status(channel.clone()).await.unwrap(), serving);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    SchemaServiceClient::new(channel.clone())
        .write_schema(pb::WriteSchemaRequest {
            schema: "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }".into(),
        })
        .await
        .unwrap();
    let mut client = PermissionsServiceClient::new(channel.clone());
    client
        .write_relationships(touch(&["doc:1#viewer@user:a"], "before"))
        .await
        .unwrap();
    let allowed = || check("doc:1", "view", "user:a", full());

    cluster().stop().unwrap();
    let err = client.check_permission(allowed()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = client
        .write_relationships(touch(&["doc:2#viewer@user:a"], "during"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Readiness tells the truth: NOT_SERVING and 503 while Postgres is down.
    let mut down = false;
    for _ in 0..300 {
        if health_status(channel.clone()).await.unwrap() == not_serving {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "gRPC health went NOT_SERVING while Postgres was down");
    let (code, body) = http_get(metrics, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("datastore unavailable"), "{body}");
    assert_eq!(
        http_get(metrics, "/healthz").await.0,
        200,
        "alive all along"
    );

    cluster().start_again().unwrap();
    let mut up = false;
    for _ in 0..300 {
        if health_status(channel.clone()).await.unwrap() == serving {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "gRPC health back to SERVING after Postgres came back");
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    let mut recovered = None;
    for _ in 0..100 {
        match client.check_permission(allowed()).await {
            Ok(r) => {
                recovered = Some(r.into_inner());
                break;
            }
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Code::Unavailable,
                    "only UNAVAILABLE while recovering: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(has(&recovered.expect("kinbar recovered without a restart")));
    client
        .write_relationships(touch(&["doc:2#viewer@user:a"], "after"))
        .await
        .unwrap();
    let r = client
        .check_permission(check("doc:2", "view", "user:a", full()))
        .await
        .unwrap()
        .into_inner();
    assert!(has(&r));

    // The sealer's and the pool's figures on /metrics.
    let mut sealed = 0.0;
    for _ in 0..100 {
        let body = http_get(metrics, "/metrics").await.1;
        sealed = metric_value(&body, "kinbar_audit_sealed_transactions_total").unwrap_or(0.0);
        if sealed >= 3.0 {
            assert!(
                metric_value(&body, "kinbar_datastore_pool_max").unwrap_or(0.0) >= 1.0,
                "{body}"
            );
            assert!(
                metric_value(&body, "kinbar_datastore_pool_connections").is_some(),
                "{body}"
            );
            assert!(
                metric_value(&body, "kinbar_audit_unsealed_transactions").is_some(),
                "{body}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sealed >= 3.0, "schema + 2 writes sealed, saw {sealed}");

    // Migrations no longer current (a newer kinbar migrated the database):
    // not ready, naming why; ready again once they match.
    let sql = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&sql)
    .await
    .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        let (code, b) = http_get(metrics, "/readyz").await;
        body = b;
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("newer version"), "{body}");
    let mut down = false;
    for _ in 0..100 {
        if health_status(channel.clone()).await.unwrap() == not_serving {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        down,
        "gRPC health NOT_SERVING while migrations are not current"
    );
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99999999")
        .execute(&sql)
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if http_get(metrics, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the migrations match");
    server.stop().await;
}

/// The value of an unlabelled Prometheus sample.
fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
