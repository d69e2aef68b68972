//! The transform on arbitrary text: reversal keeps every byte, the local shout is the full
//! uppercase of the reversal, and `is_valid_shout` accepts it (a correct upstream answer is never
//! a breaker failure).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shout_proxy::shout::transform::{is_valid_shout, reverse_graphemes, shout_locally};

fuzz_target!(|input: &str| {
    let reversed = reverse_graphemes(input);
    assert_eq!(
        reversed.len(),
        input.len(),
        "reversal changed the length of {input:?}"
    );

    let shout = shout_locally(&reversed);
    assert_eq!(shout, reversed.to_uppercase());
    assert!(
        is_valid_shout(&reversed, &shout),
        "the local answer {shout:?} for {reversed:?} would be rejected as invalid"
    );
});
