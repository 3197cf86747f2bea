//! AES-256-GCM-SIV through AWS-LC's assembly (feature `aws-lc`), for suites 2 and 3.
//!
//! The same RFC 8452 construction as [`super::siv`], computed by AWS-LC (`aws-lc-rs`): about
//! twice as fast at small sizes, because its key derivation, POLYVAL and CTR are one
//! hand-scheduled pass (ADR 0004, "A faster primitive"). The output is identical byte for byte:
//! the frozen vectors, Wycheproof and a cross-check against the pure-Rust implementation
//! (below) hold it to that. AWS-LC keeps the key schedule in memory it allocates, and its
//! `OPENSSL_free` wipes that memory when the key is dropped.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};

use super::siv::{self, Rejected, TAG_LEN};

/// An AES-256-GCM-SIV key: AWS-LC's, or the pure-Rust one if AWS-LC refused the key (it
/// refuses only a wrong length, which a 32-byte array cannot have; never a panic either way).
#[derive(Clone)]
pub(crate) enum Siv {
    AwsLc(Arc<LessSafeKey>),
    Rust(Box<siv::Siv>),
}

impl Siv {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        match UnboundKey::new(&AES_256_GCM_SIV, key) {
            Ok(k) => Self::AwsLc(Arc::new(LessSafeKey::new(k))),
            Err(_) => Self::Rust(Box::new(siv::Siv::new(key))),
        }
    }

    /// Encrypts `body` in place and returns the tag, or `Err` when AWS-LC refuses the lengths.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Rejected> {
        match self {
            Self::AwsLc(k) => aws_seal(k, nonce, aad, body),
            Self::Rust(k) => k.seal(nonce, aad, body),
        }
    }

    /// Decrypts `body` in place if `tag` verifies. On failure `body` may hold anything (AWS-LC
    /// says "unspecified"): the caller wipes it.
    pub(crate) fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Rejected> {
        match self {
            Self::AwsLc(k) => aws_open(k, nonce, aad, body, tag),
            Self::Rust(k) => k.open(nonce, aad, body, tag),
        }
    }
}

impl Siv {
    /// The state every value of a row shares under `nonce`. AWS-LC derives the per-nonce keys
    /// inside each call and exposes no state to keep, so its rows share the nonce only.
    pub(crate) fn at_nonce(&self, nonce: &[u8; 12]) -> AtNonce {
        match self {
            Self::AwsLc(k) => AtNonce::AwsLc(Arc::clone(k), *nonce),
            Self::Rust(k) => AtNonce::Rust(Box::new(k.at_nonce(nonce))),
        }
    }
}

/// [`siv::AtNonce`] for either implementation.
pub(crate) enum AtNonce {
    AwsLc(Arc<LessSafeKey>, [u8; 12]),
    // Boxed: the fallback never runs in practice, and AWS-LC's variant is 20 bytes.
    Rust(Box<siv::AtNonce>),
}

impl AtNonce {
    /// The nonce the state is for.
    pub(crate) fn nonce(&self) -> &[u8; 12] {
        match self {
            Self::AwsLc(_, n) => n,
            Self::Rust(s) => s.nonce(),
        }
    }

    /// [`Siv::seal`] under this state's nonce.
    pub(crate) fn seal(&mut self, aad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN], Rejected> {
        match self {
            Self::AwsLc(k, nonce) => aws_seal(k, nonce, aad, body),
            Self::Rust(s) => s.seal(aad, body),
        }
    }

    /// [`Siv::open`] under this state's nonce.
    pub(crate) fn open(
        &mut self,
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Rejected> {
        match self {
            Self::AwsLc(k, nonce) => aws_open(k, nonce, aad, body, tag),
            Self::Rust(s) => s.open(aad, body, tag),
        }
    }
}

/// AWS-LC's seal in place with a detached tag.
fn aws_seal(
    key: &LessSafeKey,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
) -> Result<[u8; TAG_LEN], Rejected> {
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), body)
        .map_err(|_| Rejected)?;
    <[u8; TAG_LEN]>::try_from(tag.as_ref()).map_err(|_| Rejected)
}

/// AWS-LC's open in place with a detached tag.
fn aws_open(
    key: &LessSafeKey,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), Rejected> {
    key.open_in_place_separate_tag(
        Nonce::assume_unique_for_key(*nonce),
        Aad::from(aad),
        tag,
        body,
    )
    .map(drop)
    .map_err(|_| Rejected)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// AWS-LC and the pure-Rust implementation agree on every length from 0 to 600 bytes with
    /// several AAD lengths, and each opens the other's output; a flipped bit fails in both.
    #[test]
    fn aws_lc_and_the_rust_implementation_agree() {
        let key = [0x42u8; 32];
        let (fast, rust) = (Siv::new(&key), siv::Siv::new(&key));
        assert!(matches!(fast, Siv::AwsLc(_)));
        for len in 0..600usize {
            for aad_len in [0usize, 1, 17, 60, 300] {
                let nonce: [u8; 12] = core::array::from_fn(|i| (i + len) as u8);
                let aad: Vec<u8> = (0..aad_len).map(|i| (i * 7) as u8).collect();
                let plain: Vec<u8> = (0..len).map(|i| (i * 13 + aad_len) as u8).collect();
                let (mut a, mut b) = (plain.clone(), plain.clone());
                let ta = fast.seal(&nonce, &aad, &mut a).unwrap();
                let tb = rust.seal(&nonce, &aad, &mut b).unwrap();
                assert_eq!((&a, ta), (&b, tb), "len {len}, aad {aad_len}");
                rust.open(&nonce, &aad, &mut a, &ta).unwrap();
                fast.open(&nonce, &aad, &mut b, &tb).unwrap();
                assert_eq!((&a, &b), (&plain, &plain));
                if len > 0 {
                    let mut c = plain.clone();
                    let t = fast.seal(&nonce, &aad, &mut c).unwrap();
                    c[len / 2] ^= 1;
                    assert!(fast.open(&nonce, &aad, &mut c.clone(), &t).is_err());
                    assert!(rust.open(&nonce, &aad, &mut c, &t).is_err());
                }
            }
        }
    }
}
