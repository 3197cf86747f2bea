//! Cases of the adversarial catalogue (`../shared/research/security.md` §4, mapped in
//! `docs/SECURITY.md`) that no other test file covers. Each test names its case numbers.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::format::{self, Context, MAX_PLAINTEXT, OVERHEAD};
use encrypted_types::{Encrypted, Error, KeyId, KeyMaterial, Keyring};
use encrypted_types_tests::{CANARY_EMAIL, CodecV, PeopleEmail, test_keyring};

fn sealed(k: &Keyring) -> Vec<u8> {
    Encrypted::<String, PeopleEmail>::new(CANARY_EMAIL.into())
        .seal_with(k)
        .unwrap()
}

fn open(k: &Keyring, b: &[u8]) -> Result<Encrypted<String, PeopleEmail>, Error> {
    Encrypted::open_with(k, b)
}

/// #4: many appended bytes.
#[test]
fn case_04_many_appended_bytes_fail() {
    let k = test_keyring();
    for extra in [1usize, 16, 4096] {
        let mut s = sealed(&k);
        s.extend(std::iter::repeat_n(0xA5, extra));
        assert_eq!(open(&k, &s).err(), Some(Error::AuthenticationFailed));
    }
}

/// #5: version 0x00, 0xFF and the next version, reported before any key lookup (the body here
/// names a key id that does not exist, and the error is still the version).
#[test]
fn case_05_unknown_versions_are_reported_first() {
    let k = test_keyring();
    for v in [0u8, 2, 0xFF] {
        let mut s = sealed(&k);
        s[0] = v;
        s[2..6].copy_from_slice(&4242u32.to_be_bytes());
        assert_eq!(open(&k, &s).err(), Some(Error::UnsupportedVersion(v)));
    }
}

/// #15: all-zero and all-0xFF tags.
#[test]
fn case_15_all_zero_and_all_ff_tags_fail() {
    let k = test_keyring();
    for fill in [0u8, 0xFF] {
        let mut s = sealed(&k);
        let n = s.len();
        s[n - 16..].fill(fill);
        assert_eq!(open(&k, &s).err(), Some(Error::AuthenticationFailed));
    }
}

/// #17: the hex or base64 text of a valid value is not a value.
#[test]
fn case_17_text_encodings_of_a_value_are_typed_errors() {
    let k = test_keyring();
    let s = sealed(&k);
    let hex = hex::encode(&s);
    assert_eq!(
        open(&k, hex.as_bytes()).err(),
        Some(Error::UnsupportedVersion(b'0'))
    );
    let base64ish = b"AQEAAAAB"; // base64 of a v1 header starts with "AQE"
    assert_eq!(
        open(&k, base64ish).err(),
        Some(Error::UnsupportedVersion(b'A'))
    );
}

/// #19: an oversized ciphertext is refused from its length alone, before it is copied or
/// decrypted. (`vec![0; n]` is lazily zeroed by the OS: the 1 GiB costs nothing until touched.)
#[test]
fn case_19_oversized_ciphertext_is_refused_before_decryption() {
    let k = test_keyring();
    let mut huge = vec![0u8; MAX_PLAINTEXT + OVERHEAD + 1];
    huge[0] = 1;
    huge[1] = 1;
    huge[5] = 1;
    assert_eq!(
        format::Header::parse(&huge).err(),
        Some(Error::TooLarge(huge.len()))
    );
    drop(k);
    encrypted_types_tests::install_keyring();
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open_owned(huge).err(),
        Some(Error::TooLarge(MAX_PLAINTEXT + OVERHEAD + 1))
    );
}

/// #21, #28: a value copied to another row of the same column and tenant, or an older value
/// replayed into its own cell, opens: the documented limit of binding to the column, not the
/// row (docs/adr/0001-column-context.md, docs/SECURITY.md).
#[test]
fn case_21_28_same_column_copies_and_replays_open_as_documented() {
    let k = test_keyring();
    let old = sealed(&k);
    let _new = Encrypted::<String, PeopleEmail>::new("changed".into())
        .seal_with(&k)
        .unwrap();
    assert_eq!(open(&k, &old).unwrap().as_str(), CANARY_EMAIL);
}

/// #26: length-prefixed context: ("ab", "c") and ("a", "bc") are different contexts.
#[test]
fn case_26_context_fields_cannot_be_shifted() {
    encrypted_types::column_context!(AbC = "ab"."c");
    encrypted_types::column_context!(ABc = "a"."bc");
    let k = test_keyring();
    let s = Encrypted::<String, AbC>::new("x".into())
        .seal_with(&k)
        .unwrap();
    assert_eq!(
        Encrypted::<String, ABc>::open_with(&k, &s).err(),
        Some(Error::AuthenticationFailed)
    );
    assert!(Encrypted::<String, AbC>::open_with(&k, &s).is_ok());
}

/// #27: bytes sealed as `Vec<u8>` never open as a (lossy) `String`.
#[test]
fn case_27_bytes_never_open_as_a_string() {
    let k = test_keyring();
    let s = Encrypted::<Vec<u8>, CodecV>::new(b"plain".to_vec())
        .seal_with(&k)
        .unwrap();
    assert_eq!(
        Encrypted::<String, CodecV>::open_with(&k, &s).err(),
        Some(Error::AuthenticationFailed)
    );
}

/// #32: a plaintext over the limit is refused before it is encoded or encrypted.
#[test]
fn case_32_oversized_plaintext_is_refused_before_encryption() {
    let k = test_keyring();
    let v = Encrypted::<Vec<u8>, CodecV>::new(vec![0u8; MAX_PLAINTEXT + 1]);
    assert_eq!(
        v.seal_with(&k).err(),
        Some(Error::TooLarge(MAX_PLAINTEXT + 1))
    );
}

/// #33: bytes that authenticate as a `string` but are not UTF-8 (crafted with the key) give
/// `InvalidPlaintext`, never a lossy string.
#[test]
fn case_33_invalid_utf8_under_a_valid_tag_is_a_typed_error() {
    let k = Keyring::builder()
        .data_key(1, None, KeyMaterial::from_bytes([9; 32]))
        .build()
        .unwrap();
    let key = k.key(KeyId::from(1)).unwrap();
    let ctx = Context::new("t", "c", None, "string");
    let crafted = format::seal_with_nonce(key, &ctx, &vec![0xC3u8, 0x28], [7; 12]).unwrap();
    assert_eq!(
        format::open::<String>(key, &ctx, crafted).err(),
        Some(Error::InvalidPlaintext {
            type_name: "string"
        })
    );
}

/// #34: NFC and NFD forms round-trip byte-exact; their indexes agree only under `casefold`
/// (which applies NFKC), not under `email`.
#[test]
fn case_34_unicode_forms_round_trip_and_index_as_configured() {
    use encrypted_types::index::{IndexParams, Normalizer};
    let k = test_keyring();
    let nfc = "Zo\u{e9}".to_owned();
    let nfd = "Zoe\u{301}".to_owned();
    for v in [&nfc, &nfd] {
        let s = Encrypted::<String, CodecV>::new(v.clone())
            .seal_with(&k)
            .unwrap();
        assert_eq!(
            Encrypted::<String, CodecV>::open_with(&k, &s)
                .unwrap()
                .as_bytes(),
            v.as_bytes()
        );
    }
    let p = |n: &'static [Normalizer]| IndexParams {
        table: "t",
        column: "c",
        index_column: "i",
        version: 1,
        bits: 256,
        normalize: n,
        root: encrypted_types::index::IndexRoot::Current,
    };
    let fold = p(&[Normalizer::Casefold]);
    assert_eq!(
        fold.compute(&k, None, &nfc).unwrap(),
        fold.compute(&k, None, &nfd).unwrap()
    );
    let email = p(&[Normalizer::Email]);
    assert_ne!(
        email.compute(&k, None, &nfc).unwrap(),
        email.compute(&k, None, &nfd).unwrap()
    );
}

/// #37: 2^17 seals of the empty value: no nonce repeats.
#[test]
fn case_37_no_nonce_repeats_in_2_pow_17_seals() {
    let k = test_keyring();
    let v = Encrypted::<String, CodecV>::new(String::new());
    let mut seen = std::collections::HashSet::with_capacity(1 << 17);
    for _ in 0..(1 << 17) {
        let s = v.seal_with(&k).unwrap();
        assert!(
            seen.insert(<[u8; 12]>::try_from(&s[6..18]).unwrap()),
            "nonce repeated"
        );
    }
}

/// #72: `Display` and `Debug` of every error, and of Diesel errors wrapping them through their
/// `source()` chain, hold no plaintext and no key bytes.
#[test]
fn case_72_errors_and_their_chains_show_no_secrets() {
    let key_bytes = [0x5Au8; 32];
    let k = Keyring::builder()
        .data_key(1, None, KeyMaterial::from_bytes(key_bytes))
        .primary(None, 1)
        .build()
        .unwrap();
    let good = Encrypted::<String, PeopleEmail>::new(CANARY_EMAIL.into())
        .seal_with(&k)
        .unwrap();
    let mut errors: Vec<Error> = Vec::new();
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    for input in [
        &good[..3],
        &flipped[..],
        &[2u8; 40][..],
        &[
            1u8, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0,
        ][..],
    ] {
        errors.push(open(&k, input).err().unwrap());
    }
    errors.push(
        Encrypted::<i64, PeopleEmail>::open_with(&k, &good)
            .err()
            .unwrap(),
    );
    errors.push(Error::InvalidPlaintext {
        type_name: "string",
    });
    errors.push(Error::KeyUnwrap {
        key_id: KeyId::from(1),
    });
    errors.push(Error::Provider {
        operation: "unwrap",
        key_id: KeyId::from(1),
        reason: "throttled".into(),
    });
    errors.push(Error::TenantMismatch { column: "email" });
    for e in errors {
        let wrapped = diesel::result::Error::DeserializationError(Box::new(e.clone()));
        let mut chain = format!("{e} {e:?} {wrapped} {wrapped:?}");
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&wrapped);
        while let Some(s) = src {
            chain.push_str(&format!(" {s} {s:?}"));
            src = s.source();
        }
        assert!(!chain.contains(CANARY_EMAIL), "{chain}");
        assert!(
            !chain.contains("5a5a") && !chain.contains("90, 90") && !chain.contains("5A5A"),
            "{chain}"
        );
    }
}

/// #75: key types wipe themselves on drop (checked at compile time) and are not `Clone`
/// (the `compile_fail` doctests of `KeyMaterial` and `DataKey`).
#[test]
fn case_75_key_types_are_zeroize_on_drop() {
    fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wipes_on_drop::<KeyMaterial>();
}

/// #72: `Debug` of the public types that hold plaintext or key material: the canaries never
/// appear.
#[test]
fn case_72_public_types_redact_their_debug() {
    use encrypted_types::kek::aws::AwsKmsConfig;
    use encrypted_types::kek::local::LocalKek;
    use encrypted_types::store::KeyStore;
    use encrypted_types::{Json, SecretBuf};
    let dir = tempfile::tempdir().unwrap();
    let kek_path = dir.path().join("c.kek");
    let kek = LocalKek::create(&kek_path).unwrap();
    let kek_bytes = std::fs::read(&kek_path).unwrap();
    let mut buf = SecretBuf::default();
    buf.extend_from_slice(CANARY_EMAIL.as_bytes());
    let config = AwsKmsConfig {
        key_id: "alias/k".into(),
        region: "eu-west-1".into(),
        endpoint_url: None,
        credentials: Some(("AKIDCANARY".into(), "secret-canary-value".into())),
        timeout: std::time::Duration::from_secs(1),
    };
    let shown = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        buf,
        Json(CANARY_EMAIL.to_owned()),
        Encrypted::<String, CodecV>::new(CANARY_EMAIL.into()),
        kek,
        KeyStore::new(LocalKek::open(&kek_path).unwrap()),
        config,
        KeyMaterial::from_bytes([0x33; 32]),
    );
    assert!(
        !shown.contains(CANARY_EMAIL) && !shown.contains("secret-canary-value"),
        "{shown}"
    );
    assert!(
        !shown.contains(&hex::encode(&kek_bytes)) && !shown.contains("51, 51"),
        "{shown}"
    );
    assert!(shown.matches("redacted").count() >= 5, "{shown}");
}
