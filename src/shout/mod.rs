//! The domain: what an answer is and how one is resolved.
//!
//! [`transform`] is the pure string work; [`resolve`] is the pipeline that decides who
//! capitalizes (cache, shoutcloud through the resilient client, or the local fallback).

pub mod resolve;
pub mod transform;

pub use resolve::{Resolution, Resolver, Source};
