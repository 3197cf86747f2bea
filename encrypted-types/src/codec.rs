//! Canonical plaintext encodings: how each supported Rust type becomes the bytes that are
//! encrypted, and back.
//!
//! Every encoding is byte-exact and has exactly one valid form, so a decoder in another language
//! can be written from `docs/FORMAT.md` alone. Decoders reject anything non-canonical with
//! [`Error::InvalidPlaintext`]. The type tag ([`Plaintext::TYPE`]) is part of the authenticated
//! context, so a value sealed as one type never opens as another.

use std::io;

use zeroize::Zeroize;

use crate::Error;

#[cfg(feature = "json")]
mod json;
#[cfg(feature = "chrono")]
mod time;
#[cfg(feature = "uuid")]
mod uuid;

#[cfg(feature = "json")]
pub use json::Json;

/// A type that can be sealed inside [`crate::Encrypted`](struct@crate::Encrypted).
///
/// Implemented for `String`, `Vec<u8>`, `bool`, `i16`, `i32`, `i64`, `f64`, and behind features
/// for chrono's `NaiveDate`, `NaiveDateTime` and `DateTime<Utc>`, `uuid::Uuid`,
/// `serde_json::Value` and [`Json<T>`](crate::Json).
///
/// ```
/// use encrypted_types::{Plaintext, SecretBuf};
/// let mut buf = SecretBuf::with_capacity(8);
/// 258_i16.encode(&mut buf).unwrap();
/// assert_eq!(buf.as_slice(), &[1, 2]);
/// assert_eq!(i16::decode(&[1, 2]).unwrap(), 258);
/// assert!(i16::decode(&[1]).is_err());
/// ```
pub trait Plaintext: Sized {
    /// The value type tag that goes into the authenticated context (`"string"`, `"i64"`...).
    const TYPE: &'static str;

    /// Appends the canonical encoding of `self` to `out`.
    ///
    /// # Errors
    /// [`Error::Unencodable`] if the value has no encoding.
    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error>;

    /// A capacity hint for the encoding, so sealing allocates once.
    fn encoded_len_hint(&self) -> usize {
        16
    }

    /// Parses a canonical encoding.
    ///
    /// # Errors
    /// [`Error::InvalidPlaintext`] for anything but the one canonical encoding.
    fn decode(bytes: &[u8]) -> Result<Self, Error>;

    /// Like [`Plaintext::decode`], from an owned buffer that the implementation may reuse.
    /// The buffer holds plaintext: whatever is not moved into `Self` must be wiped, which the
    /// default implementation does.
    ///
    /// # Errors
    /// As [`Plaintext::decode`].
    fn decode_owned(bytes: Vec<u8>) -> Result<Self, Error> {
        let bytes = zeroize::Zeroizing::new(bytes);
        Self::decode(&bytes)
    }

    /// The value as text, for types that blind-index normalizers apply to (`String`).
    fn as_str(&self) -> Option<&str> {
        None
    }

    /// Overwrites any heap memory the value owns. Called when an `Encrypted` value is dropped.
    fn wipe(&mut self) {}
}

/// A byte buffer for plaintext that never leaves a copy behind: when it has to grow, it
/// wipes the old allocation before freeing it, and it wipes itself on drop.
///
/// ```
/// use encrypted_types::SecretBuf;
/// let mut b = SecretBuf::with_capacity(1);
/// b.extend_from_slice(b"more than one byte");
/// assert_eq!(b.as_slice(), b"more than one byte");
/// ```
#[derive(Default)]
pub struct SecretBuf(Vec<u8>);

impl SecretBuf {
    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self(Vec::with_capacity(cap))
    }

    /// Appends bytes, growing without leaving the old contents in freed memory.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let need = self.0.len().saturating_add(bytes.len());
        if need > self.0.capacity() {
            let mut grown = Vec::with_capacity(need.max(self.0.capacity().saturating_mul(2)));
            grown.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = grown;
        }
        self.0.extend_from_slice(bytes);
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Gives up the buffer without wiping it: the caller has just encrypted it in place.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBuf(<{} bytes redacted>)", self.0.len())
    }
}

impl io::Write for SecretBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) fn invalid<T: Plaintext>() -> Error {
    Error::InvalidPlaintext { type_name: T::TYPE }
}

impl Plaintext for String {
    const TYPE: &'static str = "string";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }

    fn encoded_len_hint(&self) -> usize {
        self.len()
    }

    fn as_str(&self) -> Option<&str> {
        Some(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| invalid::<Self>())
    }

    fn decode_owned(bytes: Vec<u8>) -> Result<Self, Error> {
        // Reuses the decryption buffer: the plaintext is never copied.
        String::from_utf8(bytes).map_err(|e| {
            e.into_bytes().zeroize();
            invalid::<Self>()
        })
    }

    fn wipe(&mut self) {
        self.zeroize();
    }
}

impl Plaintext for Vec<u8> {
    const TYPE: &'static str = "bytes";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        out.extend_from_slice(self);
        Ok(())
    }

    fn encoded_len_hint(&self) -> usize {
        self.len()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(bytes.to_vec())
    }

    fn decode_owned(bytes: Vec<u8>) -> Result<Self, Error> {
        Ok(bytes)
    }

    fn wipe(&mut self) {
        self.zeroize();
    }
}

impl Plaintext for bool {
    const TYPE: &'static str = "bool";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        out.extend_from_slice(&[u8::from(*self)]);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(invalid::<Self>()),
        }
    }

    fn wipe(&mut self) {
        *self = false;
    }
}

macro_rules! fixed_width {
    ($($t:ty => $tag:literal),*) => {$(
        impl Plaintext for $t {
            const TYPE: &'static str = $tag;

            fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
                out.extend_from_slice(&self.to_be_bytes());
                Ok(())
            }

            fn decode(bytes: &[u8]) -> Result<Self, Error> {
                bytes.try_into().map(<$t>::from_be_bytes).map_err(|_| invalid::<Self>())
            }

            fn wipe(&mut self) {
                self.zeroize();
            }
        }
    )*};
}

// f64 goes through `to_be_bytes` too: the IEEE-754 bit pattern, so NaN payloads and -0.0
// survive the round trip exactly.
fixed_width!(i16 => "i16", i32 => "i32", i64 => "i64", f64 => "f64");
