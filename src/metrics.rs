//! Prometheus metrics: one registry, served on the admin listener's `/metrics`.
//!
//! HTTP server metrics are registered by `api::observe`, connection metrics by `server`, on
//! this registry. Our own metrics carry the `shout_` prefix. Series with a fixed, small label
//! set (answers by source, fallbacks by reason, attempts by outcome) are resolved once at start
//! so the hot path does no label lookup.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::shout::Source;
use crate::shout::resolve::FallbackReason;
use crate::upstream::breaker::BreakerState;
use crate::upstream::error::AttemptOutcome;

/// The OpenTelemetry recommended buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
    /// Upstream attempts by outcome, indexed by [`AttemptOutcome`].
    attempts: [IntCounter; AttemptOutcome::ALL.len()],
    /// Upstream attempt durations by outcome, indexed by [`AttemptOutcome`].
    attempt_duration: [Histogram; AttemptOutcome::ALL.len()],
    /// Retries granted.
    pub retries: IntCounter,
    /// Retries refused because the budget was spent.
    pub retry_budget_exhausted: IntCounter,
    /// One 0/1 series per breaker state.
    breaker_state: IntGaugeVec,
    /// Breaker transitions by target state.
    breaker_transitions: IntCounterVec,
    /// Attempts the breaker refused.
    pub breaker_rejected: IntCounter,
    /// Answers by source, indexed by [`Source`].
    answers: [IntCounter; Source::ALL.len()],
    /// Fallback answers by reason, indexed by [`FallbackReason`].
    fallbacks: [IntCounter; FallbackReason::ALL.len()],
    /// Cache lookups that found an answer.
    pub cache_hits: IntCounter,
    /// Cache lookups that did not.
    pub cache_misses: IntCounter,
    /// Cached answers (refreshed at scrape time).
    pub cache_entries: IntGauge,
    /// Weighed size of the cache in bytes (refreshed at scrape time).
    pub cache_weighted_bytes: IntGauge,
    /// Upstream calls holding a bulkhead permit.
    pub bulkhead_in_flight: IntGauge,
    /// The bulkhead's size.
    pub bulkhead_capacity: IntGauge,
    /// Requests that found the bulkhead full.
    pub bulkhead_rejected: IntCounter,
    /// The configured overall deadline, for alerts comparing latency with it.
    pub deadline_seconds: Gauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants of this module, so a registration error is a programming error
    // caught by the first test that builds `Metrics`.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let attempts_vec = counter_vec(
            &registry,
            "shout_upstream_attempts_total",
            "Upstream (shoutcloud) attempts by outcome.",
            "outcome",
        );
        let attempt_duration_vec = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "shout_upstream_attempt_duration_seconds",
                    "Duration of upstream attempts by outcome.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        let breaker_state = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "shout_breaker_state",
                    "Circuit breaker state: 1 for the current state, 0 for the others.",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        for state in BreakerState::ALL {
            breaker_state.with_label_values(&[state.as_str()]).set(0);
        }
        let breaker_transitions = counter_vec(
            &registry,
            "shout_breaker_transitions_total",
            "Circuit breaker transitions by target state.",
            "state",
        );
        for state in BreakerState::ALL {
            breaker_transitions.with_label_values(&[state.as_str()]);
        }
        let answers_vec = counter_vec(
            &registry,
            "shout_answers_total",
            "Answers by source.",
            "source",
        );
        let fallbacks_vec = counter_vec(
            &registry,
            "shout_fallbacks_total",
            "Answers given by the local fallback, by reason.",
            "reason",
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "shout_build_info",
                    "Build information; the value is always 1.",
                ),
                &["version"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");

        Self {
            attempts: AttemptOutcome::ALL.map(|o| attempts_vec.with_label_values(&[o.as_str()])),
            attempt_duration: AttemptOutcome::ALL
                .map(|o| attempt_duration_vec.with_label_values(&[o.as_str()])),
            retries: counter(
                &registry,
                "shout_upstream_retries_total",
                "Upstream retries granted.",
            ),
            retry_budget_exhausted: counter(
                &registry,
                "shout_upstream_retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
            ),
            breaker_state,
            breaker_transitions,
            breaker_rejected: counter(
                &registry,
                "shout_breaker_rejected_total",
                "Upstream attempts refused by the circuit breaker.",
            ),
            answers: Source::ALL.map(|s| answers_vec.with_label_values(&[s.as_str()])),
            fallbacks: FallbackReason::ALL.map(|r| fallbacks_vec.with_label_values(&[r.as_str()])),
            cache_hits: counter(
                &registry,
                "shout_cache_hits_total",
                "Cache lookups that found an answer.",
            ),
            cache_misses: counter(
                &registry,
                "shout_cache_misses_total",
                "Cache lookups that found none.",
            ),
            cache_entries: gauge(&registry, "shout_cache_entries", "Answers in the cache."),
            cache_weighted_bytes: gauge(
                &registry,
                "shout_cache_weighted_bytes",
                "Weighed size of the cache in bytes.",
            ),
            bulkhead_in_flight: gauge(
                &registry,
                "shout_bulkhead_in_flight",
                "Upstream calls in flight (bulkhead permits held).",
            ),
            bulkhead_capacity: gauge(
                &registry,
                "shout_bulkhead_capacity",
                "Size of the bulkhead.",
            ),
            bulkhead_rejected: counter(
                &registry,
                "shout_bulkhead_rejected_total",
                "Requests that found the bulkhead full.",
            ),
            deadline_seconds: register(
                &registry,
                Gauge::new(
                    "shout_deadline_seconds",
                    "Configured overall upstream deadline.",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// Records one upstream attempt.
    pub fn attempt(&self, outcome: AttemptOutcome, seconds: f64) {
        self.attempts[outcome as usize].inc();
        self.attempt_duration[outcome as usize].observe(seconds);
    }

    /// Records one answer.
    pub fn answer(&self, source: Source) {
        self.answers[source as usize].inc();
    }

    /// Records one fallback answer's reason.
    pub fn fallback(&self, reason: FallbackReason) {
        self.fallbacks[reason as usize].inc();
    }

    /// Moves the breaker state series to `to` (all three always exported).
    pub fn breaker_transition(&self, from: BreakerState, to: BreakerState) {
        self.breaker_state
            .with_label_values(&[from.as_str()])
            .set(0);
        self.breaker_state.with_label_values(&[to.as_str()]).set(1);
        if from != to {
            self.breaker_transitions
                .with_label_values(&[to.as_str()])
                .inc();
        }
    }

    /// The registry `/metrics` encodes, for components that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for I/O reasons; a failure would be a malformed
        // metric, which the registry already refused at registration.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
