//! Rollout without loss, on the real binary: under steady load a SIGTERM turns `/readyz` 503 at
//! once, requests keep succeeding through the drain, an in-flight request finishes, and the
//! process exits on its own well before a Kubernetes grace period (30 s).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wiremock::MockServer;

use crate::helpers::{shout_call, slow_shoutcloud};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigterm_under_load_drains_without_failing_an_accepted_request() {
    let upstream = MockServer::start().await;
    shout_call()
        .respond_with(slow_shoutcloud(5))
        .mount(&upstream)
        .await;
    let (port, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shout-proxy"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args([
            "--upstream-url",
            &format!("{}/V1/SHOUT", upstream.uri()),
            "--drain-ms",
            "1500",
        ])
        .args(["--deadline-ms", "3000", "--upstream-timeout-ms", "3000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    shout_proxy::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let started = Instant::now();
    while client
        .get(&readyz)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the service did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    let pid = child.id().expect("the child runs").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let mut turned = None;
    while signalled.elapsed() < Duration::from_millis(500) {
        if client
            .get(&readyz)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
            == Some(503)
        {
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
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process exits on its own")
        .unwrap();
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
    let (port, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shout-proxy"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--upstream-url", &format!("{}/V1/SHOUT", upstream.uri())])
        .args(["--drain-ms", "20000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    shout_proxy::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let status = |client: reqwest::Client, url: String| async move {
        client
            .get(&url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
    };
    let started = Instant::now();
    while status(client.clone(), readyz.clone()).await != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("the child runs").to_string();
    let term = || {
        let pid = pid.clone();
        async move {
            let kill = tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .unwrap();
            assert!(kill.success());
        }
    };

    term().await;
    while status(client.clone(), readyz.clone()).await != Some(503) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = Instant::now();
    term().await;
    let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;

    let exit = exited.expect("exited within 2 s of the second signal, not after the 20 s drain");
    assert_eq!(exit.unwrap().code(), Some(130));
    assert!(second.elapsed() < Duration::from_secs(2));
}
