//! shout-proxy: reverses strings and has shoutcloud capitalize them, resiliently.
//!
//! # Layout
//!
//! - [`config`]: settings (`clap` + `SHOUT_*` environment), validated once.
//! - [`startup`]: [`startup::Application`] binds both listeners and runs until stopped.
//! - [`connections`]: the public listener's connection cap and request-head timeout.
//! - [`api`]: the public port (poem-openapi): operations, request reading, the one error mapping.
//! - [`admin`]: the operators' port: `/livez`, `/readyz`, `/metrics`, `/status`.
//! - [`shout`]: the domain: the transform, and the resolve pipeline.
//! - [`upstream`]: the shoutcloud attempt loop and what it calls: breaker, budget, limit.
//! - [`cache`]: confirmed answers, bounded by bytes and age.
//! - [`metrics`], [`telemetry`]: Prometheus metrics; logs and OpenTelemetry traces.
//!
//! # How a request flows
//!
//! `api::observe` (server span, metrics) -> `api::input` (read `data`, or 400/413) ->
//! `shout::resolve`: cache -> single flight -> deadline -> concurrency limit ->
//! `upstream::client`'s attempt loop (each pass: backoff -> breaker permit -> retry budget ->
//! timed attempt -> validation -> classification) -> fallback (the canonical local answer)
//! when anything below the cache gave no answer byte-equal to it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cache;
pub mod config;
pub mod connections;
pub mod metrics;
pub mod shout;
pub mod startup;
pub mod telemetry;
pub mod upstream;

pub use config::Settings;
pub use startup::Application;
