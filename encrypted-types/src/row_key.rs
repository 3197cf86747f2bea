//! A row's primary key as the library reports it: in errors ([`crate::Unreadable`]), in the
//! jobs' reports and checkpoints. Any tuple of integer, text, binary and UUID parts, printed by
//! one rule (surrogates in full, natural keys as kind and length), and a text encoding that
//! round-trips every one of them (the checkpoint and range bounds of the job table).

use std::fmt;

use crate::Error;

/// One component of a primary-key value.
///
/// ```
/// use encrypted_types::{KeyPart, RowKey};
/// let k = RowKey::from(vec![KeyPart::Int(i64::MIN), KeyPart::Text(String::new())]);
/// assert_eq!(RowKey::decode(&k.encode()).unwrap(), k);
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum KeyPart {
    /// Any integer column (`SMALLINT`, `INTEGER`, `BIGINT`, signed).
    Int(i64),
    /// A text column (`TEXT`, `VARCHAR`, `CHAR`).
    Text(String),
    /// A binary column (`BYTEA`, `BLOB`, `BINARY(16)` holding a UUID).
    Bytes(Vec<u8>),
    /// A PostgreSQL `uuid` column.
    Uuid([u8; 16]),
}

// The rule for every message and log line: integer and UUID keys are surrogates and print in
// full (an operator must find the row); text and binary keys may be natural keys holding
// personal data (an email) and print as their kind and length.
impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "Int({v})"),
            Self::Text(t) => write!(f, "Text(<text, {} bytes>)", t.len()),
            Self::Bytes(b) => write!(f, "Bytes(<binary, {} bytes>)", b.len()),
            Self::Uuid(u) => write!(f, "Uuid({})", uuid_text(u)),
        }
    }
}

/// A UUID's usual text form, 8-4-4-4-12 lowercase hex.
fn uuid_text(u: &[u8; 16]) -> String {
    let h = hex(u);
    let part = |r: std::ops::Range<usize>| h.get(r).unwrap_or_default();
    format!(
        "{}-{}-{}-{}-{}",
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32)
    )
}

/// A row key as messages and logs print it: integer and UUID parts in full, text and binary
/// parts as `<text, N bytes>` / `<binary, N bytes>`, parts joined by `, `. The structured key
/// ([`RowKey`]'s parts) always holds every byte; [`RowKey::full`] prints it whole, for an
/// operator who asks (`--show-keys`).
///
/// ```
/// use encrypted_types::{KeyPart, RowKey};
/// assert_eq!(RowKey::from(7_i64).to_string(), "7");
/// let k = RowKey::from(vec![KeyPart::Int(3), KeyPart::Text("ann@example.org".into())]);
/// assert_eq!(k.to_string(), "3, <text, 15 bytes>");
/// assert_eq!(k.full().to_string(), "3, \"ann@example.org\"");
/// let u = RowKey::from(vec![KeyPart::Uuid([0xab; 16])]);
/// assert_eq!(u.to_string(), "abababab-abab-abab-abab-abababababab");
/// ```
impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, self, false)
    }
}

/// [`RowKey::full`]: every part in full, text quoted and escaped as Rust does, bytes in hex.
#[derive(Debug, Clone, Copy)]
pub struct FullKey<'a>(&'a RowKey);

impl fmt::Display for FullKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, self.0, true)
    }
}

/// The parts of `key` joined by `, `: surrogates (integers, UUIDs) always in full, text and
/// binary parts in full only when `full`.
fn write_key(f: &mut fmt::Formatter<'_>, key: &RowKey, full: bool) -> fmt::Result {
    for (i, p) in key.0.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        match p {
            KeyPart::Int(v) => write!(f, "{v}")?,
            KeyPart::Uuid(u) => f.write_str(&uuid_text(u))?,
            KeyPart::Text(t) if full => write!(f, "{t:?}")?,
            KeyPart::Bytes(b) if full => write!(f, "x'{}'", hex(b))?,
            KeyPart::Text(t) => write!(f, "<text, {} bytes>", t.len())?,
            KeyPart::Bytes(b) => write!(f, "<binary, {} bytes>", b.len())?,
        }
    }
    Ok(())
}

/// A whole primary-key tuple, in the order of the table's primary key.
///
/// ```
/// use encrypted_types::RowKey;
/// assert_eq!(RowKey::from(7_i64).encode(), "i:7");
/// assert_eq!(RowKey::from("a,b").encode(), "t:612c62");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey(pub Vec<KeyPart>);

impl From<Vec<KeyPart>> for RowKey {
    fn from(parts: Vec<KeyPart>) -> Self {
        Self(parts)
    }
}

impl From<i64> for RowKey {
    fn from(v: i64) -> Self {
        Self(vec![KeyPart::Int(v)])
    }
}

impl From<i32> for RowKey {
    fn from(v: i32) -> Self {
        Self(vec![KeyPart::Int(v.into())])
    }
}

impl From<&str> for RowKey {
    fn from(v: &str) -> Self {
        Self(vec![KeyPart::Text(v.to_owned())])
    }
}

impl From<String> for RowKey {
    fn from(v: String) -> Self {
        Self(vec![KeyPart::Text(v)])
    }
}

impl From<Vec<u8>> for RowKey {
    fn from(v: Vec<u8>) -> Self {
        Self(vec![KeyPart::Bytes(v)])
    }
}

#[cfg(feature = "uuid")]
impl From<uuid::Uuid> for RowKey {
    /// A UUID key: bound as `uuid` on a PostgreSQL `uuid` column, as its 16 bytes on a binary
    /// column.
    fn from(v: uuid::Uuid) -> Self {
        Self(vec![KeyPart::Uuid(v.into_bytes())])
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl RowKey {
    /// Every part in full, for an operator who must find the row (`--show-keys`, JSON): text
    /// keys may hold personal data, so messages and logs print [`RowKey`]'s `Display` instead.
    pub fn full(&self) -> FullKey<'_> {
        FullKey(self)
    }

    /// The text form stored in the job table: parts joined by `,`, each `i:<decimal>`,
    /// `t:<hex of UTF-8>`, `b:<hex>` or `u:<32 hex>`. Hex keeps separators and any byte out
    /// of the way, so every value round-trips exactly.
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|p| match p {
                KeyPart::Int(v) => format!("i:{v}"),
                KeyPart::Text(s) => format!("t:{}", hex(s.as_bytes())),
                KeyPart::Bytes(b) => format!("b:{}", hex(b)),
                KeyPart::Uuid(u) => format!("u:{}", hex(u)),
            })
            .collect();
        parts.join(",")
    }

    /// Parses [`RowKey::encode`]'s form. The job table is as untrusted as any other table.
    ///
    /// # Errors
    /// [`Error::Job`] for anything that is not exactly that form.
    pub fn decode(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Job(format!(
                "malformed key tuple in the job table ({} bytes)",
                s.len()
            ))
        };
        let mut parts = Vec::new();
        for item in s.split(',') {
            let (tag, body) = item.split_once(':').ok_or_else(bad)?;
            parts.push(match tag {
                "i" => {
                    // Canonical decimal only: `+1`, `01` or `-0` would not re-encode the same.
                    let v: i64 = body.parse().map_err(|_| bad())?;
                    if v.to_string() != body {
                        return Err(bad());
                    }
                    KeyPart::Int(v)
                }
                "t" => KeyPart::Text(
                    String::from_utf8(unhex(body).ok_or_else(bad)?).map_err(|_| bad())?,
                ),
                "b" => KeyPart::Bytes(unhex(body).ok_or_else(bad)?),
                "u" => KeyPart::Uuid(
                    <[u8; 16]>::try_from(unhex(body).ok_or_else(bad)?).map_err(|_| bad())?,
                ),
                _ => return Err(bad()),
            });
        }
        Ok(Self(parts))
    }
}

/// A primary-key value as a [`KeyPart`]: what `#[derive(Encrypted)]` calls on each primary-key
/// field to name a row in [`crate::Unreadable`]. Implemented for the integer, text, binary and
/// UUID types keys have; a key field of another type is named by its `Debug` text, which
/// prints like a natural key (kind and length): implement this trait for a newtype key to
/// have it print in full.
///
/// ```
/// use encrypted_types::{KeyPart, RowKey, ToKeyPart};
/// struct PatientId(i64);
/// impl ToKeyPart for PatientId {
///     fn to_key_part(&self) -> KeyPart {
///         KeyPart::Int(self.0)
///     }
/// }
/// assert_eq!(RowKey(vec![PatientId(42).to_key_part()]).to_string(), "42");
/// ```
pub trait ToKeyPart {
    /// The key part.
    fn to_key_part(&self) -> KeyPart;
}

macro_rules! int_key_part {
    ($($t:ty),*) => {$(
        impl ToKeyPart for $t {
            fn to_key_part(&self) -> KeyPart {
                KeyPart::Int(i64::from(*self))
            }
        }
    )*};
}
int_key_part!(i8, i16, i32, i64, u8, u16, u32);

impl ToKeyPart for u64 {
    /// Beyond `i64::MAX` (no backend stores it in a signed key) it is named as its decimal text.
    fn to_key_part(&self) -> KeyPart {
        i64::try_from(*self).map_or_else(|_| KeyPart::Text(self.to_string()), KeyPart::Int)
    }
}

impl ToKeyPart for str {
    fn to_key_part(&self) -> KeyPart {
        KeyPart::Text(self.to_owned())
    }
}

impl ToKeyPart for String {
    fn to_key_part(&self) -> KeyPart {
        KeyPart::Text(self.clone())
    }
}

impl ToKeyPart for [u8] {
    fn to_key_part(&self) -> KeyPart {
        KeyPart::Bytes(self.to_vec())
    }
}

impl ToKeyPart for Vec<u8> {
    fn to_key_part(&self) -> KeyPart {
        KeyPart::Bytes(self.clone())
    }
}

#[cfg(feature = "uuid")]
impl ToKeyPart for uuid::Uuid {
    fn to_key_part(&self) -> KeyPart {
        KeyPart::Uuid(self.into_bytes())
    }
}

/// What the derive calls on a primary-key field (autoref specialization): [`ToKeyPart`] where
/// the field's type has it, its `Debug` text otherwise.
#[doc(hidden)]
#[allow(missing_debug_implementations)] // built and consumed in one expression, never printed
pub struct KeyPartOf<'a, T: ?Sized>(pub &'a T);

#[doc(hidden)]
pub trait ViaToKeyPart {
    fn key_part(&self) -> KeyPart;
}

impl<T: ToKeyPart + ?Sized> ViaToKeyPart for KeyPartOf<'_, T> {
    fn key_part(&self) -> KeyPart {
        self.0.to_key_part()
    }
}

#[doc(hidden)]
pub trait ViaDebug {
    fn key_part(&self) -> KeyPart;
}

impl<T: fmt::Debug + ?Sized> ViaDebug for &KeyPartOf<'_, T> {
    fn key_part(&self) -> KeyPart {
        KeyPart::Text(format!("{:?}", self.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    // The borrow is the specialization: it is needless only where `ToKeyPart` applies.
    #[allow(clippy::needless_borrow)]
    fn key_fields_become_parts_by_their_type() {
        #[derive(Debug)]
        struct Opaque(#[allow(dead_code)] i64);
        assert_eq!((&KeyPartOf(&7_i32)).key_part(), KeyPart::Int(7));
        assert_eq!(
            (&KeyPartOf(&u64::MAX)).key_part(),
            KeyPart::Text(u64::MAX.to_string())
        );
        assert_eq!(
            (&KeyPartOf(&String::from("a"))).key_part(),
            KeyPart::Text("a".into())
        );
        assert_eq!(
            (&KeyPartOf(&vec![1_u8])).key_part(),
            KeyPart::Bytes(vec![1])
        );
        // No `ToKeyPart`: the `Debug` text, printed as a natural key.
        let part = (&KeyPartOf(&Opaque(5))).key_part();
        assert_eq!(RowKey(vec![part]).to_string(), "<text, 9 bytes>");
    }

    #[test]
    fn encoding_round_trips_boundaries_and_rejects_noise() {
        for k in [
            RowKey::from(i64::MIN),
            RowKey::from(i64::MAX),
            RowKey::from(""),
            RowKey::from(vec![
                KeyPart::Text("é,:x".into()),
                KeyPart::Bytes(vec![]),
                KeyPart::Uuid([0xab; 16]),
                KeyPart::Int(-1),
            ]),
        ] {
            assert_eq!(RowKey::decode(&k.encode()).unwrap(), k);
        }
        for bad in [
            "", "i:", "i:01", "i:+1", "t:zz", "t:ff", "u:00", "x:1", "i:1,", "b:abc",
        ] {
            assert!(RowKey::decode(bad).is_err(), "{bad}");
        }
    }
}
