//! What operators watch: Prometheus metrics, liveness and readiness.
//!
//! - One process-wide Prometheus recorder ([`metrics_handle`]); the edge
//!   layer counts every call by method and gRPC code and times it, the
//!   readiness probe and the engine's cache counters are exported beside.
//! - [`Readiness`] probes the datastore in the background (a head-revision
//!   read, which on Postgres also needs the migrated tables) and flips the
//!   gRPC health status of every service to NOT_SERVING while it fails, and
//!   back to SERVING when it recovers.
//! - With `--metrics-addr`, an HTTP listener serves `/metrics`, `/healthz`
//!   (the process answers) and `/readyz` (200 while ready, 503 with the
//!   reason otherwise). Health and metrics are never shed or authenticated.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::engine::Engine;

/// Latency buckets (seconds) for request and datastore histograms.
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for per-request work: sub-problems evaluated, dispatch depth.
const WORK_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// The process-wide Prometheus recorder, installed on first use (several
/// servers in one process — tests — share it).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Setting buckets only fails for an empty list; neither list is.
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let builder = match builder.set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Prefix("kinbar_dispatch_".into()),
            WORK_BUCKETS,
        ) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then our
        // handle renders nothing, which the metrics test would show.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Records one finished gRPC call.
pub fn record_call(method: &str, code: tonic::Code, elapsed: Duration) {
    let code = format!("{code:?}");
    metrics::counter!("kinbar_grpc_requests_total", "method" => method.to_string(), "code" => code.clone())
        .increment(1);
    metrics::histogram!("kinbar_grpc_request_duration_seconds", "method" => method.to_string(), "code" => code)
        .record(elapsed.as_secs_f64());
}

/// Records a call refused by load shedding.
pub fn record_shed(method: &str) {
    metrics::counter!("kinbar_grpc_shed_total", "method" => method.to_string()).increment(1);
}

/// Whether the datastore answers, kept current by [`Readiness::run`].
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness {
            ready: AtomicBool::new(false),
            reason: Mutex::new("not probed yet".into()),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Why the server is not ready (empty when it is).
    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// One probe: updates the flag and returns whether it changed.
    pub async fn probe(&self, engine: &Engine) -> bool {
        let result = tokio::time::timeout(Duration::from_secs(5), engine.ready()).await;
        let (ready, reason) = match result {
            Ok(Ok(_)) => (true, String::new()),
            Ok(Err(e)) => (false, format!("datastore unavailable: {e}")),
            Err(_) => (
                false,
                "datastore unavailable: no answer within 5 s".to_string(),
            ),
        };
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.clone();
        }
        metrics::gauge!("kinbar_datastore_ready").set(if ready { 1.0 } else { 0.0 });
        let was = self.ready.swap(ready, Ordering::Relaxed);
        if was != ready {
            if ready {
                tracing::info!("datastore reachable: ready");
            } else {
                tracing::warn!(%reason, "not ready");
            }
        }
        was != ready
    }
}

/// Probes every `every` until the process ends, calling `changed` with the
/// new state after each change (the server flips gRPC health there).
pub async fn watch_readiness<F, Fut>(
    readiness: Arc<Readiness>,
    engine: Arc<Engine>,
    every: Duration,
    changed: F,
) where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if readiness.probe(&engine).await {
            changed(readiness.is_ready()).await;
        }
        export_engine_stats(&engine).await;
        tokio::time::sleep(every).await;
    }
}

/// The engine's cache counters and the datastore's pool, sealer and GC
/// figures, as gauges and monotonic totals.
pub async fn export_engine_stats(engine: &Engine) {
    let m = &engine.metrics;
    let hits = m.cache_hits.load(Ordering::Relaxed);
    let misses = m.cache_misses.load(Ordering::Relaxed);
    metrics::counter!("kinbar_cache_hits_total").absolute(hits);
    metrics::counter!("kinbar_cache_misses_total").absolute(misses);
    metrics::counter!("kinbar_cache_saved_microseconds_total")
        .absolute(m.cache_saved_micros.load(Ordering::Relaxed));
    metrics::counter!("kinbar_checks_fast_path_total")
        .absolute(m.fast_answers.load(Ordering::Relaxed));
    metrics::counter!("kinbar_checks_general_evaluator_total")
        .absolute(m.general_answers.load(Ordering::Relaxed));
    metrics::counter!("kinbar_datastore_queries_total")
        .absolute(m.datastore_queries.load(Ordering::Relaxed));
    metrics::counter!("kinbar_lookup_walk_reuses_total")
        .absolute(m.walk_reuses.load(Ordering::Relaxed));
    if hits + misses > 0 {
        metrics::gauge!("kinbar_cache_hit_ratio").set(hits as f64 / (hits + misses) as f64);
    }
    let s = engine.datastore_stats().await;
    let gauges = [
        ("kinbar_datastore_pool_connections", s.pool_connections),
        ("kinbar_datastore_pool_idle", s.pool_idle),
        ("kinbar_datastore_pool_max", s.pool_max),
        ("kinbar_audit_unsealed_transactions", s.audit_unsealed),
    ];
    for (name, value) in gauges {
        if let Some(v) = value {
            metrics::gauge!(name).set(v as f64);
        }
    }
    metrics::counter!("kinbar_datastore_write_conflict_retries_total")
        .absolute(s.write_conflict_retries);
    metrics::counter!("kinbar_audit_sealed_transactions_total").absolute(s.audit_sealed);
    metrics::counter!("kinbar_gc_passes_total").absolute(s.gc_passes);
    metrics::counter!("kinbar_gc_failures_total").absolute(s.gc_failures);
    metrics::counter!("kinbar_gc_deleted_total").absolute(s.gc_deleted);
    if s.gc_last_pass_unix_ms > 0 {
        metrics::gauge!("kinbar_gc_last_pass_timestamp_seconds")
            .set(s.gc_last_pass_unix_ms as f64 / 1000.0);
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process
/// ends; returns the bound address (port 0 picks one).
pub async fn serve_http(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = metrics_handle().clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if readiness.is_ready() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", readiness.reason()),
                    )
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %local, "metrics, /healthz and /readyz listening");
    Ok((local, task))
}
