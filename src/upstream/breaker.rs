//! The circuit breaker: one state machine on tokio's clock that owns closed / open / half-open,
//! the single half-open probe and the growing open period.
//!
//! # States and their contracts
//!
//! - **Closed**: every attempt runs; each verdict is recorded. failsafe's policies (consecutive
//!   failures OR a success rate over a window) decide when a failure trips the breaker and for
//!   how long.
//! - **Open** until a point in time: no attempt runs; callers get [`Rejection::Open`]. The open
//!   period starts at `open` and doubles with each failed probe, up to `max_open`; a successful
//!   probe resets it.
//! - **HalfOpen**: exactly ONE attempt (the probe) runs at a time; every other caller gets
//!   [`Rejection::ProbeInFlight`]. The probe's success closes the breaker, its failure opens it
//!   again for a longer period.
//!
//! # One source of truth
//!
//! The state lives in one place, `Machine`, behind one lock; failsafe's policies are fed
//! verdicts and only answer "trip now, for this long?". Nothing is rebuilt from callbacks. Time
//! moves the state too: an open period that has passed is half-open whether or not a call
//! arrives, because every read ([`Breaker::state`], the scrape, `/status`) settles the state
//! against the clock first. Every transition is logged once, under the lock that makes it.
//!
//! A [`Permit`] dropped without a verdict (its attempt was cut short) records a failure and
//! always frees the probe.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use failsafe::FailurePolicy;
use failsafe::failure_policy::{
    ConsecutiveFailures, OrElse, SuccessRateOverTimeWindow, consecutive_failures,
    success_rate_over_time_window,
};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use strum::IntoEnumIterator;
use tokio::time::Instant;

/// The breaker's state as operators see it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum BreakerState {
    /// Attempts run.
    Closed,
    /// Attempts are rejected until the open period passes.
    Open,
    /// One probe attempt runs; the rest are rejected.
    HalfOpen,
}

/// Why the breaker refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The breaker is open.
    Open,
    /// The breaker is half-open and its one probe is already running.
    ProbeInFlight,
}

/// What one attempt says about the upstream's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It answered as a healthy upstream does.
    Healthy,
    /// It is sick: connect error, reset, timeout, 5xx, malformed body, mass disagreement.
    Sick,
    /// Says nothing about its health (a 4xx for one input, one disagreement): not recorded.
    Neutral,
}

/// Settings of the breaker.
#[derive(Debug, Clone)]
pub(crate) struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub(crate) consecutive_failures: u32,
    /// Success rate under which the breaker opens (0..=1).
    pub(crate) min_success_rate: f64,
    /// Calls needed in the window before the rate can open it.
    pub(crate) min_calls: u32,
    /// Window of the success rate (whole seconds; failsafe's resolution).
    pub(crate) window: Duration,
    /// First open period.
    pub(crate) open: Duration,
    /// Longest open period.
    pub(crate) max_open: Duration,
}

/// Open durations that double from `open` to `max_open`, at millisecond resolution (failsafe's
/// own backoffs work in whole seconds).
#[derive(Debug, Clone)]
pub(crate) struct OpenDurations {
    /// The next duration to hand out.
    next: Duration,
    /// The cap.
    max: Duration,
}

impl OpenDurations {
    /// Durations starting at `start`, doubling up to `max`.
    pub(crate) fn new(start: Duration, max: Duration) -> Self {
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
        self.next = current.saturating_mul(2).min(self.max);
        Some(current)
    }
}

type Policy = OrElse<SuccessRateOverTimeWindow<OpenDurations>, ConsecutiveFailures<OpenDurations>>;

/// Where the machine is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Attempts run.
    Closed,
    /// No attempt runs before `until`; `period` is how long this opening lasts.
    Open { until: Instant, period: Duration },
    /// One probe may run; `period` is the open period it came from, reused if the policy names
    /// none for the next opening.
    HalfOpen {
        probe_in_flight: bool,
        period: Duration,
    },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// The one state and the policies that decide when to trip.
struct Machine {
    /// Where the breaker is.
    phase: Phase,
    /// failsafe's trip decision, fed verdicts.
    policy: Policy,
}

/// The breaker's metric families.
#[derive(Debug)]
struct BreakerMetrics {
    /// `shout_breaker_state{state}`: 1 for the current state, 0 for the others.
    state: IntGaugeVec,
    /// `shout_breaker_transitions_total{state}`, by target state.
    transitions: IntCounterVec,
    /// `shout_breaker_rejected_total`.
    rejected: IntCounter,
}

impl BreakerMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let state = IntGaugeVec::new(
            Opts::new(
                "shout_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
            ),
            &["state"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "shout_breaker_transitions_total",
                "Circuit breaker transitions by target state.",
            ),
            &["state"],
        )?;
        let rejected = IntCounter::new(
            "shout_breaker_rejected_total",
            "Upstream attempts refused by the circuit breaker.",
        )?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        for s in BreakerState::iter() {
            let label: &'static str = s.into();
            transitions.with_label_values(&[label]);
        }
        let metrics = Self {
            state,
            transitions,
            rejected,
        };
        metrics.show(BreakerState::Closed);
        Ok(metrics)
    }

    fn show(&self, current: BreakerState) {
        for s in BreakerState::iter() {
            let label: &'static str = s.into();
            self.state
                .with_label_values(&[label])
                .set(i64::from(s == current));
        }
    }
}

/// Shared by every clone of the breaker.
struct Inner {
    /// The state machine.
    machine: Mutex<Machine>,
    /// Its metrics.
    metrics: BreakerMetrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").finish_non_exhaustive()
    }
}

/// The circuit breaker guarding the upstream; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    inner: Arc<Inner>,
}

/// A snapshot of the breaker for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct BreakerSnapshot {
    /// Current state.
    pub(crate) state: BreakerState,
    /// Whether a half-open probe is running.
    pub(crate) probe_in_flight: bool,
    /// Time left in the open period, in milliseconds (0 unless open).
    pub(crate) open_ms_left: u64,
}

impl Breaker {
    /// A closed breaker whose metrics are registered on `registry`.
    pub(crate) fn new(config: &BreakerConfig, registry: &Registry) -> prometheus::Result<Self> {
        let durations = OpenDurations::new(config.open, config.max_open);
        let policy = success_rate_over_time_window(
            config.min_success_rate,
            config.min_calls,
            config.window,
            durations.clone(),
        )
        .or_else(consecutive_failures(config.consecutive_failures, durations));
        Ok(Self {
            inner: Arc::new(Inner {
                machine: Mutex::new(Machine {
                    phase: Phase::Closed,
                    policy,
                }),
                metrics: BreakerMetrics::register(registry)?,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Every transition is a single assignment of `phase`, so a panic elsewhere cannot leave
        // the machine half-changed: a poisoned lock is used as is.
        let mut machine = self
            .inner
            .machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.settle(&mut machine);
        machine
    }

    /// Moves an open breaker whose period has passed to half-open.
    fn settle(&self, machine: &mut Machine) {
        if let Phase::Open { until, period } = machine.phase
            && Instant::now() >= until
        {
            self.go(
                machine,
                Phase::HalfOpen {
                    probe_in_flight: false,
                    period,
                },
            );
        }
    }

    /// The one place the phase changes; logs and counts a change of state once.
    fn go(&self, machine: &mut Machine, to: Phase) {
        let from = machine.phase.state();
        machine.phase = to;
        let to = to.state();
        if from == to {
            return;
        }
        let (from_label, to_label): (&'static str, &'static str) = (from.into(), to.into());
        self.inner
            .metrics
            .transitions
            .with_label_values(&[to_label])
            .inc();
        self.inner.metrics.show(to);
        match to {
            BreakerState::Open => tracing::warn!(
                from = from_label,
                to = to_label,
                "circuit breaker opened: upstream calls stop; answers come from the fallback"
            ),
            BreakerState::HalfOpen => tracing::info!(
                from = from_label,
                to = to_label,
                "circuit breaker half-open: one probe may go to the upstream"
            ),
            BreakerState::Closed => tracing::info!(
                from = from_label,
                to = to_label,
                "circuit breaker closed: upstream calls resume"
            ),
        }
    }

    /// Asks to run one attempt: the only breaker check on the request path. The permit must be
    /// given the attempt's verdict.
    pub(crate) fn try_acquire(&self) -> Result<Permit, Rejection> {
        let mut machine = self.lock();
        let rejection = match machine.phase {
            Phase::Closed => {
                return Ok(Permit {
                    breaker: self.clone(),
                    is_probe: false,
                    recorded: false,
                });
            }
            Phase::HalfOpen {
                probe_in_flight: false,
                period,
            } => {
                machine.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                    period,
                };
                return Ok(Permit {
                    breaker: self.clone(),
                    is_probe: true,
                    recorded: false,
                });
            }
            Phase::HalfOpen { .. } => Rejection::ProbeInFlight,
            Phase::Open { .. } => Rejection::Open,
        };
        drop(machine);
        self.inner.metrics.rejected.inc();
        Err(rejection)
    }

    fn record(&self, is_probe: bool, verdict: Verdict) {
        let mut machine = self.lock();
        let now = Instant::now();
        match (machine.phase, verdict) {
            (Phase::Closed, Verdict::Healthy) => machine.policy.record_success(),
            (Phase::Closed, Verdict::Sick) => {
                if let Some(period) = machine.policy.mark_dead_on_failure() {
                    self.go(&mut machine, open_for(now, period));
                }
            }
            (Phase::HalfOpen { period, .. }, verdict) if is_probe => match verdict {
                Verdict::Healthy => {
                    machine.policy.revived();
                    self.go(&mut machine, Phase::Closed);
                }
                Verdict::Sick => {
                    let period = machine.policy.mark_dead_on_failure().unwrap_or(period);
                    self.go(&mut machine, open_for(now, period));
                }
                // The probe learned nothing: free it so the next caller probes.
                Verdict::Neutral => {
                    machine.phase = Phase::HalfOpen {
                        probe_in_flight: false,
                        period,
                    };
                }
            },
            // Neutral verdicts, and late results of attempts admitted before the breaker
            // opened: they say nothing about the current period.
            _ => {}
        }
    }

    /// The current state, settled against the clock.
    pub(crate) fn state(&self) -> BreakerState {
        self.lock().phase.state()
    }

    /// Settles the state against the clock and refreshes the state gauge (called at scrape).
    pub(crate) fn refresh(&self) {
        let state = self.state();
        self.inner.metrics.show(state);
    }

    /// State and probe for operators.
    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let machine = self.lock();
        let (probe_in_flight, open_ms_left) = match machine.phase {
            Phase::Closed => (false, 0),
            Phase::Open { until, .. } => (
                false,
                u64::try_from(until.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX),
            ),
            Phase::HalfOpen {
                probe_in_flight, ..
            } => (probe_in_flight, 0),
        };
        BreakerSnapshot {
            state: machine.phase.state(),
            probe_in_flight,
            open_ms_left,
        }
    }
}

fn open_for(now: Instant, period: Duration) -> Phase {
    Phase::Open {
        // An open period too long for the clock is as good as forever; the cap keeps it sane.
        until: now
            .checked_add(period)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)),
        period,
    }
}

/// Permission to run one attempt; give it the attempt's verdict with [`Permit::record`].
/// Dropping it without one records a failure (the attempt was cut short) and frees the probe.
#[derive(Debug)]
pub(crate) struct Permit {
    /// The breaker to report to.
    breaker: Breaker,
    /// Whether this attempt is the half-open probe.
    is_probe: bool,
    /// Whether a verdict was recorded already.
    recorded: bool,
}

impl Permit {
    /// Records the attempt's verdict.
    pub(crate) fn record(mut self, verdict: Verdict) {
        self.recorded = true;
        self.breaker.record(self.is_probe, verdict);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.is_probe, Verdict::Sick);
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

    fn breaker(open_ms: u64) -> (Breaker, Registry) {
        let registry = Registry::new();
        let breaker = Breaker::new(&config(open_ms), &registry).expect("registers");
        (breaker, registry)
    }

    fn fail_n(breaker: &Breaker, n: usize) {
        for _ in 0..n {
            breaker
                .try_acquire()
                .expect("permitted")
                .record(Verdict::Sick);
        }
    }

    /// The sample of `name{state=...}`, gauge or counter; -1 when absent.
    fn sample(registry: &Registry, name: &str, state: &str) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .find(|metric| metric.get_label().iter().any(|l| l.value() == state))
            .map_or(-1.0, |metric| {
                if name.ends_with("_total") {
                    metric.get_counter().value()
                } else {
                    metric.get_gauge().value()
                }
            })
    }

    fn rejected(registry: &Registry) -> f64 {
        registry
            .gather()
            .iter()
            .find(|family| family.name() == "shout_breaker_rejected_total")
            .map_or(-1.0, |family| family.get_metric()[0].get_counter().value())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_rejects() {
        let (breaker, registry) = breaker(500);
        fail_n(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail_n(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.try_acquire().unwrap_err(), Rejection::Open);
        assert_eq!(rejected(&registry), 1.0);
        assert_eq!(sample(&registry, "shout_breaker_state", "open"), 1.0);
        assert_eq!(sample(&registry, "shout_breaker_state", "closed"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_verdicts_never_trip_it() {
        let (breaker, _registry) = breaker(500);
        for _ in 0..100 {
            breaker
                .try_acquire()
                .expect("closed")
                .record(Verdict::Neutral);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_open_breaker_is_half_open_once_its_period_passed() {
        let (breaker, registry) = breaker(500);
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        // No call arrived; a scrape alone sees the new state.
        breaker.refresh();
        assert_eq!(sample(&registry, "shout_breaker_state", "open"), 0.0);
        assert_eq!(sample(&registry, "shout_breaker_state", "half_open"), 1.0);
        assert_eq!(breaker.snapshot().state, BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_one_probe_then_closes_on_success() {
        let (breaker, _registry) = breaker(500);
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(501)).await;
        let probe = breaker.try_acquire().expect("the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.snapshot().probe_in_flight);
        for _ in 0..10 {
            assert_eq!(breaker.try_acquire().unwrap_err(), Rejection::ProbeInFlight);
        }
        probe.record(Verdict::Healthy);
        assert_eq!(breaker.state(), BreakerState::Closed);
        let a = breaker.try_acquire().expect("closed admits all");
        let b = breaker.try_acquire().expect("closed admits all");
        a.record(Verdict::Healthy);
        b.record(Verdict::Healthy);
        // Revived: the failure count starts over.
        fail_n(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_doubled_period() {
        let (breaker, registry) = breaker(500);
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        breaker
            .try_acquire()
            .expect("the probe")
            .record(Verdict::Sick);
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(breaker.try_acquire().unwrap_err(), Rejection::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        breaker
            .try_acquire()
            .expect("second period is 1000 ms")
            .record(Verdict::Healthy);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(
            sample(&registry, "shout_breaker_transitions_total", "open"),
            2.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_neutral_probe_frees_the_probe_and_stays_half_open() {
        let (breaker, _registry) = breaker(500);
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        breaker
            .try_acquire()
            .expect("the probe")
            .record(Verdict::Neutral);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_ok(), "the next caller probes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_counts_as_failure_and_frees_the_gate() {
        let (breaker, _registry) = breaker(500);
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(breaker.try_acquire().expect("the probe"));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.snapshot().probe_in_flight);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_failure_of_an_attempt_admitted_while_closed_does_not_extend_the_open_period() {
        let (breaker, _registry) = breaker(500);
        let late = breaker.try_acquire().expect("closed");
        fail_n(&breaker, 3);
        tokio::time::advance(Duration::from_millis(400)).await;
        late.record(Verdict::Sick);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    // Threads race on the real clock here: outside a runtime tokio's `Instant` is std's.
    #[test]
    fn concurrent_callers_get_exactly_one_probe() {
        let (breaker, _registry) = breaker(1);
        fail_n(&breaker, 3);
        #[allow(
            clippy::disallowed_methods,
            reason = "a plain test thread, no tokio worker"
        )]
        std::thread::sleep(Duration::from_millis(5));
        let start = Arc::new(std::sync::Barrier::new(8));
        let granted: Vec<usize> = (0..8)
            .map(|_| {
                let breaker = breaker.clone();
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        // Hold every permit granted, so a second probe would show.
                        if let Ok(permit) = breaker.try_acquire() {
                            held.push(permit);
                        }
                    }
                    let granted = held.len();
                    for permit in held {
                        std::mem::forget(permit);
                    }
                    granted
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("no panic"))
            .collect();
        assert_eq!(granted.iter().sum::<usize>(), 1, "{granted:?}");
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
