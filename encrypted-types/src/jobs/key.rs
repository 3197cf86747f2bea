//! Primary keys as the jobs page by them: any tuple of integer, text, binary and (PostgreSQL)
//! UUID columns, read from the database's own catalogue, and a text encoding of a key tuple
//! that round-trips every one of them (the checkpoint and range bounds of the job table).

use std::fmt;

use crate::Error;

/// One component of a primary-key value.
///
/// ```
/// use encrypted_types::jobs::{KeyPart, RowKey};
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
/// use encrypted_types::jobs::{KeyPart, RowKey};
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
/// use encrypted_types::jobs::RowKey;
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

/// How a primary-key column is read, compared and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// Signed integers up to 64 bits.
    Int,
    /// Text, compared in the column's collation.
    Text,
    /// Bytes, compared bytewise.
    Bytes,
    /// PostgreSQL `uuid`.
    Uuid,
}

/// One column of a table's primary key, as the database declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column name.
    pub name: String,
    /// How it is paged.
    pub kind: KeyKind,
}

/// Maps a column type as the catalogue spells it to a kind, or `None` when the jobs cannot
/// page by it (floats, decimals, dates, `BIGINT UNSIGNED` past `i64::MAX`, unknown types).
pub(crate) fn kind_of(backend: &str, declared: &str) -> Option<KeyKind> {
    let t = declared.to_ascii_lowercase();
    let t = t.trim();
    match backend {
        "postgres" => match t {
            "smallint" | "integer" | "bigint" => Some(KeyKind::Int),
            "text" | "name" => Some(KeyKind::Text),
            "bytea" => Some(KeyKind::Bytes),
            "uuid" => Some(KeyKind::Uuid),
            // `character(n)` is left out: it reads back padded, and PostgreSQL compares it
            // with text after trimming, so a compare-and-swap by key would never match.
            _ if t.starts_with("character varying") => Some(KeyKind::Text),
            _ => None,
        },
        "mysql" => {
            let base = t.split(['(', ' ']).next().unwrap_or("");
            match base {
                "bigint" if t.contains("unsigned") => None,
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
                    Some(KeyKind::Int)
                }
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                    Some(KeyKind::Text)
                }
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    Some(KeyKind::Bytes)
                }
                _ => None,
            }
        }
        // SQLite's affinity rules (https://sqlite.org/datatype3.html §3.1), in their order.
        _ => {
            if t.contains("int") {
                Some(KeyKind::Int)
            } else if t.contains("char") || t.contains("clob") || t.contains("text") {
                Some(KeyKind::Text)
            } else if t.contains("blob") || t.is_empty() {
                Some(KeyKind::Bytes)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    #[test]
    fn kinds_follow_each_catalogue() {
        assert_eq!(kind_of("postgres", "uuid"), Some(KeyKind::Uuid));
        assert_eq!(
            kind_of("postgres", "character varying(40)"),
            Some(KeyKind::Text)
        );
        assert_eq!(kind_of("postgres", "numeric(10,0)"), None);
        assert_eq!(kind_of("postgres", "character(8)"), None);
        assert_eq!(kind_of("mysql", "bigint(20) unsigned"), None);
        assert_eq!(kind_of("mysql", "int(10) unsigned"), Some(KeyKind::Int));
        assert_eq!(kind_of("mysql", "binary(16)"), Some(KeyKind::Bytes));
        assert_eq!(kind_of("sqlite", "VARCHAR(10)"), Some(KeyKind::Text));
        assert_eq!(kind_of("sqlite", "REAL"), None);
    }
}
