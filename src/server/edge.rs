//! The server's outermost layer, in front of every service: a global limit
//! on requests in flight (load shedding) and a readable message for calls
//! to methods that do not exist.
//!
//! Shedding happens before any work: over the limit, a call is answered at
//! once with RESOURCE_EXHAUSTED and a `google.rpc.RetryInfo`, and counted.
//! Health checks and reflection are never shed, so an overloaded server
//! still reports its state. Calls are also shed while resident memory is
//! above the memory watermark (sampled every 250 ms). The permit is held until the handler returns
//! its response (for streams: until the stream is set up), so the limit
//! bounds concurrent evaluation, not open Watch streams.
//!
//! Per credential (`max_concurrent_per_key`), calls are limited too: the
//! credential is the caller's `authorization` header (none: one
//! "anonymous" credential), hashed with a per-process key into one of
//! [`KEY_SLOTS`] slots, and its permit is held until the response *body*
//! ends — a LookupResources stream evaluates while it streams, and an open
//! Watch counts while it is open. A busy key is refused (RESOURCE_EXHAUSTED
//! with RetryInfo) before any work, while other keys keep their own slots.
//! Two credentials share a slot only by a hash collision (1 in
//! [`KEY_SLOTS`] per pair), which can only make the limit stricter for
//! them; a flood of made-up tokens spreads over every slot but holds each
//! permit only until authentication refuses it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Paths never shed: health and reflection.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Counts of what the edge refused, and whether resident memory is above
/// the watermark (kept current by [`watch_memory`]).
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub shed: AtomicU64,
    pub over_memory: std::sync::atomic::AtomicBool,
    /// The watermark in bytes (0: none).
    pub memory_watermark: AtomicU64,
}

/// Resident memory of this process (VmRSS), if the platform tells.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The memory watermark: `configured` bytes, or with 0, 90% of the
/// container's memory limit (cgroup v2 `memory.max`) when there is one.
pub fn memory_watermark(configured: u64) -> u64 {
    if configured > 0 {
        return configured;
    }
    std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |limit| limit / 10 * 9)
}

/// Samples resident memory every 250 ms and flags the edge to shed new
/// calls while it is above the watermark (as SpiceDB's memory protection).
pub async fn watch_memory(stats: Arc<EdgeStats>) {
    loop {
        sample_memory(&stats);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One sample (also taken at start, so the first call is covered).
pub fn sample_memory(stats: &EdgeStats) {
    let watermark = stats.memory_watermark.load(Ordering::Relaxed);
    if watermark == 0 {
        return;
    }
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("kinbar_memory_resident_bytes").set(rss as f64);
        let over = rss > watermark;
        if stats.over_memory.swap(over, Ordering::Relaxed) != over {
            if over {
                tracing::warn!(
                    rss,
                    watermark,
                    "above the memory watermark: shedding new calls"
                );
            } else {
                tracing::info!(rss, watermark, "below the memory watermark again");
            }
        }
    }
}

/// Slots of the per-credential limit (see the module docs).
pub const KEY_SLOTS: usize = 1_024;

/// Per-credential concurrency: one semaphore per slot.
struct PerKey {
    limit: usize,
    slots: Vec<Arc<Semaphore>>,
    hasher: foldhash::quality::RandomState,
}

impl PerKey {
    /// The slot of a call's credential (its `authorization` header).
    fn slot(&self, credential: Option<&[u8]>) -> &Arc<Semaphore> {
        use std::hash::BuildHasher as _;
        let h = self.hasher.hash_one(credential.unwrap_or_default());
        // `slots` is never empty (KEY_SLOTS > 0): the modulus is in range.
        &self.slots[(h % self.slots.len() as u64) as usize]
    }
}

/// The layer; cheap to clone (shared semaphore and counters).
#[derive(Clone)]
pub struct EdgeLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    per_key: Option<Arc<PerKey>>,
    retry_after: Duration,
    stats: Arc<EdgeStats>,
}

impl EdgeLayer {
    /// At most `max_in_flight` calls at once across all connections.
    pub fn new(max_in_flight: usize, stats: Arc<EdgeStats>) -> Self {
        EdgeLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            limit: max_in_flight,
            per_key: None,
            retry_after: Duration::from_millis(100),
            stats,
        }
    }

    /// And at most `per_key` calls at once per credential (0: no limit).
    pub fn with_per_key_limit(mut self, per_key: usize) -> Self {
        self.per_key = (per_key > 0).then(|| {
            Arc::new(PerKey {
                limit: per_key,
                slots: (0..KEY_SLOTS)
                    .map(|_| Arc::new(Semaphore::new(per_key)))
                    .collect(),
                hasher: foldhash::quality::RandomState::default(),
            })
        });
        self
    }
}

/// A response body that holds a permit until it ends (or is dropped).
struct Held {
    inner: tonic::body::Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = tonic::Status;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Edge<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        req.extensions_mut()
            .insert(crate::api::auth::CallPath(path.clone()));
        // One request id per call: the caller's `x-request-id`, or a new
        // one the handlers (audit records) and the logs then share.
        let request_id = match req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
        {
            Some(id) => id.to_string(),
            None => {
                let id = format!("{:032x}", rand::random::<u128>());
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    req.headers_mut().insert("x-request-id", v);
                }
                id
            }
        };
        // Shed before any work: over the caller's own concurrency, above the
        // memory watermark, or with every in-flight permit taken.
        let key_permit = match &self.layer.per_key {
            Some(per_key) if !exempt(&path) => {
                let credential = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                match per_key.slot(credential).clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        self.layer.stats.shed.fetch_add(1, Ordering::Relaxed);
                        super::ops::record_shed(&path);
                        tracing::warn!(target: "kinbar::security", method = %path, reason = "max_concurrent_per_key", "load shed");
                        let status = crate::api::status::overloaded(
                            format!(
                                "this credential has {} calls in flight, its limit (max_concurrent_per_key); retry shortly",
                                per_key.limit
                            ),
                            self.layer.retry_after,
                        );
                        return Box::pin(std::future::ready(Ok(status.into_http())));
                    }
                }
            }
            _ => None,
        };
        let permit = if exempt(&path) {
            None
        } else {
            let admitted = if self.layer.stats.over_memory.load(Ordering::Relaxed) {
                Err((
                    format!(
                        "the server is above its memory watermark of {} bytes (memory_watermark_bytes); retry shortly",
                        self.layer.stats.memory_watermark.load(Ordering::Relaxed)
                    ),
                    Duration::from_millis(500),
                ))
            } else {
                self.layer.permits.clone().try_acquire_owned().map_err(|_| {
                    (
                        format!(
                            "the server is at its limit of {} requests in flight (max_in_flight); retry shortly",
                            self.layer.limit
                        ),
                        self.layer.retry_after,
                    )
                })
            };
            match admitted {
                Ok(p) => Some(p),
                Err((message, retry_after)) => {
                    self.layer.stats.shed.fetch_add(1, Ordering::Relaxed);
                    super::ops::record_shed(&path);
                    tracing::warn!(method = %path, reason = %message, "load shed");
                    let status = crate::api::status::overloaded(message, retry_after);
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        };
        let started = std::time::Instant::now();
        let deadline = grpc_timeout(&req).map(|t| started + t);
        let fut = self.inner.call(req);
        let span = tracing::info_span!("rpc", method = %path, request_id = %request_id);
        Box::pin(tracing::Instrument::instrument(
            async move {
                // Defence in depth: a panic while handling one call (a bug)
                // answers INTERNAL for that call, counted and logged, instead
                // of resetting the stream with no status.
                let guarded =
                    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async move {
                        match deadline {
                            Some(d) => crate::engine::REQUEST_DEADLINE.scope(d, fut).await,
                            None => fut.await,
                        }
                    }));
                let mut response = match guarded.await {
                    Ok(response) => response?,
                    Err(_) => {
                        metrics::counter!("kinbar_panics_total", "method" => path.clone())
                            .increment(1);
                        tracing::error!(method = %path, "a call panicked; answered INTERNAL");
                        tonic::Status::internal(
                            "internal error while handling this call (the server recovered; it is logged)",
                        )
                        .into_http()
                    }
                };
                drop(permit);
                if let Some(p) = key_permit {
                    response =
                        response.map(|inner| tonic::body::Body::new(Held { inner, _permit: p }));
                }
                name_unknown_method(&mut response, &path);
                clip_status(&mut response);
                // A failed call carries its status in the headers
                // (trailers-only); a successful one sends OK in trailers.
                let code = tonic::Status::from_header_map(response.headers())
                    .map_or(tonic::Code::Ok, |s| s.code());
                super::ops::record_call(&path, code, started.elapsed());
                tracing::debug!(
                    ?code,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "rpc done"
                );
                Ok(response)
            },
            span,
        ))
    }
}

/// The caller's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if any.
fn grpc_timeout<B>(req: &http::Request<B>) -> Option<Duration> {
    let v = req.headers().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The longest status message sent (bytes); messages may quote the
/// caller's input, and an oversized one would exceed the client's header
/// list limit (16 KiB by default) and reach it as a protocol error instead
/// of the status.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Cuts an error's message (and the copy in its details) to
/// [`MAX_STATUS_MESSAGE`], keeping its code and `ErrorInfo`.
fn clip_status(response: &mut http::Response<tonic::body::Body>) {
    use prost::Message as _;
    let headers = response.headers_mut();
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.message().len() <= MAX_STATUS_MESSAGE
        && status.details().len() <= 2 * MAX_STATUS_MESSAGE
    {
        return;
    }
    let message = clip(status.message());
    let details = match crate::api::proto::google::rpc::Status::decode(status.details()) {
        Ok(mut d) => {
            d.message = message.clone();
            let bytes = d.encode_to_vec();
            if bytes.len() <= 2 * MAX_STATUS_MESSAGE {
                bytes
            } else {
                Vec::new()
            }
        }
        Err(_) => Vec::new(),
    };
    let _ = tonic::Status::with_details(status.code(), message, details.into()).add_header(headers);
}

/// `message` cut at a character boundary to fit [`MAX_STATUS_MESSAGE`].
fn clip(message: &str) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message.to_string();
    }
    const MORE: &str = "… (message truncated)";
    let mut end = MAX_STATUS_MESSAGE - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &message[..end])
}

/// tonic answers a call to an unknown method UNIMPLEMENTED with no message;
/// say which method and where to look.
fn name_unknown_method(response: &mut http::Response<tonic::body::Body>, path: &str) {
    let headers = response.headers_mut();
    let silent_unimplemented = tonic::Status::from_header_map(headers)
        .is_some_and(|s| s.code() == tonic::Code::Unimplemented && s.message().is_empty());
    if silent_unimplemented {
        // tonic encodes grpc-message (percent-encoding) itself.
        let _ = tonic::Status::unimplemented(format!(
            "unknown method {path}; list the services with server reflection (grpcurl list)"
        ))
        .add_header(headers);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use tower::{Layer, Service, ServiceExt};

    /// An inner service whose calls panic.
    #[derive(Clone)]
    struct Panics;

    impl tower::Service<http::Request<()>> for Panics {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        #[allow(clippy::panic)] // the point of this test
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async move { panic!("a bug in a handler") })
        }
    }

    #[tokio::test]
    async fn a_panicking_call_answers_internal_and_the_next_one_is_served() {
        let stats = Arc::new(EdgeStats::default());
        let mut svc = EdgeLayer::new(1, stats).layer(Panics);
        for _ in 0..2 {
            let response = svc
                .ready()
                .await
                .unwrap()
                .call(req("/x.Y/Z"))
                .await
                .unwrap();
            let status = tonic::Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code(), tonic::Code::Internal);
            assert!(
                status.message().contains("recovered"),
                "{}",
                status.message()
            );
        }
    }

    /// An inner service that answers only when told to.
    #[derive(Clone)]
    struct Gate(Arc<tokio::sync::Notify>);

    impl tower::Service<http::Request<()>> for Gate {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let n = self.0.clone();
            Box::pin(async move {
                n.notified().await;
                Ok(tonic::Status::ok("").into_http())
            })
        }
    }

    #[test]
    fn long_messages_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(2_000);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_STATUS_MESSAGE, "{}", clipped.len());
        assert!(clipped.ends_with("(message truncated)"));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn grpc_timeouts_parse() {
        let with = |v: &str| {
            http::Request::builder()
                .header("grpc-timeout", v)
                .body(())
                .unwrap()
        };
        assert_eq!(
            grpc_timeout(&with("100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(grpc_timeout(&with("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&with("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&with("5x")), None);
        assert_eq!(grpc_timeout(&with("123456789S")), None);
        assert_eq!(grpc_timeout(&req("/x")), None);
    }

    fn req(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn keyed(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    /// An inner service whose response body streams until told to end
    /// (one permit added per body to end).
    #[derive(Clone)]
    struct Streaming(Arc<tokio::sync::Semaphore>);

    impl tower::Service<http::Request<()>> for Streaming {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let n = self.0.clone();
            let body = futures::stream::once(async move {
                n.acquire().await.unwrap().forget();
                Ok::<_, tonic::Status>(http_body::Frame::data(bytes::Bytes::from_static(b"x")))
            });
            Box::pin(async move {
                Ok(http::Response::new(tonic::body::Body::new(
                    http_body_util::StreamBody::new(body),
                )))
            })
        }
    }

    #[tokio::test]
    async fn one_credential_over_its_limit_is_refused_while_others_are_served() {
        use http_body_util::BodyExt as _;
        let stats = Arc::new(EdgeStats::default());
        let end = Arc::new(tokio::sync::Semaphore::new(0));
        let mut svc = EdgeLayer::new(100, stats.clone())
            .with_per_key_limit(2)
            .layer(Streaming(end.clone()));
        let lookup = "/authzed.api.v1.PermissionsService/LookupResources";
        // Two streams of key A are open (headers answered, bodies not ended).
        let mut open = Vec::new();
        for _ in 0..2 {
            open.push(
                svc.ready()
                    .await
                    .unwrap()
                    .call(keyed(lookup, Some("a")))
                    .await
                    .unwrap(),
            );
        }
        let refused = svc
            .ready()
            .await
            .unwrap()
            .call(keyed(lookup, Some("a")))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("max_concurrent_per_key"),
            "{status:?}"
        );
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        // Other credentials (and health) are not held back by A.
        for other in [Some("b"), None] {
            let ok = svc
                .ready()
                .await
                .unwrap()
                .call(keyed(lookup, other))
                .await
                .unwrap();
            assert!(tonic::Status::from_header_map(ok.headers()).is_none());
        }
        let health = svc
            .ready()
            .await
            .unwrap()
            .call(keyed("/grpc.health.v1.Health/Check", Some("a")))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(health.headers()).is_none());
        // When A's streams end, A is served again.
        let drained = tokio::spawn(async move {
            for r in open {
                let _ = r.into_body().collect().await;
            }
        });
        end.add_permits(2);
        drained.await.unwrap();
        let again = svc
            .ready()
            .await
            .unwrap()
            .call(keyed(lookup, Some("a")))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(again.headers()).is_none());
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn over_the_limit_is_shed_with_retry_info_but_health_is_not() {
        let stats = Arc::new(EdgeStats::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut svc = EdgeLayer::new(1, stats.clone()).layer(Gate(gate.clone()));
        let check = "/authzed.api.v1.PermissionsService/CheckPermission";
        let first = tokio::spawn(svc.clone().oneshot(req(check)));
        tokio::task::yield_now().await;
        // The single permit is taken: the next call is refused at once.
        let shed = svc.ready().await.unwrap().call(req(check)).await.unwrap();
        let status = tonic::Status::from_header_map(shed.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("max_in_flight"), "{status:?}");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        // Health is exempt: it reaches the service (which we then release).
        let health = tokio::spawn(svc.clone().oneshot(req("/grpc.health.v1.Health/Check")));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        first.await.unwrap().unwrap();
        health.await.unwrap().unwrap();
        assert_eq!(stats.shed.load(Ordering::Relaxed), 1);
        // The permit came back.
        let again = tokio::spawn(svc.clone().oneshot(req(check)));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        let ok = again.await.unwrap().unwrap();
        let status = tonic::Status::from_header_map(ok.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Ok);
    }
}
