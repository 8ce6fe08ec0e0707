//! Trace export: with an OTLP endpoint, a CheckPermission's `rpc` span
//! (with its method and the caller's request id) and its dispatch and
//! datastore spans reach an in-process OTLP/gRPC receiver. Its own test
//! binary: it installs the process-wide tracing subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[macro_use]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A received span: name, attributes as `key=value`, service name.
type Received = (String, Vec<String>, String);

/// Spans received so far.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attrs = span
                        .attributes
                        .iter()
                        .map(|a| {
                            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                other => format!("{other:?}"),
                            };
                            format!("{}={v}", a.key)
                        })
                        .collect();
                    got.push((span.name, attrs, service.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_spans_reach_an_otlp_collector() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let spans = receiver.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = kinbar::telemetry::init_with_filter(
        "text",
        Some(&format!("http://{collector}")),
        "info,kinbar::engine=trace",
    )
    .unwrap();
    let (server, ch) = Server::with_schema(
        kinbar::config::Config::default(),
        "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }",
    )
    .await;
    let mut req = tonic::Request::new(check("doc:1", "view", "user:anna", full()));
    req.metadata_mut()
        .insert("x-request-id", "trace-me-1".parse().unwrap());
    PermissionsServiceClient::new(ch)
        .check_permission(req)
        .await
        .unwrap();
    let mut found = None;
    for _ in 0..100 {
        telemetry.flush();
        found = spans
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(name, attrs, _)| {
                name == "rpc"
                    && attrs
                        .iter()
                        .any(|a| a == "method=/authzed.api.v1.PermissionsService/CheckPermission")
                    && attrs.iter().any(|a| a == "request_id=trace-me-1")
            })
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, service) = found.unwrap_or_else(|| {
        panic!(
            "no rpc span for CheckPermission; received {:?}",
            spans.0.lock().unwrap()
        )
    });
    assert_eq!(service, "kinbar");
    // Inside it, at trace level: the dispatch step with its resource type,
    // permission and depth, and the datastore query with its row count.
    let got = spans.0.lock().unwrap().clone();
    let has = |name: &str, attrs: &[&str]| {
        got.iter()
            .any(|(n, a, _)| n == name && attrs.iter().all(|want| a.iter().any(|x| x == want)))
    };
    assert!(
        has("dispatch", &["resource_type=doc", "member=view", "depth=0"]),
        "{got:?}"
    );
    assert!(has("dispatch", &["member=viewer", "depth=1"]), "{got:?}");
    assert!(
        got.iter()
            .any(|(n, a, _)| n == "datastore.query" && a.iter().any(|x| x.starts_with("rows="))),
        "{got:?}"
    );
    server.stop().await;
}
