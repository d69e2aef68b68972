//! Rollout without loss, on the real binary: under steady load a SIGTERM turns `/readyz` 503 at
//! once, requests keep succeeding through the drain, an in-flight request finishes, and the
//! process exits on its own well before a Kubernetes grace period (30 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wiremock::MockServer;

use crate::binary::Launch;
use crate::helpers::{shout_call, slow_shoutcloud};

#[tokio::test]
async fn sigterm_under_load_drains_without_failing_an_accepted_request() {
    let upstream = MockServer::start().await;
    shout_call()
        .respond_with(slow_shoutcloud(5))
        .mount(&upstream)
        .await;
    let proxy = Launch::new(&upstream)
        .flags(["--drain-ms", "1500"])
        .flags(["--deadline-ms", "3000", "--upstream-timeout-ms", "3000"])
        .start()
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = proxy.public.clone();

    // Steady load from 4 clients until the load balancer would have moved away.
    let sending = Arc::new(AtomicBool::new(true));
    let (succeeded, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (client, base, sending) = (client.clone(), base.clone(), sending.clone());
        let (succeeded, failed) = (succeeded.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while sending.load(Ordering::Relaxed) {
                i += 1;
                let body = format!(r#"{{"data":"w{worker} r{i}"}}"#);
                match client
                    .post(format!("{base}/"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        succeeded.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_stop = succeeded.load(Ordering::Relaxed);

    let signalled = Instant::now();
    proxy.sigterm().await;
    let mut turned = None;
    while signalled.elapsed() < Duration::from_millis(500) {
        if proxy.readyz(&client).await == Some(503) {
            turned = Some(signalled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let turned = turned.expect("/readyz turned 503 within 500 ms of SIGTERM");

    // A slow request in flight when the drain ends must still finish.
    tokio::time::sleep(Duration::from_millis(900)).await;
    sending.store(false, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let during_drain = succeeded.load(Ordering::Relaxed) - before_stop;
    upstream.reset().await;
    shout_call()
        .respond_with(slow_shoutcloud(1200))
        .mount(&upstream)
        .await;
    let in_flight = client
        .post(format!("{base}/"))
        .header("content-type", "application/json")
        .body(r#"{"data":"in flight"}"#)
        .send()
        .await
        .expect("the in-flight request was accepted during the drain");

    assert_eq!(in_flight.status(), 200);
    assert_eq!(in_flight.text().await.unwrap(), r#"{"data":"THGILF NI"}"#);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(
        during_drain > 0,
        "requests kept succeeding during the drain"
    );
    let status = proxy
        .exit_within(Duration::from_secs(15))
        .await
        .expect("the process exits on its own")
        .status;
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM, well before a 30 s grace",
        signalled.elapsed()
    );
    eprintln!("readyz 503 after {turned:?}; {during_drain} requests succeeded during the drain");
}

#[tokio::test]
async fn a_second_stop_signal_during_the_drain_exits_at_once() {
    let upstream = MockServer::start().await;
    let started = Instant::now();
    let proxy = Launch::new(&upstream)
        .flags(["--drain-ms", "20000"])
        .start()
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    proxy.sigterm().await;
    while proxy.readyz(&client).await != Some(503) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = Instant::now();
    proxy.sigterm().await;
    let exited = proxy.exit_within(Duration::from_secs(2)).await;

    let exit = exited.expect("exited within 2 s of the second signal, not after the 20 s drain");
    assert_eq!(exit.status.code(), Some(130));
    assert!(second.elapsed() < Duration::from_secs(2));
}
