//! Every truncation, every single-bit flip and every forged header of a sealed value fails
//! with a typed error: never `Ok`, never a panic.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::{Encrypted, Error, KeyId, Keyring};
use encrypted_types_tests::{PeopleEmail, PeopleName, keys, test_keyring};

fn sealed_samples(keyring: &Keyring) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for len in [0usize, 1, 15, 16, 17, 64, 300] {
        let text = "s".repeat(len);
        out.push(
            Encrypted::<String, PeopleEmail>::new(text.clone())
                .seal_with(keyring)
                .unwrap(),
        );
        out.push(
            Encrypted::<String, PeopleEmail>::for_tenant(text, "clinic-a")
                .seal_with(keyring)
                .unwrap(),
        );
    }
    out
}

fn open(keyring: &Keyring, bytes: &[u8]) -> Result<Encrypted<String, PeopleEmail>, Error> {
    Encrypted::open_with(keyring, bytes)
}

#[test]
fn samples_open_untouched() {
    let keyring = test_keyring();
    for s in sealed_samples(&keyring) {
        assert!(open(&keyring, &s).is_ok());
    }
}

#[test]
fn every_truncation_fails_with_a_typed_error() {
    let keyring = test_keyring();
    for s in sealed_samples(&keyring) {
        for len in 0..s.len() {
            match open(&keyring, &s[..len]) {
                Err(Error::Truncated { len: l, min: 34 }) => assert!(len < 34 && l == len),
                Err(Error::AuthenticationFailed) => assert!(len >= 34),
                other => panic!(
                    "truncated to {len} of {}: {:?}",
                    s.len(),
                    other.map(|_| "Ok")
                ),
            }
        }
    }
}

#[test]
fn every_single_bit_flip_fails_with_a_typed_error() {
    let keyring = test_keyring();
    for s in sealed_samples(&keyring) {
        for byte in 0..s.len() {
            for bit in 0..8 {
                let mut t = s.clone();
                t[byte] ^= 1 << bit;
                let got = open(&keyring, &t);
                let ok = match (&got, byte) {
                    (Err(Error::UnsupportedVersion(v)), 0) => *v == t[0],
                    (Err(Error::UnsupportedSuite(v)), 1) => *v == t[1],
                    // Suite 2 relabelled as suite 3: a bound value where none is expected.
                    (Err(Error::RowBinding), 1) => {
                        t[1] == encrypted_types::format::SUITE_AES256GCMSIV_ROW
                    }
                    (Err(Error::UnknownKeyId(id) | Error::KeyDestroyed(id)), 2..=5) => {
                        id.get().to_be_bytes() == t[2..6]
                    }
                    (Err(Error::AuthenticationFailed), _) => true,
                    _ => false,
                };
                assert!(
                    ok,
                    "flip of bit {bit} in byte {byte}: {:?}",
                    got.map(|_| "Ok")
                );
            }
        }
    }
}

#[test]
fn appended_bytes_fail_authentication() {
    let keyring = test_keyring();
    for mut s in sealed_samples(&keyring) {
        s.push(0);
        assert_eq!(open(&keyring, &s).err(), Some(Error::AuthenticationFailed));
    }
}

#[test]
fn a_header_forged_to_name_another_tenants_key_fails() {
    let keyring = test_keyring();
    let mut s = Encrypted::<String, PeopleEmail>::for_tenant("a's secret".into(), "clinic-a")
        .seal_with(&keyring)
        .unwrap();
    assert_eq!(&s[2..6], &keys::CLINIC_A.to_be_bytes());
    s[2..6].copy_from_slice(&keys::CLINIC_B.to_be_bytes());
    assert_eq!(open(&keyring, &s).err(), Some(Error::AuthenticationFailed));
    // And a value with no tenant relabelled as a tenant's key.
    let mut s = Encrypted::<String, PeopleEmail>::new("x".into())
        .seal_with(&keyring)
        .unwrap();
    s[2..6].copy_from_slice(&keys::CLINIC_A.to_be_bytes());
    assert_eq!(open(&keyring, &s).err(), Some(Error::AuthenticationFailed));
}

#[test]
fn a_value_read_as_another_type_or_column_fails() {
    let keyring = test_keyring();
    let s = Encrypted::<i64, PeopleEmail>::new(42)
        .seal_with(&keyring)
        .unwrap();
    assert_eq!(
        Encrypted::<i32, PeopleEmail>::open_with(&keyring, &s).err(),
        Some(Error::AuthenticationFailed)
    );
    assert_eq!(
        Encrypted::<Vec<u8>, PeopleEmail>::open_with(&keyring, &s).err(),
        Some(Error::AuthenticationFailed)
    );
    assert_eq!(
        Encrypted::<i64, PeopleName>::open_with(&keyring, &s).err(),
        Some(Error::AuthenticationFailed)
    );
    assert_eq!(
        *Encrypted::<i64, PeopleEmail>::open_with(&keyring, &s).unwrap(),
        42
    );
}

#[test]
fn unknown_and_destroyed_keys_are_reported_before_any_decryption() {
    let keyring = test_keyring();
    // A value whose body is garbage still reports the key problem: the header is checked first.
    let mut s = vec![1u8, 1, 0, 0, 0, keys::DESTROYED as u8];
    s.extend([0xEE; 40]);
    assert_eq!(
        open(&keyring, &s).err(),
        Some(Error::KeyDestroyed(KeyId::from(keys::DESTROYED)))
    );
    s[5] = 77;
    assert_eq!(
        open(&keyring, &s).err(),
        Some(Error::UnknownKeyId(KeyId::from(77)))
    );
    s[1] = 9;
    assert_eq!(open(&keyring, &s).err(), Some(Error::UnsupportedSuite(9)));
    s[0] = 0;
    assert_eq!(open(&keyring, &s).err(), Some(Error::UnsupportedVersion(0)));
}

#[test]
fn two_seals_of_one_value_differ() {
    let keyring = test_keyring();
    let v = Encrypted::<String, PeopleEmail>::new("same".into());
    let (a, b) = (
        v.seal_with(&keyring).unwrap(),
        v.seal_with(&keyring).unwrap(),
    );
    assert_ne!(a, b, "nonce reused");
    assert_ne!(a[6..18], b[6..18]);
}
