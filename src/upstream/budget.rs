//! The retry budget: retries may add at most a fraction of upstream traffic.
//!
//! # Why a budget and not only a retry count
//!
//! A per-request limit ("retry twice") triples the load on an upstream that fails everything:
//! exactly when it is sick it sees a retry storm. A budget ties retries to the traffic that earns
//! them: every first attempt earns `ratio` of a retry over the window, and a small floor keeps
//! retries possible at low traffic. With the defaults (ratio 0.2, a floor of 10 retries per
//! second, a 10 s window, as Linkerd) retries add at most 20% to a busy upstream's traffic.
//!
//! # The floor is a rate, not a reserve
//!
//! tower's and Linkerd's budgets turn the floor into a reserve of `min_per_sec x window` retries
//! that can all be spent in one burst: 100 retries in the first tenth of a second at the
//! defaults, which is a retry storm of its own. Here floor retries are counted per second: at
//! most `min_per_sec` of them in any one-second slot, on top of what traffic earned over the
//! window.
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
    /// Retries granted in this second that traffic had earned.
    earned: u64,
    /// Retries granted in this second from the floor.
    floor: u64,
}

/// Sliding-window retry budget.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Fraction of first attempts that may be retried.
    ratio: f64,
    /// Floor retries allowed per second.
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
pub(crate) struct BudgetSnapshot {
    /// First attempts in the window.
    pub(crate) deposits: u64,
    /// Retries granted in the window.
    pub(crate) withdrawals: u64,
    /// Retries available now: what traffic earned and is unspent, plus this second's floor.
    pub(crate) available: u64,
}

/// Totals over the window.
struct Totals {
    deposits: u64,
    earned: u64,
    floor_this_second: u64,
    withdrawals: u64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per first attempt over `window`, plus `min_per_sec`
    /// retries in any one second.
    pub(crate) fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
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

    /// Drops slots that left the window and makes the last slot the current second's.
    fn rotate(&self, slots: &mut VecDeque<Slot>) {
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
                earned: 0,
                floor: 0,
            });
        }
    }

    fn totals(slots: &VecDeque<Slot>) -> Totals {
        let mut totals = Totals {
            deposits: 0,
            earned: 0,
            floor_this_second: 0,
            withdrawals: 0,
        };
        for slot in slots {
            totals.deposits += slot.deposits;
            totals.earned += slot.earned;
            totals.withdrawals += slot.earned + slot.floor;
        }
        totals.floor_this_second = slots.back().map_or(0, |s| s.floor);
        totals
    }

    fn earned_allowance(&self, deposits: u64) -> u64 {
        (deposits as f64 * self.ratio) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        // A panic while holding this lock cannot leave the counts inconsistent in a way that
        // matters (they are plain counters), so a poisoned lock is used as is.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a first attempt.
    pub(crate) fn deposit(&self) {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        if let Some(slot) = slots.back_mut() {
            slot.deposits += 1;
        }
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub(crate) fn try_withdraw(&self) -> bool {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        let totals = Self::totals(&slots);
        let Some(slot) = slots.back_mut() else {
            return false;
        };
        if totals.earned < self.earned_allowance(totals.deposits) {
            slot.earned += 1;
            true
        } else if totals.floor_this_second < u64::from(self.min_per_sec) {
            slot.floor += 1;
            true
        } else {
            false
        }
    }

    /// The window's counts, for operators.
    pub(crate) fn snapshot(&self) -> BudgetSnapshot {
        let mut slots = self.lock();
        self.rotate(&mut slots);
        let totals = Self::totals(&slots);
        let earned_left = self
            .earned_allowance(totals.deposits)
            .saturating_sub(totals.earned);
        let floor_left = u64::from(self.min_per_sec).saturating_sub(totals.floor_this_second);
        BudgetSnapshot {
            deposits: totals.deposits,
            withdrawals: totals.withdrawals,
            available: earned_left + floor_left,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_floor_is_a_rate_not_a_burst() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        assert_eq!(
            (0..500).filter(|_| budget.try_withdraw()).count(),
            10,
            "10 in the first second"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            (0..500).filter(|_| budget.try_withdraw()).count(),
            10,
            "10 more in the next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_traffic_retries_at_most_the_ratio_plus_one_second_of_floor() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        for _ in 0..200 {
            budget.deposit();
        }
        let granted = (0..200).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 40 + 10);
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
    async fn spent_earned_retries_come_back_when_they_leave_the_window() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..20 {
            budget.deposit();
        }
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..20 {
            budget.deposit();
        }
        assert_eq!(
            (0..50).filter(|_| budget.try_withdraw()).count(),
            10,
            "only the new deposits' share"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !budget.try_withdraw(),
            "the first deposits left the window with their retries"
        );
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
