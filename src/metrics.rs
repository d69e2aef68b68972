//! Prometheus metrics: the shared registry, `/metrics` encoding, and the HTTP server section.
//!
//! Every pipeline component registers its own families on the registry ([`Metrics::registry`])
//! with a `register(&Registry)` constructor, so this module imports no domain type. Label values
//! come from the enums themselves (`strum`) through [`ByLabel`], which resolves each labelled
//! child once at start so the hot path does no label lookup. HTTP server metrics follow the
//! OpenTelemetry HTTP semantic conventions in their Prometheus form; labels are bounded (route
//! templates, never paths or inputs). Our own metrics carry the `shout_` prefix.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use std::sync::OnceLock;

use strum::IntoEnumIterator;

use crate::api::observe::ROUTES;

/// The OpenTelemetry recommended buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Methods whose HTTP series are resolved once.
const METHODS: [&str; 2] = ["GET", "POST"];
/// Statuses whose HTTP series are resolved once.
const STATUSES: [u16; 8] = [200, 400, 404, 405, 408, 413, 500, 503];
const HTTP_SLOTS: usize = METHODS.len() * ROUTES.len() * STATUSES.len();

/// The slot of a common (method, route) label set.
fn route_slot(method: &str, route: usize) -> Option<usize> {
    let m = METHODS.iter().position(|&known| known == method)?;
    (route < ROUTES.len()).then(|| m * ROUTES.len() + route)
}

/// The slot of a common (method, route, status) label set.
fn http_index(method: &str, route: usize, status: u16) -> Option<usize> {
    let s = STATUSES.iter().position(|&known| known == status)?;
    Some(route_slot(method, route)? * STATUSES.len() + s)
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
    /// Public HTTP request durations by method, route template and status.
    http_duration: HistogramVec,
    /// Requests being served, by method and route template.
    http_active: IntGaugeVec,
    /// `http_duration` children for common label sets, resolved on first use so the hot path
    /// skips the vector's hashing and lock; indexed by [`http_index`].
    http_duration_children: Vec<OnceLock<Histogram>>,
    /// `http_active` children for common (method, route) label sets, indexed by `route_slot`.
    http_active_children: Vec<OnceLock<IntGauge>>,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are constants of this module, so a registration error is a programming error
    // caught by the first test that builds `Metrics`.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
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
        let http_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "http_server_request_duration_seconds",
                    "Duration of HTTP server requests.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &[
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                ],
            )
            .expect("valid metric"),
        );
        let http_active = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "http_server_active_requests",
                    "Number of active HTTP server requests.",
                ),
                &["http_request_method", "http_route"],
            )
            .expect("valid metric"),
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "shout_build_info",
                    "Build information; the value is always 1.",
                ),
                &["version", "revision"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("SHOUT_GIT_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");

        Self {
            http_duration,
            http_active,
            http_duration_children: (0..HTTP_SLOTS).map(|_| OnceLock::new()).collect(),
            http_active_children: (0..METHODS.len() * ROUTES.len())
                .map(|_| OnceLock::new())
                .collect(),
            registry,
        }
    }

    /// The active-requests gauge of (method, route template index).
    pub fn http_active(&self, method: &str, route: usize) -> IntGauge {
        let route_label = ROUTES.get(route).copied().unwrap_or("other");
        match route_slot(method, route) {
            Some(slot) => self.http_active_children[slot]
                .get_or_init(|| self.http_active.with_label_values(&[method, route_label]))
                .clone(),
            None => self.http_active.with_label_values(&[method, route_label]),
        }
    }

    /// Records one served request.
    pub fn observe_http(&self, method: &str, route: usize, status: u16, seconds: f64) {
        let route_label = ROUTES.get(route).copied().unwrap_or("other");
        let resolve = || {
            let status = status.to_string();
            self.http_duration
                .with_label_values(&[method, route_label, status.as_str()])
        };
        match http_index(method, route, status) {
            Some(slot) => self.http_duration_children[slot]
                .get_or_init(resolve)
                .observe(seconds),
            None => resolve().observe(seconds),
        }
    }

    /// The shared registry on which components register their own families.
    pub(crate) fn registry(&self) -> &Registry {
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

/// One child metric per variant of a label enum, resolved once; looked up by the variant
/// itself, never by its position.
#[derive(Debug)]
pub(crate) struct ByLabel<E, M> {
    /// (variant, its child), in the enum's order.
    children: Vec<(E, M)>,
}

impl<E, M> ByLabel<E, M>
where
    E: IntoEnumIterator + Into<&'static str> + Copy + PartialEq,
{
    /// Resolves `child(label)` for every variant.
    pub(crate) fn new(child: impl Fn(&'static str) -> M) -> Self {
        Self {
            children: E::iter().map(|e| (e, child(e.into()))).collect(),
        }
    }

    /// The child of `variant`.
    pub(crate) fn get(&self, variant: E) -> &M {
        // `new` resolved every variant, so the search always finds one; the enums are a handful
        // of variants, so a scan is as fast as a map.
        self.children
            .iter()
            .find(|(e, _)| *e == variant)
            .map(|(_, m)| m)
            .unwrap_or_else(|| unreachable!("ByLabel::new resolves every variant"))
    }
}
