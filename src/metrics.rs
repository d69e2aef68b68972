//! Prometheus metrics: the shared registry and `/metrics` encoding.
//!
//! Every pipeline component registers its own families on the registry ([`Metrics::registry`])
//! with a `register(&Registry)` constructor, so this module imports no domain type. Label values
//! come from the enums themselves (`strum`) through [`ByLabel`], which resolves each labelled
//! child once at start so the hot path does no label lookup. HTTP server metrics are registered
//! by `api::observe`, connection metrics by `server`. Our own metrics carry the `shout_` prefix.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

use strum::IntoEnumIterator;

/// The OpenTelemetry recommended buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
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

        Self { registry }
    }

    /// The shared registry on which components register their own families.
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
