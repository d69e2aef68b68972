//! The resolve pipeline: who answers a request's string, and why. One request reads top to
//! bottom down one chain of calls:
//!
//! 1. **Cache** ([`Resolver::resolve`]), in process (L1). A hit answers without touching
//!    anything else, Redis included. Only answers shoutcloud confirmed are in it.
//! 2. **Single flight.** A miss goes through moka's `try_get_with`, so N concurrent misses for one
//!    input make one load. The load runs in a spawned task: a client that hangs up
//!    cannot cancel it (moka would restart a cancelled load in a waiter, and panics after
//!    repeated aborts, its issue #240), and its answer still fills the cache.
//! 3. **Shared cache** (`Inner::load`, only with `--redis-url`): one Redis `GET`, bounded by its
//!    own timeout and skipped while its breaker is open. A value counts only when it is the
//!    canonical answer; a hit fills L1 (it is the load's result) and is sent as `cache`. It is
//!    read inside the single flight, not before it, so a burst of misses for one input costs
//!    Redis one `GET`, not one per request.
//! 4. **Deadline**. Its clock starts after the shared cache; the attempt loop bounds every wait
//!    by the time left, so the upstream part of the load ends by it.
//! 5. **Attempt loop** (`UpstreamClient::call`): each pass takes a slot of the adaptive
//!    concurrency limit (none free: the fallback answers at once, as queueing would turn an
//!    upstream slowdown into our own), a breaker permit (the only breaker check), pays the retry
//!    budget for a retry, runs one timed attempt, validates and classifies it.
//! 6. **Write-back**: a confirmed answer goes to Redis in the background (jittered TTL).
//! 7. **Fallback** with its reason: the canonical answer, our own transform.
//!
//! # One answer per input
//!
//! The canonical answer is our transform; the resolver computes it before the upstream is asked
//! and hands it to the loop, which accepts shoutcloud's `OUTPUT` only when it is byte-equal. So
//! upstream, cache and fallback answers are the same bytes, and nothing the upstream invents (a
//! Kelvin sign for `K`, `ẞ` for `SS`) reaches a client or the cache.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{AnswerCache, CacheSnapshot, Loaded};
use crate::metrics::ByLabel;
use crate::shared_cache::{SharedCache, SharedCacheSnapshot};
use crate::shout::transform::{reverse_graphemes, shout_locally};
use crate::upstream::breaker::BreakerSnapshot;
use crate::upstream::budget::BudgetSnapshot;
use crate::upstream::client::UpstreamClient;
use crate::upstream::limit::LimitSnapshot;
use crate::upstream::outcome::FallbackReason;

/// Which path produced an answer; sent to clients as `X-Shout-Source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Source {
    /// shoutcloud confirmed it for this request.
    Upstream,
    /// A cached shoutcloud-confirmed answer.
    Cache,
    /// The local transform.
    Fallback,
}

impl Source {
    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A resolved answer.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    /// The reversed, capitalized string.
    pub(crate) text: Arc<str>,
    /// Which path produced it.
    pub(crate) source: Source,
}

/// The live state of the pipeline, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PipelineSnapshot {
    /// Circuit breaker state.
    pub(crate) breaker: BreakerSnapshot,
    /// Retry budget over its window.
    pub(crate) retry_budget: BudgetSnapshot,
    /// Concurrency limit occupancy.
    pub(crate) concurrency_limit: LimitSnapshot,
    /// Cache size.
    pub(crate) cache: CacheSnapshot,
    /// The shared cache's breaker and counts; `null` without `--redis-url`.
    pub(crate) shared_cache: Option<SharedCacheSnapshot>,
}

/// The resolver's metric families.
#[derive(Debug)]
struct ResolveMetrics {
    /// `shout_answers_total{source}`.
    answers: ByLabel<Source, IntCounter>,
    /// `shout_fallbacks_total{reason}`.
    fallbacks: ByLabel<FallbackReason, IntCounter>,
}

impl ResolveMetrics {
    fn register(registry: &Registry, deadline: Duration) -> prometheus::Result<Self> {
        let answers = IntCounterVec::new(
            Opts::new("shout_answers_total", "Answers by source."),
            &["source"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "shout_fallbacks_total",
                "Answers given by the local fallback, by reason.",
            ),
            &["reason"],
        )?;
        let deadline_seconds = Gauge::new(
            "shout_deadline_seconds",
            "Configured overall upstream deadline.",
        )?;
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(deadline_seconds.clone()))?;
        deadline_seconds.set(deadline.as_secs_f64());
        Ok(Self {
            answers: ByLabel::new(|label| answers.with_label_values(&[label])),
            fallbacks: ByLabel::new(|label| fallbacks.with_label_values(&[label])),
        })
    }
}

/// The parts of the pipeline, shared by every request.
#[derive(Debug)]
struct Inner {
    /// Confirmed answers.
    cache: AnswerCache,
    /// Confirmed answers shared by the fleet (L2); `None` without `--redis-url`.
    shared: Option<SharedCache>,
    /// The attempt loop, with the breaker and budget it calls.
    client: UpstreamClient,
    /// The overall deadline of a load.
    deadline: Duration,
    /// Answers and fallbacks.
    metrics: ResolveMetrics,
}

/// Resolves inputs to answers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl Resolver {
    /// Assembles the pipeline; registers the resolver's metrics on `registry`.
    pub(crate) fn new(
        cache: AnswerCache,
        shared: Option<SharedCache>,
        client: UpstreamClient,
        deadline: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                cache,
                shared,
                client,
                deadline,
                metrics: ResolveMetrics::register(registry, deadline)?,
            }),
        })
    }

    /// Reverses and capitalizes `input`: from the cache, shoutcloud, or the fallback.
    pub(crate) async fn resolve(&self, input: &str) -> Resolution {
        if let Some(text) = self.inner.cache.get(input).await {
            tracing::debug!("cache hit");
            return self.answer(text, Source::Cache);
        }
        // Boxed: the miss future (spawn, join, fallback) would otherwise be inlined into every
        // request's future, which poem's layers move, hits included.
        Box::pin(self.resolve_miss(input)).await
    }

    /// Single flight, then the load or the fallback.
    async fn resolve_miss(&self, input: &str) -> Resolution {
        let reversed = reverse_graphemes(input);
        let canonical: Arc<str> = shout_locally(&reversed).into();
        let inner = self.inner.clone();
        let key: Arc<str> = Arc::from(input);
        let expected = canonical.clone();
        let load = tokio::spawn(
            async move {
                let loader = inner.clone();
                let input = key.clone();
                inner
                    .cache
                    .get_or_load(
                        key,
                        async move { loader.load(&input, reversed, expected).await },
                    )
                    .await
            }
            .in_current_span(),
        );
        let reason = match load.await {
            // A shared hit is a `cache` answer, for every request that waited on the load.
            Ok(Ok(loaded)) if loaded.from_shared => return self.answer(loaded.text, Source::Cache),
            Ok(Ok(loaded)) => return self.answer(loaded.text, Source::Upstream),
            Ok(Err(reason)) => *reason,
            Err(join) => {
                tracing::error!(error = %join, "the upstream load task failed");
                FallbackReason::UpstreamError
            }
        };
        self.inner.metrics.fallbacks.get(reason).inc();
        let label: &'static str = reason.into();
        tracing::debug!(reason = label, "fallback answered");
        self.answer(canonical, Source::Fallback)
    }

    fn answer(&self, text: Arc<str>, source: Source) -> Resolution {
        self.inner.metrics.answers.get(source).inc();
        Resolution { text, source }
    }

    /// The live state of breaker, budget, concurrency limit and both caches.
    pub(crate) async fn snapshot(&self) -> PipelineSnapshot {
        let inner = &self.inner;
        PipelineSnapshot {
            breaker: inner.client.breaker().snapshot(),
            retry_budget: inner.client.budget().snapshot(),
            concurrency_limit: inner.client.limit().snapshot(),
            cache: inner.cache.snapshot().await,
            shared_cache: inner.shared.as_ref().map(SharedCache::snapshot),
        }
    }

    /// Refreshes the gauges that are read rather than counted (called before each scrape):
    /// the breaker state follows the clock even with no traffic.
    pub(crate) async fn refresh_gauges(&self) {
        self.inner.client.breaker().refresh();
        self.inner.cache.refresh().await;
    }
}

impl Inner {
    /// One bounded attempt at a confirmed answer: shared cache, then deadline and attempt loop,
    /// then the write-back. `Ok` carries the canonical answer, which Redis held or the upstream
    /// confirmed byte for byte; `from_shared` says which.
    async fn load(
        &self,
        input: &str,
        reversed: String,
        canonical: Arc<str>,
    ) -> Result<Loaded, FallbackReason> {
        if let Some(shared) = &self.shared
            && shared
                .get(input, |value| value == &*canonical)
                .await
                .is_some()
        {
            return Ok(Loaded {
                text: canonical,
                from_shared: true,
            });
        }
        let now = Instant::now();
        // A deadline too far for the clock is no deadline at all: a year stands in for it.
        let deadline = now
            .checked_add(self.deadline)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        self.client.call(&reversed, &canonical, deadline).await?;
        if let Some(shared) = &self.shared {
            shared.put(input, &canonical);
        }
        Ok(Loaded {
            text: canonical,
            from_shared: false,
        })
    }
}
