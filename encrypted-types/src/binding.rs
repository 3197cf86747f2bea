//! Row binding: the identity of the row a value belongs to, authenticated with the value.
//!
//! A value sealed with a [`RowBinding`] (suite 3, `docs/FORMAT.md` §2.1) opens only with the
//! same binding: copied into another row of the same table, column and tenant, it fails with
//! [`Error::AuthenticationFailed`](crate::Error::AuthenticationFailed). The binding is the row's
//! identity, one to four column values chosen by `#[encrypted(bind_row = ...)]`, usually the
//! primary key. It must be known when the value is sealed, so a key the database generates
//! (`SERIAL`, `AUTO_INCREMENT`) cannot be one.
//!
//! Replay within one cell stays possible: an older value of the same cell, bound to the same
//! row, still opens. Binding stops swaps between rows, not rollbacks of one row.

use std::sync::Arc;

use crate::Error;

/// Most columns a row identity may have.
pub const MAX_ROW_PARTS: usize = 4;

/// One column value of a row identity, as it is encoded into the binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowPart<'a> {
    /// An integer column (`SMALLINT`, `INTEGER`, `BIGINT`), widened to i64.
    Int(i64),
    /// A text column, its UTF-8 bytes as stored.
    Text(&'a str),
    /// A binary column, or a UUID's 16 bytes.
    Bytes(&'a [u8]),
}

impl RowPart<'_> {
    fn tag(&self) -> u8 {
        match self {
            Self::Int(_) => 1,
            Self::Text(_) => 2,
            Self::Bytes(_) => 3,
        }
    }
}

/// How a row-identity column is read back from SQL by the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowKind {
    /// An integer column.
    Int,
    /// A text column.
    Text,
    /// A binary column.
    Bytes,
    /// A UUID column (16 bytes).
    Uuid,
}

/// A row-identity column of a model: its SQL name and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowColumn {
    /// SQL column name.
    pub column: &'static str,
    /// How its value is read and encoded.
    pub kind: RowKind,
}

/// A Rust type that can be part of a row identity: `i16`, `i32`, `i64`, `String`, `Vec<u8>`,
/// and `uuid::Uuid` with the crate feature `uuid` (a UUID binds as its 16 bytes).
///
/// ```
/// use encrypted_types::{RowIdentity, RowKind, RowPart};
/// assert_eq!(42_i32.row_part(), RowPart::Int(42));
/// assert_eq!(<String as RowIdentity>::KIND, RowKind::Text);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot identify a row for `bind_row`",
    label = "not a row identity",
    note = "row identities are i16, i32, i64, String, Vec<u8>, and uuid::Uuid with the crate \
            feature `uuid` (`encrypted-types = {{ version = \"0.2\", features = [\"uuid\"] }}`)",
    note = "a newtype key implements `RowIdentity` by returning its inner value's `row_part`"
)]
pub trait RowIdentity {
    /// How the jobs read this column back.
    const KIND: RowKind;
    /// The value as a part of the binding.
    fn row_part(&self) -> RowPart<'_>;
}

macro_rules! int_identity {
    ($($t:ty),*) => {$(
        impl RowIdentity for $t {
            const KIND: RowKind = RowKind::Int;
            fn row_part(&self) -> RowPart<'_> {
                RowPart::Int(i64::from(*self))
            }
        }
    )*};
}
int_identity!(i16, i32, i64);

impl RowIdentity for String {
    const KIND: RowKind = RowKind::Text;
    fn row_part(&self) -> RowPart<'_> {
        RowPart::Text(self)
    }
}

impl RowIdentity for Vec<u8> {
    const KIND: RowKind = RowKind::Bytes;
    fn row_part(&self) -> RowPart<'_> {
        RowPart::Bytes(self)
    }
}

#[cfg(feature = "uuid")]
impl RowIdentity for uuid::Uuid {
    const KIND: RowKind = RowKind::Uuid;
    fn row_part(&self) -> RowPart<'_> {
        RowPart::Bytes(self.as_bytes())
    }
}

impl<T: RowIdentity + ?Sized> RowIdentity for &T {
    const KIND: RowKind = T::KIND;
    fn row_part(&self) -> RowPart<'_> {
        (**self).row_part()
    }
}

/// The encoded identity of one row, cheap to clone (shared by every field of the row).
///
/// Encoding: the number of parts (u8, 1 to 4), then per part a tag (1 integer, 2 text, 3 bytes),
/// a u32 big-endian length and the bytes (an integer as 8 bytes, big-endian two's complement).
///
/// ```
/// use encrypted_types::{RowBinding, RowPart};
/// let b = RowBinding::new(&[RowPart::Int(7), RowPart::Text("a")]).unwrap();
/// assert_eq!(
///     b.as_bytes(),
///     b"\x02\x01\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x07\x02\x00\x00\x00\x01a"
/// );
/// assert!(RowBinding::new(&[]).is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RowBinding(Arc<[u8]>);

impl RowBinding {
    /// Encodes a row identity of 1 to [`MAX_ROW_PARTS`] parts.
    ///
    /// # Errors
    /// [`Error::InvalidRowBinding`] for no part, more than four, or a part of 4 GiB or more.
    pub fn new(parts: &[RowPart<'_>]) -> Result<Self, Error> {
        if parts.is_empty() || parts.len() > MAX_ROW_PARTS {
            return Err(Error::InvalidRowBinding);
        }
        let mut out = Vec::with_capacity(1 + parts.len() * 13);
        out.push(u8::try_from(parts.len()).map_err(|_| Error::InvalidRowBinding)?);
        for part in parts {
            let int;
            let bytes: &[u8] = match part {
                RowPart::Int(i) => {
                    int = i.to_be_bytes();
                    &int
                }
                RowPart::Text(s) => s.as_bytes(),
                RowPart::Bytes(b) => b,
            };
            let len = u32::try_from(bytes.len()).map_err(|_| Error::InvalidRowBinding)?;
            out.push(part.tag());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
        Ok(Self(out.into()))
    }

    /// [`RowBinding::new`] for code that cannot fail where it builds the binding (the
    /// derive's conversion to the written row): an identity that cannot be encoded gives an
    /// empty binding, which every seal and open refuses with
    /// [`Error::InvalidRowBinding`](crate::Error::InvalidRowBinding).
    pub fn of(parts: &[RowPart<'_>]) -> Self {
        Self::new(parts).unwrap_or_else(|_| Self(Arc::from(Vec::new())))
    }

    /// The encoded bytes, appended to the AAD of a suite-3 value (empty for an identity
    /// [`RowBinding::of`] could not encode).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, or [`Error::InvalidRowBinding`] for an identity that could not be
    /// encoded.
    pub(crate) fn checked(&self) -> Result<&[u8], Error> {
        if self.0.is_empty() {
            Err(Error::InvalidRowBinding)
        } else {
            Ok(&self.0)
        }
    }
}

impl std::fmt::Debug for RowBinding {
    // A row's identity can be personal data (a national id as primary key): never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowBinding(<redacted>)")
    }
}
