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
    let health = || {
        let ch = channel.clone();
        async move { health_status(ch).await.unwrap() }
    };
    assert!(
        eventually(300, || async move { health().await == not_serving }).await,
        "gRPC health went NOT_SERVING while Postgres was down"
    );
    let (code, body) = http_get(metrics, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("datastore unavailable"), "{body}");
    assert_eq!(
        http_get(metrics, "/healthz").await.0,
        200,
        "alive all along"
    );

    cluster().start_again().unwrap();
    assert!(
        eventually(300, || async move { health().await == serving }).await,
        "gRPC health back to SERVING after Postgres came back"
    );
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
    let sealed = move || async move {
        let body = http_get(metrics, "/metrics").await.1;
        metric_value(&body, "kinbar_audit_sealed_transactions_total").unwrap_or(0.0)
    };
    assert!(
        eventually(100, || async move { sealed().await >= 3.0 }).await,
        "schema + 2 writes sealed, saw {}",
        sealed().await
    );
    let body = http_get(metrics, "/metrics").await.1;
    assert!(
        metric_value(&body, "kinbar_datastore_pool_max").unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    for name in [
        "kinbar_datastore_pool_connections",
        "kinbar_audit_unsealed_transactions",
    ] {
        assert!(metric_value(&body, name).is_some(), "{name}: {body}");
    }

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
    let ready = move || async move { http_get(metrics, "/readyz").await };
    assert!(eventually(100, || async move { ready().await.0 == 503 }).await);
    let body = ready().await.1;
    assert!(body.contains("newer version"), "{body}");
    assert!(
        eventually(100, || async move { health().await == not_serving }).await,
        "gRPC health NOT_SERVING while migrations are not current"
    );
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99999999")
        .execute(&sql)
        .await
        .unwrap();
    assert!(
        eventually(100, || async move { ready().await.0 == 200 }).await,
        "ready again once the migrations match"
    );

    // Migrations behind (the newest one not applied, as after a failed
    // `kinbar migrate`): not ready, saying what to run; ready once applied.
    sqlx::query(
        "UPDATE _sqlx_migrations SET success = false \
         WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&sql)
    .await
    .unwrap();
    assert!(eventually(100, || async move { ready().await.0 == 503 }).await);
    let body = ready().await.1;
    assert!(body.contains("kinbar migrate"), "{body}");
    assert!(
        eventually(100, || async move { health().await == not_serving }).await,
        "gRPC health NOT_SERVING while migrations are behind"
    );
    sqlx::query("UPDATE _sqlx_migrations SET success = true WHERE NOT success")
        .execute(&sql)
        .await
        .unwrap();
    assert!(
        eventually(100, || async move { ready().await.0 == 200 }).await,
        "ready again once the migrations are applied"
    );
    assert!(
        eventually(100, || async move { health().await != not_serving }).await,
        "gRPC health SERVING again"
    );
    server.stop().await;
}

/// The value of an unlabelled Prometheus sample.
fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every 100 ms, at most `tries` times, until it holds.
async fn eventually<F, Fut>(tries: usize, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
