//! Slow and idle clients, from raw TCP sockets: stalled and trickled request heads are closed
//! after the header timeout (after a leading blank line or a complete request too, and on the
//! admin port), they do not slow other clients down, the connection cap holds without making a
//! new client wait for idle connections, and HTTP/2 prior knowledge is refused.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, raw_connection, sample, spawn_app, spawn_app_with};

/// Opens a connection and sends half a request head.
async fn stall(address: &str) -> TcpStream {
    let mut stream = raw_connection(address).await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn stalled_heads_do_not_slow_others_down_and_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = 500).await;
    app.healthy_upstream().await;
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(stall(&app.address).await);
    }

    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(app.shout(&format!("busy {i}")).await.status, 200);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(400),
        "20 requests took {elapsed:?} beside 200 stalled connections"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    for stream in &mut stalled {
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the server closed the stalled connection: {read:?}"
        );
    }
}

/// hyper times the wait for the next head on a kept-alive connection too, so an idle connection
/// is closed after the header timeout; a pooling client sees the close and connects again.
#[tokio::test]
async fn a_pooling_client_keeps_getting_answers_across_the_header_timeout_between_requests() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = 300).await;
    app.healthy_upstream().await;

    assert_eq!(app.shout("first").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // reqwest sees that the server closed the idle pooled connection and opens a new one.
    assert_eq!(app.shout("second").await.status, 200);
}

#[tokio::test]
async fn the_connection_cap_makes_new_connections_wait_for_a_free_slot() {
    let app = spawn_app_with(|s| {
        s.max_connections = 1;
        s.header_read_timeout_ms = 600;
    })
    .await;
    app.healthy_upstream().await;
    let _holder = stall(&app.address).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let answer = app.shout("waits").await;

    assert_eq!(answer.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "served only after the stalled one was closed: {:?}",
        started.elapsed()
    );
}

/// The header timeout of the trickle tests.
const HEADER_TIMEOUT_MS: u64 = 500;

/// How soon a trickled head must be closed: the header timeout, the 100 ms between bytes, and
/// slack for a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_millis(HEADER_TIMEOUT_MS + 1000);

/// Sends `prefix`, then trickles a request head one byte every 100 ms; returns how long the
/// server took to close the connection, and fails the test if it is still open after 5 s.
async fn trickle_until_closed(address: &str, prefix: &[u8]) -> Duration {
    let stream = raw_connection(address).await;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer.write_all(prefix).await.unwrap();
    let trickle = tokio::spawn(async move {
        for byte in b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    closed.expect("the server closed the trickled connection within 5 s");
    started.elapsed()
}

/// `shout_connections_closed_total{listener, reason}`, read once at least one such close is
/// counted or 2 s have passed: a client can see the close before the server counts it.
async fn closed_connections(app: &TestApp, listener: &str, reason: &str) -> f64 {
    let series =
        format!(r#"shout_connections_closed_total{{listener="{listener}",reason="{reason}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let closed = sample(&app.metrics().await, &series);
        if closed > 0.0 || Instant::now() >= deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A complete request that keeps the connection open.
const COMPLETE: &[u8] =
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"data\":\"a\"}\n";

/// A connection whose `COMPLETE` request was answered 200 and which now stays open, idle.
async fn kept_alive(address: &str) -> TcpStream {
    let mut stream = raw_connection(address).await;
    stream.write_all(COMPLETE).await.unwrap();
    let mut buffer = [0u8; 512];
    let n = stream.read(&mut buffer).await.unwrap();
    let answer = String::from_utf8_lossy(&buffer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stream
}

#[tokio::test]
async fn a_head_trickled_after_a_leading_blank_line_is_closed_within_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = HEADER_TIMEOUT_MS).await;

    let closed = trickle_until_closed(&app.address, b"\r\n\r\n").await;

    assert!(closed < CLOSED_WITHIN, "closed after {closed:?}");
    assert_eq!(
        closed_connections(&app, "public", "header_timeout").await,
        1.0
    );
}

#[tokio::test]
async fn a_partial_second_request_after_a_complete_one_is_closed_within_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = HEADER_TIMEOUT_MS).await;
    app.healthy_upstream().await;

    let closed = trickle_until_closed(&app.address, COMPLETE).await;

    assert!(closed < CLOSED_WITHIN, "closed after {closed:?}");
    assert_eq!(
        app.upstream_calls().await,
        1,
        "the complete request was served"
    );
}

#[tokio::test]
async fn the_admin_port_closes_a_trickled_head_too() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = HEADER_TIMEOUT_MS).await;

    let closed = trickle_until_closed(&app.admin_address, b"").await;

    assert!(closed < CLOSED_WITHIN, "closed after {closed:?}");
    assert_eq!(
        closed_connections(&app, "admin", "header_timeout").await,
        1.0
    );
}

#[tokio::test]
async fn an_h2c_prior_knowledge_connection_is_refused() {
    let app = spawn_app().await;
    let mut stream = raw_connection(&app.address).await;

    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;

    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "closed at once: {read:?}"
    );
    assert!(
        !answer.starts_with(b"\x00"),
        "no HTTP/2 frame was sent back: {answer:?}"
    );
    assert_eq!(closed_connections(&app, "public", "malformed").await, 1.0);
}

#[tokio::test]
async fn with_the_cap_full_of_idle_keep_alive_connections_a_new_client_is_answered_at_once() {
    let cap = 4;
    let app = spawn_app_with(|s| {
        s.max_connections = cap;
        s.idle_timeout_ms = 60_000;
        s.header_read_timeout_ms = 30_000;
    })
    .await;
    app.healthy_upstream().await;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(kept_alive(&app.address).await);
    }

    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(1), app.shout("new client")).await;

    let answer = answer.expect("answered within 1 s");
    assert_eq!((answer.status, answer.data()), (200, "TNEILC WEN"));
    assert!(started.elapsed() < Duration::from_secs(1));
    let evicted = closed_connections(&app, "public", "evicted_idle").await;
    assert!(evicted >= 1.0, "an idle connection made room: {evicted}");
    assert_eq!(
        sample(
            &app.metrics().await,
            r#"shout_connections_max{listener="public"}"#
        ),
        cap as f64
    );
}

/// Sends a request in `parts` on one connection and returns everything the server wrote until
/// it closed (the requests ask for `Connection: close`).
async fn exchange(address: &str, parts: &[&[u8]]) -> String {
    let mut stream = raw_connection(address).await;
    for part in parts {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer))
        .await
        .expect("the server answered and closed")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn expect_100_continue_gets_a_continue_then_the_answer() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = exchange(
        &app.address,
        &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            b"{\"data\":\"e\"}",
        ],
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 100 Continue\r\n"), "{answer}");
    assert!(answer.contains("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(r#"{"data":"E"}"#), "{answer}");
}

#[tokio::test]
async fn a_head_with_bare_line_feeds_is_served() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = exchange(
        &app.address,
        &[b"POST / HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 12\nConnection: close\n\n{\"data\":\"l\"}"],
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(r#"{"data":"L"}"#), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_counted() {
    let app = spawn_app_with(|s| {
        s.idle_timeout_ms = 300;
        s.header_read_timeout_ms = 30_000;
    })
    .await;
    app.healthy_upstream().await;
    let mut stream = kept_alive(&app.address).await;
    let answered = Instant::now();

    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await;

    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(1300),
        "closed {after:?} after the answer"
    );
    assert_eq!(closed_connections(&app, "public", "idle").await, 1.0);
}

#[tokio::test]
async fn a_head_over_hypers_size_limit_is_refused_and_counted() {
    let app = spawn_app().await;
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let mut stream = raw_connection(&app.address).await;

    // The server answers 431 and closes while the head is still arriving, so the write may
    // fail and the answer may be lost to a reset: the counter is what must be right.
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;

    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(closed_connections(&app, "public", "too_large").await, 1.0);
}
