//! The retry budget: retries may add at most a fraction of upstream traffic.
//!
//! # Why a budget and not only a retry count
//!
//! A per-request limit ("retry twice") triples the load on an upstream that fails everything:
//! exactly when it is sick it sees a retry storm. A budget ties retries to the traffic that earns
//! them: every first attempt deposits `ratio` of a retry, every retry withdraws one, and a small
//! floor (`min_per_sec`) keeps retries possible at low traffic. With the defaults (ratio 0.2, 10/s
//! floor, 10 s window, as Linkerd) a hard-down upstream sees at most 1.2x the first attempts plus
//! the floor, whatever the per-request limit says.
//!
//! The window slides in one-second slots. Time is `tokio::time::Instant`, so tests pause the clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Counts of one slot of the window.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Which second since the budget's start this slot covers.
    second: u64,
    /// First attempts seen in this second.
    deposits: u64,
    /// Retries granted in this second.
    withdrawals: u64,
}

/// Sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    /// Fraction of first attempts that may be retried.
    ratio: f64,
    /// Retries per second always available.
    min_per_sec: u32,
    /// Window length in whole seconds.
    window_secs: u64,
    /// Reference point of the slot numbering.
    start: Instant,
    /// Slots of the current window, oldest first; held briefly, only on the miss path.
    slots: Mutex<VecDeque<Slot>>,
}

/// A snapshot of the budget for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BudgetSnapshot {
    /// First attempts in the window.
    pub deposits: u64,
    /// Retries granted in the window.
    pub withdrawals: u64,
    /// Retries still available in the window.
    pub available: u64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per first attempt plus `min_per_sec` retries per second,
    /// over a window of `window`.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        Self {
            ratio,
            min_per_sec,
            window_secs: window.as_secs().max(1),
            start: Instant::now(),
            slots: Mutex::new(VecDeque::new()),
        }
    }

    fn current_second(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_secs()
    }

    /// Drops slots that left the window and returns the slot of the current second.
    fn rotate(&self, slots: &mut VecDeque<Slot>) -> u64 {
        let now = self.current_second();
        while slots
            .front()
            .is_some_and(|s| s.second + self.window_secs <= now)
        {
            slots.pop_front();
        }
        if slots.back().is_none_or(|s| s.second != now) {
            slots.push_back(Slot {
                second: now,
                deposits: 0,
                withdrawals: 0,
            });
        }
        now
    }

    fn totals(slots: &VecDeque<Slot>) -> (u64, u64) {
        slots
            .iter()
            .fold((0, 0), |(d, w), s| (d + s.deposits, w + s.withdrawals))
    }

    fn allowance(&self, deposits: u64) -> u64 {
        let floor = u64::from(self.min_per_sec) * self.window_secs;
        floor + (deposits as f64 * self.ratio) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        // A panic while holding this lock cannot leave the counts inconsistent in a way that
        // matters (they are plain counters), so a poisoned lock is used as is.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        if let Some(slot) = slots.back_mut() {
            slot.deposits += 1;
        }
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        let (deposits, withdrawals) = Self::totals(&slots);
        if withdrawals >= self.allowance(deposits) {
            return false;
        }
        if let Some(slot) = slots.back_mut() {
            slot.withdrawals += 1;
        }
        true
    }

    /// The window's counts, for operators.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        let (deposits, withdrawals) = Self::totals(&slots);
        BudgetSnapshot {
            deposits,
            withdrawals,
            available: self.allowance(deposits).saturating_sub(withdrawals),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_sec_times_window_retries_without_traffic() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let granted = (0..500).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_earns_retries_at_the_ratio() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 200, "20% of 1000 first attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_when_they_leave_the_window() {
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw(), "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_with_the_window() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(2));
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.snapshot().available, 5);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(budget.snapshot().available, 0);
        assert!(!budget.try_withdraw());
    }
}
