//! The public port's outermost layer: a server span per request (child of the caller's
//! `traceparent`), the HTTP server metrics, and the conversion of every error into `ApiError`'s
//! JSON, so that the status that is counted is the status that is sent.
//!
//! It owns its metric families ([`HttpMetrics::register`]), in the OpenTelemetry HTTP semantic
//! conventions' Prometheus form. Every label value comes from a fixed set: methods outside the
//! nine standard ones are `_OTHER` (in span names too), paths are route templates, and statuses
//! outside the ones the service sends are `_OTHER`. A client can therefore never add a series.
//!
//! Every JSON response leaves with `Content-Type: application/json` exactly, without a
//! `charset` parameter: the original service's clients compare the header to that string, and
//! JSON is UTF-8 by definition (RFC 8259), so the parameter says nothing.

use std::sync::OnceLock;
use std::time::Instant;

use poem::http::{HeaderValue, Method, header};
use poem::{Endpoint, IntoResponse, Request, Response, Result};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry};
use tracing::Instrument;

use crate::api::error::ApiError;
use crate::metrics::DURATION_BUCKETS;

/// Method label values: the standard methods, then `_OTHER` for anything else.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// The index in [`METHODS`] of a request's method.
pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// Status label values: what the service sends; any other status is `_OTHER`.
pub const STATUSES: [&str; 13] = [
    "200", "400", "404", "405", "408", "411", "413", "414", "415", "431", "500", "503", "_OTHER",
];

/// The index in [`STATUSES`] of a status: a match, as for methods, so a response neither formats
/// its status nor parses the labels.
fn status_index(status: u16) -> usize {
    match status {
        200 => 0,
        400 => 1,
        404 => 2,
        405 => 3,
        408 => 4,
        411 => 5,
        413 => 6,
        414 => 7,
        415 => 8,
        431 => 9,
        500 => 10,
        503 => 11,
        _ => 12,
    }
}

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

/// The HTTP server metric families and their children, every label set resolved once.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// `http_server_request_duration_seconds` children, by (method, route, status) slot,
    /// resolved on first use.
    durations: std::sync::Arc<[OnceLock<Histogram>]>,
    /// The duration family, for resolving children.
    duration: HistogramVec,
    /// `http_server_active_requests` children, by (method, route) slot.
    active: std::sync::Arc<[IntGauge]>,
}

impl HttpMetrics {
    /// Registers `http_server_request_duration_seconds` and `http_server_active_requests` on
    /// `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
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
        )?;
        let active = IntGaugeVec::new(
            Opts::new(
                "http_server_active_requests",
                "Number of active HTTP server requests.",
            ),
            &["http_request_method", "http_route"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(active.clone()))?;
        let mut gauges = Vec::with_capacity(METHODS.len() * ROUTES.len());
        for method in METHODS {
            for route in ROUTES {
                gauges.push(active.with_label_values(&[method, route]));
            }
        }
        Ok(Self {
            durations: (0..METHODS.len() * ROUTES.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            duration,
            active: gauges.into(),
        })
    }

    /// Counts a request as active until the returned guard drops.
    fn start(&self, method: usize, route: usize) -> Active {
        let gauge = self.active[method * ROUTES.len() + route].clone();
        gauge.inc();
        Active(gauge)
    }

    /// Records one served request.
    fn observe(&self, method: usize, route: usize, status: u16, seconds: f64) {
        let status = status_index(status);
        let slot = (method * ROUTES.len() + route) * STATUSES.len() + status;
        self.durations[slot]
            .get_or_init(|| {
                self.duration
                    .with_label_values(&[METHODS[method], ROUTES[route], STATUSES[status]])
            })
            .observe(seconds);
    }
}

/// Wraps the public endpoint; see the module docs.
#[derive(Debug)]
pub struct Observe<E> {
    /// The routes.
    inner: E,
    /// Where HTTP metrics go.
    metrics: HttpMetrics,
}

impl<E> Observe<E> {
    /// Observes `inner`.
    pub fn new(inner: E, metrics: HttpMetrics) -> Self {
        Self { inner, metrics }
    }
}

/// Keeps `http_server_active_requests` right even when a request is cancelled.
struct Active(IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Drops the `charset` parameter (and any other) from a JSON content type; see the module docs.
fn plain_json_content_type(response: &mut Response) {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        });
    if is_json {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
}

impl<E: Endpoint> Endpoint for Observe<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> Result<Response> {
        let method_slot = method_index(request.method());
        let method = METHODS[method_slot];
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
            http.request.method = method,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::adopt_trace_context(&span, request.headers());
        let _active = self.metrics.start(method_slot, route_slot);
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
        plain_json_content_type(&mut response);
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.observe(
            method_slot,
            route_slot,
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_label_is_found_at_its_own_index_and_others_are_other() {
        for (i, label) in STATUSES[..STATUSES.len() - 1].iter().enumerate() {
            assert_eq!(status_index(label.parse().unwrap()), i, "{label}");
        }
        for other in [201, 302, 429, 502, 599] {
            assert_eq!(STATUSES[status_index(other)], "_OTHER");
        }
    }
}
