//! The blind-index normalizers (FORMAT.md §7.1) on any text and any chain of steps: never a
//! panic, and on ASCII text each step equals its simple ASCII reading (`trim` is `str::trim`,
//! `lowercase` and `casefold` are ASCII lowercasing, `digits` keeps 0-9, `last4` the last four
//! of those, `prefix(n)` the first n characters, `email` trim then lowercase).
#![no_main]

use encrypted_types::index::{Normalizer, normalize};
use libfuzzer_sys::fuzz_target;

fn reference(step: Normalizer, s: &str) -> String {
    match step {
        Normalizer::Trim => s.trim().to_owned(),
        Normalizer::Lowercase | Normalizer::Casefold => s.to_ascii_lowercase(),
        Normalizer::Email => s.trim().to_ascii_lowercase(),
        Normalizer::Digits => s.chars().filter(char::is_ascii_digit).collect(),
        Normalizer::Last4 => {
            let d: Vec<char> = s.chars().filter(char::is_ascii_digit).collect();
            d[d.len().saturating_sub(4)..].iter().collect()
        }
        Normalizer::Prefix(n) => s.chars().take(usize::from(n)).collect(),
        _ => std::process::abort(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [count, rest @ ..] = data else { return };
    let n = usize::from(count % 4).min(rest.len());
    let (codes, text) = rest.split_at(n);
    let steps: Vec<Normalizer> = codes
        .iter()
        .map(|c| match c % 7 {
            0 => Normalizer::Trim,
            1 => Normalizer::Lowercase,
            2 => Normalizer::Email,
            3 => Normalizer::Digits,
            4 => Normalizer::Casefold,
            5 => Normalizer::Last4,
            _ => Normalizer::Prefix(u16::from(c / 7).max(1)),
        })
        .collect();
    let text = String::from_utf8_lossy(text);
    let out = normalize(&steps, &text);
    if text.is_ascii() {
        let expected = steps.iter().fold(text.to_string(), |s, step| reference(*step, &s));
        if out.as_str() != expected {
            std::process::abort();
        }
    }
    // `prefix(n)` never yields more than n characters, whatever the text.
    if let Some(Normalizer::Prefix(n)) = steps.last() {
        if out.chars().count() > usize::from(*n) {
            std::process::abort();
        }
    }
});
