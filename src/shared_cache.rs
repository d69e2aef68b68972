//! The shared cache (L2): confirmed answers in Redis, so a fleet asks shoutcloud once per input
//! instead of once per pod. It sits behind the in-process cache and before the single flight.
//!
//! # Contracts
//!
//! - **Never costs more than its timeout.** Every `GET` runs under `get_timeout` (20 ms by
//!   default); a slow, paused or dead Redis is a miss, never an error for the request.
//! - **Never changes an answer.** [`SharedCache::get`] hands the value to the caller's check
//!   (the resolver compares it with the canonical answer) and returns it only when accepted; a
//!   stale, foreign or poisoned value is counted as `rejected` and is a miss.
//! - **Never blocks start.** The connection is made lazily (redis-rs's lazy
//!   `ConnectionManager`, nudged by one background `PING`): a pod is ready while Redis is down.
//! - **Bounded everywhere.** Keys are `shout:v1:` + 32 hex digits of XXH3-128 of the input
//!   (41 bytes whatever the input); values are read with `GETRANGE 0 max`, so at most
//!   `max_value_bytes + 1` bytes come back; background writes are capped in number.
//!
//! # Its own breaker, and why
//!
//! redis-rs's `ConnectionManager` reconnects after I/O errors, but a timeout is not one: a
//! paused Redis or a black-holed connection would cost every request the full timeout, forever.
//! So [`Breaker`] opens after `breaker_failures` consecutive errors or timeouts, skips Redis for
//! `breaker_open`, then lets one `GET` probe; its success closes the breaker. Each opening also
//! replaces the connection manager, so the probe runs on a fresh connection instead of one
//! stuck behind unanswered commands.
//!
//! # Value format
//!
//! A value is `=` followed by the answer. `GETRANGE` of a missing key is the empty string, so
//! the marker tells "no value" from "the empty answer" (the empty input's). A change of format
//! is a change of the key's version (`v1`), so old values are never misread.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The key prefix; bump the version when the value format changes.
pub const KEY_PREFIX: &str = "shout:v1:";
/// Marks a present value (see the module doc).
const VALUE_MARKER: u8 = b'=';
/// Duration buckets for Redis calls, in seconds: around the 20 ms default timeout.
const DURATION_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
];

/// The Redis key of an input: bounded, whatever the input's size.
pub fn key(input: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(input.as_bytes());
    format!("{KEY_PREFIX}{hash:032x}")
}

/// Why a [`SharedCacheConfig`] or its Redis URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum SharedCacheError {
    /// The URL is not a Redis URL redis-rs understands.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// A setting that must be positive was zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// A metric of the same name is already registered.
    #[error("registering the shared cache metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Built outside a tokio runtime (redis-rs spawns its connection tasks on it).
    #[error("the shared cache must be built inside the tokio runtime")]
    NoRuntime,
    /// The connection manager could not be built.
    #[error("building the Redis connection manager: {0}")]
    Manager(#[source] redis::RedisError),
}

/// The shared cache's settings.
#[derive(Debug, Clone)]
pub struct SharedCacheConfig {
    /// `redis://host:port/db` (or `rediss://` where redis-rs is built with TLS).
    pub url: String,
    /// How long a `GET` may take before it counts as a timeout and a miss.
    pub get_timeout: Duration,
    /// How long a background `SET` may take.
    pub set_timeout: Duration,
    /// Time to live of a written answer, before jitter.
    pub ttl: Duration,
    /// Jitter of the TTL as a fraction either way, so entries written together expire apart.
    pub ttl_jitter: f64,
    /// Longest value read or written, in bytes (the answer plus its one-byte marker).
    pub max_value_bytes: usize,
    /// Consecutive errors or timeouts that open the breaker.
    pub breaker_failures: u32,
    /// How long the open breaker skips Redis before one probe.
    pub breaker_open: Duration,
    /// Background writes in progress at most; further writes are skipped.
    pub max_pending_sets: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

impl SharedCacheConfig {
    /// Settings for `url` with the defaults: GET 20 ms, SET 100 ms, TTL 1 h +-10%, values up to
    /// 256 KiB, breaker after 5 failures for 1 s, 256 pending writes, connect 250 ms.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            get_timeout: Duration::from_millis(20),
            set_timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(3600),
            ttl_jitter: 0.1,
            max_value_bytes: 256 * 1024,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(1),
            max_pending_sets: 256,
            connect_timeout: Duration::from_millis(250),
        }
    }

    fn validate(&self) -> Result<(), SharedCacheError> {
        let zero = [
            (self.get_timeout.is_zero(), "the GET timeout"),
            (self.set_timeout.is_zero(), "the SET timeout"),
            (self.ttl.as_secs() == 0, "the TTL (whole seconds)"),
            (self.max_value_bytes == 0, "the value size bound"),
            (self.breaker_failures == 0, "the breaker's failure count"),
            (self.breaker_open.is_zero(), "the breaker's open period"),
            (self.max_pending_sets == 0, "the pending write bound"),
            (self.connect_timeout.is_zero(), "the connect timeout"),
        ];
        match zero.into_iter().find(|(is_zero, _)| *is_zero) {
            Some((_, what)) => Err(SharedCacheError::Zero(what)),
            None => Ok(()),
        }
    }

    /// A TTL in whole seconds, jittered, at least one.
    fn jittered_ttl(&self) -> u64 {
        let jitter = self.ttl_jitter.clamp(0.0, 0.9);
        let factor = 1.0 - jitter + 2.0 * jitter * fastrand::f64();
        (self.ttl.as_secs_f64() * factor).round().max(1.0) as u64
    }
}

/// The breaker's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Redis is used.
    Closed,
    /// Redis is skipped until the open period passes.
    Open,
    /// One probe `GET` runs; other calls skip Redis.
    HalfOpen,
}

impl BreakerState {
    const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// The breaker's state machine; one truth behind one mutex, never held across an `.await`.
#[derive(Debug)]
enum BreakerInner {
    /// `failures` consecutive failures so far.
    Closed { failures: u32 },
    /// Skipping Redis until `until`.
    Open { until: Instant },
    /// A probe is out; everyone else skips.
    HalfOpen,
}

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Use Redis.
    Normal,
    /// Use Redis as the half-open probe.
    Probe,
    /// Skip Redis.
    Skip,
}

/// What the breaker did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    None,
    Opened,
    Closed,
}

/// The shared cache's breaker (see the module doc).
#[derive(Debug)]
struct Breaker {
    inner: Mutex<BreakerInner>,
    /// The state for readers that must not lock (snapshot, metrics).
    state: AtomicU8,
    failures_to_open: u32,
    open_for: Duration,
}

impl Breaker {
    fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            inner: Mutex::new(BreakerInner::Closed { failures: 0 }),
            state: AtomicU8::new(0),
            failures_to_open,
            open_for,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerInner> {
        // Every update is a plain assignment, so a poisoned lock holds a consistent state.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set(&self, inner: &mut BreakerInner, next: BreakerInner) {
        let state = match next {
            BreakerInner::Closed { .. } => 0,
            BreakerInner::Open { .. } => 1,
            BreakerInner::HalfOpen => 2,
        };
        *inner = next;
        self.state.store(state, Ordering::Release);
    }

    fn admit(&self, op: Op, now: Instant) -> Admission {
        let mut inner = self.lock();
        match *inner {
            BreakerInner::Closed { .. } => Admission::Normal,
            BreakerInner::Open { until } if now >= until && op == Op::Get => {
                self.set(&mut inner, BreakerInner::HalfOpen);
                Admission::Probe
            }
            BreakerInner::Open { .. } | BreakerInner::HalfOpen => Admission::Skip,
        }
    }

    fn record(&self, admission: Admission, ok: bool, now: Instant) -> Transition {
        let mut inner = self.lock();
        match (&*inner, admission, ok) {
            (BreakerInner::HalfOpen, Admission::Probe, true) => {
                self.set(&mut inner, BreakerInner::Closed { failures: 0 });
                Transition::Closed
            }
            (BreakerInner::HalfOpen, Admission::Probe, false) => {
                let until = now + self.open_for;
                self.set(&mut inner, BreakerInner::Open { until });
                Transition::Opened
            }
            (BreakerInner::Closed { .. }, _, true) => {
                self.set(&mut inner, BreakerInner::Closed { failures: 0 });
                Transition::None
            }
            (BreakerInner::Closed { failures }, _, false) => {
                let failures = failures + 1;
                if failures >= self.failures_to_open {
                    let until = now + self.open_for;
                    self.set(&mut inner, BreakerInner::Open { until });
                    Transition::Opened
                } else {
                    self.set(&mut inner, BreakerInner::Closed { failures });
                    Transition::None
                }
            }
            // A result from before the breaker opened says nothing new.
            _ => Transition::None,
        }
    }
}

/// A Redis operation, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set => "set",
        }
    }
}

/// How one operation ended, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// GET: an accepted value. SET: written.
    Hit,
    /// GET: no value.
    Miss,
    /// Redis answered with an error, or the connection failed.
    Error,
    /// No answer within the timeout.
    Timeout,
    /// Redis was not asked (breaker open, too many pending writes, value too large to write).
    Skipped,
    /// GET: a value the caller's check refused, or over the size bound.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
        }
    }
}

/// One operation's series, resolved once.
#[derive(Debug)]
struct OpMetrics {
    hit: IntCounter,
    miss: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
    skipped: IntCounter,
    rejected: IntCounter,
    /// Duration of the calls that reached Redis.
    duration: Histogram,
}

impl OpMetrics {
    fn new(op: Op, requests: &IntCounterVec, duration: &HistogramVec) -> Self {
        let counter =
            |outcome: Outcome| requests.with_label_values(&[op.as_str(), outcome.as_str()]);
        Self {
            hit: counter(Outcome::Hit),
            miss: counter(Outcome::Miss),
            error: counter(Outcome::Error),
            timeout: counter(Outcome::Timeout),
            skipped: counter(Outcome::Skipped),
            rejected: counter(Outcome::Rejected),
            duration: duration.with_label_values(&[op.as_str()]),
        }
    }

    fn counter(&self, outcome: Outcome) -> &IntCounter {
        match outcome {
            Outcome::Hit => &self.hit,
            Outcome::Miss => &self.miss,
            Outcome::Error => &self.error,
            Outcome::Timeout => &self.timeout,
            Outcome::Skipped => &self.skipped,
            Outcome::Rejected => &self.rejected,
        }
    }

    fn counts(&self) -> OpCounts {
        OpCounts {
            hit: self.hit.get(),
            miss: self.miss.get(),
            error: self.error.get(),
            timeout: self.timeout.get(),
            skipped: self.skipped.get(),
            rejected: self.rejected.get(),
        }
    }
}

/// The shared cache's metrics.
#[derive(Debug)]
struct Metrics {
    /// `shout_shared_cache_requests_total{op="get",result}` and its duration.
    get: OpMetrics,
    /// `shout_shared_cache_requests_total{op="set",result}` and its duration.
    set: OpMetrics,
    /// `shout_shared_cache_breaker_state{state}`: 1 for the current state, 0 for the others.
    breaker_state: IntGaugeVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "shout_shared_cache_requests_total",
                "Shared cache (Redis) operations by result.",
            ),
            &["op", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "shout_shared_cache_duration_seconds",
                "Duration of shared cache (Redis) operations that were sent.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["op"],
        )?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "shout_shared_cache_breaker_state",
                "Shared cache breaker state: 1 for the current state, 0 for the others.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(breaker_state.clone()))?;
        let metrics = Self {
            get: OpMetrics::new(Op::Get, &requests, &duration),
            set: OpMetrics::new(Op::Set, &requests, &duration),
            breaker_state,
        };
        metrics.show_breaker(BreakerState::Closed);
        Ok(metrics)
    }

    fn op(&self, op: Op) -> &OpMetrics {
        match op {
            Op::Get => &self.get,
            Op::Set => &self.set,
        }
    }

    fn count(&self, op: Op, outcome: Outcome) {
        self.op(op).counter(outcome).inc();
    }

    fn show_breaker(&self, state: BreakerState) {
        for candidate in BreakerState::ALL {
            self.breaker_state
                .with_label_values(&[candidate.as_str()])
                .set(i64::from(candidate == state));
        }
    }
}

/// Counts of one operation, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpCounts {
    /// GET: values returned. SET: values written.
    pub hit: u64,
    /// GET: keys with no value.
    pub miss: u64,
    /// Errors from Redis or the connection.
    pub error: u64,
    /// Calls that got no answer within their timeout.
    pub timeout: u64,
    /// Calls not sent (breaker, pending write bound, value size).
    pub skipped: u64,
    /// GET: values refused (the caller's check, the marker, UTF-8 or the size bound).
    pub rejected: u64,
}

/// What `/status` shows of the shared cache.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SharedCacheSnapshot {
    /// The breaker's state.
    pub breaker: BreakerState,
    /// GETs by result.
    pub get: OpCounts,
    /// SETs by result (`hit` is a write that succeeded).
    pub set: OpCounts,
    /// Background writes in progress.
    pub pending_sets: usize,
}

struct Shared {
    config: SharedCacheConfig,
    client: redis::Client,
    /// The current connection manager; replaced when the breaker opens (see the module doc).
    /// Cloning it is cheap and shares its connection.
    manager: Mutex<ConnectionManager>,
    breaker: Breaker,
    /// Permits for background writes.
    pending_sets: Arc<Semaphore>,
    metrics: Metrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// Records a failed probe for a GET whose future was dropped before its result.
struct PendingResult<'a> {
    cache: &'a SharedCache,
    /// `None` once the result was recorded.
    admission: Option<Admission>,
}

impl Drop for PendingResult<'_> {
    fn drop(&mut self) {
        // Only a probe must be settled; a dropped normal GET says nothing about Redis.
        if let Some(Admission::Probe) = self.admission.take() {
            self.cache.after(Admission::Probe, false, Instant::now());
        }
    }
}

/// The shared cache client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedCache {
    shared: Arc<Shared>,
}

fn manager(
    client: &redis::Client,
    config: &SharedCacheConfig,
) -> Result<ConnectionManager, SharedCacheError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        // Our own timeouts bound every call; this one only frees a stuck multiplexer.
        .set_response_timeout(Some(config.set_timeout.max(config.get_timeout) * 10))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100));
    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
        .map_err(SharedCacheError::Manager)
}

impl SharedCache {
    /// A client for `config.url`, its metrics registered on `registry`. It does not connect
    /// here: the first use (or a background `PING` started here) does. Must run inside the
    /// tokio runtime (redis-rs spawns its connection tasks on it).
    pub fn new(config: SharedCacheConfig, registry: &Registry) -> Result<Self, SharedCacheError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SharedCacheError::NoRuntime);
        }
        let client = redis::Client::open(config.url.as_str()).map_err(SharedCacheError::Url)?;
        let manager = manager(&client, &config)?;
        let metrics = Metrics::register(registry)?;
        let cache = Self {
            shared: Arc::new(Shared {
                breaker: Breaker::new(config.breaker_failures, config.breaker_open),
                pending_sets: Arc::new(Semaphore::new(config.max_pending_sets)),
                manager: Mutex::new(manager),
                client,
                config,
                metrics,
            }),
        };
        cache.warm_up();
        Ok(cache)
    }

    /// Starts connecting in the background, so the first request finds a connection.
    fn warm_up(&self) {
        let mut connection = self.connection();
        let timeout = self.shared.config.connect_timeout * 2;
        tokio::spawn(async move {
            let ping = redis::cmd("PING");
            match tokio::time::timeout(timeout, ping.query_async::<String>(&mut connection)).await {
                Ok(Ok(_)) => tracing::info!("shared cache: connected to Redis"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "shared cache: Redis is not reachable yet")
                }
                Err(_) => tracing::warn!("shared cache: Redis did not answer PING in time"),
            }
        });
    }

    fn connection(&self) -> ConnectionManager {
        self.shared
            .manager
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The answer stored for `input`, if Redis has one that `accept` (the caller's comparison
    /// with the canonical answer) takes. `None` on a miss, a refused value, an error, a timeout,
    /// or while the breaker skips Redis; it never takes longer than the GET timeout.
    pub async fn get(&self, input: &str, accept: impl FnOnce(&str) -> bool) -> Option<String> {
        let shared = &self.shared;
        let started = Instant::now();
        let admission = shared.breaker.admit(Op::Get, started);
        if admission == Admission::Skip {
            shared.metrics.count(Op::Get, Outcome::Skipped);
            return None;
        }
        if admission == Admission::Probe {
            shared.metrics.show_breaker(BreakerState::HalfOpen);
        }
        // A caller that gives up mid-GET (its client hung up) must not leave a probe out forever.
        let mut pending = PendingResult {
            cache: self,
            admission: Some(admission),
        };
        let mut connection = self.connection();
        let mut command = redis::cmd("GETRANGE");
        // GETRANGE's end is inclusive: at most `max_value_bytes + 1` bytes come back, enough to
        // tell a value at the bound from one over it.
        command
            .arg(key(input))
            .arg(0)
            .arg(shared.config.max_value_bytes);
        let result = tokio::time::timeout(
            shared.config.get_timeout,
            command.query_async::<Vec<u8>>(&mut connection),
        )
        .await;
        let now = Instant::now();
        shared
            .metrics
            .get
            .duration
            .observe((now - started).as_secs_f64());
        let (outcome, value) = match result {
            Err(_) => (Outcome::Timeout, None),
            Ok(Err(error)) => {
                tracing::debug!(%error, "shared cache: GET failed");
                (Outcome::Error, None)
            }
            Ok(Ok(bytes)) => self.judge(bytes, accept),
        };
        let healthy = !matches!(outcome, Outcome::Timeout | Outcome::Error);
        pending.admission = None;
        self.after(admission, healthy, now);
        shared.metrics.count(Op::Get, outcome);
        value
    }

    /// Classifies the bytes Redis returned.
    fn judge(
        &self,
        bytes: Vec<u8>,
        accept: impl FnOnce(&str) -> bool,
    ) -> (Outcome, Option<String>) {
        match bytes.split_first() {
            None => (Outcome::Miss, None),
            Some((&VALUE_MARKER, _)) if bytes.len() > self.shared.config.max_value_bytes => {
                (Outcome::Rejected, None)
            }
            Some((&VALUE_MARKER, answer)) => match std::str::from_utf8(answer) {
                Ok(answer) if accept(answer) => (Outcome::Hit, Some(answer.to_owned())),
                _ => (Outcome::Rejected, None),
            },
            Some(_) => (Outcome::Rejected, None),
        }
    }

    /// Feeds a result to the breaker; an opening replaces the connection manager.
    fn after(&self, admission: Admission, healthy: bool, now: Instant) {
        let shared = &self.shared;
        match shared.breaker.record(admission, healthy, now) {
            Transition::None => {}
            Transition::Closed => {
                tracing::info!("shared cache: breaker closed, Redis is used again");
                shared.metrics.show_breaker(BreakerState::Closed);
            }
            Transition::Opened => {
                tracing::warn!(
                    open_ms = shared.config.breaker_open.as_millis() as u64,
                    "shared cache: breaker opened, Redis is skipped"
                );
                shared.metrics.show_breaker(BreakerState::Open);
                match manager(&shared.client, &shared.config) {
                    Ok(fresh) => {
                        *shared
                            .manager
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "shared cache: no fresh connection manager")
                    }
                }
            }
        }
    }

    /// Stores a confirmed `answer` for `input` in the background (`SET key =answer EX ttl`,
    /// TTL jittered). Skipped while the breaker is not closed, when too many writes are
    /// pending, or when the value is over the size bound. Never waits.
    pub fn put(&self, input: &str, answer: &str) {
        let shared = &self.shared;
        let now = Instant::now();
        if 1 + answer.len() > shared.config.max_value_bytes
            || shared.breaker.admit(Op::Set, now) != Admission::Normal
        {
            shared.metrics.count(Op::Set, Outcome::Skipped);
            return;
        }
        let Ok(permit) = Arc::clone(&shared.pending_sets).try_acquire_owned() else {
            shared.metrics.count(Op::Set, Outcome::Skipped);
            return;
        };
        let mut value = Vec::with_capacity(1 + answer.len());
        value.push(VALUE_MARKER);
        value.extend_from_slice(answer.as_bytes());
        let mut command = redis::cmd("SET");
        command
            .arg(key(input))
            .arg(value)
            .arg("EX")
            .arg(shared.config.jittered_ttl());
        let cache = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let shared = &cache.shared;
            let mut connection = cache.connection();
            let started = Instant::now();
            let result = tokio::time::timeout(
                shared.config.set_timeout,
                command.query_async::<()>(&mut connection),
            )
            .await;
            let now = Instant::now();
            shared
                .metrics
                .set
                .duration
                .observe((now - started).as_secs_f64());
            let outcome = match result {
                Ok(Ok(())) => Outcome::Hit,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "shared cache: SET failed");
                    Outcome::Error
                }
                Err(_) => Outcome::Timeout,
            };
            cache.after(Admission::Normal, outcome == Outcome::Hit, now);
            shared.metrics.count(Op::Set, outcome);
        });
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// What `/status` shows.
    pub fn snapshot(&self) -> SharedCacheSnapshot {
        let shared = &self.shared;
        SharedCacheSnapshot {
            breaker: self.breaker_state(),
            get: shared.metrics.get.counts(),
            set: shared.metrics.set.counts(),
            pending_sets: shared.config.max_pending_sets - shared.pending_sets.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests;
