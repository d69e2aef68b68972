//! Traces that arrive: the release-shaped binary exports over OTLP/HTTP to a real receiver that
//! decodes `ExportTraceServiceRequest`s (server spans, one client span per upstream attempt under
//! its request's server span, the caller's trace honoured, no warning), and with the receiver gone
//! it keeps serving, counts the dropped spans and logs no line per request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use poem::listener::{Acceptor as _, TcpAcceptor};
use poem::web::Data;
use poem::{EndpointExt, Route, handler, post};
use prost::Message as _;
use wiremock::{MockServer, ResponseTemplate};

use crate::binary::{self, Launch, Output, free_port};
use crate::helpers::{sample, shout_call, shoutcloud};

/// Every span the receiver decoded.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

#[handler]
fn traces(body: bytes::Bytes, received: Data<&Received>) -> poem::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return poem::http::StatusCode::BAD_REQUEST;
    };
    let spans = request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans);
    received.0.0.lock().unwrap().extend(spans);
    poem::http::StatusCode::OK
}

/// A real OTLP/HTTP receiver on a free port: its base URL and what it received.
async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    let received = Received::default();
    let app = Route::new()
        .at("/v1/traces", post(traces))
        .data(received.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}"), received)
}

/// The binary, running with `--otlp-endpoint endpoint` and a 100 ms batch delay, and a client.
struct Proxy {
    process: binary::Proxy,
    client: reqwest::Client,
}

impl Proxy {
    async fn start(endpoint: &str, upstream: &MockServer) -> Self {
        let process = Launch::new(upstream)
            .flags(["--otlp-endpoint", endpoint, "--drain-ms", "0"])
            // The SDK's batch delay, for the child only: export within the test's patience.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .output(Output::Capture)
            .start()
            .await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Proxy { process, client }
    }

    async fn shout(&self, data: &str, traceparent: Option<&str>) -> u16 {
        let mut request = self
            .client
            .post(format!("{}/", self.process.public))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "data": data }).to_string());
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// SIGTERM, wait for a clean exit, and return everything it wrote.
    async fn stop(self) -> String {
        let output = self.process.stop().await;
        // The checks on the output mean something only if the output was read.
        assert!(output.contains("shout-proxy started"), "{output}");
        output
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn server_spans_reach_a_real_otlp_receiver_as_children_of_the_callers_trace() {
    let upstream = MockServer::start().await;
    shout_call().respond_with(shoutcloud).mount(&upstream).await;
    let (endpoint, received) = receiver().await;
    let proxy = Proxy::start(&endpoint, &upstream).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let sent = 5;

    assert_eq!(
        proxy
            .shout("traced", Some(&format!("00-{trace_id}-{parent}-01")))
            .await,
        200
    );
    for i in 1..sent {
        assert_eq!(proxy.shout(&format!("untraced {i}"), None).await, 200);
    }
    let output = proxy.stop().await;

    let spans = received.0.lock().unwrap().clone();
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(
        servers.len(),
        sent,
        "one server span per request: {servers:#?}"
    );
    let in_callers_trace: Vec<&&Span> = servers
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    assert_eq!(in_callers_trace.len(), 1, "{servers:#?}");
    assert_eq!(hex(&in_callers_trace[0].parent_span_id), parent);
    assert_eq!(in_callers_trace[0].name, "POST /");
    assert!(!output.contains("panicked"), "{output}");
    assert!(!output.contains("WARN"), "{output}");
}

#[tokio::test]
async fn with_the_receiver_down_requests_succeed_and_only_a_counter_notices() {
    let upstream = MockServer::start().await;
    shout_call().respond_with(shoutcloud).mount(&upstream).await;
    // A port with nothing behind it: every export is refused.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&endpoint, &upstream).await;
    let sent = 200;

    for i in 0..sent {
        assert_eq!(proxy.shout(&format!("r{i}"), None).await, 200);
    }
    let metrics = format!("{}/metrics", proxy.process.admin);
    let started = Instant::now();
    let mut dropped = 0.0;
    while dropped < f64::from(sent) && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let scrape = proxy.client.get(&metrics).send().await.unwrap();
        dropped = sample(
            &scrape.text().await.unwrap(),
            "shout_trace_spans_dropped_total",
        );
    }
    let output = proxy.stop().await;

    assert!(
        dropped >= f64::from(sent),
        "at least one span per request counted as dropped: {dropped}"
    );
    assert!(!output.contains("panicked"), "{output}");
    let warnings = output.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 2,
        "at most one export warning a minute, not one per request: {warnings}\n{output}"
    );
    // Start-up, shutdown and that warning: a handful of lines for 200 requests, none per request.
    let lines = output.lines().count();
    assert!(
        lines <= 12,
        "{lines} log lines for {sent} requests:\n{output}"
    );
}

#[tokio::test]
async fn each_attempt_at_a_flaky_upstream_arrives_as_a_client_span_under_its_requests_server_span()
{
    let upstream = MockServer::start().await;
    shout_call().respond_with(shoutcloud).mount(&upstream).await;
    let (endpoint, received) = receiver().await;
    let proxy = Proxy::start(&endpoint, &upstream).await;
    let sent = 6;

    for i in 0..sent {
        if i % 2 == 0 {
            // This request's first attempt gets a 503, its retry the answer.
            shout_call()
                .respond_with(ResponseTemplate::new(503))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&upstream)
                .await;
        }
        assert_eq!(proxy.shout(&format!("flaky {i}"), None).await, 200);
    }
    let attempts = upstream.received_requests().await.unwrap().len();
    let output = proxy.stop().await;

    assert_eq!(attempts, sent + sent / 2, "every 503 retried once");
    let spans = received.0.lock().unwrap().clone();
    let of_kind =
        |kind: SpanKind| -> Vec<&Span> { spans.iter().filter(|s| s.kind == kind as i32).collect() };
    let (servers, clients) = (of_kind(SpanKind::Server), of_kind(SpanKind::Client));
    assert_eq!(
        servers.len(),
        sent,
        "one server span per request: {servers:#?}"
    );
    assert_eq!(
        clients.len(),
        attempts,
        "one client span per attempt: {clients:#?}"
    );
    let mut attempts_per_request: Vec<usize> = servers
        .iter()
        .map(|server| {
            let children: Vec<&&Span> = clients
                .iter()
                .filter(|c| c.parent_span_id == server.span_id)
                .collect();
            assert!(children.iter().all(|c| c.trace_id == server.trace_id));
            children.len()
        })
        .collect();
    attempts_per_request.sort_unstable();
    assert_eq!(attempts_per_request, [1, 1, 1, 2, 2, 2], "{spans:#?}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(!output.contains("WARN"), "{output}");
}
