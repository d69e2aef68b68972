//! The transform itself: reverse by extended grapheme clusters, then uppercase with Unicode full
//! case mapping.
//!
//! Reversing `char`s would tear combining accents off their letters and split flags and ZWJ emoji
//! into their parts, so the reversal works on grapheme clusters (`unicode-segmentation`).
//! `str::to_uppercase` applies the full mapping (`ß` -> `SS`). This transform is the canonical
//! answer: shoutcloud's is used only when byte-equal to it.

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
}
