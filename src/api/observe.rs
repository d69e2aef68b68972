//! The public port's outermost layer: a server span per request (child of the caller's
//! `traceparent`), the HTTP server metrics, and the conversion of every error into `ApiError`'s
//! JSON, so that the status that is counted is the status that is sent.

use std::sync::Arc;
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Request, Response, Result};
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::metrics::Metrics;

/// The route templates of the public port: bounded metric labels and span names.
pub const ROUTES: [&str; 8] = [
    "/",
    "/v1",
    "/v1/",
    "/health",
    "/docs",
    "/openapi.json",
    "/openapi.yaml",
    "other",
];

/// The index in [`ROUTES`] of a path's template.
pub fn route_index(path: &str) -> usize {
    match path {
        "/" => 0,
        "/v1" => 1,
        "/v1/" => 2,
        "/health" => 3,
        p if p == "/docs" || p.starts_with("/docs/") => 4,
        "/openapi.json" => 5,
        "/openapi.yaml" => 6,
        _ => 7,
    }
}

/// Serves `/v1/` as `/v1`: poem-openapi drops trailing slashes from operation paths, and the
/// original service answered on both. Done here rather than in a `before` layer, which would
/// box one more future per request.
fn alias_v1_slash(request: &mut Request) {
    let query = request.uri().query().map(str::to_owned);
    let rewritten = match query {
        Some(query) => format!("/v1?{query}"),
        None => "/v1".to_string(),
    };
    // "/v1" and a query taken from a valid URI always make a valid URI; were it not so, the
    // request would go on as `/v1/` and get a JSON 404.
    let Ok(path_and_query) = rewritten.parse::<poem::http::uri::PathAndQuery>() else {
        return;
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = poem::http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// The `Allow` header a 405 on a route must carry (RFC 9110 15.5.6); `None` for unknown paths.
fn allowed_methods(route: usize) -> Option<&'static str> {
    match *ROUTES.get(route)? {
        "/" | "/v1" | "/v1/" => Some("POST"),
        "other" => None,
        _ => Some("GET"),
    }
}

/// Wraps the public endpoint; see the module docs.
#[derive(Debug)]
pub struct Observe<E> {
    /// The routes.
    inner: E,
    /// Where HTTP metrics go.
    metrics: Arc<Metrics>,
}

impl<E> Observe<E> {
    /// Observes `inner`.
    pub fn new(inner: E, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

/// Keeps `http_server_active_requests` right even when a request is cancelled.
struct Active(prometheus::IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<E: Endpoint> Endpoint for Observe<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> Result<Response> {
        let method = request.method().clone();
        let route_slot = route_index(request.uri().path());
        let route = ROUTES[route_slot];
        if route == "/v1/" {
            alias_v1_slash(&mut request);
        }
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::adopt_trace_context(&span, request.headers());
        let active = self.metrics.http_active(method.as_str(), route_slot);
        let _active = Active(active);
        let started = Instant::now();

        let response = match self.inner.call(request).instrument(span.clone()).await {
            Ok(output) => output.into_response(),
            Err(error) => {
                let _entered = span.enter();
                let error = ApiError::from_poem(error);
                poem::error::ResponseError::as_response(&error)
            }
        };

        let mut response = response;
        if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = allowed_methods(route_slot)
        {
            let allow = poem::http::HeaderValue::from_static(allow);
            response
                .headers_mut()
                .insert(poem::http::header::ALLOW, allow);
        }
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.observe_http(
            method.as_str(),
            route_slot,
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
    }
}
