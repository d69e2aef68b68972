//! `ApiError`: every error the public port returns, and the ONE place that maps errors to HTTP
//! statuses and JSON bodies.
//!
//! Poem's own errors (unknown path, wrong method, parse failures) are converted here too, so no
//! plain-text error ever leaves the public port. Internal causes are logged, never returned.

use crate::api::payload::JsonBody as Json;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::Object;

/// The message the original service sent for every unreadable request; clients match on it.
pub const UNPARSEABLE_MESSAGE: &str =
    "Data was not able to be parsed from request. Please try again.";

/// A JSON error body.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// What went wrong. For 400 it is always the original service's message, which clients
    /// match on.
    pub error: String,
    /// Precisely what was wrong with the request, when that is known.
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        Self {
            error: UNPARSEABLE_MESSAGE.to_string(),
            detail: Some("field `data` is missing from the JSON object".to_string()),
        }
    }
}

/// Everything that can go wrong with a public request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: no string `data` could be read from the request; says why.
    #[error("{0}")]
    Unparseable(String),
    /// 413: the body is larger than the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 404: no such path.
    #[error("no resource at this path")]
    NotFound,
    /// 405: the path exists but not for this method.
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    /// 500: a fault of ours; the cause is logged, not returned.
    #[error("internal error")]
    Internal(String),
    /// Any other status poem produced (e.g. 408, 431), with its own message.
    #[error("{1}")]
    Other(StatusCode, String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unparseable(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Other(status, _) => *status,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        match self {
            Self::Unparseable(detail) => ErrorBody {
                error: UNPARSEABLE_MESSAGE.to_string(),
                detail: Some(detail.clone()),
            },
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                ErrorBody {
                    error: self.to_string(),
                    detail: None,
                }
            }
            _ => ErrorBody {
                error: self.to_string(),
                detail: None,
            },
        }
    }

    /// Converts any poem error: ours pass through, poem's are mapped by status.
    pub fn from_poem(error: poem::Error) -> Self {
        if error.is::<ApiError>() {
            if let Ok(ours) = error.downcast::<ApiError>() {
                return ours;
            }
            return Self::Internal("an ApiError could not be downcast".to_string());
        }
        match error.status() {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::Unparseable(error.to_string())
            }
            status if status.is_server_error() => Self::Internal(error.to_string()),
            status => Self::Other(status, error.to_string()),
        }
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        let mut response = Json(self.body()).into_response();
        response.set_status(self.status());
        response
    }
}
