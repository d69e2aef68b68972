//! The public HTTP API on poem-openapi: operations, request reading, the one error mapping, and
//! the observing layer around them.
//!
//! - [`shout`]: the operations and their documented answers.
//! - [`input`]: reading `data` from JSON or form bodies, with the body limit.
//! - [`error`]: [`ApiError`], the only place that turns errors into statuses and JSON bodies.
//! - [`observe`]: server span, HTTP metrics, and JSON for every error poem itself produces.
//! - [`payload`]: JSON bodies sent as exactly `application/json`.

pub mod error;
pub mod input;
pub mod observe;
pub mod payload;
pub mod shout;

use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

pub use error::ApiError;

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

/// What the operations need from the service, attached to requests as one piece of data.
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// The resolve pipeline.
    pub resolver: Resolver,
    /// Body size and read-time limits.
    pub limits: input::BodyLimits,
}

/// The public port's endpoint: the API, its docs, and the observing layer.
pub fn public_endpoint(
    resolver: Resolver,
    metrics: observe::HttpMetrics,
    body_limits: input::BodyLimits,
) -> impl Endpoint {
    let api = service();
    let routes = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .at("/openapi.yaml", api.spec_endpoint_yaml())
        .nest("/docs", api.swagger_ui())
        .nest("/", api)
        .data(ApiContext {
            resolver,
            limits: body_limits,
        });
    observe::Observe::new(routes, metrics)
}
