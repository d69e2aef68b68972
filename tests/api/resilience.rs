//! The pipeline's promises, proven with upstream call counts: the breaker stops calls, the
//! half-open state sends one probe, retries stop at the budget, misses coalesce, the cache keeps
//! only confirmed answers within its bound, a full concurrency limit answers at once,
//! and no client can trip the breaker while an upstream that is sick for everyone still does.

use std::time::Duration;

use futures_util::future::join_all;
use wiremock::ResponseTemplate;

use crate::helpers::{shout_call, shoutcloud, slow_shoutcloud, spawn_app_with};

#[tokio::test]
async fn after_the_breaker_opens_no_call_reaches_the_upstream() {
    let app = spawn_app_with(|s| {
        s.breaker_consecutive_failures = 3;
        s.retry_max = 0;
    })
    .await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .expect(3)
        .mount(&app.upstream)
        .await;

    for i in 0..20 {
        let input = format!("down {i}");
        let answer = app.shout(&input).await;
        assert_eq!(
            answer.data(),
            input.chars().rev().collect::<String>().to_uppercase()
        );
        assert_eq!(answer.source(), "fallback");
    }

    assert_eq!(app.status().await["pipeline"]["breaker"]["state"], "open");
}

#[tokio::test]
async fn half_open_sends_exactly_one_probe_under_concurrent_load_then_closes() {
    let app = spawn_app_with(|s| {
        s.breaker_consecutive_failures = 2;
        s.retry_max = 0;
        s.breaker_open_ms = 300;
        s.upstream_timeout_ms = 300;
    })
    .await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(slow_shoutcloud(200))
        .mount(&app.upstream)
        .await;
    app.shout("a").await;
    app.shout("b").await;
    assert_eq!(app.status().await["pipeline"]["breaker"]["state"], "open");

    // The breaker's open period is wall-clock time: wait it out.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let app = &app;
    let answers =
        join_all((0..20).map(|i| async move { app.shout(&format!("probe {i}")).await })).await;

    let from_upstream = answers.iter().filter(|a| a.source() == "upstream").count();
    assert_eq!(from_upstream, 1, "exactly one probe");
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            answer.data(),
            format!("probe {i}")
                .chars()
                .rev()
                .collect::<String>()
                .to_uppercase()
        );
    }
    assert_eq!(app.upstream_calls().await, 3, "two failures and one probe");
    assert_eq!(app.status().await["pipeline"]["breaker"]["state"], "closed");
    assert_eq!(
        app.shout("back").await.source(),
        "upstream",
        "closed again: answers come from the upstream"
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    // Half a retry per first attempt and no floor: 20 requests earn 10 retries, whatever
    // retry_max (2 per request) would allow.
    let app = spawn_app_with(|s| {
        s.retry_max = 2;
        s.retry_min_backoff_ms = 1;
        s.retry_max_backoff_ms = 2;
        s.retry_budget_ratio = 0.5;
        s.retry_budget_min_per_sec = 0;
        s.retry_budget_window_secs = 10;
        s.breaker_consecutive_failures = 1000;
        s.breaker_min_calls = 100_000;
    })
    .await;
    shout_call()
        .respond_with(ResponseTemplate::new(503))
        .expect(20 + 10)
        .mount(&app.upstream)
        .await;

    for i in 0..20 {
        assert_eq!(app.shout(&format!("r{i}")).await.source(), "fallback");
    }

    let scrape = app.metrics().await;
    assert_eq!(
        crate::helpers::sample(&scrape, "shout_upstream_retries_total"),
        10.0
    );
    assert!(crate::helpers::sample(&scrape, "shout_upstream_retry_budget_exhausted_total") >= 5.0);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let app = spawn_app_with(|_| {}).await;
    shout_call()
        .respond_with(slow_shoutcloud(200))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let answers = join_all((0..10).map(|_| app.shout("same"))).await;

    assert!(
        answers
            .iter()
            .all(|a| a.data() == "EMAS" && a.source() == "upstream"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn the_cache_never_holds_a_fallback_answer() {
    let app = spawn_app_with(|s| s.retry_max = 0).await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    shout_call()
        .respond_with(shoutcloud)
        .expect(1)
        .mount(&app.upstream)
        .await;

    let first = app.shout("key").await;
    let second = app.shout("key").await;
    let third = app.shout("key").await;

    assert_eq!(
        [first.source(), second.source(), third.source()],
        ["fallback", "upstream", "cache"]
    );
    assert!([first, second, third].iter().all(|a| a.data() == "YEK"));
}

#[tokio::test]
async fn the_cache_respects_its_byte_bound() {
    let app = spawn_app_with(|s| s.cache_max_bytes = 8 * 1024).await;
    app.healthy_upstream().await;

    for i in 0..200 {
        app.shout(&format!("{i:0>100}")).await;
    }

    let cache = &app.status().await["pipeline"]["cache"];
    let weighted = cache["weighted_bytes"].as_u64().unwrap();
    assert!(weighted <= 8 * 1024, "{cache}");
    assert!(cache["entries"].as_u64().unwrap() < 200, "{cache}");
}

#[tokio::test]
async fn a_full_concurrency_limit_answers_from_the_fallback_at_once() {
    let app = spawn_app_with(|s| {
        s.bulkhead = 1;
        s.upstream_limit_min = 1;
        s.deadline_ms = 2000;
        s.upstream_timeout_ms = 2000;
    })
    .await;
    shout_call()
        .respond_with(slow_shoutcloud(900))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let (slow, rejected) = tokio::join!(app.shout("one"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        (app.shout("two").await, started.elapsed())
    });

    assert_eq!((slow.data(), slow.source()), ("ENO", "upstream"));
    assert_eq!(
        (rejected.0.data(), rejected.0.source()),
        ("OWT", "fallback")
    );
    assert!(
        rejected.1 < Duration::from_millis(500),
        "no queueing behind the 900 ms call: {:?}",
        rejected.1
    );
    let scrape = app.metrics().await;
    assert_eq!(
        crate::helpers::sample(&scrape, "shout_upstream_limit_rejected_total"),
        1.0
    );
    assert_eq!(
        crate::helpers::sample(
            &scrape,
            r#"shout_fallbacks_total{reason="concurrency_limit"}"#
        ),
        1.0
    );
    assert_eq!(
        crate::helpers::sample(&scrape, "shout_upstream_concurrency_limit"),
        1.0
    );
}

/// Breaker settings that trip fast: 5 consecutive failures, or under 50% over 20 calls.
fn quick_breaker(s: &mut shout_proxy::Settings) {
    s.breaker_consecutive_failures = 5;
    s.breaker_min_calls = 20;
    s.breaker_open_ms = 60_000;
    s.breaker_max_open_ms = 60_000;
    s.retry_max = 0;
}

#[tokio::test]
async fn inputs_the_upstream_rejects_or_maps_otherwise_cannot_trip_the_breaker() {
    let app = spawn_app_with(quick_breaker).await;
    // shoutcloud refuses inputs with "reject" (400) and has older tables for `ɤ` and `K`.
    shout_call()
        .and(wiremock::matchers::body_string_contains("tcejer"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no"))
        .expect(100)
        .mount(&app.upstream)
        .await;
    shout_call()
        .and(wiremock::matchers::body_string_contains("\u{264}"))
        .respond_with(|request: &wiremock::Request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let input = body["INPUT"].as_str().unwrap();
            // `ɤ` left as is; everything else capitalized.
            let output: String = input
                .chars()
                .map(|c| {
                    if c == '\u{264}' {
                        c.to_string()
                    } else {
                        c.to_uppercase().collect()
                    }
                })
                .collect();
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"INPUT": input, "OUTPUT": output}))
        })
        .expect(100)
        .mount(&app.upstream)
        .await;
    shout_call()
        .and(wiremock::matchers::body_string_contains("tneconni"))
        .respond_with(shoutcloud)
        .expect(10)
        .mount(&app.upstream)
        .await;

    for i in 0..100 {
        let rejected = app.shout(&format!("reject {i}")).await;
        let mapped = app.shout(&format!("\u{264} {i}")).await;
        assert_eq!(rejected.source(), "fallback");
        assert_eq!(
            (mapped.data(), mapped.source()),
            (
                format!("{} \u{A7CB}", reverse_digits(i)).as_str(),
                "fallback"
            )
        );
    }
    let status = app.status().await;
    assert_eq!(status["pipeline"]["breaker"]["state"], "closed");
    for i in 0..10 {
        let innocent = app.shout(&format!("innocent {i}")).await;
        assert_eq!(innocent.source(), "upstream", "request {i}");
    }
    let scrape = app.metrics().await;
    let sample = |series| crate::helpers::sample(&scrape, series);
    assert_eq!(sample("shout_upstream_disagreements_total"), 100.0);
    assert_eq!(
        sample(r#"shout_fallbacks_total{reason="disagreement"}"#),
        100.0
    );
    assert_eq!(
        sample(r#"shout_fallbacks_total{reason="rejected_input"}"#),
        100.0
    );
    assert_eq!(
        sample(r#"shout_breaker_transitions_total{state="open"}"#),
        0.0
    );
}

fn reverse_digits(i: u32) -> String {
    i.to_string().chars().rev().collect()
}

#[tokio::test]
async fn an_upstream_answering_garbage_for_everyone_opens_the_breaker() {
    let app = spawn_app_with(quick_breaker).await;
    shout_call()
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops</html>"))
        .expect(5)
        .mount(&app.upstream)
        .await;

    for i in 0..30 {
        let answer = app.shout(&format!("garbage {i}")).await;
        assert_eq!(answer.source(), "fallback");
    }

    assert_eq!(app.status().await["pipeline"]["breaker"]["state"], "open");
}

#[tokio::test]
async fn an_upstream_answering_wrong_text_for_everyone_opens_the_breaker() {
    let app = spawn_app_with(quick_breaker).await;
    shout_call()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"INPUT": "x", "OUTPUT": "BUY CHEAP WATCHES"})),
        )
        .mount(&app.upstream)
        .await;

    for i in 0..40 {
        let answer = app.shout(&format!("wrong {i}")).await;
        assert_eq!(
            (answer.data(), answer.source()),
            (format!("{} GNORW", reverse_digits(i)).as_str(), "fallback")
        );
    }

    assert_eq!(app.status().await["pipeline"]["breaker"]["state"], "open");
    // The ratio counts from the 20th answer on; that one and the next four are 5 consecutive
    // failures, which trip it; nothing reaches the upstream after that.
    assert_eq!(app.upstream_calls().await, 24);
}

#[tokio::test]
async fn an_idle_breaker_stops_reporting_open_when_its_open_period_passed() {
    let app = spawn_app_with(|s| {
        quick_breaker(s);
        s.breaker_open_ms = 300;
        s.breaker_max_open_ms = 300;
    })
    .await;
    shout_call()
        .respond_with(ResponseTemplate::new(500))
        .expect(5)
        .mount(&app.upstream)
        .await;
    for i in 0..5 {
        app.shout(&format!("down {i}")).await;
    }
    let open = r#"shout_breaker_state{state="open"}"#;
    assert_eq!(crate::helpers::sample(&app.metrics().await, open), 1.0);

    // No traffic at all from here: only scrapes, polled until a deadline.
    let started = std::time::Instant::now();
    let mut scrape = app.metrics().await;
    while crate::helpers::sample(&scrape, open) == 1.0 && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        scrape = app.metrics().await;
    }

    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(crate::helpers::sample(&scrape, open), 0.0);
    assert_eq!(
        crate::helpers::sample(&scrape, r#"shout_breaker_state{state="half_open"}"#),
        1.0
    );
    assert_eq!(
        app.status().await["pipeline"]["breaker"]["state"],
        "half_open"
    );
}
