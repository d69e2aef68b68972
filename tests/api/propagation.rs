//! W3C trace context passes through to the upstream even when the service traces nothing itself
//! (no OpenTelemetry layer: the default without `OTEL_EXPORTER_OTLP_ENDPOINT`).

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_callers_traceparent_reaches_the_upstream_without_a_tracer() {
    let app = spawn_app().await;
    app.healthy_upstream().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    app.client
        .post(format!("{}/", app.address))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(r#"{"data":"trace"}"#)
        .send()
        .await
        .unwrap();

    let requests = app.upstream.received_requests().await.unwrap();
    let sent = requests[0]
        .headers
        .get("traceparent")
        .expect("traceparent sent upstream");
    assert_eq!(sent.to_str().unwrap(), traceparent);
}
