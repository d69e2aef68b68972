//! shout-proxy: reverses strings and has shoutcloud capitalize them, resiliently.
//!
//! # Layout
//!
//! - [`config`]: settings (`clap` + `SHOUT_*` environment), validated once.
//! - [`startup`]: [`startup::Application`] binds both listeners and runs until stopped.
//! - [`server`]: the listeners: hyper's HTTP/1 with header and idle timeouts, the connection
//!   cap (idle keep-alive connections closed first), graceful stop, connection metrics.
//! - [`api`]: the public port (poem-openapi): operations, request reading, the one error mapping.
//! - [`admin`]: the operators' port: `/livez`, `/readyz`, `/metrics`, `/status`.
//! - [`shout`]: the domain: the transform, and the resolve pipeline.
//! - [`upstream`]: the shoutcloud attempt loop and what it calls: breaker, budget, limit.
//! - [`cache`]: confirmed answers, bounded by bytes and age.
//! - [`shared_cache`]: confirmed answers shared by a fleet in Redis (L2), with its own breaker.
//! - [`metrics`], [`telemetry`]: Prometheus metrics; logs and OpenTelemetry traces.
//!
//! # How a request flows
//!
//! `server` (hyper HTTP/1: header read timeout, connection cap) -> `api::observe` (server span,
//! metrics, exact `application/json`) -> `api::input` (read `data`, or 400/408/413) ->
//! `shout::resolve`: cache -> single flight -> shared cache (Redis, optional) -> deadline ->
//! `upstream::client`'s attempt loop (each pass: backoff -> concurrency limit slot -> breaker
//! permit -> retry budget -> timed attempt -> validation -> classification) -> fallback (the
//! canonical local answer) when anything below the cache gave no answer byte-equal to it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cache;
pub mod config;
pub mod metrics;
pub mod server;
pub mod shared_cache;
pub mod shout;
pub mod startup;
pub mod telemetry;
pub mod upstream;

pub use config::Settings;

/// Installs rustls' process-wide crypto provider (ring), which every reqwest client of the
/// process needs before it is built: the upstream's, the OTLP exporter's, the healthcheck's.
/// reqwest is built without a provider of its own so no C toolchain is needed (aws-lc); an
/// error only means a provider is installed already.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub use startup::Application;
