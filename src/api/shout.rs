//! The public operations: `POST /`, `POST /v1`, `POST /v1/` and `GET /health`, as the original
//! service had them, documented with poem-openapi.

use poem::web::Data;
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::api::ApiContext;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::input::ShoutInput;
use crate::api::payload::JsonBody as Json;
use crate::shout::Resolver;

#[derive(Tags)]
enum Tag {
    /// Reverse and capitalize strings.
    Shout,
    /// Liveness of the public port.
    Health,
}

/// The answer: the input reversed (by grapheme clusters) and capitalized.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ShoutResponse {
    /// The input reversed by extended grapheme clusters and capitalized with Unicode full case
    /// mapping (`ß` becomes `SS`).
    pub data: String,
}

impl poem_openapi::types::Example for ShoutResponse {
    fn example() -> Self {
        Self {
            data: "TSET".to_string(),
        }
    }
}

/// Answers of the shout operations.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "shout_error")]
pub enum ShoutResult {
    /// The reversed, capitalized string.
    #[oai(status = 200)]
    Ok(
        Json<ShoutResponse>,
        /// Which path answered: `upstream` (shoutcloud now), `cache` (an earlier shoutcloud
        /// answer) or `fallback` (the local transform, when shoutcloud is slow, failing or
        /// refused by the circuit breaker). The data is the same in all three.
        #[oai(header = "X-Shout-Source")]
        String,
    ),
    /// No string `data` could be read from the request: missing field, `data` not a string,
    /// malformed JSON, a body that is not UTF-8 (a form value that is not UTF-8 once
    /// percent-decoded included), a `charset` other than UTF-8, or a content type other than
    /// `application/json` and `application/x-www-form-urlencoded`. `error` is always the
    /// original message; `detail` says what was wrong.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The body is larger than the configured limit (64 KiB by default).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body did not arrive within the body read timeout (10 s by default).
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
}

/// Turns an extractor error into the documented answer; `ApiError` decides status and body.
fn shout_error(error: poem::Error) -> ShoutResult {
    let error = ApiError::from_poem(error);
    let body = Json(error.body());
    match error.status() {
        poem::http::StatusCode::PAYLOAD_TOO_LARGE => ShoutResult::PayloadTooLarge(body),
        poem::http::StatusCode::REQUEST_TIMEOUT => ShoutResult::RequestTimeout(body),
        _ => ShoutResult::BadRequest(body),
    }
}

/// The public API.
#[derive(Debug)]
pub struct ShoutApi;

impl ShoutApi {
    async fn answer(resolver: &Resolver, input: ShoutInput) -> ShoutResult {
        let resolution = resolver.resolve(&input.0).await;
        ShoutResult::Ok(
            Json(ShoutResponse {
                data: resolution.text.to_string(),
            }),
            resolution.source.as_str().to_string(),
        )
    }
}

#[OpenApi]
impl ShoutApi {
    /// Reverse and capitalize a string.
    ///
    /// Send `{"data": "test"}` as JSON, or `data=test` as a form, and get `{"data": "TSET"}`.
    /// shoutcloud capitalizes when it is healthy; otherwise a local fallback gives the same
    /// answer within the deadline.
    #[oai(
        path = "/",
        method = "post",
        tag = "Tag::Shout",
        operation_id = "shout"
    )]
    async fn shout(&self, context: Data<&ApiContext>, input: ShoutInput) -> ShoutResult {
        Self::answer(&context.resolver, input).await
    }

    /// Reverse and capitalize a string (versioned path).
    ///
    /// Same as `POST /`. Also served at `/v1/` (with the trailing slash), as the original
    /// service did; OpenAPI paths cannot tell the two apart, so only `/v1` is listed.
    #[oai(
        path = "/v1",
        method = "post",
        tag = "Tag::Shout",
        operation_id = "shoutV1"
    )]
    async fn shout_v1(&self, context: Data<&ApiContext>, input: ShoutInput) -> ShoutResult {
        Self::answer(&context.resolver, input).await
    }

    /// Health of the public port.
    ///
    /// Answers `success` whenever the process serves requests; it does not depend on
    /// shoutcloud. Operators should use the admin port's `/livez` and `/readyz`.
    #[oai(
        path = "/health",
        method = "get",
        tag = "Tag::Health",
        operation_id = "health"
    )]
    async fn health(&self) -> PlainText<&'static str> {
        PlainText("success")
    }
}
