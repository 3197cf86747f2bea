//! Blind indexes without a database: normalizers, truncation, key separation, sizing.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::index::{
    BlindIndex, IndexParams, IndexSpec, IndexVerdict, Normalizer, normalize, plan,
};
use encrypted_types::{Error, KeyMaterial, Keyring, TenantId};
use encrypted_types_tests::{CANARY_EMAIL, key_bytes, test_keyring};

const fn params(
    column: &'static str,
    version: u32,
    bits: u16,
    normalize: &'static [Normalizer],
) -> IndexParams {
    IndexParams {
        table: "t",
        column,
        index_column: "x_bidx",
        version,
        bits,
        normalize,
        root: encrypted_types::index::IndexRoot::Current,
    }
}

#[test]
fn normalizers_do_what_their_names_say() {
    use Normalizer::*;
    assert_eq!(*normalize(&[Trim], " \t a b \n"), "a b");
    assert_eq!(*normalize(&[Lowercase], "ÀBC"), "àbc");
    assert_eq!(
        *normalize(&[Email], "  Ann@Example.ORG "),
        "ann@example.org"
    );
    assert_eq!(
        *normalize(&[Digits], "+1 (555) 010-9999 ext."),
        "15550109999"
    );
    assert_eq!(*normalize(&[Casefold], "Straße"), "strasse");
    assert_eq!(
        *normalize(&[Casefold], "ﬁle"),
        "file",
        "NFKC before folding"
    );
    assert_eq!(*normalize(&[Trim, Casefold], " MASSE "), "masse");
    assert_eq!(*normalize(&[], " Keep As Is "), " Keep As Is ");
}

#[test]
fn an_index_is_a_function_of_the_normalized_value() {
    let k = test_keyring();
    let p = params("email", 1, 256, &[Normalizer::Email]);
    let a = p.compute(&k, None, &" Ann@Example.org".to_owned()).unwrap();
    let b = p.compute(&k, None, &"ann@example.org".to_owned()).unwrap();
    let c = p.compute(&k, None, &"ann@example.com".to_owned()).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 32);
    assert!(p.same_str("ANN@example.org ", "ann@example.org"));
}

#[test]
fn keys_are_separated_by_column_tenant_version_type_and_root() {
    let k = test_keyring();
    let v = "123456789".to_owned();
    let base = params("ssn", 1, 256, &[]).compute(&k, None, &v).unwrap();
    let others = [
        params("phone", 1, 256, &[]).compute(&k, None, &v).unwrap(),
        params("ssn", 2, 256, &[]).compute(&k, None, &v).unwrap(),
        params("ssn", 1, 256, &[])
            .compute(&k, Some(&TenantId::from("1")), &v)
            .unwrap(),
        params("ssn", 1, 256, &[])
            .compute(&k, None, &v.as_bytes().to_vec())
            .unwrap(),
    ];
    for o in &others {
        assert_ne!(&base, o);
    }
    let other_root = Keyring::builder()
        .blind_index_root(None, KeyMaterial::from_bytes(key_bytes(7)))
        .build()
        .unwrap();
    assert_ne!(
        base,
        params("ssn", 1, 256, &[])
            .compute(&other_root, None, &v)
            .unwrap()
    );
    // Deterministic: the same inputs give the same index under a rebuilt keyring.
    assert_eq!(
        base,
        params("ssn", 1, 256, &[])
            .compute(&test_keyring(), None, &v)
            .unwrap()
    );
}

#[test]
fn truncation_keeps_ceil_bits_bytes_with_the_spare_bits_cleared() {
    let k = test_keyring();
    let v = "x".to_owned();
    let full = params("c", 1, 256, &[]).compute(&k, None, &v).unwrap();
    for bits in [1u16, 7, 8, 12, 16, 128, 255] {
        let t = params("c", 1, bits, &[]).compute(&k, None, &v).unwrap();
        assert_eq!(t.len(), usize::from(bits).div_ceil(8), "{bits} bits");
        let spare = t.len() * 8 - usize::from(bits);
        assert_eq!(
            t[t.len() - 1] & !(0xFFu8 << spare),
            0,
            "{bits} bits: spare bits set"
        );
        // The length is part of the key: a truncated index is not a prefix of the full one
        // (checked where a chance match is impossible in practice).
        if bits >= 128 {
            assert_ne!(&t[..t.len() - 1], &full[..t.len() - 1], "{bits} bits");
        }
    }
    for bits in [0u16, 257] {
        assert_eq!(
            params("c", 1, bits, &[]).compute(&k, None, &v).err(),
            Some(Error::InvalidIndex("bits must be between 1 and 256"))
        );
    }
}

#[test]
fn missing_root_key_and_misuse_are_typed_errors() {
    let k = test_keyring();
    let p = params("c", 1, 256, &[]);
    assert_eq!(
        p.compute(&k, Some(&TenantId::from("clinic-z")), &"x".to_owned())
            .err(),
        Some(Error::NoBlindIndexKey {
            tenant: "clinic-z".into()
        })
    );
    let with_normalizer = params("c", 1, 256, &[Normalizer::Digits]);
    assert_eq!(
        with_normalizer.compute(&k, None, &5i64).err(),
        Some(Error::InvalidIndex("normalizers apply to strings only"))
    );
}

struct EmailIdx;
impl IndexSpec for EmailIdx {
    const PARAMS: IndexParams = params("email", 1, 256, &[Normalizer::Email]);
}

#[test]
fn blind_index_values_redact_their_debug() {
    let b = BlindIndex::<String, EmailIdx>::new(CANARY_EMAIL.into());
    let shown = format!("{b:?}");
    assert!(
        !shown.contains(CANARY_EMAIL) && shown.contains("<redacted>"),
        "{shown}"
    );
}

#[test]
fn the_sizing_helper_follows_the_ciphersweet_bound() {
    // 1e6 rows, all distinct: 2 <= 1e6 / 2^bits < 1000  =>  10 <= bits <= 18.
    let p = plan(1_000_000, 1_000_000);
    assert_eq!((p.min_bits, p.max_bits, p.recommended_bits), (10, 18, 18));
    assert_eq!(p.check(18), IndexVerdict::Ok);
    assert_eq!(p.check(10), IndexVerdict::Ok);
    assert_eq!(
        p.check(19),
        IndexVerdict::LeaksMore {
            bits: 19,
            max_bits: 18
        }
    );
    assert_eq!(
        p.check(256),
        IndexVerdict::LeaksMore {
            bits: 256,
            max_bits: 18
        }
    );
    assert_eq!(
        p.check(9),
        IndexVerdict::TooManyCandidates {
            bits: 9,
            min_bits: 10
        }
    );
    // Few distinct values (a low-cardinality field): any index leaks a lot.
    let small = plan(1_000_000, 50);
    assert_eq!(small.max_bits, 4);
    assert!(matches!(small.check(16), IndexVerdict::LeaksMore { .. }));
}
