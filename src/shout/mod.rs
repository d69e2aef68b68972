//! The domain: what an answer is and how one is resolved.
//!
//! [`transform`] is the pure string work and the canonical answer; [`resolve`] is the pipeline
//! that decides who answers (cache, shoutcloud through the attempt loop, or the local fallback).

pub mod resolve;
pub mod transform;

pub use resolve::{Resolver, Source};
