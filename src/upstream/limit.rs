//! The concurrency limit: at most N upstream calls at once; beyond it the fallback answers at
//! once instead of queueing, because a queue only turns an upstream slowdown into our own.
//!
//! The limit is fixed today (`--bulkhead` is its size and stays its ceiling); the component is
//! small on purpose so an adaptive limit can replace its inside without touching the resolver,
//! which only calls [`ConcurrencyLimit::try_acquire`]. Calls in flight are not counted twice:
//! they are the limit minus the free permits, read at scrape time.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit's metric families.
#[derive(Debug)]
struct LimitMetrics {
    /// `shout_upstream_concurrency_limit`: the current limit.
    limit: IntGauge,
    /// `shout_upstream_in_flight`: permits held (refreshed at scrape).
    in_flight: IntGauge,
    /// `shout_upstream_limit_rejected_total`.
    rejected: IntCounter,
}

/// At most `limit` concurrent upstream calls; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConcurrencyLimit {
    /// One permit per upstream call in flight.
    permits: Arc<Semaphore>,
    /// The number of permits.
    limit: usize,
    /// Its metrics.
    metrics: Arc<LimitMetrics>,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct LimitPermit(
    /// Released on drop.
    #[allow(dead_code)]
    OwnedSemaphorePermit,
);

/// Occupancy for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct LimitSnapshot {
    /// Upstream calls running.
    pub(crate) in_flight: usize,
    /// Most upstream calls at once.
    pub(crate) limit: usize,
}

impl ConcurrencyLimit {
    /// A limit of `limit` calls whose metrics are registered on `registry`.
    pub(crate) fn new(limit: usize, registry: &Registry) -> prometheus::Result<Self> {
        let metrics = LimitMetrics {
            limit: IntGauge::new(
                "shout_upstream_concurrency_limit",
                "Most concurrent upstream calls allowed now.",
            )?,
            in_flight: IntGauge::new(
                "shout_upstream_in_flight",
                "Upstream calls in flight (concurrency limit permits held).",
            )?,
            rejected: IntCounter::new(
                "shout_upstream_limit_rejected_total",
                "Requests that found the concurrency limit full.",
            )?,
        };
        registry.register(Box::new(metrics.limit.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        metrics.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        Ok(Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics: Arc::new(metrics),
        })
    }

    /// A slot for one upstream call, or `None` (counted) when all are taken.
    pub(crate) fn try_acquire(&self) -> Option<LimitPermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(LimitPermit(permit)),
            Err(_) => {
                self.metrics.rejected.inc();
                None
            }
        }
    }

    /// Occupancy now.
    pub(crate) fn snapshot(&self) -> LimitSnapshot {
        LimitSnapshot {
            in_flight: self.limit.saturating_sub(self.permits.available_permits()),
            limit: self.limit,
        }
    }

    /// Refreshes the in-flight gauge (called at scrape).
    pub(crate) fn refresh(&self) {
        let in_flight = self.snapshot().in_flight;
        self.metrics
            .in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_limit_refuses_and_counts_and_frees_on_drop() {
        let registry = Registry::new();
        let limit = ConcurrencyLimit::new(2, &registry).expect("registers");
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.metrics.rejected.get(), 2);
        limit.refresh();
        assert_eq!(limit.metrics.in_flight.get(), 2);
        drop(a);
        limit.refresh();
        assert_eq!(limit.metrics.in_flight.get(), 1);
        assert!(limit.try_acquire().is_some());
    }
}
