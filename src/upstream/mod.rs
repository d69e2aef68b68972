//! The shoutcloud side: a client that retries with a budget inside a circuit breaker, and
//! errors that name why no answer came.
//!
//! - [`client`]: reqwest + reqwest-middleware + reqwest-retry; the per-attempt middleware.
//! - [`breaker`]: failsafe's breaker with a half-open probe gate and a readable state.
//! - [`budget`]: the sliding-window retry budget.
//! - [`error`]: [`UpstreamError`], the one classification of what is retried.

pub mod breaker;
pub mod budget;
pub mod client;
pub mod error;
pub mod limit;

pub use client::{CallReport, ClientConfig, UpstreamClient};
pub use error::UpstreamError;
