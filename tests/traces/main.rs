//! Traces: the caller's `traceparent` reaches the upstream, and a request produces one server
//! span and one client span per upstream attempt in the caller's trace.
//!
//! This is a test binary of its own, unlike every other integration test: `tracing` caches per
//! callsite whether any subscriber is interested, process-wide, so a test that installs a
//! subscriber races with tests in parallel threads that have none. Here the subscriber is the
//! process's global default, installed once before any span is created.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../support/binary.rs"]
mod binary;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod otlp;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use wiremock::ResponseTemplate;

use helpers::{shout_call, shoutcloud, spawn_app_with};

/// Each test has its own trace id: they share the process's exporter.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const RETRIED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// The spans every test of this binary exports to, installed globally once.
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static TRACING: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    TRACING.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        (exporter, provider)
    })
}

async fn shout_with_traceparent(app: &helpers::TestApp, trace_id: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/", app.address))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=secret")
        .body(r#"{"data":"trace"}"#)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn by_default_the_upstream_gets_no_trace_context_and_the_client_span_is_a_child_of_the_server_span()
 {
    let (exporter, provider) = exporter();
    let app = spawn_app_with(|_| {}).await;
    app.healthy_upstream().await;

    shout_with_traceparent(&app, TRACE_ID).await;
    provider.force_flush().unwrap();

    let requests = app.upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    for header in ["traceparent", "tracestate", "baggage"] {
        assert!(
            requests[0].headers.get(header).is_none(),
            "{header} sent upstream"
        );
    }
    let spans = exporter.get_finished_spans().unwrap();
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
        .collect();
    let server = in_trace
        .iter()
        .find(|s| s.span_kind == opentelemetry::trace::SpanKind::Server)
        .expect("a server span");
    let client = in_trace
        .iter()
        .find(|s| s.span_kind == opentelemetry::trace::SpanKind::Client)
        .expect("a client span");
    assert_eq!(client.parent_span_id, server.span_context.span_id());
}

#[tokio::test]
async fn a_retried_request_makes_one_server_span_and_one_client_span_per_attempt() {
    let (exporter, provider) = exporter();
    let app = spawn_app_with(|s| {
        s.retry_max = 2;
        s.retry_min_backoff_ms = 1;
        s.retry_max_backoff_ms = 2;
        s.upstream_trace_propagation = true;
    })
    .await;
    shout_call()
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(shoutcloud)
        .mount(&app.upstream)
        .await;

    let response = shout_with_traceparent(&app, RETRIED_TRACE_ID).await;
    assert_eq!(response.headers()["x-shout-source"], "upstream");
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == RETRIED_TRACE_ID)
        .collect();
    let servers: Vec<_> = in_trace
        .iter()
        .filter(|s| s.span_kind == opentelemetry::trace::SpanKind::Server)
        .collect();
    let clients: Vec<_> = in_trace
        .iter()
        .filter(|s| s.span_kind == opentelemetry::trace::SpanKind::Client)
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "one server span in the caller's trace: {spans:#?}"
    );
    assert_eq!(clients.len(), 2, "one client span per attempt");
    let resend_counts: Vec<Option<i64>> = clients
        .iter()
        .map(|span| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "http.request.resend_count")
                .and_then(|kv| match &kv.value {
                    opentelemetry::Value::I64(n) => Some(*n),
                    _ => None,
                })
        })
        .collect();
    assert!(
        resend_counts.contains(&None) && resend_counts.contains(&Some(1)),
        "{resend_counts:?} {:#?}",
        clients.iter().map(|s| &s.attributes).collect::<Vec<_>>()
    );
    let requests = app.upstream.received_requests().await.unwrap();
    let client_span_ids: Vec<String> = clients
        .iter()
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    for request in &requests {
        let traceparent = request
            .headers
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(traceparent.contains(RETRIED_TRACE_ID));
        assert!(
            request.headers.get("tracestate").is_none(),
            "never tracestate"
        );
        assert!(
            client_span_ids
                .iter()
                .any(|id| traceparent.contains(id.as_str())),
            "each attempt carries its own span id"
        );
    }
}

#[tokio::test]
async fn cache_hits_and_fallbacks_are_events_on_the_server_span() {
    let (exporter, provider) = exporter();
    let app = spawn_app_with(|s| s.retry_max = 0).await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(shoutcloud)
        .mount(&app.upstream)
        .await;
    let events_trace = "5c1c63257de34c67a1d2e3f4a5b6c7d8";

    for _ in 0..3 {
        shout_with_traceparent(&app, events_trace).await;
    }
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let events: Vec<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == events_trace)
        .flat_map(|s| s.events.iter().map(|e| e.name.to_string()))
        .collect();
    assert!(
        events.iter().any(|e| e == "fallback answered"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "cache hit"), "{events:?}");
}
