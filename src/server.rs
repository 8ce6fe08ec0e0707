//! The gRPC server: `run(config, listener, shutdown)` serves every service
//! on an already-bound listener until `shutdown` completes, then lets
//! in-flight requests finish. Tests start it on `127.0.0.1:0`.

mod conn;
mod edge;
pub mod ops;
mod penalty;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::api::auth::{Authenticator, PresharedKey};
use crate::api::proto::authzed::api::v1::permissions_service_server::PermissionsServiceServer;
use crate::api::proto::authzed::api::v1::schema_service_server::SchemaServiceServer;
use crate::api::proto::authzed::api::v1::watch_service_server::WatchServiceServer;
use crate::api::proto::kinbar::v1::admin_service_server::AdminServiceServer;
use crate::api::proto::kinbar::v1::audit_service_server::AuditServiceServer;
use crate::api::{AdminApi, Api, ApiLimits, AuditApi, PermissionsApi, SchemaApi, WatchApi};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::schema::Limits;
use crate::store::Datastore;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{PostgresOptions, PostgresStore};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// tonic reports a request over the message-size limit as OUT_OF_RANGE;
/// DESIGN.md §6 says RESOURCE_EXHAUSTED. The status travels in the headers
/// (trailers-only responses) or in the trailers, so both are rewritten.
fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let mut response = response.map(|b| tonic::body::Body::new(OversizedStatus(b)));
    fix_status(response.headers_mut());
    response
}

fn fix_status(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers.get("grpc-message").is_some_and(|m| {
        String::from_utf8_lossy(m.as_bytes()).contains("message%20length%20too%20large")
            || String::from_utf8_lossy(m.as_bytes()).contains("message length too large")
    });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

/// A response body whose trailers go through [`fix_status`].
struct OversizedStatus(tonic::body::Body);

impl http_body::Body for OversizedStatus {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx).map(|frame| {
            frame.map(|f| {
                f.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        fix_status(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Opens the datastore named by the configuration. Postgres must already
/// be migrated to this version (`kinbar migrate`); its background sealer and
/// garbage collector start here.
pub async fn open_datastore(config: &Config) -> Result<Arc<dyn Datastore>, ServerError> {
    let window = std::time::Duration::from_secs(config.gc_window_secs);
    match config.datastore.as_str() {
        "memory" => Ok(Arc::new(MemoryStore::new(
            crate::store::memory::MemoryOptions {
                gc_window: window,
                audit_max_changes: config.audit_max_changes,
                ..Default::default()
            },
        ))),
        url if is_postgres_url(url) => {
            let options = PostgresOptions {
                max_connections: config.postgres_max_connections,
                gc_window: window,
                gc_interval: Some(std::time::Duration::from_secs(config.gc_interval_secs)),
                read_replica_url: config.postgres_read_replica.clone(),
                ..Default::default()
            };
            let store = Arc::new(
                PostgresStore::open(url, options)
                    .await
                    .map_err(|e| ServerError::Config(format!("datastore: {e}")))?,
            );
            let excess = store
                .excess_privileges()
                .await
                .map_err(|e| ServerError::Config(format!("datastore: {e}")))?;
            if !excess.is_empty() {
                let list = excess.join(", ");
                if !config.allow_privileged_datastore_role {
                    return Err(ServerError::Config(format!(
                        "refusing to serve as a privileged Postgres role (it {list}): a \
                         compromised server could rewrite the audit trail. Connect as a \
                         runtime role with the grants of `kinbar migrate --print-grants \
                         ROLE`, or pass --allow-privileged-datastore-role"
                    )));
                }
                tracing::warn!(
                    privileges = %list,
                    "serving as a privileged Postgres role (--allow-privileged-datastore-role); \
                     use a least-privilege runtime role in production"
                );
            }
            store.start_background();
            Ok(store)
        }
        other => Err(ServerError::Config(format!(
            "unknown datastore `{other}`: use `memory` or a `postgres://` URL"
        ))),
    }
}

/// `scheme://user:password@host…` with the password replaced, for logs.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn parse_keys(texts: &[String]) -> Result<Vec<PresharedKey>, String> {
    texts.iter().map(|k| PresharedKey::parse(k)).collect()
}

/// Stores the refused calls recorded since the last pass, every second.
/// A datastore error drops that batch (logged, counted): security events
/// are also structured logs, so nothing depends on this table alone.
async fn store_security_events(
    engine: Arc<crate::engine::Engine>,
    log: crate::api::auth::SecurityLog,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let events = log.drain();
        if events.is_empty() {
            continue;
        }
        if let Err(e) = engine.record_security_events(&events).await {
            metrics::counter!("kinbar_security_events_dropped_total")
                .increment(events.len() as u64);
            tracing::warn!(error = %e, events = events.len(), "could not store security events");
        }
    }
}

/// Re-reads the keys file every second and on SIGHUP; a changed, valid,
/// non-empty set replaces the keys atomically (new calls see it at once).
/// A broken or empty file keeps the current set, logs and is counted.
async fn reload_keys(config: Config, auth: crate::api::auth::Authenticator) {
    let Some(path) = config.preshared_keys_file.clone() else {
        return;
    };
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = config.all_preshared_keys().unwrap_or_default();
    loop {
        #[cfg(unix)]
        {
            let signal = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = signal => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        #[cfg(not(unix))]
        tokio::time::sleep(Duration::from_secs(1)).await;
        let texts = match config.all_preshared_keys() {
            Ok(t) => t,
            Err(e) => {
                metrics::counter!("kinbar_key_reload_failures_total").increment(1);
                tracing::warn!(error = %e, "keys file unreadable; keeping the current keys");
                continue;
            }
        };
        if texts == last {
            continue;
        }
        match parse_keys(&texts) {
            Ok(keys) if !keys.is_empty() => {
                let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
                auth.replace_keys(keys);
                last = texts;
                metrics::counter!("kinbar_key_reloads_total").increment(1);
                tracing::info!(file = %path.display(), ?names, "preshared keys reloaded");
            }
            Ok(_) => {
                metrics::counter!("kinbar_key_reload_failures_total").increment(1);
                tracing::warn!(file = %path.display(), "keys file has no keys; keeping the current keys");
            }
            Err(e) => {
                metrics::counter!("kinbar_key_reload_failures_total").increment(1);
                tracing::warn!(file = %path.display(), error = %e, "keys file invalid; keeping the current keys");
            }
        }
    }
}

/// The engine and API state a configuration describes.
pub fn build_api(config: &Config, store: Arc<dyn Datastore>) -> Result<Api, ServerError> {
    let keys = parse_keys(&config.all_preshared_keys().map_err(ServerError::Config)?)
        .map_err(ServerError::Config)?;
    let engine = Engine::new(
        store,
        EngineConfig {
            max_depth: config.max_depth,
            max_updates_per_write: config.max_updates_per_write,
            cache_capacity: config.cache_capacity,
            schema_limits: Limits {
                max_schema_bytes: config.max_schema_bytes,
                max_expression_terms: config.max_expression_terms,
                ..Limits::default()
            },
            budget: crate::engine::Budget {
                max_subproblems: config.max_subproblems,
                max_rows_read: config.max_rows_per_request,
                max_expand_elements: config.max_expand_elements,
                max_duration: Duration::from_secs(config.request_timeout_secs),
            },
            ..EngineConfig::default()
        },
    );
    Ok(Api::new(
        Arc::new(engine),
        Authenticator::new(keys)
            .with_rate_limits(crate::api::auth::RateLimits {
                per_second: config.rate_limit_per_key,
                burst: config.rate_limit_burst,
                expensive_cost: config.rate_limit_expensive_cost,
            })
            .with_client_identities(
                config
                    .tls_client_identities
                    .iter()
                    .map(|t| crate::api::auth::ClientIdentity::parse(t))
                    .collect::<Result<_, _>>()
                    .map_err(ServerError::Config)?,
            ),
        ApiLimits {
            max_checks_per_bulk: config.max_checks_per_bulk,
            max_preconditions: config.max_preconditions,
            max_read_page: config.max_read_page,
            max_import: config.max_import,
            revision_quantum: Duration::from_millis(config.revision_quantum_ms),
        },
    ))
}

/// Serves until `shutdown` completes; in-flight requests then finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let local = listener.local_addr()?;
    if config
        .all_preshared_keys()
        .map_err(ServerError::Config)?
        .is_empty()
        && config.tls_client_identities.is_empty()
        && !config.insecure_allow_unauthenticated
        && !local.ip().is_loopback()
    {
        return Err(ServerError::Config(format!(
            "refusing to serve without authentication on {local}: configure --preshared-key, \
             listen on a loopback address, or pass --insecure-allow-unauthenticated"
        )));
    }
    let store = open_datastore(&config).await?;
    let api = build_api(&config, store)?;
    serve(config, api, listener, shutdown).await
}

/// Sets the gRPC health status of every service and of the server ("").
async fn set_health(reporter: &tonic_health::server::HealthReporter, ready: bool) {
    use tonic_health::ServingStatus;
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in [
        "",
        <PermissionsServiceServer<PermissionsApi> as tonic::server::NamedService>::NAME,
        <SchemaServiceServer<SchemaApi> as tonic::server::NamedService>::NAME,
        <WatchServiceServer<WatchApi> as tonic::server::NamedService>::NAME,
        <AuditServiceServer<AuditApi> as tonic::server::NamedService>::NAME,
        <AdminServiceServer<AdminApi> as tonic::server::NamedService>::NAME,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves an already-built API (tests use it to share an engine).
pub async fn serve(
    config: Config,
    api: Api,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let max = config.max_message_bytes;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Readiness tells the truth: every service (and the server as a whole,
    // "") is SERVING only while the datastore answers.
    let readiness = ops::Readiness::new();
    readiness.probe(&api.engine).await;
    set_health(&health_reporter, readiness.is_ready()).await;
    let reporter = health_reporter.clone();
    let probe = tokio::spawn(ops::watch_readiness(
        readiness.clone(),
        api.engine.clone(),
        Duration::from_millis(config.readiness_interval_ms),
        move |ready| {
            let reporter = reporter.clone();
            async move { set_health(&reporter, ready).await }
        },
    ));
    let _stop_probe = AbortOnDrop(probe);
    let _reload_keys = AbortOnDrop(tokio::spawn(reload_keys(config.clone(), api.auth.clone())));
    let _security_events = AbortOnDrop(tokio::spawn(store_security_events(
        api.engine.clone(),
        api.auth.security_log(),
    )));
    let _metrics = match config.metrics_addr {
        Some(addr) => Some(AbortOnDrop(
            ops::serve_http(addr, readiness.clone()).await?.1,
        )),
        None => {
            ops::metrics_handle();
            None
        }
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let edge_stats = Arc::new(edge::EdgeStats::default());
    edge_stats.memory_watermark.store(
        edge::memory_watermark(config.memory_watermark_bytes),
        std::sync::atomic::Ordering::Relaxed,
    );
    edge::sample_memory(&edge_stats);
    let _watch_memory = AbortOnDrop(tokio::spawn(edge::watch_memory(edge_stats.clone())));
    let edge = edge::EdgeLayer::new(config.max_in_flight, edge_stats)
        .with_per_key_limit(config.max_concurrent_per_key);
    let mut builder = Server::builder()
        .layer(edge)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        // HTTP/2 and connection hardening (see SECURITY notes in
        // ARCHITECTURE.md): bounded streams per connection, header lists,
        // reset floods (CVE-2023-44487 rapid reset; local error resets),
        // keep-alive probes, and an optional maximum connection age.
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .concurrency_limit_per_connection(config.concurrency_limit_per_connection)
        .timeout(Duration::from_secs(config.request_timeout_secs))
        .http2_max_header_list_size(Some(16 * 1024))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(256))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(60)));
    if config.max_connection_age_secs > 0 {
        builder = builder
            .max_connection_age(Duration::from_secs(config.max_connection_age_secs))
            .max_connection_age_grace(Duration::from_secs(30));
    }
    // TLS is terminated in `conn.rs`, not by tonic: the certificate is
    // reloaded while serving and the whole handshake has a deadline.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            tls::ReloadingTls::load(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })
            .map_err(ServerError::Config)?,
        )),
        _ => None,
    };
    let _reload_tls = tls
        .clone()
        .map(|t| AbortOnDrop(tokio::spawn(tls::watch(t))));
    tracing::info!(
        addr = %listener.local_addr()?,
        datastore = %redact_credentials(&config.datastore),
        "kinbar serving"
    );
    let closing = api.clone();
    let shutdown = async move {
        shutdown.await;
        closing.begin_shutdown();
    };
    builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            PermissionsServiceServer::new(PermissionsApi(api.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            SchemaServiceServer::new(SchemaApi(api.clone())).max_decoding_message_size(max),
        )
        .add_service(WatchServiceServer::new(WatchApi(api.clone())).max_decoding_message_size(max))
        .add_service(AdminServiceServer::new(AdminApi(api.clone())).max_decoding_message_size(max))
        .add_service(AuditServiceServer::new(AuditApi(api)).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(
            conn::incoming(
                listener,
                conn::Limits {
                    max_connections: config.max_connections,
                    protocol_errors_per_peer: config.protocol_errors_per_peer,
                    preface_timeout: Duration::from_secs(config.connection_preface_timeout_secs),
                },
                tls,
            ),
            shutdown,
        )
        .await?;
    tracing::info!("kinbar stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact_credentials("postgres://kinbar:s3cr:et@db:5432/kinbar?sslmode=require"),
            "postgres://kinbar:***@db:5432/kinbar?sslmode=require"
        );
        assert_eq!(
            redact_credentials("postgres://kinbar@db/x"),
            "postgres://kinbar@db/x"
        );
        assert_eq!(
            redact_credentials("postgres://u:p@localhost/db?host=/tmp/a@b"),
            "postgres://u:***@localhost/db?host=/tmp/a@b"
        );
        assert_eq!(redact_credentials("memory"), "memory");
    }
}
