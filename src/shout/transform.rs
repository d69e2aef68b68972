//! The transform itself: reverse by extended grapheme clusters, then uppercase with Unicode full
//! case mapping.
//!
//! Reversing `char`s would tear combining accents off their letters and split flags and ZWJ emoji
//! into their parts, so the reversal works on grapheme clusters (`unicode-segmentation`).
//! `str::to_uppercase` applies the full mapping (`ß` -> `SS`), which is what the fallback answers.

use unicode_segmentation::UnicodeSegmentation;

/// Reverses `input` by extended grapheme clusters.
pub fn reverse_graphemes(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for grapheme in input.graphemes(true).rev() {
        out.push_str(grapheme);
    }
    out
}

/// The local capitalization: Unicode full case mapping. This is the fallback's answer.
pub fn shout_locally(reversed: &str) -> String {
    reversed.to_uppercase()
}

/// Whether `output` is an acceptable capitalization of `input` by the upstream.
///
/// Accepted when `output` is already upper case (an upstream cannot hand back lower case) and
/// equals `input` case-insensitively: by Unicode lowercase (the contract), or by full uppercase,
/// which accepts `SS` for `ß` where lowercase comparison cannot. Anything else is an invalid
/// answer, so an upstream can never put other content into our answers.
pub fn is_valid_shout(input: &str, output: &str) -> bool {
    let upper = output.to_uppercase();
    if upper != output {
        return false;
    }
    output.to_lowercase() == input.to_lowercase() || upper == input.to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverses_ascii_and_uppercases() {
        assert_eq!(shout_locally(&reverse_graphemes("test")), "TSET");
    }

    #[test]
    fn keeps_combining_accents_flags_and_zwj_emoji_whole() {
        // "e" + combining acute, a flag, and a family ZWJ sequence.
        let input = "e\u{301}x🇫🇷👨‍👩‍👧";
        assert_eq!(reverse_graphemes(input), "👨‍👩‍👧🇫🇷xe\u{301}");
    }

    #[test]
    fn uses_full_case_mapping() {
        assert_eq!(shout_locally("straße"), "STRASSE");
    }

    #[test]
    fn empty_string_is_valid() {
        assert_eq!(shout_locally(&reverse_graphemes("")), "");
    }

    #[test]
    fn validation_accepts_uppercase_forms_only() {
        assert!(is_valid_shout("tset", "TSET"));
        assert!(is_valid_shout("eßartс", "ESSARTС"));
        assert!(!is_valid_shout("tset", "tset"), "lower case is not a shout");
        assert!(!is_valid_shout("tset", "PWNED"), "different content");
        assert!(!is_valid_shout("tset", "TSET "), "extra content");
    }
}
