//! The transform on arbitrary text: reversal keeps every byte, and the local shout (the
//! canonical answer, which an upstream answer must equal byte for byte) is the full uppercase of
//! the reversal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shout_proxy::shout::transform::{reverse_graphemes, shout_locally};

fuzz_target!(|input: &str| {
    let reversed = reverse_graphemes(input);
    assert_eq!(
        reversed.len(),
        input.len(),
        "reversal changed the length of {input:?}"
    );

    let shout = shout_locally(&reversed);
    assert_eq!(shout, reversed.to_uppercase());
});
