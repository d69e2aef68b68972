//! The retrying shoutcloud client: reqwest + reqwest-middleware + reqwest-retry, with the
//! circuit breaker, the retry budget and validation inside the retry loop.
//!
//! # The middleware stack, outermost first
//!
//! 1. `RetryTransientMiddleware` (reqwest-retry): exponential backoff with full jitter between
//!    explicit bounds; asks [`Classifier`] whether a failure is worth another attempt.
//! 2. [`AttemptMiddleware`], once per attempt, in this order: deadline (no attempt starts past
//!    it), breaker permit (an open circuit stops retries at once, because reqwest-retry treats a
//!    middleware error as final when our classifier says so), budget (a retry must be paid for;
//!    charged last so a retry stopped before it is free), then the attempt itself under a timeout of `min(attempt timeout, time left)` so the
//!    breaker always sees a result, then validation of the answer, then `Retry-After`.
//!
//! Every failure leaves the middleware as an [`UpstreamError`] wrapped in
//! `reqwest_middleware::Error::Middleware`, so there is one classification
//! ([`UpstreamError::is_transient`]) rather than one per error type. The per-call state
//! (deadline, attempt count, the validated answer, the last cause) travels in the request's
//! `Extensions`, which reqwest-retry hands to every attempt.
//!
//! reqwest-retry ignores `Retry-After` (its issue #146). A 429 or 503 that carries one is
//! honoured here: when the wait would pass the deadline the call ends at once (the fallback
//! answers); otherwise the attempt waits it out before reqwest-retry's own backoff.

use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use reqwest::{Request, Response, StatusCode, Url};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryTransientMiddleware, Retryable, RetryableStrategy};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::shout::transform::is_valid_shout;
use crate::telemetry::CallerContext;
use crate::upstream::breaker::Breaker;
use crate::upstream::budget::RetryBudget;
use crate::upstream::error::{AttemptOutcome, UpstreamError};

/// Largest upstream answer read; a longer one is invalid. Inputs are bounded by the public body
/// limit, so a legitimate answer is far smaller.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The shoutcloud endpoint.
    pub url: Url,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Most retries per call.
    pub retry_max: u32,
    /// Backoff bounds.
    pub min_backoff: Duration,
    /// Backoff bounds.
    pub max_backoff: Duration,
}

/// Per-call state carried through the middleware stack in the request's extensions.
#[derive(Debug, Clone)]
struct CallState {
    /// The string sent as `INPUT`, to validate `OUTPUT` against.
    input: Arc<str>,
    /// When the overall deadline passes.
    deadline: Instant,
    /// The caller's trace context, passed on when we trace nothing ourselves.
    caller: CallerContext,
    /// Attempts started (the first is not a retry).
    attempts: u32,
    /// The validated `OUTPUT`, once an attempt succeeded.
    output: Option<String>,
    /// The cause of the latest failure.
    last_error: Option<UpstreamError>,
}

/// What a call to the upstream produced.
#[derive(Debug)]
pub struct CallReport {
    /// The validated capitalization, or the cause of the last failure.
    pub result: Result<String, UpstreamError>,
    /// Attempts that were started.
    pub attempts: u32,
}

/// The resilient shoutcloud client.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    /// reqwest with the retry and attempt middlewares.
    client: ClientWithMiddleware,
    /// The shoutcloud endpoint.
    url: Url,
}

impl UpstreamClient {
    /// Builds the client around a shared breaker and budget.
    pub fn new(
        config: &ClientConfig,
        breaker: Breaker,
        budget: Arc<RetryBudget>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // shoutcloud answers directly; following redirects would only add work and a way
            // to send requests elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("shout-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let policy = ExponentialBackoff::builder()
            .retry_bounds(config.min_backoff, config.max_backoff)
            .jitter(Jitter::Full)
            .base(2)
            .build_with_max_retries(config.retry_max);
        let client = ClientBuilder::new(http)
            .with(RetryTransientMiddleware::new_with_policy_and_strategy(
                policy, Classifier,
            ))
            .with(AttemptMiddleware {
                breaker,
                budget,
                metrics,
                attempt_timeout: config.attempt_timeout,
            })
            .build();
        Ok(Self {
            client,
            url: config.url.clone(),
        })
    }

    /// Asks shoutcloud to capitalize `input`, retrying within `deadline`.
    pub async fn shout(&self, input: &str, deadline: Instant, caller: CallerContext) -> CallReport {
        let body = serde_json::json!({ "INPUT": input });
        let request = match self.client.post(self.url.clone()).json(&body).build() {
            Ok(request) => request,
            Err(e) => {
                return CallReport {
                    result: Err(UpstreamError::Transport(format!(
                        "building the request: {e}"
                    ))),
                    attempts: 0,
                };
            }
        };
        let mut extensions = Extensions::new();
        extensions.insert(CallState {
            input: Arc::from(input),
            deadline,
            caller,
            attempts: 0,
            output: None,
            last_error: None,
        });
        let outcome = self
            .client
            .execute_with_extensions(request, &mut extensions)
            .await;
        let state = extensions.remove::<CallState>();
        let attempts = state.as_ref().map_or(0, |s| s.attempts);
        let result = match state {
            Some(CallState {
                output: Some(output),
                ..
            }) => Ok(output),
            Some(CallState {
                last_error: Some(error),
                ..
            }) => Err(error),
            _ => Err(UpstreamError::Transport(match outcome {
                Err(e) => format!("{e:#}"),
                Ok(response) => format!("unexpected answer HTTP {}", response.status()),
            })),
        };
        CallReport { result, attempts }
    }
}

/// reqwest-retry's strategy: retry exactly the failures [`UpstreamError::is_transient`] names.
struct Classifier;

impl RetryableStrategy for Classifier {
    fn handle(&self, result: &Result<Response, reqwest_middleware::Error>) -> Option<Retryable> {
        match result {
            Ok(_) => None,
            Err(reqwest_middleware::Error::Middleware(e)) => {
                match e.downcast_ref::<UpstreamError>() {
                    Some(cause) if cause.is_transient() => Some(Retryable::Transient),
                    _ => Some(Retryable::Fatal),
                }
            }
            Err(reqwest_middleware::Error::Reqwest(_)) => Some(Retryable::Fatal),
        }
    }
}

/// Runs once per attempt: budget, deadline, breaker, timed call, validation, `Retry-After`.
struct AttemptMiddleware {
    /// Shared circuit breaker.
    breaker: Breaker,
    /// Shared retry budget.
    budget: Arc<RetryBudget>,
    /// Metrics for attempts, retries and budget refusals.
    metrics: Arc<Metrics>,
    /// Upper bound of one attempt.
    attempt_timeout: Duration,
}

fn fail(state: &mut CallState, error: UpstreamError) -> reqwest_middleware::Result<Response> {
    state.last_error = Some(error.clone());
    Err(reqwest_middleware::Error::Middleware(error.into()))
}

/// What one timed attempt produced before validation.
enum Answer {
    /// Status, headers and the body read in full.
    Complete(StatusCode, http::HeaderMap, Vec<u8>),
    /// A failure with its outcome label.
    Failed(AttemptOutcome, UpstreamError),
}

#[async_trait::async_trait]
impl Middleware for AttemptMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let Some(mut state) = extensions.get::<CallState>().cloned() else {
            return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                "AttemptMiddleware needs a CallState in the request extensions"
            )));
        };
        let resend_count = state.attempts;
        state.attempts += 1;
        let result = self
            .attempt(request, extensions, next, &mut state, resend_count)
            .await;
        extensions.insert(state);
        result
    }
}

impl AttemptMiddleware {
    async fn attempt(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        state: &mut CallState,
        resend_count: u32,
    ) -> reqwest_middleware::Result<Response> {
        let left = state.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return fail(state, UpstreamError::DeadlineExceeded);
        }
        let permit = match self.breaker.permit() {
            Ok(permit) => permit,
            Err(rejection) => {
                tracing::debug!(?rejection, "circuit breaker rejected the upstream attempt");
                return fail(state, UpstreamError::CircuitOpen(rejection));
            }
        };
        // The budget is charged last, so a retry that the deadline or the breaker stops costs
        // nothing and is not counted as a retry.
        if resend_count == 0 {
            self.budget.deposit();
        } else if self.budget.try_withdraw() {
            self.metrics.retries.inc();
        } else {
            permit.cancel();
            self.metrics.retry_budget_exhausted.inc();
            tracing::debug!("retry refused: retry budget exhausted");
            return fail(state, UpstreamError::BudgetExhausted);
        }
        let timeout = self.attempt_timeout.min(left);

        let span = tracing::info_span!(
            "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %request.url(),
            server.address = request.url().host_str().unwrap_or_default(),
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if resend_count > 0 {
            span.record("http.request.resend_count", i64::from(resend_count));
        }
        crate::telemetry::inject_trace_context(&span, &state.caller, request.headers_mut());

        let started = Instant::now();
        let answer = tokio::time::timeout(
            timeout,
            async {
                let response = match next.run(request, extensions).await {
                    Ok(response) => response,
                    Err(e) => {
                        return Answer::Failed(
                            AttemptOutcome::Transport,
                            UpstreamError::Transport(transport_cause(&e)),
                        );
                    }
                };
                let status = response.status();
                let headers = response.headers().clone();
                match read_limited(response).await {
                    Ok(body) => Answer::Complete(status, headers, body),
                    Err(ReadError::TooLarge) => Answer::Failed(
                        AttemptOutcome::Invalid,
                        UpstreamError::Invalid(format!(
                            "answer larger than {MAX_ANSWER_BYTES} bytes"
                        )),
                    ),
                    Err(ReadError::Transport(e)) => {
                        Answer::Failed(AttemptOutcome::Transport, UpstreamError::Transport(e))
                    }
                }
            }
            .instrument(span.clone()),
        )
        .await
        .unwrap_or(Answer::Failed(
            AttemptOutcome::Timeout,
            UpstreamError::Timeout(timeout),
        ));
        let elapsed = started.elapsed().as_secs_f64();

        let (status, headers, body) = match answer {
            Answer::Complete(status, headers, body) => (status, headers, body),
            Answer::Failed(outcome, error) => {
                permit.failure();
                self.metrics.attempt(outcome, elapsed);
                span.record("error.type", outcome.as_str());
                span.record("otel.status_code", "ERROR");
                return fail(state, error);
            }
        };
        span.record("http.response.status_code", status.as_u16());
        if !status.is_success() {
            permit.failure();
            self.metrics.attempt(AttemptOutcome::HttpError, elapsed);
            span.record("error.type", status.as_str());
            span.record("otel.status_code", "ERROR");
            if let Some(wait) = retry_after(&headers, status) {
                if Instant::now() + wait > state.deadline {
                    return fail(state, UpstreamError::RetryAfterBeyondDeadline(wait));
                }
                tokio::time::sleep(wait).await;
            }
            return fail(state, UpstreamError::Status(status.as_u16()));
        }
        match validate(&state.input, &body) {
            Ok(output) => {
                permit.success();
                self.metrics.attempt(AttemptOutcome::Success, elapsed);
                state.output = Some(output);
                state.last_error = None;
                Ok(Response::from(http::Response::new(Vec::<u8>::new())))
            }
            Err(reason) => {
                permit.failure();
                self.metrics.attempt(AttemptOutcome::Invalid, elapsed);
                span.record("error.type", "invalid_answer");
                span.record("otel.status_code", "ERROR");
                tracing::warn!(reason = %reason, "upstream answer rejected");
                fail(state, UpstreamError::Invalid(reason))
            }
        }
    }
}

/// Names the transport failure by its kind first (connect, timeout, body), then its chain.
fn transport_cause(error: &reqwest_middleware::Error) -> String {
    let kind = match error {
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => "connect",
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "timeout",
        reqwest_middleware::Error::Reqwest(e) if e.is_body() => "body",
        reqwest_middleware::Error::Reqwest(_) => "request",
        reqwest_middleware::Error::Middleware(_) => "middleware",
    };
    let mut cause = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause.push_str(": ");
        cause.push_str(&inner.to_string());
        source = inner.source();
    }
    cause
}

enum ReadError {
    TooLarge,
    Transport(String),
}

async fn read_limited(mut response: Response) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ReadError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let mut cause = format!("reading the answer: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    cause.push_str(": ");
                    cause.push_str(&inner.to_string());
                    source = inner.source();
                }
                return Err(ReadError::Transport(cause));
            }
        }
    }
}

/// The `Retry-After` of a 429 or 503, in seconds or as an HTTP date.
fn retry_after(headers: &http::HeaderMap, status: StatusCode) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[derive(serde::Deserialize)]
struct ShoutAnswer {
    #[serde(rename = "OUTPUT")]
    output: String,
}

/// Accepts the body only if it is JSON whose `OUTPUT` is a valid capitalization of `input`.
fn validate(input: &str, body: &[u8]) -> Result<String, String> {
    let answer: ShoutAnswer =
        serde_json::from_slice(body).map_err(|e| format!("not JSON with a string OUTPUT: {e}"))?;
    if is_valid_shout(input, &answer.output) {
        Ok(answer.output)
    } else {
        Err("OUTPUT is not the capitalized INPUT".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_is_wrong() {
        assert_eq!(
            validate("tset", br#"{"INPUT":"tset","OUTPUT":"TSET"}"#),
            Ok("TSET".into())
        );
        assert!(
            validate("tset", b"not json")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            validate("tset", br#"{"OUTPUT":42}"#)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            validate("tset", br#"{"OUTPUT":"HACKED"}"#)
                .unwrap_err()
                .contains("not the capitalized")
        );
    }

    #[test]
    fn retry_after_is_read_for_429_and_503_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(
            retry_after(&headers, StatusCode::TOO_MANY_REQUESTS),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers, StatusCode::SERVICE_UNAVAILABLE),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers, StatusCode::INTERNAL_SERVER_ERROR),
            None
        );
    }
}
