//! The library's AEAD primitives with caller-chosen inputs, for running external test vectors
//! (Project Wycheproof) through the exact code paths that seal and open values (the blind-index
//! MAC's counterpart is `index::hazmat`).
//! Behind the `test-vectors` feature; never for production data.

use super::{DataKey, Error, aead_open, aead_seal};

/// The seal of `suite` (1: AES-256-GCM, 2: AES-256-GCM-SIV): encrypts `body` in place,
/// returns the 16-byte tag.
///
/// # Errors
/// [`Error::TooLarge`], [`Error::UnsupportedSuite`].
pub fn seal(
    key: &DataKey,
    suite: u8,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
) -> Result<[u8; 16], Error> {
    aead_seal(key, suite, nonce, aad, body)
}

/// The open of `suite`: decrypts `body` in place if `tag` verifies.
///
/// # Errors
/// [`Error::AuthenticationFailed`], [`Error::UnsupportedSuite`].
pub fn open(
    key: &DataKey,
    suite: u8,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
    tag: &[u8],
) -> Result<(), Error> {
    let tag: [u8; 16] = tag.try_into().map_err(|_| Error::AuthenticationFailed)?;
    aead_open(key, suite, nonce, aad, body, &tag)
}
