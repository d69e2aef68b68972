//! The shared cache against a real `redis-server` (Debian's), started here on a loopback port,
//! and against a fake server that answers garbage. Without the binary the Redis tests say so
//! and pass, except under CI (`CI` set), where the binary is required.

use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::*;

/// A `redis-server` child on a loopback port, without persistence.
struct RedisServer {
    child: Child,
    port: u16,
}

/// Whether `redis-server` can be run; `false` (with a message) skips a test outside CI.
fn redis_available() -> bool {
    match std::process::Command::new("redis-server")
        .arg("--version")
        .output()
    {
        Ok(output) if output.status.success() => true,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required under CI (apt-get install -y redis-server)"
            );
            eprintln!("SKIPPED: redis-server not found (apt-get install -y redis-server)");
            false
        }
    }
}

impl RedisServer {
    /// Starts a server on a free port. redis-server binds its own socket, so the port is found
    /// by binding port 0 and releasing it; a lost race is retried on another port.
    async fn start() -> Self {
        for _ in 0..5 {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            if let Some(server) = Self::start_on(port).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts a server on `port`; `None` when it does not answer PING within 5 s.
    async fn start_on(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if server.ping().await {
                return Some(server);
            }
            if server.child.try_wait().unwrap().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.child.kill().await.unwrap();
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One raw RESP exchange on a fresh connection: the reply's first line, `None` on failure.
    async fn raw(&self, command: &[&[u8]]) -> Option<String> {
        let mut request = format!("*{}\r\n", command.len()).into_bytes();
        for part in command {
            request.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            request.extend_from_slice(part);
            request.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            stream.write_all(&request).await.ok()?;
            let mut reply = vec![0; 512];
            let n = stream.read(&mut reply).await.ok()?;
            let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
            Some(reply.lines().next().unwrap_or_default().to_owned())
        };
        tokio::time::timeout(Duration::from_millis(500), exchange)
            .await
            .ok()
            .flatten()
    }

    async fn ping(&self) -> bool {
        self.raw(&[b"PING"]).await.as_deref() == Some("+PONG")
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .id()
            .expect("redis-server is running")
            .to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

/// Settings for tests: the production timeouts, a short open period.
fn config(url: String) -> SharedCacheConfig {
    SharedCacheConfig {
        breaker_open: Duration::from_millis(200),
        ..SharedCacheConfig::new(url)
    }
}

/// Polls `get` until it returns the answer, storing it again before each try (as the resolver
/// would after an upstream answer); `false` after `within`.
async fn shares_within(cache: &SharedCache, input: &str, answer: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        cache.put(input, answer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if cache.get(input, |value| value == answer).await.as_deref() == Some(answer) {
            return true;
        }
    }
    false
}

/// Waits until no background write is pending, so none fails into the breaker later.
async fn settle(cache: &SharedCache) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while cache.snapshot().pending_sets > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cache.snapshot().pending_sets, 0);
}

#[test]
fn building_outside_the_runtime_is_an_error_not_a_panic() {
    let built = SharedCache::new(config("redis://127.0.0.1/".into()), &Registry::new());
    assert!(
        matches!(built, Err(SharedCacheError::NoRuntime)),
        "{built:?}"
    );
}

#[test]
fn keys_are_bounded_distinct_and_stable() {
    let long = "x".repeat(1 << 20);
    assert_eq!(key(&long).len(), KEY_PREFIX.len() + 32);
    assert_eq!(key(""), key(""));
    assert_ne!(key("ab"), key("ba"));
    assert!(key("test").starts_with("shout:v1:"));
}

#[test]
fn jittered_ttls_stay_within_the_jitter() {
    let config = SharedCacheConfig::new("redis://127.0.0.1/");
    let ttls: Vec<u64> = (0..1000).map(|_| config.jittered_ttl()).collect();
    assert!(
        ttls.iter().all(|ttl| (3240..=3960).contains(ttl)),
        "{ttls:?}"
    );
    let distinct: std::collections::HashSet<_> = ttls.iter().collect();
    assert!(distinct.len() > 100, "{} distinct TTLs", distinct.len());
}

#[tokio::test]
async fn an_answer_written_by_one_pod_is_read_by_another() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let writer = SharedCache::new(config(redis.url()), &Registry::new()).unwrap();
    let reader = SharedCache::new(config(redis.url()), &Registry::new()).unwrap();

    assert_eq!(reader.get("test", |_| true).await, None);
    writer.put("test", "TSET");
    writer.put("", "");
    let deadline = Instant::now() + Duration::from_secs(2);
    while writer.snapshot().set.hit < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(
        reader.get("test", |value| value == "TSET").await.as_deref(),
        Some("TSET")
    );
    assert_eq!(
        reader.get("", |value| value.is_empty()).await.as_deref(),
        Some("")
    );
    let ttl = redis.raw(&[b"TTL", key("test").as_bytes()]).await.unwrap();
    let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!((3200..=3960).contains(&ttl), "TTL {ttl}");
    let reads = reader.snapshot();
    assert_eq!(
        (reads.get.hit, reads.get.miss, reads.get.rejected),
        (2, 1, 0)
    );
    assert_eq!(writer.snapshot().set.hit, 2);
    assert_eq!(reader.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_poisoned_foreign_or_oversized_value_is_never_returned() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let registry = Registry::new();
    let cache = SharedCache::new(
        SharedCacheConfig {
            max_value_bytes: 16,
            ..config(redis.url())
        },
        &registry,
    )
    .unwrap();
    let poison = [
        ("poisoned", b"=WRONG".to_vec()),
        ("unmarked", b"TSET".to_vec()),
        ("oversized", [b"=".as_slice(), &[b'A'; 100]].concat()),
        ("not utf-8", b"=\xff\xfe".to_vec()),
    ];
    for (input, value) in &poison {
        let reply = redis.raw(&[b"SET", key(input).as_bytes(), value]).await;
        assert_eq!(reply.as_deref(), Some("+OK"));
    }

    for (input, _) in &poison {
        // Accepting anything still refuses what is malformed; the poisoned value is refused by
        // the caller's comparison.
        let accept = |value: &str| *input != "poisoned" || value == "TSET";
        assert_eq!(cache.get(input, accept).await, None, "{input}");
    }

    let snapshot = cache.snapshot();
    assert_eq!((snapshot.get.rejected, snapshot.get.hit), (4, 0));
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"shout_shared_cache_requests_total{op="get",result="rejected"} 4"#),
        "{text}"
    );
    // A value over the bound is not written either.
    cache.put("big", &"B".repeat(16));
    assert_eq!(cache.snapshot().set.skipped, 1);
}

#[tokio::test]
async fn a_paused_redis_costs_at_most_the_timeout_and_sharing_resumes_after_it() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let registry = Registry::new();
    let cache = SharedCache::new(config(redis.url()), &registry).unwrap();
    assert!(shares_within(&cache, "test", "TSET", Duration::from_secs(2)).await);
    settle(&cache).await;

    redis.signal("-STOP");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(cache.get("test", |value| value == "TSET").await, None);
        slowest = slowest.max(started.elapsed());
    }
    let paused = cache.snapshot();
    println!("Redis paused: slowest of 20 GETs {slowest:?}, {paused:?}");
    // 20 ms timeout plus a margin for a loaded machine.
    assert!(
        slowest < Duration::from_millis(60),
        "slowest GET {slowest:?}"
    );
    assert_eq!(paused.breaker, BreakerState::Open);
    assert_eq!((paused.get.timeout, paused.get.skipped), (5, 15));

    redis.signal("-CONT");
    assert!(
        shares_within(&cache, "test", "TSET", Duration::from_secs(5)).await,
        "{:?}",
        cache.snapshot()
    );
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"shout_shared_cache_breaker_state{state="closed"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_redis_killed_and_restarted_empty_is_used_again_by_itself() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let cache = SharedCache::new(config(redis.url()), &Registry::new()).unwrap();
    assert!(shares_within(&cache, "test", "TSET", Duration::from_secs(2)).await);
    settle(&cache).await;

    let port = redis.kill().await;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(cache.get("test", |value| value == "TSET").await, None);
        assert!(started.elapsed() < Duration::from_millis(60));
    }
    let down = cache.snapshot();
    assert_eq!(down.breaker, BreakerState::Open);
    assert_eq!(down.get.error + down.get.timeout, 5, "{down:?}");

    let restarted = RedisServer::start_on(port)
        .await
        .expect("restart on the same port");
    // Empty after the restart: a miss, then the answer is shared again.
    assert!(
        shares_within(&cache, "test", "TSET", Duration::from_secs(5)).await,
        "{:?}",
        cache.snapshot()
    );
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    drop(restarted);
}

#[tokio::test]
async fn a_server_answering_garbage_is_counted_as_errors_and_skipped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 1024];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 || stream.write_all(b"%garbage\r\n\x00\xff").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let cache = SharedCache::new(
        config(format!("redis://127.0.0.1:{port}/")),
        &Registry::new(),
    )
    .unwrap();

    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(cache.get("test", |_| true).await, None);
        assert!(started.elapsed() < Duration::from_millis(60));
    }
    cache.put("test", "TSET");

    let snapshot = cache.snapshot();
    assert_eq!(
        snapshot.get.hit + snapshot.get.miss + snapshot.get.rejected,
        0
    );
    assert_eq!(snapshot.get.error + snapshot.get.timeout, 5, "{snapshot:?}");
    assert_eq!(snapshot.get.skipped, 15, "{snapshot:?}");
    assert_eq!((snapshot.set.hit, snapshot.set.skipped), (0, 1));
    assert_eq!(snapshot.breaker, BreakerState::Open);
}

/// A TCP proxy to `upstream`. Connection `n` (numbered from 0) is a black hole while
/// `n < dead_below`: what either side sends is read and dropped, as on a dead network path
/// where no reset ever arrives.
#[derive(Debug, Clone)]
struct BlackHoleProxy {
    port: u16,
    /// Connections opened so far.
    opened: Arc<AtomicU64>,
    dead_below: Arc<AtomicU64>,
}

impl BlackHoleProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            port: listener.local_addr().unwrap().port(),
            opened: Arc::new(AtomicU64::new(0)),
            dead_below: Arc::new(AtomicU64::new(0)),
        };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = state.opened.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(
                    client_read,
                    server_write,
                    id,
                    Arc::clone(&state.dead_below),
                ));
                tokio::spawn(pipe(
                    server_read,
                    client_write,
                    id,
                    Arc::clone(&state.dead_below),
                ));
            }
        });
        proxy
    }

    /// Every connection, open or future, becomes a black hole.
    fn cut(&self) {
        self.dead_below.store(u64::MAX, Ordering::SeqCst);
    }

    /// Connections opened from now on work; the ones before stay black holes.
    fn heal_new_connections(&self) {
        self.dead_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    dead_below: Arc<AtomicU64>,
) {
    let mut buffer = [0; 4096];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        if id >= dead_below.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn a_black_holed_connection_is_replaced_once_the_breaker_opens() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let proxy = BlackHoleProxy::start(redis.port).await;
    let cache = SharedCache::new(
        config(format!("redis://127.0.0.1:{}/", proxy.port)),
        &Registry::new(),
    )
    .unwrap();
    assert!(shares_within(&cache, "test", "TSET", Duration::from_secs(2)).await);
    settle(&cache).await;

    proxy.cut();
    for _ in 0..5 {
        assert_eq!(cache.get("test", |_| true).await, None);
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    assert_eq!(cache.snapshot().get.timeout, 5);

    // The path heals for new connections only: the old one never answers again, and redis-rs
    // does not reconnect on a timeout.
    proxy.heal_new_connections();
    assert!(
        shares_within(&cache, "test", "TSET", Duration::from_secs(5)).await,
        "{:?}",
        cache.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_on_a_paused_redis_each_cost_at_most_the_timeout() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start().await;
    let cache = SharedCache::new(config(redis.url()), &Registry::new()).unwrap();
    assert!(shares_within(&cache, "test", "TSET", Duration::from_secs(2)).await);
    settle(&cache).await;

    redis.signal("-STOP");
    let mut gets = tokio::task::JoinSet::new();
    for client in 0..48 {
        let cache = cache.clone();
        gets.spawn(async move {
            let started = Instant::now();
            let input = format!("input {client}");
            let answer = cache.get(&input, |_| true).await;
            (answer, started.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(result) = gets.join_next().await {
        let (answer, elapsed) = result.unwrap();
        assert_eq!(answer, None);
        slowest = slowest.max(elapsed);
    }
    let paused = cache.snapshot();
    println!("Redis paused, 48 concurrent GETs: slowest {slowest:?}, {paused:?}");
    assert!(
        slowest < Duration::from_millis(60),
        "slowest GET {slowest:?}"
    );
    assert_eq!(paused.get.timeout, 48, "{paused:?}");
    assert_eq!(paused.breaker, BreakerState::Open);

    redis.signal("-CONT");
    assert!(shares_within(&cache, "test", "TSET", Duration::from_secs(5)).await);
}
