//! The circuit breaker: `failsafe`'s state machine, plus the parts it lacks.
//!
//! # States and their contracts
//!
//! - **Closed**: every attempt runs; each result is recorded. The breaker opens after
//!   `consecutive_failures` failures in a row, OR when the success rate over `window` falls
//!   below `min_success_rate` with at least `min_calls` calls in it.
//! - **Open**: no attempt runs; callers get [`Rejection::Open`] and answer with the fallback.
//!   Lasts `open` after the first trip, doubling with each trip that follows a failed probe, up
//!   to `max_open`; a success resets it.
//! - **HalfOpen**: exactly ONE attempt (the probe) runs at a time; every other caller gets
//!   [`Rejection::ProbeInFlight`]. The probe's success closes the breaker, its failure opens it
//!   again.
//!
//! # What we add to failsafe 1.3, and why
//!
//! - A probe gate: failsafe admits *every* call while half-open until the first result, which
//!   lets a burst of traffic hit an upstream that is barely back. [`Breaker::permit`] admits one.
//! - Open durations in milliseconds: failsafe's exponential backoffs work in whole seconds and
//!   panic below one second. Its policies take any `Iterator<Item = Duration>`, so
//!   [`OpenDurations`] supplies doubling durations at any resolution.
//! - A readable state: failsafe has no getter, so the state is rebuilt from its `Instrument`
//!   callbacks, which also log every transition once and update the metrics.
//! - Dropped attempts count: failsafe records nothing for a future that is dropped. A [`Permit`]
//!   that is dropped without a recorded result records a failure (the attempt was cut short by
//!   the deadline, which is a timeout) and always releases the probe gate.
//!
//! The instrument callbacks run right after failsafe releases its lock, so for an instant the
//! rebuilt state can lag failsafe's. The gate is safe against it: any caller permitted while
//! the rebuilt state is not `Closed` must win the probe gate to run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use failsafe::failure_policy::{
    ConsecutiveFailures, OrElse, SuccessRateOverTimeWindow, consecutive_failures,
    success_rate_over_time_window,
};
use failsafe::{FailurePolicy, StateMachine};

use crate::metrics::Metrics;

/// The breaker's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Attempts run.
    Closed,
    /// Attempts are rejected until the open period passes.
    Open,
    /// One probe attempt runs; the rest are rejected.
    HalfOpen,
}

impl BreakerState {
    /// All states, for exporting one 0/1 series each.
    pub const ALL: [BreakerState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
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

    fn to_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// Why the breaker refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The breaker is open.
    Open,
    /// The breaker is half-open and its one probe is already running.
    ProbeInFlight,
}

/// Settings of the breaker.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Success rate under which the breaker opens (0..=1).
    pub min_success_rate: f64,
    /// Calls needed in the window before the rate can open it.
    pub min_calls: u32,
    /// Window of the success rate (whole seconds; failsafe's resolution).
    pub window: Duration,
    /// First open period.
    pub open: Duration,
    /// Longest open period.
    pub max_open: Duration,
}

/// Open durations that double from `open` to `max_open`, at millisecond resolution.
#[derive(Debug, Clone)]
pub struct OpenDurations {
    /// The next duration to hand out.
    next: Duration,
    /// The cap.
    max: Duration,
}

impl OpenDurations {
    /// Durations starting at `start`, doubling up to `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        Self {
            next: start.min(max),
            max,
        }
    }
}

impl Iterator for OpenDurations {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (current * 2).min(self.max);
        Some(current)
    }
}

type Policy = OrElse<SuccessRateOverTimeWindow<OpenDurations>, ConsecutiveFailures<OpenDurations>>;

/// State shared between the breaker and failsafe's instrument callbacks.
#[derive(Debug)]
struct Shared {
    /// The state rebuilt from the callbacks (a [`BreakerState`] as u8).
    state: AtomicU8,
    /// The half-open probe gate: true while a probe runs.
    probe_in_flight: AtomicBool,
    /// Attempts refused, for `/status`.
    rejected: AtomicU64,
    /// Times the breaker opened, for `/status`.
    trips: AtomicU64,
    /// Metrics to keep in step with the state.
    metrics: Arc<Metrics>,
    /// Reference point of `next_open_check_us`.
    epoch: std::time::Instant,
    /// While open, [`Breaker::admits`] asks failsafe (and takes its lock) at most once per
    /// [`OPEN_RECHECK`]; when shoutcloud is down every request passes here.
    next_open_check_us: AtomicU64,
}

/// How often an open breaker's pre-check asks failsafe whether the open period is over. It
/// delays the half-open probe by at most this much.
const OPEN_RECHECK: Duration = Duration::from_millis(1);

impl Shared {
    fn transition(&self, to: BreakerState) {
        let from = BreakerState::from_u8(self.state.swap(to.to_u8(), Ordering::AcqRel));
        if from == to {
            return;
        }
        self.metrics.breaker_transition(from, to);
        match to {
            BreakerState::Open => {
                self.trips.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker opened: upstream calls stop; answers come from the fallback"
                );
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker half-open: one probe goes to the upstream"
                );
            }
            BreakerState::Closed => {
                tracing::info!(
                    from = from.as_str(),
                    to = to.as_str(),
                    "circuit breaker closed: upstream calls resume"
                );
            }
        }
    }
}

/// failsafe's `Instrument`: rebuilds the state from its callbacks.
#[derive(Debug, Clone)]
struct Transitions(Arc<Shared>);

impl failsafe::Instrument for Transitions {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.0.transition(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.0.transition(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.0.transition(BreakerState::Closed);
    }
}

/// The circuit breaker guarding the upstream.
#[derive(Debug, Clone)]
pub struct Breaker {
    /// failsafe's state machine: failure accounting and open periods.
    machine: StateMachine<Policy, Transitions>,
    /// Our state, gate and counters.
    shared: Arc<Shared>,
}

/// A snapshot of the breaker for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: BreakerState,
    /// Whether a half-open probe is running.
    pub probe_in_flight: bool,
    /// Attempts refused since start.
    pub rejected: u64,
    /// Times it opened since start.
    pub trips: u64,
}

impl Breaker {
    /// Builds a closed breaker.
    pub fn new(config: &BreakerConfig, metrics: Arc<Metrics>) -> Self {
        let durations = OpenDurations::new(config.open, config.max_open);
        let policy = success_rate_over_time_window(
            config.min_success_rate,
            config.min_calls,
            config.window,
            durations.clone(),
        )
        .or_else(consecutive_failures(config.consecutive_failures, durations));
        metrics.breaker_transition(BreakerState::Closed, BreakerState::Closed);
        let shared = Arc::new(Shared {
            state: AtomicU8::new(BreakerState::Closed.to_u8()),
            probe_in_flight: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            metrics,
            epoch: std::time::Instant::now(),
            next_open_check_us: AtomicU64::new(0),
        });
        let machine = failsafe::Config::new()
            .failure_policy(policy)
            .instrument(Transitions(shared.clone()))
            .build();
        Self { machine, shared }
    }

    /// Asks to run one attempt. The returned permit must be given the attempt's result.
    pub fn permit(&self) -> Result<Permit, Rejection> {
        if !self.machine.is_call_permitted() {
            return Err(self.reject(Rejection::Open));
        }
        let state = BreakerState::from_u8(self.shared.state.load(Ordering::Acquire));
        let is_probe = state != BreakerState::Closed;
        if is_probe
            && self
                .shared
                .probe_in_flight
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(self.reject(Rejection::ProbeInFlight));
        }
        Ok(Permit {
            breaker: self.clone(),
            is_probe,
            recorded: false,
        })
    }

    /// Whether an attempt would be permitted now, without taking a permit: the cheap pre-check
    /// that lets an open breaker answer from the fallback before any work is spawned. It still
    /// moves an expired open period to half-open, so the probe is not delayed.
    pub fn admits(&self) -> Result<(), Rejection> {
        // Closed, failsafe admits every call, and the attempt's `permit` asks it anyway: no need
        // to take its lock twice per miss.
        if self.state() == BreakerState::Closed {
            return Ok(());
        }
        if self.state() == BreakerState::Open {
            let now = u64::try_from(self.shared.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            if now < self.shared.next_open_check_us.load(Ordering::Relaxed) {
                return Err(self.reject(Rejection::Open));
            }
            let next = now.saturating_add(OPEN_RECHECK.as_micros() as u64);
            self.shared
                .next_open_check_us
                .store(next, Ordering::Relaxed);
        }
        if !self.machine.is_call_permitted() {
            return Err(self.reject(Rejection::Open));
        }
        if self.state() != BreakerState::Closed
            && self.shared.probe_in_flight.load(Ordering::Acquire)
        {
            return Err(self.reject(Rejection::ProbeInFlight));
        }
        Ok(())
    }

    fn reject(&self, why: Rejection) -> Rejection {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.breaker_rejected.inc();
        why
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// Counters and state for operators.
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state(),
            probe_in_flight: self.shared.probe_in_flight.load(Ordering::Acquire),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            trips: self.shared.trips.load(Ordering::Relaxed),
        }
    }
}

/// Permission to run one attempt; record its result with [`Permit::success`] or
/// [`Permit::failure`], or give it back unused with [`Permit::cancel`]. Dropping it unrecorded
/// records a failure (the attempt was cut short).
#[derive(Debug)]
pub struct Permit {
    /// The breaker to report to.
    breaker: Breaker,
    /// Whether this attempt holds the half-open probe gate.
    is_probe: bool,
    /// Whether a result was recorded already.
    recorded: bool,
}

impl Permit {
    /// Records a successful attempt.
    pub fn success(mut self) {
        self.recorded = true;
        self.breaker.machine.on_success();
    }

    /// Records a failed attempt.
    pub fn failure(mut self) {
        self.recorded = true;
        self.breaker.machine.on_error();
    }

    /// Gives the permit back unused: the attempt did not run, so nothing is recorded.
    pub fn cancel(mut self) {
        self.recorded = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.machine.on_error();
        }
        if self.is_probe {
            self.breaker
                .shared
                .probe_in_flight
                .store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(open_ms: u64) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            min_success_rate: 0.5,
            min_calls: 100,
            window: Duration::from_secs(10),
            open: Duration::from_millis(open_ms),
            max_open: Duration::from_millis(open_ms * 4),
        }
    }

    fn breaker(open_ms: u64) -> Breaker {
        Breaker::new(&config(open_ms), Arc::new(Metrics::new()))
    }

    fn fail_n(breaker: &Breaker, n: usize) {
        for _ in 0..n {
            breaker.permit().expect("permitted").failure();
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_rejects() {
        failsafe::clock::freeze(|_clock| {
            let breaker = breaker(500);
            fail_n(&breaker, 2);
            assert_eq!(breaker.state(), BreakerState::Closed);
            fail_n(&breaker, 1);
            assert_eq!(breaker.state(), BreakerState::Open);
            assert_eq!(breaker.permit().unwrap_err(), Rejection::Open);
            assert_eq!(breaker.snapshot().rejected, 1);
        });
    }

    #[test]
    fn half_open_admits_exactly_one_probe_at_a_time() {
        failsafe::clock::freeze(|clock| {
            let breaker = breaker(500);
            fail_n(&breaker, 3);
            clock.advance(Duration::from_millis(501));
            let probe = breaker.permit().expect("the probe");
            assert_eq!(breaker.state(), BreakerState::HalfOpen);
            for _ in 0..10 {
                assert_eq!(breaker.permit().unwrap_err(), Rejection::ProbeInFlight);
            }
            probe.success();
            assert_eq!(breaker.state(), BreakerState::Closed);
            let a = breaker.permit().expect("closed admits all");
            let b = breaker.permit().expect("closed admits all");
            a.success();
            b.success();
        });
    }

    #[test]
    fn a_failed_probe_reopens_for_a_doubled_period() {
        failsafe::clock::freeze(|clock| {
            let breaker = breaker(500);
            fail_n(&breaker, 3);
            clock.advance(Duration::from_millis(501));
            breaker.permit().expect("the probe").failure();
            assert_eq!(breaker.state(), BreakerState::Open);
            clock.advance(Duration::from_millis(600));
            assert_eq!(
                breaker.permit().unwrap_err(),
                Rejection::Open,
                "second period is 1000 ms"
            );
            clock.advance(Duration::from_millis(401));
            assert!(breaker.permit().is_ok());
        });
    }

    #[test]
    fn a_dropped_probe_counts_as_failure_and_frees_the_gate() {
        failsafe::clock::freeze(|clock| {
            let breaker = breaker(500);
            fail_n(&breaker, 3);
            clock.advance(Duration::from_millis(501));
            drop(breaker.permit().expect("the probe"));
            assert_eq!(breaker.state(), BreakerState::Open);
            assert!(!breaker.snapshot().probe_in_flight);
        });
    }

    #[test]
    fn open_durations_double_up_to_the_cap() {
        let got: Vec<_> = OpenDurations::new(Duration::from_millis(300), Duration::from_secs(1))
            .take(4)
            .collect();
        let ms: Vec<u128> = got.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![300, 600, 1000, 1000]);
    }
}
