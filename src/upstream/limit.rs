//! The adaptive upstream concurrency limit: how many shoutcloud calls this pod may have in
//! flight, following shoutcloud's latency between a floor and a ceiling (the old fixed bulkhead).
//!
//! # The algorithm: a gradient controller, as Envoy's adaptive-concurrency filter
//!
//! - **minRTT**, shoutcloud's latency without load, is *measured*, not guessed: at start and then
//!   every `min_rtt_interval` (jittered, so a fleet does not measure in step), the limit drops to
//!   the floor until `min_rtt_samples` calls that started during the measurement have finished;
//!   their median is the new minRTT and the previous limit comes back.
//! - Between measurements, every `sample_interval` (and at least once a round trip) the median
//!   latency of the calls admitted since the last change of the limit (sampleRTT) moves it: `gradient = clamp((minRTT + buffer) / sampleRTT, 0.5, 2)`,
//!   `limit = limit * gradient + sqrt(limit * gradient)`. Latency near minRTT grows the limit,
//!   queueing at shoutcloud shrinks it; the square root is the headroom that keeps probing.
//! - **Back off on failures**: a window in which a call was `dropped` (timed out, overloaded)
//!   multiplies the limit by `backoff` instead, as TCP does on loss.
//! - A window judges only calls admitted under the limit it changes: counting calls admitted
//!   under an older, lower limit makes the limit double window after window while their
//!   answers are still on the way, then collapse (with a 100 ms shoutcloud and 100 ms windows
//!   it swung between 2 and 33). So a window closes only after one such call finished, which
//!   also stretches windows to a round trip when shoutcloud is slower than `sample_interval`.
//! - The limit grows only while this pod uses at least half of it, so an idle pod does not
//!   drift up to the ceiling and then burst.
//!
//! # Fleets, and why the floor is small
//!
//! Every pod measures minRTT while the other pods keep their load on shoutcloud, and every pod
//! keeps at least `floor` calls in flight. Pods x floor beyond shoutcloud's knee therefore
//! raises every pod's reference and the fleet settles higher: in the simulation below, three
//! pods with a floor of 4 measure minRTT at 12 calls in flight (45 ms on the fake's curve, not
//! 20 ms) and held 16.5 calls in flight at a knee of 8; with a floor of 2 they held 11.7. Hence
//! a proposed default floor of 2.
//!
//! # Why this one
//!
//! - Vegas (Netflix `VegasLimit`) compares latency with the lowest latency ever seen. The lowest
//!   is stale once shoutcloud's base latency rises, and Vegas then pins the limit at the floor;
//!   re-learning it from the current latency, as Netflix's probe does, lets the limit creep up
//!   under self-made queueing. Measuring minRTT at the floor is what keeps the reference honest.
//!   Vegas also keeps a fixed queue (alpha..beta calls) per pod at shoutcloud, so a fleet of 20
//!   keeps 20 queues; the gradient's equilibrium depends on latency, so a fleet settles lower.
//! - The crates were read first: `congestion-limiter` 0.1 (Gradient, Vegas) releases a token
//!   with an `async` call behind a tokio `Mutex`, so a permit cannot record its outcome on a
//!   plain path or on drop; `tower-resilience-adaptive` and `tower-acc` are tower layers that
//!   wait in `poll_ready`, where we must refuse at once and answer with the fallback.
//! - Admission is one compare-and-swap on an atomic counter, not a `Semaphore`: the limit moves
//!   both ways every window, and shrinking a semaphore means forgetting permits that are still
//!   held. The controller's state sits behind a `std` mutex taken once per finished call, never
//!   across an `.await`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::time::Instant;

/// Latencies kept per sample window; further samples in the same window are not kept, which
/// only thins the median's input.
const MAX_WINDOW_SAMPLES: usize = 1024;
/// Bounds on one window's gradient, as Envoy's: one window at most halves or doubles the limit.
const MIN_GRADIENT: f64 = 0.5;
const MAX_GRADIENT: f64 = 2.0;

/// Why a [`LimitConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LimitConfigError {
    /// The floor must admit at least one call and lie at or below the ceiling.
    #[error("the concurrency floor ({floor}) must be between 1 and the ceiling ({ceiling})")]
    Bounds { floor: usize, ceiling: usize },
    /// The backoff must shrink the limit.
    #[error("the backoff factor ({0}) must be in (0, 1)")]
    Backoff(f64),
    /// The buffer is a fraction of minRTT.
    #[error("the latency buffer ({0}) must be in [0, 10]")]
    Buffer(f64),
    /// Intervals and counts must be positive.
    #[error("{0} must be positive")]
    Zero(&'static str),
}

/// The limiter's settings, validated by [`LimitConfig::new`] and the setters' final
/// [`LimitConfig::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// The limit never goes below this, and minRTT is measured at it.
    pub floor: usize,
    /// The limit never goes above this (the old bulkhead's size).
    pub ceiling: usize,
    /// The limit in force after the first minRTT measurement.
    pub initial: usize,
    /// How long one sample window lasts.
    pub sample_interval: Duration,
    /// How often minRTT is measured again (jittered by up to 15% either way).
    pub min_rtt_interval: Duration,
    /// How many calls one minRTT measurement takes.
    pub min_rtt_samples: usize,
    /// Latency above minRTT still taken as no queueing, as a fraction of minRTT.
    pub buffer: f64,
    /// What a window with a dropped call multiplies the limit by.
    pub backoff: f64,
}

impl LimitConfig {
    /// Settings with the given floor and ceiling and Envoy's defaults for the rest (100 ms
    /// windows, minRTT every 60 s over 25 calls, buffer 25%), backoff 0.8, initial limit 20.
    pub fn new(floor: usize, ceiling: usize) -> Result<Self, LimitConfigError> {
        let config = Self {
            floor,
            ceiling,
            initial: 20.clamp(floor, ceiling.max(floor)),
            sample_interval: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_samples: 25,
            buffer: 0.25,
            backoff: 0.8,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks settings changed after [`LimitConfig::new`].
    pub fn validate(&self) -> Result<(), LimitConfigError> {
        if self.floor == 0 || self.floor > self.ceiling {
            return Err(LimitConfigError::Bounds {
                floor: self.floor,
                ceiling: self.ceiling,
            });
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            return Err(LimitConfigError::Backoff(self.backoff));
        }
        if !(0.0..=10.0).contains(&self.buffer) {
            return Err(LimitConfigError::Buffer(self.buffer));
        }
        if self.sample_interval.is_zero() {
            return Err(LimitConfigError::Zero("the sample interval"));
        }
        if self.min_rtt_interval.is_zero() {
            return Err(LimitConfigError::Zero("the minRTT interval"));
        }
        if self.min_rtt_samples == 0 {
            return Err(LimitConfigError::Zero("the minRTT sample count"));
        }
        Ok(())
    }
}

/// The limiter's metrics, registered on the registry handed to [`AdaptiveLimit::new`].
#[derive(Debug, Clone)]
struct LimitMetrics {
    /// `shout_upstream_concurrency_limit`: the limit in force.
    limit: IntGauge,
    /// `shout_upstream_in_flight`: calls holding a permit.
    in_flight: IntGauge,
    /// `shout_upstream_limit_rejected_total`: calls refused because the limit was reached.
    rejected: IntCounter,
}

impl LimitMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let limit = IntGauge::new(
            "shout_upstream_concurrency_limit",
            "Upstream calls this pod may have in flight (adaptive).",
        )?;
        let in_flight = IntGauge::new("shout_upstream_in_flight", "Upstream calls in flight.")?;
        let rejected = IntCounter::new(
            "shout_upstream_limit_rejected_total",
            "Upstream calls refused because the concurrency limit was reached.",
        )?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Self {
            limit,
            in_flight,
            rejected,
        })
    }
}

/// What the controller is doing.
#[derive(Debug)]
enum Phase {
    /// The limit is the floor until `remaining` calls admitted in `epoch` have finished.
    Measuring {
        /// Latencies of this measurement's calls.
        samples: Vec<Duration>,
        /// Calls still to finish before the measurement ends.
        remaining: usize,
        /// The limit to restore afterwards.
        restore: f64,
    },
    /// The gradient moves the limit every sample window.
    Tracking {
        /// When the current window closes.
        window_end: Instant,
        /// Latencies of calls that finished in the window (at most [`MAX_WINDOW_SAMPLES`]).
        samples: Vec<Duration>,
        /// Whether a call was dropped in the window.
        dropped: bool,
        /// When minRTT is measured again.
        next_measurement: Instant,
    },
}

/// The controller's state: one truth, behind one mutex.
#[derive(Debug)]
struct Controller {
    /// The limit as the gradient computes it; the admitted limit is its integer part.
    limit: f64,
    /// The last measured minRTT; `None` until the first measurement ends.
    min_rtt: Option<Duration>,
    /// What happens to a finished call's latency.
    phase: Phase,
}

#[derive(Debug)]
struct Shared {
    config: LimitConfig,
    /// Calls holding a permit.
    in_flight: AtomicUsize,
    /// The admitted limit, read lock-free by [`AdaptiveLimit::try_acquire`].
    limit: AtomicUsize,
    /// The highest `in_flight` since the window opened: the limit grows only when it is used.
    window_peak: AtomicUsize,
    /// Bumped when a minRTT measurement starts and when the limit is recomputed; a permit
    /// carries the epoch it was admitted in, so a measurement only counts calls that ran at the
    /// floor and a window only calls admitted under the limit it judges.
    epoch: AtomicU64,
    controller: Mutex<Controller>,
    metrics: LimitMetrics,
}

/// The adaptive concurrency limit. Cheap to clone; clones share the limit.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    shared: Arc<Shared>,
}

/// What `/status` shows of the limiter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LimitSnapshot {
    /// The limit in force.
    pub limit: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// The configured floor.
    pub floor: usize,
    /// The configured ceiling.
    pub ceiling: usize,
    /// The last measured minRTT in milliseconds; `None` before the first measurement.
    pub min_rtt_ms: Option<f64>,
    /// Whether minRTT is being measured (the limit is at the floor meanwhile).
    pub measuring: bool,
    /// Calls refused since start.
    pub rejected: u64,
}

impl AdaptiveLimit {
    /// A limiter that starts by measuring minRTT, with its metrics registered on `registry`.
    pub fn new(config: LimitConfig, registry: &Registry) -> Result<Self, LimitError> {
        config.validate()?;
        let metrics = LimitMetrics::register(registry)?;
        let initial = config.initial.clamp(config.floor, config.ceiling) as f64;
        metrics.limit.set(config.floor as i64);
        let shared = Shared {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(config.floor),
            window_peak: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            controller: Mutex::new(Controller {
                limit: initial,
                min_rtt: None,
                phase: Phase::Measuring {
                    samples: Vec::with_capacity(config.min_rtt_samples),
                    remaining: config.min_rtt_samples,
                    restore: initial,
                },
            }),
            config,
            metrics,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// A permit for one upstream call, or `None` at once when the limit is reached (the caller
    /// answers with the fallback). Never waits.
    pub fn try_acquire(&self) -> Option<Permit> {
        let shared = &self.shared;
        let limit = shared.limit.load(Ordering::Acquire);
        let admitted = shared
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        match admitted {
            Ok(before) => {
                shared.window_peak.fetch_max(before + 1, Ordering::Relaxed);
                shared.metrics.in_flight.inc();
                Some(Permit {
                    shared: Arc::clone(shared),
                    epoch: shared.epoch.load(Ordering::Acquire),
                })
            }
            Err(_) => {
                shared.metrics.rejected.inc();
                None
            }
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Acquire)
    }

    /// Calls holding a permit.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// What `/status` shows.
    pub fn snapshot(&self) -> LimitSnapshot {
        let shared = &self.shared;
        let controller = shared.lock();
        LimitSnapshot {
            limit: self.limit(),
            in_flight: self.in_flight(),
            floor: shared.config.floor,
            ceiling: shared.config.ceiling,
            min_rtt_ms: controller.min_rtt.map(|rtt| rtt.as_secs_f64() * 1e3),
            measuring: matches!(controller.phase, Phase::Measuring { .. }),
            rejected: shared.metrics.rejected.get(),
        }
    }
}

/// Why [`AdaptiveLimit::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The settings do not hold together.
    #[error(transparent)]
    Config(#[from] LimitConfigError),
    /// A metric of the same name is already registered.
    #[error("registering the concurrency limit metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How a finished call informs the limit.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Answered, in this long.
    Success(Duration),
    /// Timed out or refused for overload.
    Dropped,
    /// Says nothing about load.
    Ignore,
}

/// The right to one upstream call. Record how it went with [`Permit::success`],
/// [`Permit::dropped`] or [`Permit::ignore`]; a permit dropped without one counts as `ignore`,
/// so a forgotten verdict never moves the limit (the caller records deadline expiries itself).
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    /// The epoch the permit was admitted in.
    epoch: u64,
}

impl Permit {
    /// The call was answered after `latency` (a valid answer, or an error that came from
    /// shoutcloud's side quickly, such as a 4xx: anything with a meaningful latency).
    pub fn success(self, latency: Duration) {
        self.record(Outcome::Success(latency));
    }

    /// The call timed out or shoutcloud said it is overloaded (429, 503): back off.
    pub fn dropped(self) {
        self.record(Outcome::Dropped);
    }

    /// The outcome says nothing about shoutcloud's load (a connect error, say).
    pub fn ignore(self) {
        self.record(Outcome::Ignore);
    }

    fn record(self, outcome: Outcome) {
        let now = Instant::now();
        self.shared.update(self.epoch, outcome, now);
        // `Drop` releases the slot.
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.in_flight.dec();
    }
}

/// The median of `samples` (upper median), `None` when empty.
fn median(samples: &mut [Duration]) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let middle = samples.len() / 2;
    Some(*samples.select_nth_unstable(middle).1)
}

/// `base` moved by up to 15% either way, so pods do not measure in step.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.85 + 0.3 * fastrand::f64())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Controller> {
        // The controller's updates cannot panic midway (arithmetic on finite floats and
        // bounded vectors), so a poisoned lock still holds a consistent state.
        self.controller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the admitted limit.
    fn publish(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
        self.metrics.limit.set(limit as i64);
    }

    fn clamp(&self, limit: f64) -> f64 {
        limit.clamp(self.config.floor as f64, self.config.ceiling as f64)
    }

    fn update(&self, epoch: u64, outcome: Outcome, now: Instant) {
        let config = &self.config;
        let mut controller = self.lock();
        let controller = &mut *controller;
        match &mut controller.phase {
            Phase::Measuring {
                samples,
                remaining,
                restore,
            } => {
                if epoch != self.epoch.load(Ordering::Acquire) {
                    // Admitted before the measurement: it ran above the floor.
                    return;
                }
                match outcome {
                    Outcome::Success(latency) => samples.push(latency),
                    Outcome::Dropped => *restore = self.clamp(*restore * config.backoff),
                    Outcome::Ignore => return,
                }
                *remaining = remaining.saturating_sub(1);
                if *remaining > 0 {
                    return;
                }
                if let Some(rtt) = median(samples) {
                    controller.min_rtt = Some(rtt);
                }
                controller.limit = *restore;
                let limit = *restore as usize;
                tracing::debug!(
                    min_rtt_ms = controller.min_rtt.map(|rtt| rtt.as_secs_f64() * 1e3),
                    limit,
                    "concurrency limit: minRTT measured"
                );
                controller.phase = Phase::Tracking {
                    window_end: now + config.sample_interval,
                    samples: Vec::new(),
                    dropped: false,
                    next_measurement: now + jittered(config.min_rtt_interval),
                };
                self.window_peak
                    .store(self.in_flight.load(Ordering::Acquire), Ordering::Relaxed);
                self.publish(limit);
            }
            Phase::Tracking {
                window_end,
                samples,
                dropped,
                next_measurement,
            } => {
                if now >= *next_measurement {
                    // Measure minRTT again, at the floor.
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    controller.phase = Phase::Measuring {
                        samples: Vec::with_capacity(config.min_rtt_samples),
                        remaining: config.min_rtt_samples,
                        restore: controller.limit,
                    };
                    self.publish(config.floor);
                    return;
                }
                if epoch != self.epoch.load(Ordering::Acquire) {
                    // Admitted under an older limit: its latency is that limit's, not this one's.
                    return;
                }
                match outcome {
                    Outcome::Success(latency) if samples.len() < MAX_WINDOW_SAMPLES => {
                        samples.push(latency);
                    }
                    Outcome::Success(_) | Outcome::Ignore => {}
                    Outcome::Dropped => *dropped = true,
                }
                if now < *window_end || (samples.is_empty() && !*dropped) {
                    return;
                }
                let old = controller.limit;
                let peak = self
                    .window_peak
                    .swap(self.in_flight.load(Ordering::Acquire), Ordering::Relaxed);
                let new = if *dropped {
                    old * config.backoff
                } else if let (Some(min_rtt), Some(sample_rtt)) =
                    (controller.min_rtt, median(samples))
                {
                    let reference = min_rtt.as_secs_f64() * (1.0 + config.buffer);
                    let sample = sample_rtt.as_secs_f64().max(1e-6);
                    let gradient = (reference / sample).clamp(MIN_GRADIENT, MAX_GRADIENT);
                    let scaled = old * gradient;
                    let grown = scaled + scaled.sqrt();
                    // Grow only a limit this pod actually uses.
                    if grown > old && (peak as f64) * 2.0 < old {
                        old
                    } else {
                        grown
                    }
                } else {
                    old
                };
                controller.limit = self.clamp(new);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                *window_end = now + config.sample_interval;
                samples.clear();
                *dropped = false;
                self.publish(controller.limit as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_a_floor_above_the_ceiling_and_a_zero_floor() {
        assert_eq!(
            LimitConfig::new(10, 5),
            Err(LimitConfigError::Bounds {
                floor: 10,
                ceiling: 5
            })
        );
        assert!(LimitConfig::new(0, 5).is_err());
        let mut config = LimitConfig::new(2, 5).unwrap();
        config.backoff = 1.0;
        assert_eq!(config.validate(), Err(LimitConfigError::Backoff(1.0)));
    }

    #[test]
    fn registering_twice_on_one_registry_is_an_error_not_a_panic() {
        let registry = Registry::new();
        let config = LimitConfig::new(2, 8).unwrap();
        AdaptiveLimit::new(config.clone(), &registry).unwrap();
        assert!(matches!(
            AdaptiveLimit::new(config, &registry),
            Err(LimitError::Metrics(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn admission_stops_at_the_limit_and_counts_refusals_and_releases() {
        let registry = Registry::new();
        let limit = AdaptiveLimit::new(LimitConfig::new(3, 10).unwrap(), &registry).unwrap();
        // Measuring at start: the floor is the limit.
        assert_eq!(limit.limit(), 3);
        let permits: Vec<_> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
        assert!(limit.try_acquire().is_none());
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_flight(), 3);
        let snapshot = limit.snapshot();
        assert_eq!(snapshot.rejected, 2);
        assert!(snapshot.measuring);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("shout_upstream_in_flight 3"), "{text}");
        assert!(
            text.contains("shout_upstream_limit_rejected_total 2"),
            "{text}"
        );
        assert!(
            text.contains("shout_upstream_concurrency_limit 3"),
            "{text}"
        );
        drop(permits);
        assert_eq!(limit.in_flight(), 0);
        assert!(limit.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_measurement_sets_min_rtt_and_restores_the_initial_limit() {
        let mut config = LimitConfig::new(2, 64).unwrap();
        config.min_rtt_samples = 4;
        config.initial = 30;
        let limit = AdaptiveLimit::new(config, &Registry::new()).unwrap();
        for ms in [40, 20, 30, 25] {
            limit
                .try_acquire()
                .unwrap()
                .success(Duration::from_millis(ms));
        }
        let snapshot = limit.snapshot();
        assert_eq!(
            snapshot.min_rtt_ms,
            Some(30.0),
            "upper median of 20, 25, 30, 40"
        );
        assert!(!snapshot.measuring);
        assert_eq!(limit.limit(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_with_a_dropped_call_backs_off() {
        let mut config = LimitConfig::new(2, 64).unwrap();
        config.min_rtt_samples = 1;
        config.initial = 40;
        let limit = AdaptiveLimit::new(config, &Registry::new()).unwrap();
        limit
            .try_acquire()
            .unwrap()
            .success(Duration::from_millis(20));
        assert_eq!(limit.limit(), 40);
        limit.try_acquire().unwrap().dropped();
        tokio::time::advance(Duration::from_millis(150)).await;
        limit.try_acquire().unwrap().ignore();
        assert_eq!(limit.limit(), 32, "40 * 0.8");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_limit_does_not_grow() {
        let mut config = LimitConfig::new(2, 64).unwrap();
        config.min_rtt_samples = 1;
        config.initial = 20;
        let limit = AdaptiveLimit::new(config, &Registry::new()).unwrap();
        limit
            .try_acquire()
            .unwrap()
            .success(Duration::from_millis(20));
        // One call at a time, at minRTT, for 5 s: the gradient would grow the limit, but one
        // call in flight does not use half of it.
        for _ in 0..250 {
            tokio::time::advance(Duration::from_millis(20)).await;
            limit
                .try_acquire()
                .unwrap()
                .success(Duration::from_millis(20));
        }
        assert_eq!(limit.limit(), 20);
    }

    /// A simulated shoutcloud: 20 ms up to `knee` calls in flight, quadratic beyond; it keeps
    /// the time integral of its in-flight count for the mean.
    #[derive(Debug)]
    struct Upstream {
        knee: AtomicUsize,
        /// Latency without queueing, in milliseconds.
        base_ms: AtomicU64,
        state: Mutex<Gauge>,
    }

    #[derive(Debug)]
    struct Gauge {
        in_flight: usize,
        since: Instant,
        /// Sum of in-flight x seconds since `started`.
        area: f64,
        started: Instant,
        calls: u64,
    }

    impl Upstream {
        fn new(knee: usize) -> Arc<Self> {
            let now = Instant::now();
            Arc::new(Self {
                knee: AtomicUsize::new(knee),
                base_ms: AtomicU64::new(20),
                state: Mutex::new(Gauge {
                    in_flight: 0,
                    since: now,
                    area: 0.0,
                    started: now,
                    calls: 0,
                }),
            })
        }

        fn step(&self, delta: isize) -> usize {
            let mut gauge = self.state.lock().unwrap();
            let now = Instant::now();
            gauge.area += gauge.in_flight as f64 * (now - gauge.since).as_secs_f64();
            gauge.since = now;
            gauge.in_flight = gauge.in_flight.checked_add_signed(delta).unwrap();
            if delta > 0 {
                gauge.calls += 1;
            }
            gauge.in_flight
        }

        async fn call(&self) -> Duration {
            let n = self.step(1);
            let knee = self.knee.load(Ordering::Relaxed);
            let base = Duration::from_millis(self.base_ms.load(Ordering::Relaxed));
            let latency = if n <= knee {
                base
            } else {
                let over = n as f64 / knee as f64;
                base.mul_f64(over * over)
            };
            tokio::time::sleep(latency).await;
            self.step(-1);
            latency
        }

        /// Starts a new measurement period; returns the mean in flight and the calls of the
        /// period that ends.
        fn reset(&self) -> (f64, u64) {
            let mut gauge = self.state.lock().unwrap();
            let now = Instant::now();
            gauge.area += gauge.in_flight as f64 * (now - gauge.since).as_secs_f64();
            let mean = gauge.area / (now - gauge.started).as_secs_f64();
            let calls = gauge.calls;
            gauge.area = 0.0;
            gauge.since = now;
            gauge.started = now;
            gauge.calls = 0;
            (mean, calls)
        }
    }

    /// `callers` clients that each send a request as soon as the previous one is answered: by
    /// shoutcloud with a permit, or by the fallback 1 ms after a refusal.
    fn clients(
        limit: &AdaptiveLimit,
        upstream: &Arc<Upstream>,
        callers: usize,
        stop: Instant,
    ) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
        (0..callers)
            .map(|_| {
                let limit = limit.clone();
                let upstream = Arc::clone(upstream);
                tokio::spawn(async move {
                    let (mut upstream_answers, mut fallbacks) = (0u64, 0u64);
                    while Instant::now() < stop {
                        match limit.try_acquire() {
                            Some(permit) => {
                                let latency = upstream.call().await;
                                permit.success(latency);
                                upstream_answers += 1;
                            }
                            None => {
                                fallbacks += 1;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    (upstream_answers, fallbacks)
                })
            })
            .collect()
    }

    fn pod() -> AdaptiveLimit {
        // The proposed defaults: floor 2, ceiling 128 (the old bulkhead).
        AdaptiveLimit::new(LimitConfig::new(2, 128).unwrap(), &Registry::new()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_pod_keeps_the_mean_in_flight_within_twice_the_knee_and_recovers_when_latency_drops()
     {
        let upstream = Upstream::new(8);
        let limit = pod();
        let stop = Instant::now() + Duration::from_secs(40);
        let tasks = clients(&limit, &upstream, 48, stop);

        // Settle, then measure 15 s of the knee of 8.
        tokio::time::sleep(Duration::from_secs(5)).await;
        upstream.reset();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let (congested_mean, congested_calls) = upstream.reset();
        let congested_limit = limit.limit();

        // shoutcloud gets faster: no knee below the 48 clients.
        upstream.knee.store(1_000, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        upstream.reset();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let (fast_mean, _) = upstream.reset();
        let fast_limit = limit.limit();

        let mut fallbacks = 0;
        for task in tasks {
            fallbacks += task.await.unwrap().1;
        }
        println!(
            "knee 8: mean in flight {congested_mean:.2}, {congested_calls} calls in 15 s, limit \
             {congested_limit}; no knee: mean in flight {fast_mean:.2}, limit {fast_limit}; \
             {fallbacks} fallbacks"
        );
        assert!(congested_mean <= 16.0, "mean in flight {congested_mean}");
        // Far from starved: at least 6 of the knee's 8 no-queueing slots in use (8 calls per
        // 20 ms is 6,000 calls in 15 s).
        assert!(congested_mean >= 6.0, "mean in flight {congested_mean}");
        assert!(congested_calls >= 4_000, "{congested_calls} calls");
        // Recovered: the 48 clients are (nearly) all served by shoutcloud again.
        assert!(fast_mean >= 40.0, "mean in flight {fast_mean}");
        assert!(fast_limit >= 48, "limit {fast_limit}");
    }

    #[tokio::test(start_paused = true)]
    async fn three_pods_sharing_an_upstream_keep_its_mean_in_flight_within_twice_the_knee() {
        let upstream = Upstream::new(8);
        let pods = [pod(), pod(), pod()];
        let stop = Instant::now() + Duration::from_secs(20);
        let tasks: Vec<Vec<_>> = pods
            .iter()
            .map(|limit| clients(limit, &upstream, 48, stop))
            .collect();

        tokio::time::sleep(Duration::from_secs(5)).await;
        upstream.reset();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let (mean, calls) = upstream.reset();

        let mut served = Vec::new();
        for pod_tasks in tasks {
            let mut answers = 0;
            for task in pod_tasks {
                answers += task.await.unwrap().0;
            }
            served.push(answers);
        }
        println!("three pods: mean in flight {mean:.2}, {calls} calls in 15 s, per pod {served:?}");
        assert!(mean <= 16.0, "mean in flight {mean}");
        assert!(mean >= 6.0, "mean in flight {mean}");
        // A fair share: no pod gets less than half of an equal third.
        let total: u64 = served.iter().sum();
        for answers in &served {
            assert!(*answers * 6 >= total, "per pod {served:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rise_in_base_latency_is_learnt_at_the_next_min_rtt_measurement() {
        let upstream = Upstream::new(8);
        let mut config = LimitConfig::new(2, 128).unwrap();
        config.min_rtt_interval = Duration::from_secs(10);
        let limit = AdaptiveLimit::new(config, &Registry::new()).unwrap();
        let stop = Instant::now() + Duration::from_secs(50);
        let tasks = clients(&limit, &upstream, 48, stop);
        tokio::time::sleep(Duration::from_secs(10)).await;

        // shoutcloud moves to a slower region: 100 ms without queueing, same knee. Against a
        // stale 20 ms reference the gradient would pin the limit at the floor.
        upstream.base_ms.store(100, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(25)).await;
        upstream.reset();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let (mean, calls) = upstream.reset();
        let snapshot = limit.snapshot();
        for task in tasks {
            task.await.unwrap();
        }

        println!("base 100 ms: mean in flight {mean:.2}, {calls} calls in 15 s, {snapshot:?}");
        let min_rtt = snapshot.min_rtt_ms.unwrap();
        assert!((100.0..130.0).contains(&min_rtt), "minRTT {min_rtt} ms");
        assert!((6.0..=16.0).contains(&mean), "mean in flight {mean}");
        // Steady, not swinging: at least half the knee's throughput (8 calls per 100 ms is
        // 1,200 calls in 15 s). A limit swinging between the floor and 30 made 370.
        assert!(calls >= 600, "{calls} calls");
    }
}
