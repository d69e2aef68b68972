//! The caller's trace context stays with us: shoutcloud is a third party. Without
//! `--upstream-trace-propagation` nothing of it is sent; with it, only our own client span's
//! `traceparent` goes out, and only when we trace (see `tests/traces`).

use crate::helpers::{spawn_app, spawn_app_with};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn shout_with_context(app: &crate::helpers::TestApp) {
    let answer = app
        .client
        .post(format!("{}/", app.address))
        .header("content-type", "application/json")
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "vendor=secret")
        .header("baggage", "user=alice")
        .body(r#"{"data":"trace"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

async fn assert_no_trace_context_upstream(app: &crate::helpers::TestApp) {
    let requests = app.upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    for header in ["traceparent", "tracestate", "baggage"] {
        assert!(
            requests[0].headers.get(header).is_none(),
            "{header} reached the upstream"
        );
    }
    let sent = format!("{:?}", requests[0].headers);
    assert!(!sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{sent}");
}

#[tokio::test]
async fn the_callers_trace_context_never_reaches_the_upstream_by_default() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    shout_with_context(&app).await;

    assert_no_trace_context_upstream(&app).await;
}

#[tokio::test]
async fn opting_in_without_a_tracer_still_passes_nothing_of_the_callers_context() {
    let app = spawn_app_with(|s| s.upstream_trace_propagation = true).await;
    app.healthy_upstream().await;

    shout_with_context(&app).await;

    assert_no_trace_context_upstream(&app).await;
}
