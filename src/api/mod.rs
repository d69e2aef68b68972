//! The public HTTP API on poem-openapi: operations, request reading, the one error mapping, and
//! the observing layer around them.
//!
//! - [`shout`]: the operations and their documented answers.
//! - [`input`]: reading `data` from JSON or form bodies, with the body limit.
//! - [`error`]: [`ApiError`], the only place that turns errors into statuses and JSON bodies.
//! - [`observe`]: server span, HTTP metrics, and JSON for every error poem itself produces.

pub mod error;
pub mod input;
pub mod observe;
pub mod shout;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

pub use error::ApiError;

use crate::metrics::Metrics;
use crate::shout::Resolver;

/// Title and description of the OpenAPI document.
const DESCRIPTION: &str = "Reverses a string and capitalizes it. Capitalizing is done by \
shoutcloud (api.shoutcloud.io) behind a deadline, retries with a budget, a circuit breaker, a \
bulkhead and a cache; when shoutcloud is slow, failing or gone, a local fallback gives the same \
answer. The `X-Shout-Source` header of every answer says which path answered.";

fn service() -> OpenApiService<shout::ShoutApi, ()> {
    OpenApiService::new(shout::ShoutApi, "shout-proxy", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
}

/// The OpenAPI document the service serves at `/openapi.json`.
pub fn openapi_json() -> String {
    service().spec()
}

/// Serves `/v1/` as `/v1`: poem-openapi drops trailing slashes from operation paths, and the
/// original service answered on both.
async fn alias_v1_slash(mut request: poem::Request) -> poem::Result<poem::Request> {
    if request.uri().path() == "/v1/" {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        let query = parts
            .path_and_query
            .as_ref()
            .and_then(|pq| pq.query())
            .map(str::to_owned);
        let rewritten = match query {
            Some(query) => format!("/v1?{query}"),
            None => "/v1".to_string(),
        };
        parts.path_and_query = Some(
            rewritten
                .parse()
                .map_err(|e| ApiError::Internal(format!("rewriting /v1/: {e}")))?,
        );
        *request.uri_mut() = poem::http::Uri::from_parts(parts)
            .map_err(|e| ApiError::Internal(format!("rewriting /v1/: {e}")))?;
    }
    Ok(request)
}

/// The public port's endpoint: the API, its docs, and the observing layer.
pub fn public_endpoint(
    resolver: Resolver,
    metrics: Arc<Metrics>,
    body_limits: input::BodyLimits,
) -> impl Endpoint {
    let api = service();
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .at("/openapi.yaml", api.spec_endpoint_yaml())
        .nest("/docs", api.swagger_ui())
        .nest("/", api)
        .before(alias_v1_slash)
        .data(resolver)
        .data(body_limits);
    observe::Observe::new(routes, metrics)
}
