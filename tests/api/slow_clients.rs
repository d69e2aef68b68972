//! Slow and idle clients: stalled request heads are closed after the header timeout, they do
//! not slow other clients down, and the connection cap holds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app_with;

fn port(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Opens a connection and sends half a request head.
async fn stall(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
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
    let port = port(&app.address);
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(stall(port).await);
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

#[tokio::test]
async fn a_kept_alive_connection_is_not_cut_by_the_header_timeout_between_requests() {
    let app = spawn_app_with(|s| s.header_read_timeout_ms = 300).await;
    app.healthy_upstream().await;

    assert_eq!(app.shout("first").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // reqwest reuses the pooled connection; the idle wait is the idle timeout's business.
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
    let _holder = stall(port(&app.address)).await;
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
