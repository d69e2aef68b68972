//! What one attempt produced, and why the fallback answered: the classification in one place.
//!
//! An attempt ends in an [`AttemptOutcome`]; its methods say whether it is retried, what it
//! tells the breaker, and which [`FallbackReason`] it becomes when it is the last one. The steps
//! around the attempts (breaker, budget, deadline, concurrency limit) end in a reason directly.
//! Both enums give their metric labels themselves (`strum`), so no label table can drift.

use crate::upstream::breaker::Verdict;

/// How one upstream attempt ended; the `outcome` label of the attempt metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum AttemptOutcome {
    /// `OUTPUT` is byte-equal to our answer.
    Success,
    /// No complete answer within the attempt's time.
    Timeout,
    /// Connection refused or reset, or another transport failure.
    Transport,
    /// 5xx, 408 or 429: the upstream is overloaded or failing.
    ServerError,
    /// Another 4xx: the upstream refused this input.
    Rejected,
    /// A 2xx whose body is not JSON with a string `OUTPUT`, or is too large.
    Malformed,
    /// A well-formed `OUTPUT` that is not our answer.
    Disagreement,
}

impl AttemptOutcome {
    /// Whether another attempt may do better: timeouts, transport failures, 5xx, 408, 429.
    pub(crate) fn is_transient(self) -> bool {
        matches!(self, Self::Timeout | Self::Transport | Self::ServerError)
    }

    /// What the outcome says about the upstream's health. A 4xx or a disagreement depends on
    /// one input, so neither can trip the breaker by itself (a disagreement is judged by the
    /// caller against the recent disagreement ratio).
    pub(crate) fn verdict(self) -> Verdict {
        match self {
            Self::Success => Verdict::Healthy,
            Self::Timeout | Self::Transport | Self::ServerError | Self::Malformed => Verdict::Sick,
            Self::Rejected | Self::Disagreement => Verdict::Neutral,
        }
    }

    /// The fallback reason when this was the last attempt.
    pub(crate) fn reason(self) -> FallbackReason {
        match self {
            // Success never reaches the fallback; mapped for totality.
            Self::Success | Self::Timeout | Self::Transport | Self::ServerError => {
                FallbackReason::UpstreamError
            }
            Self::Rejected => FallbackReason::RejectedInput,
            Self::Malformed => FallbackReason::InvalidAnswer,
            Self::Disagreement => FallbackReason::Disagreement,
        }
    }
}

/// Why the fallback answered; the `reason` label of `shout_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum FallbackReason {
    /// The circuit breaker is open, or half-open with its probe running.
    BreakerOpen,
    /// The deadline passed, or a `Retry-After` asked for more time than was left.
    Deadline,
    /// The concurrency limit had no free permit.
    ConcurrencyLimit,
    /// A retry was needed and the retry budget was spent.
    BudgetExhausted,
    /// Transport failure, timeout or 5xx on the last attempt.
    UpstreamError,
    /// The upstream refused this input (a 4xx).
    RejectedInput,
    /// The upstream's `OUTPUT` was not our answer.
    Disagreement,
    /// The upstream's body was malformed.
    InvalidAnswer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_says_the_upstream_is_sick_counts_against_it() {
        use AttemptOutcome::*;
        use strum::IntoEnumIterator;
        let sick: Vec<_> = AttemptOutcome::iter()
            .filter(|o| o.verdict() == Verdict::Sick)
            .collect();
        assert_eq!(sick, vec![Timeout, Transport, ServerError, Malformed]);
    }

    #[test]
    fn labels_come_from_the_variants() {
        let label: &'static str = FallbackReason::ConcurrencyLimit.into();
        assert_eq!(label, "concurrency_limit");
        let label: &'static str = AttemptOutcome::ServerError.into();
        assert_eq!(label, "server_error");
    }
}
