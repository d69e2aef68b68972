//! The admin listener: probes, metrics, status, and the stop sequence.

use std::time::Duration;

use crate::helpers::{sample, shout_call, slow_shoutcloud, spawn_app, spawn_app_with};

#[tokio::test]
async fn livez_and_readyz_answer_200_even_when_the_upstream_is_down() {
    let app = spawn_app().await;

    for route in ["/livez", "/readyz"] {
        let answer = app.get(&format!("{}{route}", app.admin_address)).await;
        assert_eq!(answer.status, 200, "{route}");
    }
}

#[tokio::test]
async fn metrics_cover_every_part_of_the_pipeline_after_mixed_traffic() {
    let app = spawn_app().await;
    app.healthy_upstream().await;
    app.shout("a").await;
    app.shout("a").await;
    app.post("/", Some("text/plain"), "x").await;

    let scrape = app.metrics().await;

    for name in [
        "http_server_request_duration_seconds_bucket",
        "http_server_active_requests",
        "shout_upstream_attempts_total",
        "shout_upstream_attempt_duration_seconds_bucket",
        "shout_upstream_retries_total",
        "shout_upstream_retry_budget_exhausted_total",
        "shout_breaker_state",
        "shout_breaker_transitions_total",
        "shout_breaker_rejected_total",
        "shout_answers_total",
        "shout_fallbacks_total",
        "shout_upstream_disagreements_total",
        "shout_cache_entries",
        "shout_cache_weighted_bytes",
        "shout_upstream_concurrency_limit",
        "shout_upstream_in_flight",
        "shout_upstream_limit_rejected_total",
        "shout_deadline_seconds",
        "shout_build_info",
        "shout_connections_open",
        "shout_connections_max",
        "shout_connections_closed_total",
        "shout_trace_spans_dropped_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(scrape.contains(name), "{name} is missing from /metrics");
    }
    for removed in [
        "shout_cache_hits_total",
        "shout_cache_misses_total",
        "shout_bulkhead_",
    ] {
        assert!(!scrape.contains(removed), "{removed} is still exported");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        scrape.contains(r#"shout_build_info{revision=""#)
            && scrape.contains(&format!(r#"version="{version}"}} 1"#)),
        "shout_build_info carries version and revision"
    );
    let ok = r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="200",http_route="/"}"#;
    let bad = r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="400",http_route="/"}"#;
    assert_eq!(sample(&scrape, ok), 2.0);
    assert_eq!(sample(&scrape, bad), 1.0);
    assert_eq!(
        sample(&scrape, r#"shout_answers_total{source="upstream"}"#),
        1.0
    );
    assert_eq!(
        sample(&scrape, r#"shout_answers_total{source="cache"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            r#"shout_upstream_attempts_total{outcome="success"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, r#"shout_breaker_state{state="closed"}"#),
        1.0
    );
    assert_eq!(sample(&scrape, r#"shout_breaker_state{state="open"}"#), 0.0);
    assert_eq!(sample(&scrape, "shout_cache_entries"), 1.0);
}

#[tokio::test]
async fn status_reports_breaker_budget_concurrency_limit_and_cache() {
    let app = spawn_app_with(|s| {
        s.bulkhead = 7;
        s.upstream_limit_min = 7;
    })
    .await;

    let status = app.status().await;

    let pipeline = &status["pipeline"];
    assert_eq!(pipeline["breaker"]["state"], "closed");
    assert!(pipeline["retry_budget"]["available"].as_u64().unwrap() > 0);
    assert_eq!(pipeline["concurrency_limit"]["limit"], 7);
    assert_eq!(pipeline["concurrency_limit"]["in_flight"], 0);
    assert_eq!(pipeline["cache"]["entries"], 0);
    assert_eq!(status["ready"], true);
}

#[tokio::test]
async fn a_stop_signal_turns_readyz_503_at_once_and_keeps_serving_through_the_drain() {
    let mut app = spawn_app_with(|s| s.drain_ms = 800).await;
    app.healthy_upstream().await;

    app.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let readyz = app.get(&format!("{}/readyz", app.admin_address)).await;
    let during_drain = app.shout("drain").await;

    assert_eq!(readyz.status, 503);
    assert_eq!((during_drain.status, during_drain.data()), (200, "NIARD"));
    let stopped = tokio::time::timeout(Duration::from_secs(5), &mut app.running).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the app stops cleanly after the drain: {stopped:?}"
    );
    let refused = app
        .client
        .post(format!("{}/", app.address))
        .body("{}")
        .send()
        .await;
    assert!(refused.is_err(), "the public port is closed after the stop");
}

#[tokio::test]
async fn made_up_methods_are_counted_as_one_other_series_and_metrics_stay_small() {
    let app = spawn_app().await;
    let sent = 30;
    for i in 0..sent {
        let method = format!("MADEUP{i}{}", "X".repeat(i * 100));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method, format!("{}/", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }

    let scrape = app.metrics().await;

    let other = r#"http_server_request_duration_seconds_count{http_request_method="_OTHER",http_response_status_code="405",http_route="/"}"#;
    assert_eq!(sample(&scrape, other), f64::from(sent as u32));
    assert!(
        !scrape.contains("MADEUP"),
        "a made-up method became a label"
    );
    assert!(
        scrape.len() < 200_000,
        "/metrics grew to {} bytes",
        scrape.len()
    );
}

#[tokio::test]
async fn active_requests_count_a_held_request_and_return_to_zero_at_rest() {
    let app = spawn_app().await;
    shout_call()
        .respond_with(slow_shoutcloud(600))
        .mount(&app.upstream)
        .await;
    let active = r#"http_server_active_requests{http_request_method="POST",http_route="/"}"#;

    let held = tokio::spawn({
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            client
                .post(format!("{address}/"))
                .header("content-type", "application/json")
                .body(r#"{"data":"held"}"#)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    let mut during = 0.0;
    while std::time::Instant::now() < deadline && during < 1.0 {
        during = sample(&app.metrics().await, active);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held.await.unwrap(), 200);
    for i in 0..20 {
        app.shout(&format!("load {i}")).await;
    }
    let at_rest = sample(&app.metrics().await, active);

    assert_eq!(during, 1.0, "one request held");
    assert_eq!(at_rest, 0.0, "none at rest after 21 requests");
}
