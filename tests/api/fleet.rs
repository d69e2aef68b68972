//! A fleet sharing one Redis: three real apps, one real `redis-server` (Debian's, on a unix
//! socket in a temporary directory, so no port is raced for) and one wiremock shoutcloud whose
//! `.expect(n)` counts the upstream calls. Without the binary the tests say so and pass, except
//! under CI (`CI` set), where it is required.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shout_proxy::Settings;
use wiremock::MockServer;

use crate::helpers::{TestApp, spawn_with_settings, test_settings};

/// A `redis-server` child listening on a unix socket only, without persistence.
struct Redis {
    child: Child,
    dir: PathBuf,
}

impl Redis {
    /// Starts a server; `None` (with a message) when the binary is absent outside CI.
    async fn start(name: &str) -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required under CI (apt-get install -y redis-server)"
            );
            eprintln!("SKIPPED: redis-server not found (apt-get install -y redis-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("shout-fleet-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket", "redis.sock"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let redis = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(redis)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// One command through `redis-cli`; its trimmed output.
    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three apps on `redis`, all calling the shoutcloud of the first one, which must be called
/// exactly `upstream_calls` times.
async fn fleet(redis: &Redis, upstream_calls: u64) -> Vec<TestApp> {
    let upstream = MockServer::start().await;
    let settings = |upstream: &MockServer| Settings {
        redis_url: Some(redis.url()),
        ..test_settings(upstream)
    };
    let shared = settings(&upstream);
    let mut apps = vec![spawn_with_settings(upstream, shared.clone()).await];
    for _ in 0..2 {
        apps.push(spawn_with_settings(MockServer::start().await, shared.clone()).await);
    }
    apps[0].healthy_upstream_expecting(upstream_calls).await;
    apps
}

/// Waits until `app` wrote `n` answers to Redis (the write is in the background).
async fn until_written(app: &TestApp, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = app.status().await;
        if status["pipeline"]["shared_cache"]["set"]["hit"].as_u64() == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "no write to Redis: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_input_answered_by_one_instance_is_answered_by_the_others_without_an_upstream_call() {
    let Some(redis) = Redis::start("share").await else {
        return;
    };
    let apps = fleet(&redis, 1).await;

    let first = apps[0].shout("fleet").await;
    until_written(&apps[0], 1).await;
    let second = apps[1].shout("fleet").await;
    let third = apps[2].shout("fleet").await;
    let third_again = apps[2].shout("fleet").await;

    assert_eq!((first.data(), first.source()), ("TEELF", "upstream"));
    for answer in [&second, &third, &third_again] {
        assert_eq!((answer.data(), answer.source()), ("TEELF", "cache"));
    }
    assert_eq!(apps[0].upstream_calls().await, 1);
    // The third instance's second answer came from its own L1: one Redis hit each.
    for app in &apps[1..] {
        let shared = &app.status().await["pipeline"]["shared_cache"];
        assert_eq!(shared["get"]["hit"], 1, "{shared}");
    }
}

#[tokio::test]
async fn a_value_in_redis_that_is_not_the_canonical_answer_is_refused_and_the_upstream_answers() {
    let Some(redis) = Redis::start("poison").await else {
        return;
    };
    let apps = fleet(&redis, 1).await;
    let key = shout_proxy::shared_cache::key("poison");
    assert_eq!(redis.cli(&["SET", &key, "=EVIL"]), "OK");

    let answer = apps[0].shout("poison").await;

    assert_eq!((answer.data(), answer.source()), ("NOSIOP", "upstream"));
    let shared = &apps[0].status().await["pipeline"]["shared_cache"];
    assert_eq!(shared["get"]["rejected"], 1, "{shared}");
    until_written(&apps[0], 1).await;
    assert_eq!(redis.cli(&["GET", &key]), "=NOSIOP");
}

#[tokio::test]
async fn a_dead_redis_costs_no_readiness_and_no_wrong_answer() {
    let Some(redis) = Redis::start("dead").await else {
        return;
    };
    let upstream = MockServer::start().await;
    let settings = Settings {
        redis_url: Some(redis.url()),
        ..test_settings(&upstream)
    };
    drop(redis);
    let app = spawn_with_settings(upstream, settings).await;
    app.healthy_upstream_expecting(3).await;

    let ready = app.get(&format!("{}/readyz", app.admin_address)).await;
    let mut answers = Vec::new();
    for input in ["a1", "b2", "c3"] {
        let started = Instant::now();
        answers.push((app.shout(input).await, started.elapsed()));
    }

    assert_eq!(ready.status, 200);
    for ((answer, took), expected) in answers.iter().zip(["1A", "2B", "3C"]) {
        assert_eq!((answer.data(), answer.source()), (expected, "upstream"));
        assert!(*took < Duration::from_millis(500), "{took:?}");
    }
    let shared = &app.status().await["pipeline"]["shared_cache"];
    let failed = ["error", "timeout", "skipped"]
        .iter()
        .map(|r| shared["get"][r].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(failed, 3, "{shared}");
}

#[tokio::test]
async fn every_request_waiting_on_a_load_that_redis_answered_is_told_it_came_from_the_cache() {
    let Some(redis) = Redis::start("waiters").await else {
        return;
    };
    let apps = fleet(&redis, 1).await;
    apps[0].shout("waiters").await;
    until_written(&apps[0], 1).await;

    // Twenty at once on another instance: one load reads Redis, the others wait on it.
    let answers = futures_util::future::join_all((0..20).map(|_| apps[1].shout("waiters"))).await;

    for answer in &answers {
        assert_eq!((answer.data(), answer.source()), ("SRETIAW", "cache"));
    }
    let gets = apps[1].status().await["pipeline"]["shared_cache"]["get"]["hit"].as_u64();
    assert!(
        gets.is_some_and(|n| (1..20).contains(&n)),
        "waiters coalesced: {gets:?}"
    );
    assert_eq!(apps[0].upstream_calls().await, 1);
}
