//! The resolve pipeline: who capitalizes a request's string, and why.
//!
//! # The order, and why
//!
//! 1. **Cache.** A hit answers without touching anything else: cheapest first. Only answers
//!    shoutcloud confirmed are in it.
//! 2. **Single flight.** A miss goes through moka's `try_get_with`, so N concurrent misses for one
//!    input make one upstream call. The load runs in a spawned task: a client that hangs up
//!    cannot cancel it (moka would restart a cancelled load in a waiter, and panics after
//!    repeated aborts, its issue #240), and its answer still fills the cache.
//! 3. **Deadline.** The load's clock starts here and bounds everything below, retries and
//!    backoffs included; when it passes, the fallback answers.
//! 4. **Bulkhead.** At most N upstream calls at once. When full, the fallback answers at once:
//!    queueing would only turn an upstream slowdown into our own.
//! 5. **Retrying client** ([`crate::upstream::client`]): per attempt, the retry budget, the
//!    circuit breaker (inside the retry loop, so an open circuit ends the retries) and the
//!    validation of the answer.
//! 6. **Fallback.** The local transform, always correct, with the reason recorded in logs,
//!    traces and metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{AnswerCache, CacheSnapshot};
use crate::metrics::Metrics;
use crate::shout::transform::{reverse_graphemes, shout_locally};
use crate::telemetry::CallerContext;
use crate::upstream::breaker::{Breaker, BreakerSnapshot};
use crate::upstream::budget::{BudgetSnapshot, RetryBudget};
use crate::upstream::{UpstreamClient, UpstreamError};

/// Which path produced an answer; sent to clients as `X-Shout-Source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// shoutcloud capitalized it for this request.
    Upstream = 0,
    /// A cached shoutcloud answer.
    Cache = 1,
    /// The local transform.
    Fallback = 2,
}

impl Source {
    /// Every source, in discriminant order.
    pub const ALL: [Source; 3] = [Self::Upstream, Self::Cache, Self::Fallback];

    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Cache => "cache",
            Self::Fallback => "fallback",
        }
    }
}

/// Why the fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The circuit breaker is open (or half-open with its probe running).
    BreakerOpen = 0,
    /// The overall deadline passed.
    Deadline = 1,
    /// The bulkhead was full.
    BulkheadFull = 2,
    /// A retry was needed and the retry budget was spent.
    BudgetExhausted = 3,
    /// The upstream failed: transport error, timeout, non-2xx.
    UpstreamError = 4,
    /// The upstream's answer was not a valid capitalization.
    InvalidAnswer = 5,
}

impl FallbackReason {
    /// Every reason, in discriminant order.
    pub const ALL: [FallbackReason; 6] = [
        Self::BreakerOpen,
        Self::Deadline,
        Self::BulkheadFull,
        Self::BudgetExhausted,
        Self::UpstreamError,
        Self::InvalidAnswer,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::Deadline => "deadline",
            Self::BulkheadFull => "bulkhead_full",
            Self::BudgetExhausted => "budget_exhausted",
            Self::UpstreamError => "upstream_error",
            Self::InvalidAnswer => "invalid_answer",
        }
    }
}

/// Why a load produced no confirmed answer.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// The bulkhead had no free permit.
    #[error("bulkhead full")]
    BulkheadFull,
    /// The deadline passed before the client finished.
    #[error("deadline passed")]
    Deadline,
    /// The client's last failure.
    #[error(transparent)]
    Upstream(UpstreamError),
}

impl LoadError {
    fn reason(&self) -> FallbackReason {
        match self {
            Self::BulkheadFull => FallbackReason::BulkheadFull,
            Self::Deadline => FallbackReason::Deadline,
            Self::Upstream(e) => match e {
                UpstreamError::CircuitOpen(_) => FallbackReason::BreakerOpen,
                UpstreamError::DeadlineExceeded | UpstreamError::RetryAfterBeyondDeadline(_) => {
                    FallbackReason::Deadline
                }
                UpstreamError::BudgetExhausted => FallbackReason::BudgetExhausted,
                UpstreamError::Invalid(_) => FallbackReason::InvalidAnswer,
                UpstreamError::Timeout(_)
                | UpstreamError::Transport(_)
                | UpstreamError::Status(_) => FallbackReason::UpstreamError,
            },
        }
    }
}

/// A resolved answer.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The reversed, capitalized string.
    pub text: Arc<str>,
    /// Which path produced it.
    pub source: Source,
    /// Why the fallback answered, when it did.
    pub fallback: Option<FallbackReason>,
}

/// The live state of the pipeline, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineSnapshot {
    /// Circuit breaker state and counters.
    pub breaker: BreakerSnapshot,
    /// Retry budget over its window.
    pub retry_budget: BudgetSnapshot,
    /// Bulkhead occupancy.
    pub bulkhead: BulkheadSnapshot,
    /// Cache size.
    pub cache: CacheSnapshot,
}

/// Bulkhead occupancy.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BulkheadSnapshot {
    /// Upstream calls running.
    pub in_flight: usize,
    /// Most upstream calls at once.
    pub capacity: usize,
}

/// The parts of the pipeline, shared by every request.
#[derive(Debug)]
struct Inner {
    /// Confirmed answers.
    cache: AnswerCache,
    /// The retrying, breaker-guarded client.
    client: UpstreamClient,
    /// The breaker inside the client, kept for `/status`.
    breaker: Breaker,
    /// The budget inside the client, kept for `/status`.
    budget: Arc<RetryBudget>,
    /// Permits for concurrent upstream calls.
    bulkhead: Arc<Semaphore>,
    /// The bulkhead's size.
    bulkhead_capacity: usize,
    /// The overall deadline of a load.
    deadline: Duration,
    /// Where answers and fallbacks are counted.
    metrics: Arc<Metrics>,
}

/// Resolves inputs to answers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// The pieces a [`Resolver`] is built from.
#[derive(Debug)]
pub struct ResolverParts {
    /// Confirmed answers.
    pub cache: AnswerCache,
    /// The retrying client.
    pub client: UpstreamClient,
    /// The breaker the client uses.
    pub breaker: Breaker,
    /// The budget the client uses.
    pub budget: Arc<RetryBudget>,
    /// Bulkhead size.
    pub bulkhead: usize,
    /// Overall deadline.
    pub deadline: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Resolver {
    /// Assembles the pipeline.
    pub fn new(parts: ResolverParts) -> Self {
        parts.metrics.bulkhead_capacity.set(parts.bulkhead as i64);
        parts
            .metrics
            .deadline_seconds
            .set(parts.deadline.as_secs_f64());
        Self {
            inner: Arc::new(Inner {
                cache: parts.cache,
                client: parts.client,
                breaker: parts.breaker,
                budget: parts.budget,
                bulkhead: Arc::new(Semaphore::new(parts.bulkhead)),
                bulkhead_capacity: parts.bulkhead,
                deadline: parts.deadline,
                metrics: parts.metrics,
            }),
        }
    }

    /// Reverses and capitalizes `input`: from the cache, shoutcloud, or the fallback.
    pub async fn resolve(&self, input: &str, caller: CallerContext) -> Resolution {
        let metrics = &self.inner.metrics;
        if let Some(text) = self.inner.cache.get(input).await {
            metrics.cache_hits.inc();
            metrics.answer(Source::Cache);
            tracing::debug!("cache hit");
            return Resolution {
                text,
                source: Source::Cache,
                fallback: None,
            };
        }
        metrics.cache_misses.inc();
        let reversed = reverse_graphemes(input);
        // An open breaker answers from the fallback here, before a task is spawned: when
        // shoutcloud is down, every request takes this path, so it must be as cheap as a hit.
        if let Err(rejection) = self.inner.breaker.admits() {
            tracing::debug!(?rejection, "circuit breaker rejected the request");
            return self.fallback(&reversed, FallbackReason::BreakerOpen);
        }
        let inner = self.inner.clone();
        let key: Arc<str> = Arc::from(input);
        let upstream_input = reversed.clone();
        let load = tokio::spawn(
            async move {
                let loader = inner.clone();
                inner
                    .cache
                    .get_or_load(
                        key,
                        async move { loader.load(upstream_input, caller).await },
                    )
                    .await
            }
            .in_current_span(),
        );
        let failure = match load.await {
            Ok(Ok(text)) => {
                metrics.answer(Source::Upstream);
                return Resolution {
                    text,
                    source: Source::Upstream,
                    fallback: None,
                };
            }
            Ok(Err(error)) => error.reason(),
            Err(join) => {
                tracing::error!(error = %join, "the upstream load task failed");
                FallbackReason::UpstreamError
            }
        };
        self.fallback(&reversed, failure)
    }

    fn fallback(&self, reversed: &str, reason: FallbackReason) -> Resolution {
        self.inner.metrics.answer(Source::Fallback);
        self.inner.metrics.fallback(reason);
        tracing::debug!(reason = reason.as_str(), "fallback answered");
        Resolution {
            text: shout_locally(reversed).into(),
            source: Source::Fallback,
            fallback: Some(reason),
        }
    }

    /// The live state of breaker, budget, bulkhead and cache.
    pub async fn snapshot(&self) -> PipelineSnapshot {
        let inner = &self.inner;
        PipelineSnapshot {
            breaker: inner.breaker.snapshot(),
            retry_budget: inner.budget.snapshot(),
            bulkhead: BulkheadSnapshot {
                in_flight: inner.bulkhead_capacity - inner.bulkhead.available_permits(),
                capacity: inner.bulkhead_capacity,
            },
            cache: inner.cache.snapshot().await,
        }
    }

    /// Refreshes the gauges that are read rather than counted (called before each scrape).
    pub async fn refresh_gauges(&self) {
        let cache = self.inner.cache.snapshot().await;
        let metrics = &self.inner.metrics;
        metrics
            .cache_entries
            .set(i64::try_from(cache.entries).unwrap_or(i64::MAX));
        metrics
            .cache_weighted_bytes
            .set(i64::try_from(cache.weighted_bytes).unwrap_or(i64::MAX));
    }
}

impl Inner {
    /// One bounded attempt at a confirmed answer: deadline, bulkhead, retrying client.
    async fn load(&self, reversed: String, caller: CallerContext) -> Result<Arc<str>, LoadError> {
        let deadline = Instant::now() + self.deadline;
        let Ok(_permit) = self.bulkhead.clone().try_acquire_owned() else {
            self.metrics.bulkhead_rejected.inc();
            return Err(LoadError::BulkheadFull);
        };
        self.metrics.bulkhead_in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        // The client honours the deadline itself; this is the backstop that makes "no request
        // waits longer than the deadline" hold whatever happens below.
        match tokio::time::timeout_at(deadline, self.client.shout(&reversed, deadline, caller))
            .await
        {
            Ok(report) => match report.result {
                Ok(output) => Ok(output.into()),
                Err(UpstreamError::Timeout(_)) if Instant::now() >= deadline => {
                    Err(LoadError::Deadline)
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempts = report.attempts, "no confirmed answer from the upstream");
                    Err(LoadError::Upstream(e))
                }
            },
            Err(_) => Err(LoadError::Deadline),
        }
    }
}

/// Decrements the in-flight gauge when the load ends, however it ends.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.bulkhead_in_flight.dec();
    }
}
