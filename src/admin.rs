//! The operators' listener: `/livez`, `/readyz`, `/metrics`, `/status`. It is a separate port so
//! that none of it is ever reachable from the public ingress; it binds loopback by default and
//! is served by the same guarded listener as the public port (`server`), with its own cap.
//!
//! - `/livez`: 200 while the process runs; restart it if this fails.
//! - `/readyz`: 200 while it takes traffic, 503 from the moment a stop signal arrives. It never
//!   depends on shoutcloud: the fallback answers when shoutcloud is down, so a pod is ready.
//! - `/metrics`: Prometheus text format.
//! - `/status`: JSON with the breaker state and counters, retry budget, concurrency limit, cache
//!   and shared cache (`null` without `--redis-url`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};

use crate::metrics::Metrics;
use crate::shout::Resolver;

/// Whether the service accepts traffic; turned off at the first stop signal.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl Readiness {
    /// Marks the service as draining: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// Whether the service takes traffic.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[handler]
fn livez() -> &'static str {
    "ok"
}

#[handler]
fn readyz(readiness: Data<&Readiness>) -> Response {
    if readiness.is_ready() {
        "ready".into_response()
    } else {
        ("draining")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response()
    }
}

#[handler]
async fn metrics_text(metrics: Data<&Arc<Metrics>>, resolver: Data<&Resolver>) -> Response {
    resolver.refresh_gauges().await;
    metrics
        .encode()
        .with_content_type("text/plain; version=0.0.4; charset=utf-8")
        .into_response()
}

#[handler]
async fn status(resolver: Data<&Resolver>, readiness: Data<&Readiness>) -> Response {
    let snapshot = resolver.snapshot().await;
    Json(serde_json::json!({
        "ready": readiness.is_ready(),
        "version": env!("CARGO_PKG_VERSION"),
        "pipeline": snapshot,
    }))
    // Exactly `application/json`, like every JSON answer of the service.
    .with_content_type("application/json")
    .into_response()
}

/// The admin port's endpoint.
pub fn admin_endpoint(
    resolver: Resolver,
    metrics: Arc<Metrics>,
    readiness: Readiness,
) -> impl Endpoint {
    Route::new()
        .at("/livez", get(livez))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_text))
        .at("/status", get(status))
        .data(resolver)
        .data(metrics)
        .data(readiness)
}
