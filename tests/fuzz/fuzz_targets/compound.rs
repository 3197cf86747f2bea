//! The compound-index input encoding (FORMAT.md §7.2): two text fields, full 256-bit indexes.
//! Never a panic, and two different pairs never give one index (the length prefixes keep
//! `("ab", "c")` apart from `("a", "bc")`); a casefolded field gives one index for inputs that
//! casefold alike and is computed on any text.
#![no_main]

use std::sync::OnceLock;

use encrypted_types::index::{CompoundField, CompoundIndex, CompoundParams, CompoundSpec, IndexRoot, Normalizer};
use encrypted_types::{KeyMaterial, Keyring};
use libfuzzer_sys::fuzz_target;

struct Raw;
impl CompoundSpec for Raw {
    const PARAMS: CompoundParams = CompoundParams {
        table: "t", name: "pair", index_column: "pair_bidx", version: 1, bits: 256,
        root: IndexRoot::Current,
        fields: &[
            CompoundField { column: "a", value_type: "string", normalize: &[] },
            CompoundField { column: "b", value_type: "string", normalize: &[] },
        ],
    };
}

struct Folded;
impl CompoundSpec for Folded {
    const PARAMS: CompoundParams = CompoundParams {
        table: "t", name: "folded", index_column: "folded_bidx", version: 1, bits: 256,
        root: IndexRoot::Current,
        fields: &[
            CompoundField { column: "a", value_type: "string", normalize: &[Normalizer::Casefold] },
            CompoundField { column: "b", value_type: "i64", normalize: &[] },
        ],
    };
}

fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| {
        Keyring::builder()
            .blind_index_root(None, KeyMaterial::from_bytes([9; 32]))
            .build()
            .unwrap_or_else(|_| std::process::abort())
    })
}

fuzz_target!(|data: &[u8]| {
    let [i, j, rest @ ..] = data else { return };
    let text = String::from_utf8_lossy(rest);
    let cut = |at: u8| {
        let mut at = usize::from(at) % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.split_at(at)
    };
    let (a, b) = cut(*i);
    let (c, d) = cut(*j);
    let index = |x: &str, y: &str| {
        CompoundIndex::<Raw>::new(None)
            .part_str(x)
            .part_str(y)
            .compute_with(keyring())
            .unwrap_or_else(|_| std::process::abort())
    };
    if (a, b) != (c, d) && index(a, b) == index(c, d) {
        std::process::abort();
    }
    let folded = |x: &str| {
        CompoundIndex::<Folded>::new(None)
            .part_str(x)
            .part(&7_i64)
            .compute_with(keyring())
            .unwrap_or_else(|_| std::process::abort())
    };
    let upper = text.to_uppercase();
    if text.is_ascii() && folded(&text) != folded(&upper) {
        std::process::abort();
    }
});
