//! Property tests (proptest): every codec round-trips; no mutation of a sealed value opens to a
//! different plaintext; a blind index is a function of the normalized value only; and the
//! bounded twin of the fuzz target (`tests/fuzz`), arbitrary bytes into the open path.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::index::{IndexParams, Normalizer, normalize};
use encrypted_types::{Encrypted, Error, Keyring};
use encrypted_types_tests::{CodecV, PeopleEmail, Same, test_keyring};
use proptest::prelude::*;

fn keyring() -> &'static Keyring {
    static K: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    K.get_or_init(test_keyring)
}

fn round_trip<T: encrypted_types::Plaintext + Same + Clone + std::fmt::Debug>(
    v: T,
) -> Result<(), TestCaseError> {
    let sealed = Encrypted::<T, CodecV>::new(v.clone())
        .seal_with(keyring())
        .unwrap();
    let opened = Encrypted::<T, CodecV>::open_with(keyring(), &sealed).unwrap();
    prop_assert!((*opened).same(&v), "{v:?} did not round-trip");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Catalogue #29, #35: every codec, byte-exact.
    #[test]
    fn strings_round_trip(s in any::<String>()) { round_trip(s)?; }
    #[test]
    fn bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..2048)) { round_trip(b)?; }
    #[test]
    fn integers_round_trip(a in any::<i16>(), b in any::<i32>(), c in any::<i64>(), d in any::<bool>()) {
        round_trip(a)?; round_trip(b)?; round_trip(c)?; round_trip(d)?;
    }
    #[test]
    fn floats_round_trip_bit_for_bit(bits in any::<u64>()) { round_trip(f64::from_bits(bits))?; }
    #[test]
    fn timestamps_round_trip(secs in -8_000_000_000_000i64..8_000_000_000_000, nanos in 0u32..1_000_000_000) {
        let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
        round_trip(t)?;
        round_trip(t.naive_utc())?;
        round_trip(t.date_naive())?;
    }
    #[test]
    fn json_round_trips(keys in proptest::collection::vec("[a-z]{0,8}", 0..6), n in any::<i64>(), s in any::<String>()) {
        let mut m = serde_json::Map::new();
        for k in keys { m.insert(k, serde_json::json!([n, s.clone(), null, true])); }
        round_trip(serde_json::Value::Object(m))?;
    }

    /// Catalogue #3, #4, #12-#15: any mutation (flips, truncation, extension, splices) either
    /// fails with a typed error or, never observed, opens to the very same plaintext.
    #[test]
    fn no_mutation_opens_to_another_plaintext(
        v in any::<String>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let sealed = Encrypted::<String, PeopleEmail>::new(v.clone()).seal_with(keyring()).unwrap();
        let mut m = sealed.clone();
        for (at, byte, kind) in edits {
            let i = at % (m.len() + 1);
            match kind {
                0 if i < m.len() => m[i] ^= byte | 1,
                1 => m.truncate(i),
                2 => m.insert(i, byte),
                _ if i < m.len() => { m.remove(i); }
                _ => m.push(byte),
            }
        }
        prop_assume!(m != sealed);
        match Encrypted::<String, PeopleEmail>::open_with(keyring(), &m) {
            Ok(opened) => prop_assert_eq!(opened.as_str(), v.as_str()),
            Err(Error::AuthenticationFailed | Error::Truncated { .. } | Error::UnsupportedVersion(_)
                | Error::UnsupportedSuite(_) | Error::UnknownKeyId(_) | Error::KeyDestroyed(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// Catalogue #20, bounded in CI: arbitrary bytes into the header parser and the open path
    /// of every codec give typed errors, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_open_path(data in proptest::collection::vec(any::<u8>(), 0..256), head in any::<[u8; 6]>()) {
        for input in [data.clone(), [&head[..], &data[..]].concat(), [&[1u8, 1, 0, 0, 0, 1][..], &data[..]].concat()] {
            let _ = encrypted_types::format::Header::parse(&input);
            prop_assert!(Encrypted::<String, CodecV>::open_with(keyring(), &input).is_err());
            prop_assert!(Encrypted::<i64, CodecV>::open_with(keyring(), &input).is_err());
            prop_assert!(Encrypted::<serde_json::Value, CodecV>::open_with(keyring(), &input).is_err());
            prop_assert!(Encrypted::<chrono::NaiveDate, CodecV>::open_with(keyring(), &input).is_err());
        }
    }

    /// Catalogue #34, #40: a blind index is a function of the normalized value only.
    #[test]
    fn a_blind_index_is_a_function_of_the_normalized_value(
        local in "[A-Za-z0-9._%+-]{1,20}",
        domain in "[A-Za-z0-9-]{1,12}\\.[A-Za-z]{2,6}",
        pad_left in " {0,3}", pad_right in "[ \\t]{0,3}",
        other in any::<String>(),
    ) {
        const EMAIL: IndexParams = IndexParams { table: "t", column: "email", index_column: "email_bidx", version: 1, bits: 256, normalize: &[Normalizer::Email], root: encrypted_types::index::IndexRoot::Current };
        let plain = format!("{local}@{domain}");
        let messy = format!("{pad_left}{}{pad_right}", plain.to_uppercase());
        let a = EMAIL.compute(keyring(), None, &plain).unwrap();
        let b = EMAIL.compute(keyring(), None, &messy).unwrap();
        // Equal indexes exactly when the normalized values are equal (for these ASCII addresses
        // they are; `ß` upper-cases to `SS`, which is why the general claim is an iff).
        prop_assert_eq!(a == b, *normalize(&[Normalizer::Email], &messy) == *normalize(&[Normalizer::Email], &plain));
        prop_assert_eq!(&a, &b);
        let n = normalize(&[Normalizer::Email], &plain).to_string();
        prop_assert_eq!(&a, &EMAIL.compute(keyring(), None, &n).unwrap());
        let o = EMAIL.compute(keyring(), None, &other).unwrap();
        prop_assert_eq!(a == o, *normalize(&[Normalizer::Email], &other) == n);
    }
}
