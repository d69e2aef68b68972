//! `parse_body` on arbitrary bytes under arbitrary content types: it must never panic, and every
//! error must be a 400 (`ApiError::Unparseable`), never a 5xx.
//!
//! The first byte picks the content type: one of the known ones, or (when it is past the list)
//! the bytes up to the first NUL as a content type of their own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shout_proxy::api::ApiError;
use shout_proxy::api::input::parse_body;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/problem+json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain"),
];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let (content_type, body): (Option<String>, &[u8]) =
        match CONTENT_TYPES.get(usize::from(selector)) {
            Some(known) => (known.map(str::to_string), rest),
            None => {
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                let header = String::from_utf8_lossy(&rest[..end]).into_owned();
                (Some(header), rest.get(end + 1..).unwrap_or_default())
            }
        };

    match parse_body(content_type.as_deref(), body) {
        Ok(_) | Err(ApiError::Unparseable(_)) => {}
        Err(other) => panic!("parse_body answered {other:?}, not a 400"),
    }
});
