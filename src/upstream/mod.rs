//! The shoutcloud side: the attempt loop and the components it calls.
//!
//! - [`client`]: reqwest and the attempt loop (backoff, breaker permit, budget, timed attempt,
//!   validation, classification).
//! - [`breaker`]: the circuit breaker, one state machine on tokio's clock.
//! - [`budget`]: the sliding-window retry budget.
//! - [`limit`]: the adaptive concurrency limit the attempt loop takes a slot from per attempt.
//! - [`outcome`]: [`outcome::AttemptOutcome`] and [`outcome::FallbackReason`], the one
//!   classification of what an attempt means.
//!
//! Nothing here knows the domain: the resolver hands the loop the expected answer.

pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod limit;
pub(crate) mod outcome;
