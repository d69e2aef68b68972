//! Integration tests: the real application on port 0 against a wiremock shoutcloud.

// Test code: an unwrap that fails is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod admin;
#[path = "../support/binary.rs"]
#[allow(
    dead_code,
    reason = "shared with another test binary, which uses the rest"
)]
mod binary;
mod contract;
mod docs;
mod faults;
mod fleet;
mod helpers;
mod propagation;
mod properties;
mod resilience;
mod rollout;
mod slow_clients;
mod tls;
mod unicode;
