//! The answer cache: moka's async cache of confirmed answers, bounded by bytes and by age.
//!
//! Only answers shoutcloud confirmed are stored; a fallback answer is never cached, so the
//! upstream gets another chance on the next request for the same input. Entries are weighed by
//! their bytes plus a fixed per-entry overhead, so `max_bytes` bounds memory rather than the
//! number of entries (one long input must not count as one short one).
//!
//! Hits and misses are not counted here: a hit is an answer with source `cache`, counted once
//! by the resolver. The cache owns its size gauges, refreshed at scrape.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use prometheus::{IntGauge, Registry};

/// Bytes counted for every entry on top of its key and value: moka's node, its access-order
/// and expiry bookkeeping, the `Arc` headers and the hash table slot. Measured: one million
/// unique short inputs grew resident memory by about 490 bytes per cached entry beyond its
/// strings (`cargo xtask bench`, memory run), so 512 keeps the byte bound a bound on memory.
const ENTRY_OVERHEAD_BYTES: u32 = 512;

/// A confirmed answer as the single flight hands it to every request waiting on it.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The reversed, capitalized string.
    pub(crate) text: Arc<str>,
    /// Whether the shared cache (Redis) held it rather than the upstream confirming it now, so
    /// that every waiter of the load labels it alike (`cache`, not `upstream`).
    pub(crate) from_shared: bool,
}

/// Cache of confirmed answers: input -> reversed and capitalized output.
#[derive(Debug, Clone)]
pub(crate) struct AnswerCache {
    /// moka's cache; `try_get_with` on it coalesces concurrent misses for one key.
    inner: Cache<Arc<str>, Loaded>,
    /// `shout_cache_entries`.
    entries: IntGauge,
    /// `shout_cache_weighted_bytes`.
    weighted_bytes: IntGauge,
}

/// Size of the cache for operators.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct CacheSnapshot {
    /// Cached answers.
    pub(crate) entries: u64,
    /// Weighed size in bytes.
    pub(crate) weighted_bytes: u64,
    /// The byte bound.
    pub(crate) max_bytes: u64,
}

impl AnswerCache {
    /// A cache holding at most `max_bytes` (weighed) for at most `ttl` per entry.
    /// Its size gauges are registered on `registry`.
    pub(crate) fn new(
        max_bytes: u64,
        ttl: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, value: &Loaded| -> u32 {
                let bytes = key.len().saturating_add(value.text.len());
                u32::try_from(bytes)
                    .unwrap_or(u32::MAX)
                    .saturating_add(ENTRY_OVERHEAD_BYTES)
            })
            .time_to_live(ttl)
            .build();
        let entries = IntGauge::new("shout_cache_entries", "Answers in the cache.")?;
        let weighted_bytes = IntGauge::new(
            "shout_cache_weighted_bytes",
            "Weighed size of the cache in bytes.",
        )?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(weighted_bytes.clone()))?;
        Ok(Self {
            inner,
            entries,
            weighted_bytes,
        })
    }

    /// The cached answer for `input`, if any.
    pub(crate) async fn get(&self, input: &str) -> Option<Arc<str>> {
        self.inner.get(input).await.map(|loaded| loaded.text)
    }

    /// Gets the answer for `key`, running `load` once for all concurrent callers of the same key
    /// and caching its `Ok`. Callers must not cancel this future before the load's own deadline
    /// (moka restarts a cancelled load in a waiter): the resolver runs it in a spawned task.
    pub(crate) async fn get_or_load<F, E>(&self, key: Arc<str>, load: F) -> Result<Loaded, Arc<E>>
    where
        F: Future<Output = Result<Loaded, E>>,
        E: Send + Sync + 'static,
    {
        self.inner.try_get_with(key, load).await
    }

    /// Entries and weighed size. moka applies writes lazily; this flushes them first so the
    /// numbers are current (called on scrapes and `/status`, not per request).
    pub(crate) async fn snapshot(&self) -> CacheSnapshot {
        self.inner.run_pending_tasks().await;
        CacheSnapshot {
            entries: self.inner.entry_count(),
            weighted_bytes: self.inner.weighted_size(),
            max_bytes: self.inner.policy().max_capacity().unwrap_or_default(),
        }
    }

    /// Refreshes the size gauges (called at scrape).
    pub(crate) async fn refresh(&self) {
        let snapshot = self.snapshot().await;
        self.entries
            .set(i64::try_from(snapshot.entries).unwrap_or(i64::MAX));
        self.weighted_bytes
            .set(i64::try_from(snapshot.weighted_bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let cache = AnswerCache::new(64 * 1024, Duration::from_secs(60), &Registry::new())
            .expect("registers");
        for i in 0..10_000 {
            let key: Arc<str> = format!("input-{i}").into();
            let value: Arc<str> = format!("{i}-TUPNI").into();
            let _ = cache
                .get_or_load::<_, ()>(key, async move {
                    Ok(Loaded {
                        text: value,
                        from_shared: false,
                    })
                })
                .await;
        }
        let snapshot = cache.snapshot().await;
        assert!(snapshot.weighted_bytes <= 64 * 1024, "{snapshot:?}");
        assert!(
            snapshot.entries > 0 && snapshot.entries < 10_000,
            "{snapshot:?}"
        );
    }

    #[tokio::test]
    async fn an_error_is_not_cached() {
        let cache = AnswerCache::new(1024 * 1024, Duration::from_secs(60), &Registry::new())
            .expect("registers");
        let failed = cache
            .get_or_load::<_, &str>("k".into(), async { Err("down") })
            .await;
        assert!(failed.is_err());
        assert!(cache.get("k").await.is_none());
    }
}
