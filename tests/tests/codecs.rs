//! Every codec round-trips through seal and open without a database, and every decoder rejects
//! non-canonical plaintext.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::{Encrypted, Error, Json, Plaintext, SecretBuf};
use encrypted_types_tests::{Allergy, CodecV, Same, test_keyring};

macro_rules! in_memory {
    ($keyring:expr, $t:ty, $v:expr) => {{
        let value: $t = $v;
        let sealed = Encrypted::<$t, CodecV>::new(value.clone())
            .seal_with($keyring)
            .unwrap();
        let mut encoded = SecretBuf::default();
        value.encode(&mut encoded).unwrap();
        assert_eq!(
            sealed.len(),
            encoded.as_slice().len() + encrypted_types::format::OVERHEAD
        );
        let opened = Encrypted::<$t, CodecV>::open_with($keyring, &sealed).unwrap();
        assert!(
            (*opened).same(&value),
            "{} did not round-trip",
            stringify!($v)
        );
        assert!(<$t>::decode(encoded.as_slice()).unwrap().same(&value));
    }};
}

#[test]
fn every_codec_round_trips_in_memory() {
    let keyring = test_keyring();
    encrypted_types_tests::codec_cases!(in_memory, &keyring);
}

fn invalid<T: Plaintext>(bytes: &[u8]) {
    assert_eq!(
        T::decode(bytes).err(),
        Some(Error::InvalidPlaintext { type_name: T::TYPE }),
        "{} accepted {bytes:?}",
        T::TYPE
    );
    assert!(T::decode_owned(bytes.to_vec()).is_err());
}

#[test]
fn decoders_reject_non_canonical_plaintext() {
    invalid::<String>(&[0xff, 0xfe]);
    invalid::<String>(b"ok until \xc3");
    invalid::<bool>(&[]);
    invalid::<bool>(&[2]);
    invalid::<bool>(&[0, 0]);
    invalid::<i16>(&[1]);
    invalid::<i16>(&[1, 2, 3]);
    invalid::<i32>(&[0; 8]);
    invalid::<i64>(&[0; 4]);
    invalid::<f64>(&[0; 7]);
    invalid::<chrono::NaiveDate>(&[0; 3]);
    invalid::<chrono::NaiveDate>(&i32::MAX.to_be_bytes());
    invalid::<chrono::NaiveDateTime>(&[0; 11]);
    let mut two_billion_nanos = [0u8; 12];
    two_billion_nanos[8..].copy_from_slice(&2_000_000_000u32.to_be_bytes());
    invalid::<chrono::NaiveDateTime>(&two_billion_nanos);
    invalid::<chrono::DateTime<chrono::Utc>>(&[0xff; 12]);
    invalid::<uuid::Uuid>(&[0; 15]);
    invalid::<serde_json::Value>(b"{not json");
    invalid::<Json<Allergy>>(br#"{"substance": 5}"#);
}

#[test]
fn encodings_are_the_documented_bytes() {
    fn enc<T: Plaintext>(v: T) -> Vec<u8> {
        let mut b = SecretBuf::default();
        v.encode(&mut b).unwrap();
        b.as_slice().to_vec()
    }
    assert_eq!(enc(String::from("é")), [0xc3, 0xa9]);
    assert_eq!(enc(true), [1]);
    assert_eq!(enc(-2i16), [0xff, 0xfe]);
    assert_eq!(enc(1i32), [0, 0, 0, 1]);
    assert_eq!(enc(-0.0f64), [0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        enc(chrono::NaiveDate::from_ymd_opt(1970, 1, 2).unwrap()),
        [0, 0, 0, 1]
    );
    assert_eq!(
        enc(chrono::NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()),
        [0xff; 4]
    );
    let t = chrono::DateTime::from_timestamp(-1, 5).unwrap();
    assert_eq!(
        enc(t),
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 5]
    );
    assert_eq!(
        enc(serde_json::json!({"b": 1, "a": [true]})),
        br#"{"a":[true],"b":1}"#
    );
    assert_eq!(
        enc(Json(Allergy {
            substance: "x".into(),
            severe: false
        })),
        br#"{"substance":"x","severe":false}"#
    );
}

#[test]
fn a_json_map_with_non_string_keys_is_unencodable_not_a_panic() {
    use std::collections::BTreeMap;
    #[derive(serde::Serialize, serde::Deserialize, Clone, Default)]
    struct Weird(BTreeMap<(i32, i32), i32>);
    let v = Json(Weird(BTreeMap::from([((1, 2), 3)])));
    let keyring = test_keyring();
    assert_eq!(
        Encrypted::<Json<Weird>, CodecV>::new(v)
            .seal_with(&keyring)
            .err(),
        Some(Error::Unencodable { type_name: "json" })
    );
}

/// FORMAT.md §3.1: the JSON texts an opener accepts, at their edges.
#[test]
fn json_openers_take_nesting_to_127_and_refuse_duplicate_keys() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(serde_json::Value::decode(nested(127).as_bytes()).is_ok());
    assert!(serde_json::Value::decode(nested(128).as_bytes()).is_err());
    for text in [
        r#"{"a":1,"a":2}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"[{"x":{"a":1,"b":2,"a":3}}]"#,
    ] {
        assert!(
            serde_json::Value::decode(text.as_bytes()).is_err(),
            "{text}"
        );
        assert!(
            Json::<serde_json::Value>::decode(text.as_bytes()).is_err(),
            "{text}"
        );
    }
    // Equal keys in different objects are not duplicates; white space around the value is JSON's.
    let ok = br#" {"a":{"a":1},"b":[{"a":2},{"a":3}]} "#;
    assert!(serde_json::Value::decode(ok).is_ok());
    assert!(Json::<serde_json::Value>::decode(ok).is_ok());
    assert!(Json::<Allergy>::decode(br#"{"substance":"x","severe":true,"severe":false}"#).is_err());
}
