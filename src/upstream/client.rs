//! The shoutcloud call: a plain attempt loop over reqwest, bounded by the caller's deadline.
//!
//! # One pass of the loop, in order
//!
//! 1. **Backoff** (from the second pass): reqwest-retry's `ExponentialBackoff` with full jitter
//!    computes the wait, and decides when retries are over. A `Retry-After` on a 429/503 makes
//!    the wait at least that long; a wait that would not end before the deadline ends the call
//!    at once (reason `deadline`). Every comparison is against the time left, so no header value
//!    can overflow the clock.
//! 2. **Concurrency permit** ([`AdaptiveLimit::try_acquire`]), taken per attempt so a backoff
//!    sleep holds no slot; none free ends the call at once (reason `concurrency_limit`). The
//!    attempt's latency, or that it timed out or was told 429/503, is what the limit learns from.
//! 3. **Breaker permit**: the only breaker check on the request path ([`Breaker::try_acquire`]).
//! 4. **Retry budget**: a first attempt deposits, a retry must withdraw.
//! 5. **Timed attempt**: `min(attempt timeout, time left)`; the body is read whole, bounded.
//! 6. **Validation**: `OUTPUT` is used only when byte-equal to our own answer.
//! 7. **Classification** ([`AttemptOutcome`]): what is retried, what the breaker hears.
//!
//! The deadline is the loop's: every wait in it is bounded by the time left, so the call ends
//! by the deadline without an outer timer. A disagreement on one input is not a breaker failure;
//! disagreements are only when most recent answers disagree ([`Disagreements`]), which is what
//! a broken or compromised upstream looks like.
//!
//! Nothing of the caller's trace context is sent: the client span is a child of the server span
//! through `tracing`, and only with `--upstream-trace-propagation` does our own client span's
//! `traceparent` (never `tracestate`) go out. Upstream bodies are never logged: lengths and a
//! short hash are.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use reqwest::{StatusCode, Url};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryDecision, RetryPolicy};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::{ByLabel, DURATION_BUCKETS};
use crate::upstream::breaker::{Breaker, Verdict};
use crate::upstream::budget::RetryBudget;
use crate::upstream::limit::{AdaptiveLimit, Permit};
use crate::upstream::outcome::{AttemptOutcome, FallbackReason};

/// Largest upstream answer read; a longer one is malformed. Inputs are bounded by the public
/// body limit, so a legitimate answer is far smaller.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Settings of the client.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    /// The shoutcloud endpoint.
    pub(crate) url: Url,
    /// Timeout of one attempt.
    pub(crate) attempt_timeout: Duration,
    /// TCP connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Most retries per call.
    pub(crate) retry_max: u32,
    /// Backoff bounds.
    pub(crate) min_backoff: Duration,
    /// Backoff bounds.
    pub(crate) max_backoff: Duration,
    /// Extra trusted roots for an `https://` upstream (PEM).
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Send our client span's `traceparent` upstream.
    pub(crate) trace_propagation: bool,
}

/// The client's metric families.
#[derive(Debug)]
struct UpstreamMetrics {
    /// `shout_upstream_attempts_total{outcome}`.
    attempts: ByLabel<AttemptOutcome, IntCounter>,
    /// `shout_upstream_attempt_duration_seconds{outcome}`.
    durations: ByLabel<AttemptOutcome, Histogram>,
    /// `shout_upstream_retries_total`.
    retries: IntCounter,
    /// `shout_upstream_retry_budget_exhausted_total`.
    budget_exhausted: IntCounter,
    /// `shout_upstream_disagreements_total`.
    disagreements: IntCounter,
}

impl UpstreamMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "shout_upstream_attempts_total",
                "Upstream (shoutcloud) attempts by outcome.",
            ),
            &["outcome"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "shout_upstream_attempt_duration_seconds",
                "Duration of upstream attempts by outcome.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let retries = IntCounter::new("shout_upstream_retries_total", "Upstream retries granted.")?;
        let budget_exhausted = IntCounter::new(
            "shout_upstream_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent.",
        )?;
        let disagreements = IntCounter::new(
            "shout_upstream_disagreements_total",
            "Upstream answers whose OUTPUT was not byte-equal to our answer.",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(disagreements.clone()))?;
        Ok(Self {
            attempts: ByLabel::new(|label| attempts.with_label_values(&[label])),
            durations: ByLabel::new(|label| durations.with_label_values(&[label])),
            retries,
            budget_exhausted,
            disagreements,
        })
    }
}

/// The recent share of answers that disagreed in their letters, not only their case mapping.
///
/// One disagreement says something about one input (shoutcloud's Unicode tables are older than
/// ours); a majority of them over a window says the upstream is broken. Ten one-second slots;
/// at least [`Disagreements::MIN_ANSWERS`] answers before the ratio counts.
#[derive(Debug)]
struct Disagreements {
    /// (second, answers, gross disagreements), oldest first.
    slots: Mutex<VecDeque<(u64, u32, u32)>>,
    /// Reference point of the slot numbering.
    start: Instant,
}

impl Disagreements {
    const WINDOW_SECS: u64 = 10;
    const MIN_ANSWERS: u32 = 20;

    fn new() -> Self {
        Self {
            slots: Mutex::new(VecDeque::new()),
            start: Instant::now(),
        }
    }

    /// Records a well-formed answer; returns whether most recent answers disagreed grossly.
    fn record(&self, gross: bool) -> bool {
        let now = Instant::now()
            .saturating_duration_since(self.start)
            .as_secs();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while slots
            .front()
            .is_some_and(|&(second, _, _)| second + Self::WINDOW_SECS <= now)
        {
            slots.pop_front();
        }
        if slots.back().is_none_or(|&(second, _, _)| second != now) {
            slots.push_back((now, 0, 0));
        }
        if let Some(slot) = slots.back_mut() {
            slot.1 = slot.1.saturating_add(1);
            slot.2 = slot.2.saturating_add(u32::from(gross));
        }
        let (answers, gross_total) = slots.iter().fold((0u32, 0u32), |(a, g), &(_, sa, sg)| {
            (a.saturating_add(sa), g.saturating_add(sg))
        });
        answers >= Self::MIN_ANSWERS && u64::from(gross_total) * 2 > u64::from(answers)
    }
}

/// The shoutcloud client and its attempt loop.
#[derive(Debug)]
pub(crate) struct UpstreamClient {
    /// reqwest, no middleware.
    http: reqwest::Client,
    /// The shoutcloud endpoint.
    url: Url,
    /// Upper bound of one attempt.
    attempt_timeout: Duration,
    /// Backoff delays (full jitter) and the retry count.
    backoff: ExponentialBackoff,
    /// Most retries per call.
    retry_max: u32,
    /// The circuit breaker.
    breaker: Breaker,
    /// The retry budget.
    budget: RetryBudget,
    /// The adaptive concurrency limit, one slot per attempt in flight.
    limit: AdaptiveLimit,
    /// The recent disagreement ratio.
    disagreements: Disagreements,
    /// Send our client span's `traceparent`.
    trace_propagation: bool,
    /// Attempt metrics.
    metrics: UpstreamMetrics,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// reqwest refused its settings or the CA file.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A metric could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What one timed attempt produced.
struct Attempt {
    outcome: AttemptOutcome,
    /// A disagreement in the letters themselves, not only their case mapping.
    gross: bool,
    /// `Retry-After` of a 429/503.
    retry_after: Option<Duration>,
    /// The answer was a 429 or 503: shoutcloud says it is overloaded.
    overloaded: bool,
}

impl UpstreamClient {
    /// Builds the client around a breaker and a budget; registers its metrics.
    pub(crate) fn new(
        config: &ClientConfig,
        breaker: Breaker,
        budget: RetryBudget,
        limit: AdaptiveLimit,
        registry: &Registry,
    ) -> Result<Self, BuildError> {
        crate::install_tls_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // shoutcloud answers directly; following redirects would only add work and a way
            // to send requests elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("shout-proxy/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        let backoff = ExponentialBackoff::builder()
            .retry_bounds(config.min_backoff, config.max_backoff)
            .jitter(Jitter::Full)
            .base(2)
            .build_with_max_retries(config.retry_max);
        Ok(Self {
            http: http.build()?,
            url: config.url.clone(),
            attempt_timeout: config.attempt_timeout,
            backoff,
            retry_max: config.retry_max,
            breaker,
            budget,
            limit,
            disagreements: Disagreements::new(),
            trace_propagation: config.trace_propagation,
            metrics: UpstreamMetrics::register(registry)?,
        })
    }

    /// The breaker, for `/status` and the scrape.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The budget, for `/status`.
    pub(crate) fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The concurrency limit, for `/status`.
    pub(crate) fn limit(&self) -> &AdaptiveLimit {
        &self.limit
    }

    /// Asks shoutcloud to capitalize `reversed` until `deadline`; `Ok` only when it answered
    /// exactly `expected`, otherwise the reason the fallback answers.
    pub(crate) async fn call(
        &self,
        reversed: &str,
        expected: &str,
        deadline: Instant,
    ) -> Result<(), FallbackReason> {
        // Built on the first attempt that runs: a call the breaker refuses costs no JSON.
        let mut body: Option<Bytes> = None;
        let started = SystemTime::now();
        let mut last = FallbackReason::UpstreamError;
        let mut retry_after = None;
        for attempt in 0..=self.retry_max {
            if attempt > 0 {
                let wait = match self.backoff.should_retry(started, attempt - 1) {
                    RetryDecision::Retry { execute_after } => execute_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default(),
                    RetryDecision::DoNotRetry => break,
                };
                let wait = retry_after.map_or(wait, |asked: Duration| asked.max(wait));
                if wait >= deadline.saturating_duration_since(Instant::now()) {
                    return Err(FallbackReason::Deadline);
                }
                tokio::time::sleep(wait).await;
            }
            let slot = self
                .limit
                .try_acquire()
                .ok_or(FallbackReason::ConcurrencyLimit)?;
            // A refusal below drops `slot` unused, which tells the limit nothing.
            let permit = self
                .breaker
                .try_acquire()
                .map_err(|_| FallbackReason::BreakerOpen)?;
            if attempt == 0 {
                self.budget.deposit();
            } else if self.budget.try_withdraw() {
                self.metrics.retries.inc();
            } else {
                permit.record(Verdict::Neutral);
                self.metrics.budget_exhausted.inc();
                return Err(FallbackReason::BudgetExhausted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                permit.record(Verdict::Neutral);
                return Err(FallbackReason::Deadline);
            }
            let cut_by_deadline = left < self.attempt_timeout;
            let body = match &body {
                Some(body) => body.clone(),
                None => {
                    // Serializing a string cannot fail; if it did, the upstream is not to blame.
                    let Ok(json) = serde_json::to_vec(&ShoutRequest { input: reversed }) else {
                        permit.record(Verdict::Neutral);
                        return Err(FallbackReason::UpstreamError);
                    };
                    body.insert(Bytes::from(json)).clone()
                }
            };
            // Boxed: reqwest's future is kilobytes, and inlined it would be copied with every
            // load future, including the many that the breaker refuses before any attempt.
            let sent = Instant::now();
            let result = Box::pin(self.attempt(
                body,
                reversed,
                expected,
                self.attempt_timeout.min(left),
                attempt,
            ))
            .await;
            let outcome = result.outcome;
            teach_limit(slot, outcome, result.overloaded, sent.elapsed());
            let verdict = match outcome {
                AttemptOutcome::Disagreement | AttemptOutcome::Success => {
                    let gross = outcome == AttemptOutcome::Disagreement && result.gross;
                    if self.disagreements.record(gross) && gross {
                        Verdict::Sick
                    } else {
                        outcome.verdict()
                    }
                }
                _ => outcome.verdict(),
            };
            permit.record(verdict);
            if outcome == AttemptOutcome::Success {
                return Ok(());
            }
            if !outcome.is_transient() {
                return Err(outcome.reason());
            }
            last = if outcome == AttemptOutcome::Timeout && cut_by_deadline {
                FallbackReason::Deadline
            } else {
                outcome.reason()
            };
            retry_after = result.retry_after;
        }
        Err(last)
    }

    /// One timed attempt: send, read the whole body, validate, classify.
    async fn attempt(
        &self,
        body: Bytes,
        reversed: &str,
        expected: &str,
        timeout: Duration,
        resend_count: u32,
    ) -> Attempt {
        let span = tracing::info_span!(
            "POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = self.url.as_str(),
            http.request.resend_count = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if resend_count > 0 {
            span.record("http.request.resend_count", i64::from(resend_count));
        }
        let mut request = self
            .http
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        if self.trace_propagation
            && let Some(traceparent) = crate::telemetry::inject_trace_context(&span)
        {
            request = request.header("traceparent", traceparent);
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, exchange(request))
            .instrument(span.clone())
            .await;
        let mut overloaded = false;
        let (outcome, gross, retry_after) = match answer {
            Err(_) => (AttemptOutcome::Timeout, false, None),
            Ok(Err(outcome)) => (outcome, false, None),
            Ok(Ok((status, retry_after, body))) => {
                span.record("http.response.status_code", status.as_u16());
                overloaded = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                );
                let (outcome, gross) = classify(status, &body, reversed, expected);
                (outcome, gross, retry_after)
            }
        };
        let label: &'static str = outcome.into();
        if outcome != AttemptOutcome::Success {
            span.record("error.type", label);
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.attempts.get(outcome).inc();
        self.metrics
            .durations
            .get(outcome)
            .observe(started.elapsed().as_secs_f64());
        if outcome == AttemptOutcome::Disagreement {
            self.metrics.disagreements.inc();
        }
        Attempt {
            outcome,
            gross,
            retry_after,
            overloaded,
        }
    }
}

/// What one attempt tells the concurrency limit: an answer's latency (a fast 4xx or 5xx is
/// one), a timeout or a 429/503 is load to back off from, a transport failure says nothing.
fn teach_limit(slot: Permit, outcome: AttemptOutcome, overloaded: bool, latency: Duration) {
    match outcome {
        AttemptOutcome::Timeout => slot.dropped(),
        AttemptOutcome::ServerError if overloaded => slot.dropped(),
        AttemptOutcome::Transport => slot.ignore(),
        _ => slot.success(latency),
    }
}

/// Whether a disagreeing `output` has our letters in another case mapping (`ɤ` left as is, a
/// Kelvin sign for `K`, `ẞ` for `SS`): that depends on the input's characters, not on the
/// upstream's health. An ASCII lower-case letter is never another mapping: every Unicode
/// version upper-cases ASCII, so an answer with one did not capitalize at all.
fn same_letters(reversed: &str, output: &str) -> bool {
    // Lower, upper, lower: folds every case mapping we know of to one form (`ẞ` and `ß` to
    // `ss`, the Kelvin sign and `k` to `k`, `I` and `ı` to `i`).
    let fold = |s: &str| s.to_lowercase().to_uppercase().to_lowercase();
    !output.bytes().any(|b| b.is_ascii_lowercase()) && fold(output) == fold(reversed)
}

/// Sends the request and reads the whole answer, bounded by [`MAX_ANSWER_BYTES`].
async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, Option<Duration>, Vec<u8>), AttemptOutcome> {
    let mut response = request.send().await.map_err(|e| {
        tracing::debug!(kind = transport_kind(&e), "upstream transport failure");
        AttemptOutcome::Transport
    })?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), status);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > MAX_ANSWER_BYTES {
                    return Err(AttemptOutcome::Malformed);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, retry_after, body)),
            Err(e) => {
                tracing::debug!(
                    kind = transport_kind(&e),
                    "reading the upstream answer failed"
                );
                return Err(AttemptOutcome::Transport);
            }
        }
    }
}

fn transport_kind(error: &reqwest::Error) -> &'static str {
    if error.is_connect() {
        "connect"
    } else if error.is_timeout() {
        "timeout"
    } else if error.is_body() {
        "body"
    } else {
        "request"
    }
}

/// shoutcloud's request body.
#[derive(serde::Serialize)]
struct ShoutRequest<'a> {
    #[serde(rename = "INPUT")]
    input: &'a str,
}

/// The part of shoutcloud's answer we read.
#[derive(serde::Deserialize)]
struct ShoutAnswer {
    #[serde(rename = "OUTPUT")]
    output: String,
}

/// Classifies a complete answer. Only an `OUTPUT` byte-equal to `expected` is a success; the
/// flag is whether a disagreement is in the letters themselves ([`same_letters`] is false).
fn classify(
    status: StatusCode,
    body: &[u8],
    reversed: &str,
    expected: &str,
) -> (AttemptOutcome, bool) {
    if !status.is_success() {
        let outcome = if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            AttemptOutcome::ServerError
        } else {
            AttemptOutcome::Rejected
        };
        tracing::debug!(
            status = status.as_u16(),
            body_bytes = body.len(),
            body_hash = %short_hash(body),
            "upstream refused the attempt"
        );
        return (outcome, false);
    }
    let Ok(answer) = serde_json::from_slice::<ShoutAnswer>(body) else {
        tracing::debug!(
            body_bytes = body.len(),
            body_hash = %short_hash(body),
            "upstream answer is not JSON with a string OUTPUT"
        );
        return (AttemptOutcome::Malformed, false);
    };
    if answer.output == expected {
        return (AttemptOutcome::Success, false);
    }
    tracing::debug!(
        output_bytes = answer.output.len(),
        expected_bytes = expected.len(),
        output_hash = %short_hash(answer.output.as_bytes()),
        "upstream OUTPUT disagrees with our answer; the fallback answers"
    );
    (
        AttemptOutcome::Disagreement,
        !same_letters(reversed, &answer.output),
    )
}

/// A short, stable hash that lets logs tell payloads apart without carrying them.
fn short_hash(bytes: &[u8]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:08x}", hasher.finish() >> 32)
}

/// The `Retry-After` of a 429 or 503, in seconds or as an HTTP date; any value parses without
/// panicking (the loop compares it with the time left, never adds it to a clock).
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
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds: as good as never.
        return Some(Duration::MAX);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_byte_equal_output_is_a_success() {
        let ok = StatusCode::OK;
        let c = |status, body: &str, reversed, expected| {
            classify(status, body.as_bytes(), reversed, expected)
        };
        use AttemptOutcome::*;
        assert_eq!(
            c(ok, r#"{"INPUT":"tset","OUTPUT":"TSET"}"#, "tset", "TSET"),
            (Success, false)
        );
        assert_eq!(c(ok, "not json", "tset", "TSET"), (Malformed, false));
        assert_eq!(
            c(ok, r#"{"OUTPUT":42}"#, "tset", "TSET"),
            (Malformed, false)
        );
        // U+212A KELVIN SIGN for K: same letters, another mapping.
        assert_eq!(
            c(ok, "{\"OUTPUT\":\"\u{212A}AYAK\"}", "kayak", "KAYAK"),
            (Disagreement, false)
        );
        assert_eq!(
            c(ok, "{\"OUTPUT\":\"\u{1E9E}\"}", "\u{DF}", "SS"),
            (Disagreement, false)
        );
        // U+0264 left as is where we give U+A7CB.
        assert_eq!(
            c(ok, "{\"OUTPUT\":\"A\u{264}\"}", "a\u{264}", "A\u{A7CB}"),
            (Disagreement, false)
        );
        assert_eq!(
            c(ok, r#"{"OUTPUT":"PWNED"}"#, "tset", "TSET"),
            (Disagreement, true)
        );
        assert_eq!(
            c(ok, r#"{"OUTPUT":"tset"}"#, "tset", "TSET"),
            (Disagreement, true),
            "ASCII left lower case is no case mapping"
        );
        assert_eq!(
            c(ok, "{\"OUTPUT\":\"1 \u{264}\"}", "1 \u{264}", "1 \u{A7CB}"),
            (Disagreement, false),
            "an echo of what old tables cannot map is one"
        );
        assert_eq!(
            c(StatusCode::BAD_REQUEST, "echo of the input", "x", "X"),
            (Rejected, false)
        );
        assert_eq!(
            c(StatusCode::TOO_MANY_REQUESTS, "", "x", "X"),
            (ServerError, false)
        );
        assert_eq!(
            c(StatusCode::BAD_GATEWAY, "", "x", "X"),
            (ServerError, false)
        );
    }

    #[test]
    fn retry_after_of_any_size_parses_without_panicking() {
        let mut headers = http::HeaderMap::new();
        for (value, expected) in [
            ("3", Some(Duration::from_secs(3))),
            ("18446744073709551615", Some(Duration::from_secs(u64::MAX))),
            ("99999999999999999999999999", Some(Duration::MAX)),
            ("soon", None),
            ("-1", None),
        ] {
            headers.insert(http::header::RETRY_AFTER, value.parse().expect("header"));
            assert_eq!(
                retry_after(&headers, StatusCode::SERVICE_UNAVAILABLE),
                expected,
                "{value}"
            );
        }
        assert_eq!(
            retry_after(&headers, StatusCode::INTERNAL_SERVER_ERROR),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn most_answers_disagreeing_grossly_is_sickness_a_few_are_not() {
        let window = Disagreements::new();
        for _ in 0..30 {
            assert!(!window.record(false));
        }
        for _ in 0..30 {
            assert!(!window.record(true), "30 of 60 is not most");
        }
        assert!(window.record(true), "31 of 61 is most");
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..19 {
            assert!(!window.record(true), "under 20 answers the ratio waits");
        }
    }

    /// A writer the test subscriber logs into.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn upstream_bodies_and_user_text_never_reach_the_logs() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let secret = "secret words of the user";
        tracing::subscriber::with_default(subscriber, || {
            classify(StatusCode::BAD_REQUEST, secret.as_bytes(), secret, "X");
            classify(StatusCode::OK, secret.as_bytes(), secret, "X");
            let body = format!(r#"{{"OUTPUT":"{secret}"}}"#);
            classify(StatusCode::OK, body.as_bytes(), secret, "X");
        });
        let logs = String::from_utf8_lossy(&captured.0.lock().expect("not poisoned")).to_string();
        assert_eq!(logs.lines().count(), 3, "{logs}");
        assert!(!logs.contains("secret"), "{logs}");
        assert!(logs.contains(&short_hash(secret.as_bytes())), "{logs}");
        assert!(
            logs.contains(&format!("body_bytes={}", secret.len())),
            "{logs}"
        );
    }

    #[test]
    fn a_short_hash_has_eight_hex_digits() {
        let hash = short_hash(b"some upstream body");
        assert_eq!(hash.len(), 8);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(hash, short_hash(b"another body"));
    }
}
