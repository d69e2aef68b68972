//! Every upstream fault: the answer is still right, within the deadline, from the fallback, and
//! call counts show which faults are retried.

use std::time::{Duration, Instant};

use serde_json::json;
use shout_proxy::Settings;
use wiremock::{MockServer, ResponseTemplate};

use crate::helpers::{
    TestApp, shout_call, shoutcloud, slow_shoutcloud, spawn_with_settings, test_settings,
};

const DEADLINE_MS: u64 = 800;

/// Deadline 800 ms, attempts 200 ms, two retries, a breaker that never opens here.
fn fault_settings(upstream: &MockServer) -> Settings {
    let mut settings = test_settings(upstream);
    settings.deadline_ms = DEADLINE_MS;
    settings.upstream_timeout_ms = 200;
    settings.retry_max = 2;
    settings.retry_min_backoff_ms = 5;
    settings.retry_max_backoff_ms = 20;
    settings.breaker_consecutive_failures = 1000;
    settings.breaker_min_calls = 100_000;
    settings
}

async fn fault_app() -> TestApp {
    let upstream = MockServer::start().await;
    let settings = fault_settings(&upstream);
    spawn_with_settings(upstream, settings).await
}

/// Asserts the fallback answered "test" correctly within the deadline plus a margin.
async fn assert_fallback_in_time(app: &TestApp) {
    let started = Instant::now();
    let answer = app.shout("test").await;
    let elapsed = started.elapsed();

    assert_eq!(
        (answer.status, answer.data(), answer.source()),
        (200, "TSET", "fallback")
    );
    // The resilience target: within the deadline plus 50%.
    assert!(
        elapsed < Duration::from_millis(DEADLINE_MS * 3 / 2),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn a_5xx_is_retried_then_the_fallback_answers() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
}

#[tokio::test]
async fn a_5xx_then_success_answers_from_the_upstream_after_a_retry() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(shoutcloud)
        .expect(1)
        .mount(&app.upstream)
        .await;

    let answer = app.shout("test").await;

    assert_eq!((answer.data(), answer.source()), ("TSET", "upstream"));
}

#[tokio::test]
async fn a_hanging_upstream_is_cut_at_the_deadline() {
    // Retries are not what stops the calls here: ten are allowed, the deadline allows four.
    let upstream = MockServer::start().await;
    let mut settings = fault_settings(&upstream);
    settings.retry_max = 10;
    let app = spawn_with_settings(upstream, settings).await;
    shout_call()
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
    // 200 ms attempts inside an 800 ms deadline: the fourth is cut to what is left of it.
    let calls = app.upstream_calls().await;
    assert!((3..=4).contains(&calls), "{calls} attempts");
}

#[tokio::test]
async fn a_slow_upstream_within_the_deadline_still_answers() {
    let app = fault_app().await;
    shout_call()
        .respond_with(slow_shoutcloud(100))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let answer = app.shout("test").await;

    assert_eq!((answer.data(), answer.source()), ("TSET", "upstream"));
}

#[tokio::test]
async fn a_429_with_retry_after_beyond_the_deadline_goes_straight_to_the_fallback() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_retried_after_waiting_it() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(shoutcloud)
        .expect(1)
        .mount(&app.upstream)
        .await;

    let answer = app.shout("test").await;

    assert_eq!(answer.source(), "upstream");
}

#[tokio::test]
async fn malformed_json_is_not_retried() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
}

#[tokio::test]
async fn a_wrong_output_never_reaches_a_client() {
    let app = fault_app().await;
    shout_call()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"INPUT": "tset", "OUTPUT": "<script>PWNED"})),
        )
        .expect(2)
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
    let again = app.shout("test").await;
    assert_eq!(
        (again.data(), again.source()),
        ("TSET", "fallback"),
        "an invalid answer is never cached"
    );
}

#[tokio::test]
async fn a_lowercase_output_is_not_accepted_as_a_shout() {
    let app = fault_app().await;
    shout_call()
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"INPUT": "tset", "OUTPUT": "tset"})),
        )
        .expect(1)
        .mount(&app.upstream)
        .await;

    assert_fallback_in_time(&app).await;
}

#[tokio::test]
async fn a_refused_connection_falls_back() {
    let upstream = MockServer::start().await;
    let mut settings = fault_settings(&upstream);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.upstream_url = format!("http://{}/V1/SHOUT", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_with_settings(upstream, settings).await;

    assert_fallback_in_time(&app).await;
}

#[tokio::test]
async fn a_reset_connection_falls_back_and_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Linger 0 makes the close an RST: a connection reset, not a clean close.
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
    });
    let upstream = MockServer::start().await;
    let mut settings = fault_settings(&upstream);
    settings.upstream_url = format!("http://{address}/V1/SHOUT");
    let app = spawn_with_settings(upstream, settings).await;

    assert_fallback_in_time(&app).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "first attempt and two retries"
    );
}

#[tokio::test]
async fn a_retry_after_of_any_size_never_panics_and_every_answer_is_right() {
    let app = fault_app().await;
    shout_call()
        .respond_with(
            ResponseTemplate::new(503).insert_header("Retry-After", "18446744073709551615"),
        )
        .expect(100)
        .mount(&app.upstream)
        .await;

    for i in 0..100 {
        let input = format!("retry after {i}");
        let answer = app.shout(&input).await;
        let expected = shout_proxy::shout::transform::shout_locally(
            &shout_proxy::shout::transform::reverse_graphemes(&input),
        );
        assert_eq!(
            (answer.status, answer.data(), answer.source()),
            (200, expected.as_str(), "fallback"),
            "request {i}"
        );
    }
    let scrape = app.metrics().await;
    assert_eq!(
        crate::helpers::sample(&scrape, r#"shout_fallbacks_total{reason="deadline"}"#),
        100.0,
        "each waited for nothing: the Retry-After is past the deadline"
    );
}

#[tokio::test]
async fn a_4xx_for_one_input_is_not_retried_and_the_fallback_answers() {
    let app = fault_app().await;
    shout_call()
        .respond_with(ResponseTemplate::new(400).set_body_string("bad input: sdrow terces"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let answer = app.shout("secret words").await;

    assert_eq!(
        (answer.data(), answer.source()),
        ("SDROW TERCES", "fallback"),
    );
    let scrape = app.metrics().await;
    assert_eq!(
        crate::helpers::sample(&scrape, r#"shout_fallbacks_total{reason="rejected_input"}"#),
        1.0
    );
}
