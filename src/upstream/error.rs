//! Why a call to the upstream gave no usable answer.
//!
//! One enum serves both levels: the per-attempt middleware returns it (so the retry strategy
//! can classify it) and the client reports the last one as the call's cause. Each variant names
//! a cause; [`UpstreamError::is_transient`] is the one place that decides what is retried.

use std::time::Duration;

use crate::upstream::breaker::Rejection;

/// Outcome of one upstream attempt, as exported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A valid answer.
    Success = 0,
    /// A non-2xx status.
    HttpError = 1,
    /// No complete answer within the attempt timeout.
    Timeout = 2,
    /// Connection refused, reset, or another transport failure.
    Transport = 3,
    /// A 2xx answer that was not a valid capitalization of the input.
    Invalid = 4,
}

impl AttemptOutcome {
    /// Every outcome, in discriminant order.
    pub const ALL: [AttemptOutcome; 5] = [
        Self::Success,
        Self::HttpError,
        Self::Timeout,
        Self::Transport,
        Self::Invalid,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Invalid => "invalid",
        }
    }
}

/// Why the upstream gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The attempt did not complete within its timeout.
    #[error("upstream attempt timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed (refused, reset, DNS, ...).
    #[error("upstream transport failure: {0}")]
    Transport(String),
    /// The upstream answered with a non-2xx status.
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    /// The upstream answered 2xx with something that is not a valid capitalization.
    #[error("upstream answer is invalid: {0}")]
    Invalid(String),
    /// The circuit breaker refused the attempt.
    #[error("circuit breaker refused the attempt ({0:?})")]
    CircuitOpen(Rejection),
    /// A retry was needed but the retry budget was spent.
    #[error("retry budget exhausted")]
    BudgetExhausted,
    /// The overall deadline passed.
    #[error("overall deadline passed")]
    DeadlineExceeded,
    /// The upstream asked to be retried later than the deadline allows.
    #[error("upstream asked to retry after {0:?}, beyond the deadline")]
    RetryAfterBeyondDeadline(Duration),
}

impl UpstreamError {
    /// Whether another attempt may succeed: connect errors, timeouts, resets, 5xx, 408, 429.
    /// Everything else (an invalid answer, a refusal of ours, other statuses) is final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Transport(_) => true,
            Self::Status(code) => *code >= 500 || *code == 408 || *code == 429,
            Self::Invalid(_)
            | Self::CircuitOpen(_)
            | Self::BudgetExhausted
            | Self::DeadlineExceeded
            | Self::RetryAfterBeyondDeadline(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(UpstreamError::Timeout(Duration::from_millis(1)).is_transient());
        assert!(UpstreamError::Transport("reset".into()).is_transient());
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(UpstreamError::Status(code).is_transient(), "{code}");
        }
        for code in [400, 401, 404, 422] {
            assert!(!UpstreamError::Status(code).is_transient(), "{code}");
        }
        assert!(!UpstreamError::Invalid("x".into()).is_transient());
        assert!(!UpstreamError::CircuitOpen(Rejection::Open).is_transient());
        assert!(!UpstreamError::BudgetExhausted.is_transient());
    }
}
