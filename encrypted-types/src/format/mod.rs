//! Ciphertext format version 1: the byte layout, the authenticated data, and the seal and open
//! primitives. `docs/FORMAT.md` is the normative description; this module implements it.
//!
//! ```text
//! offset  size  field
//! 0       1     version      0x01
//! 1       1     suite        0x02 = AES-256-GCM-SIV (written; 0x03 bound to the row, 0x04 with
//!                            the schema, 0x05 both), 0x01 = AES-256-GCM (read only); all with
//!                            a 96-bit random nonce and a 128-bit tag
//! 2       4     key id       big-endian u32
//! 6       12    nonce
//! 18      n     ciphertext   (n = plaintext length)
//! 18+n    16    tag
//! ```
//!
//! AAD = `"encrypted-types/v1"` ‖ header bytes 0..6 ‖ context, where context is table, column
//! and value type each as u16-BE length ‖ UTF-8, with the tenant between column and type as
//! `0x00` (none) or `0x01` ‖ u16-BE length ‖ UTF-8; suites 4 and 5 append the schema as
//! u16-BE length ‖ UTF-8, and suites 3 and 5 the row binding.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Nonce, Tag};

use crate::binding::RowBinding;
use crate::codec::{Plaintext, SecretBuf};
use crate::format::key::{DataKey, KeyId};
use crate::tenant::TenantId;
use zeroize::Zeroize;

use crate::Error;

#[cfg(feature = "aws-lc")]
pub(crate) mod awslc;
mod cache;
#[cfg(feature = "test-vectors")]
pub mod hazmat;
pub(crate) mod key;
pub(crate) mod nonce;
mod row;
pub(crate) mod siv;
mod stored;

pub use cache::{
    DEFAULT_CAPACITY as DEFAULT_CIPHER_CACHE_CAPACITY, capacity as cipher_cache_capacity,
    set_capacity as set_cipher_cache_capacity,
};
pub use row::{RowOpen, RowSeal};
pub use stored::{Adoption, KeySet, Site, Stored, classify, open_raw, reseal, seal_raw};

/// The format version this build writes.
pub const VERSION: u8 = 1;
/// Suite 1: AES-256-GCM with a random 96-bit nonce and a 128-bit tag. Opened, never written:
/// a rotation re-seals its values in suite 2.
pub const SUITE_AES256GCM: u8 = 1;
/// Suite 2: AES-256-GCM-SIV (RFC 8452) with a random 96-bit nonce and a 128-bit tag, the suite
/// every value is sealed in (`docs/adr/0004-suite-2.md`).
pub const SUITE_AES256GCMSIV: u8 = 2;
/// Suite 3: suite 2 with the row's identity ([`RowBinding`]) appended to the AAD, for the
/// columns of a model declared with `bind_row`: a value copied into another row fails.
pub const SUITE_AES256GCMSIV_ROW: u8 = 3;
/// Suite 4: suite 2 with the table's schema appended to the context (`docs/FORMAT.md` §2.2),
/// for the columns of a model declared with `schema = ".."`: a value copied into the table of
/// the same name in another schema fails.
pub const SUITE_AES256GCMSIV_SCHEMA: u8 = 4;
/// Suite 5: suite 3 (bound to the row) with the table's schema, as suite 4.
pub const SUITE_AES256GCMSIV_ROW_SCHEMA: u8 = 5;
/// The suite this build seals in, for values not bound to a row.
pub const SUITE: u8 = SUITE_AES256GCMSIV;
/// The first two header bytes of values in a suite older than [`SUITE`], for SQL that finds
/// what a rotation still has to upgrade.
#[deprecated(
    since = "0.3.0",
    note = "use `older_suites(bound, schema, bind_unbound)`, which knows suites 4 and 5"
)]
pub const OLDER_SUITES: &[[u8; 2]] = &[[VERSION, SUITE_AES256GCM]];
/// `OLDER_SUITES` for a model that binds its values to their row: every unbound value.
#[deprecated(
    since = "0.3.0",
    note = "use `older_suites(bound, schema, bind_unbound)`, which knows suites 4 and 5"
)]
pub const OLDER_SUITES_BOUND: &[[u8; 2]] =
    &[[VERSION, SUITE_AES256GCM], [VERSION, SUITE_AES256GCMSIV]];

/// The suite a value with no schema is sealed in: 3 when bound to its row, else 2.
pub const fn suite_for(row: Option<&RowBinding>) -> u8 {
    suite_of(row.is_some(), false)
}

/// The suite a value is sealed in: 2, then 3 when bound to its row, 4 when its context names
/// a schema, 5 for both.
///
/// ```
/// use encrypted_types::format::{suite_of, SUITE_AES256GCMSIV_ROW_SCHEMA};
/// assert_eq!(suite_of(false, false), 2);
/// assert_eq!(suite_of(true, true), SUITE_AES256GCMSIV_ROW_SCHEMA);
/// ```
pub const fn suite_of(bound: bool, schema: bool) -> u8 {
    match (bound, schema) {
        (false, false) => SUITE,
        (true, false) => SUITE_AES256GCMSIV_ROW,
        (false, true) => SUITE_AES256GCMSIV_SCHEMA,
        (true, true) => SUITE_AES256GCMSIV_ROW_SCHEMA,
    }
}

/// Whether values of `suite` are bound to their row (suites 3 and 5).
pub const fn is_bound(suite: u8) -> bool {
    matches!(
        suite,
        SUITE_AES256GCMSIV_ROW | SUITE_AES256GCMSIV_ROW_SCHEMA
    )
}

/// Whether the context of values of `suite` names a schema (suites 4 and 5).
pub const fn has_schema(suite: u8) -> bool {
    matches!(
        suite,
        SUITE_AES256GCMSIV_SCHEMA | SUITE_AES256GCMSIV_ROW_SCHEMA
    )
}

/// The header prefixes of the suites a rotation looks for in a column whose values are sealed
/// in `suite_of(bound, schema)`: suite 1 always; values bound to no row in a `bind_row` model
/// only when the job may bind them (`bind_unbound`); and values of the other schema class,
/// which the rotation re-seals only while the model adopts its schema (`adopt_schema`) and
/// otherwise skips and reports, so that the job does not finish with them in place.
///
/// ```
/// use encrypted_types::format::older_suites;
/// assert_eq!(older_suites(false, false, false), vec![[1, 1], [1, 4]]);
/// assert_eq!(older_suites(false, true, false), vec![[1, 1], [1, 2]]);
/// assert_eq!(older_suites(true, false, true), vec![[1, 1], [1, 2], [1, 4], [1, 5]]);
/// ```
pub fn older_suites(bound: bool, schema: bool, bind_unbound: bool) -> Vec<[u8; 2]> {
    let target = suite_of(bound, schema);
    (SUITE_AES256GCM..=SUITE_AES256GCMSIV_ROW_SCHEMA)
        .filter(|&s| s != target)
        .filter(|&s| s == SUITE_AES256GCM || is_bound(s) == bound || (bound && bind_unbound))
        .map(|s| [VERSION, s])
        .collect()
}
/// Domain-separation prefix of the AAD.
pub const DOMAIN: &[u8] = b"encrypted-types/v1";
/// Bytes before the ciphertext: version, suite, key id, nonce.
pub const HEADER_LEN: usize = 18;
/// Length of the GCM tag at the end.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Byte range of the key id inside the header, for SQL that selects rows by key.
pub const KEY_ID_RANGE: std::ops::Range<usize> = 2..6;
const NONCE_RANGE: std::ops::Range<usize> = 6..HEADER_LEN;
/// Largest plaintext a single value may hold (GCM's own bound is far larger; this keeps a value
/// inside what any of the three backends stores in one column).
pub const MAX_PLAINTEXT: usize = 1 << 30;

/// What a sealed value is bound to, besides its key.
///
/// ```
/// use encrypted_types::format::Context;
/// let ctx = Context::new("patients", "email", None, "string");
/// let mut aad = Vec::new();
/// ctx.encode(&mut aad).unwrap();
/// assert_eq!(aad, b"\x00\x08patients\x00\x05email\x00\x00\x06string");
/// aad.clear();
/// ctx.in_schema(Some("clinic_a")).encode(&mut aad).unwrap();
/// assert_eq!(aad, b"\x00\x08patients\x00\x05email\x00\x00\x06string\x00\x08clinic_a");
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Context<'a> {
    /// SQL table name.
    pub table: &'a str,
    /// The column's context name (FORMAT.md §2).
    pub column: &'a str,
    /// Tenant, if the value belongs to one.
    pub tenant: Option<&'a TenantId>,
    /// The plaintext's type tag.
    pub value_type: &'a str,
    /// The table's schema (a MySQL database), for the columns of a model that names one:
    /// sealed in suite 4 or 5 (FORMAT.md §2.2).
    pub schema: Option<&'a str>,
}

impl<'a> Context<'a> {
    /// A context naming no schema.
    pub const fn new(
        table: &'a str,
        column: &'a str,
        tenant: Option<&'a TenantId>,
        value_type: &'a str,
    ) -> Self {
        Self {
            table,
            column,
            tenant,
            value_type,
            schema: None,
        }
    }

    /// The same context in `schema` (none for `None`).
    #[must_use]
    pub const fn in_schema(mut self, schema: Option<&'a str>) -> Self {
        self.schema = schema;
        self
    }

    /// Appends the length-prefixed context encoding.
    ///
    /// # Errors
    /// [`Error::ContextTooLong`] if a field exceeds 65535 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.encode_into(out)
    }

    fn encode_into<S: Sink>(&self, out: &mut S) -> Result<(), Error> {
        put_str(out, "table", self.table)?;
        put_str(out, "column", self.column)?;
        match self.tenant {
            None => out.put(&[0]),
            Some(t) => {
                out.put(&[1]);
                put_str(out, "tenant", t.as_str())?;
            }
        }
        put_str(out, "value type", self.value_type)?;
        match self.schema {
            Some(schema) => put_str(out, "schema", schema),
            None => Ok(()),
        }
    }

    /// Bytes of [`Context::encode`]'s output.
    fn encoded_len(&self) -> usize {
        7 + self.table.len()
            + self.column.len()
            + self.tenant.map_or(0, |t| t.as_str().len() + 2)
            + self.value_type.len()
            + self.schema.map_or(0, |s| s.len() + 2)
    }
}

/// Where the AAD is written: a `Vec`, or the stack buffer of [`with_aad`].
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn put_str<S: Sink>(out: &mut S, field: &'static str, s: &str) -> Result<(), Error> {
    let len = u16::try_from(s.len()).map_err(|_| Error::ContextTooLong {
        field,
        len: s.len(),
    })?;
    out.put(&len.to_be_bytes());
    out.put(s.as_bytes());
    Ok(())
}

/// Contexts up to this many AAD bytes (table, column, tenant and type names of up to ~90 bytes
/// together) are built in a buffer on the stack: sealing and opening then allocate nothing for
/// the AAD, and the buffer is never moved (profiled: a returned 256-byte buffer cost a tenth of
/// an open in copies).
const INLINE_AAD: usize = 128;

/// The stack buffer of [`with_aad`].
struct Inline {
    buf: [u8; INLINE_AAD],
    len: usize,
    /// Set if a write did not fit: `with_aad` then refuses rather than use a partial AAD.
    overflow: bool,
}

impl Sink for Inline {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        // `with_aad` sized the buffer for the whole AAD; `get_mut` keeps a bug from panicking.
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }
}

/// Runs `f` on AAD = DOMAIN ‖ version ‖ suite ‖ key id ‖ context. The nonce, the rest of the
/// header, is authenticated by the AEAD itself.
/// Suites 4 and 5 end the context with the schema; suites 3 and 5 append the row binding,
/// whose encoding carries its own lengths.
fn with_aad<R>(
    header: &[u8; 6],
    ctx: &Context<'_>,
    row: &[u8],
    f: impl FnOnce(&[u8]) -> Result<R, Error>,
) -> Result<R, Error> {
    let total = DOMAIN.len() + header.len() + ctx.encoded_len() + row.len();
    if total <= INLINE_AAD {
        let mut aad = Inline {
            buf: [0; INLINE_AAD],
            len: 0,
            overflow: false,
        };
        fill(&mut aad, header, ctx, row)?;
        match aad.buf.get(..aad.len) {
            Some(bytes) if !aad.overflow && aad.len == total => f(bytes),
            _ => Err(Error::ContextTooLong {
                field: "authenticated data",
                len: total,
            }),
        }
    } else {
        let mut aad = Vec::with_capacity(total);
        fill(&mut aad, header, ctx, row)?;
        f(&aad)
    }
}

/// Writes the AAD of [`with_aad`] into either buffer.
fn fill<S: Sink>(
    out: &mut S,
    header: &[u8; 6],
    ctx: &Context<'_>,
    row: &[u8],
) -> Result<(), Error> {
    out.put(DOMAIN);
    out.put(header);
    ctx.encode_into(out)?;
    out.put(row);
    Ok(())
}

/// Refuses input longer than any sealed value can be, from its length alone.
pub(crate) fn check_len(sealed: &[u8]) -> Result<(), Error> {
    if sealed.len() > MAX_PLAINTEXT + OVERHEAD {
        Err(Error::TooLarge(sealed.len()))
    } else {
        Ok(())
    }
}

/// The parsed, not yet authenticated, header of a sealed value.
///
/// ```
/// use encrypted_types::format::Header;
/// let mut v = vec![1, 1, 0, 0, 0, 9];
/// v.extend([0; 12 + 16]);
/// assert_eq!(Header::parse(&v).unwrap().key_id.get(), 9);
/// assert!(Header::parse(&v[..33]).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The data key the value was sealed with.
    pub key_id: KeyId,
    /// The suite it was sealed in: [`SUITE_AES256GCM`], [`SUITE_AES256GCMSIV`],
    /// [`SUITE_AES256GCMSIV_ROW`], [`SUITE_AES256GCMSIV_SCHEMA`] or
    /// [`SUITE_AES256GCMSIV_ROW_SCHEMA`].
    pub suite: u8,
}

impl Header {
    /// Checks length, version and suite, and reads the key id. No cryptography runs here.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::UnsupportedVersion`] or [`Error::UnsupportedSuite`].
    pub fn parse(sealed: &[u8]) -> Result<Self, Error> {
        // Version first, so a future format with another length is reported as a version.
        match sealed.first() {
            None => {
                return Err(Error::Truncated {
                    len: 0,
                    min: OVERHEAD,
                });
            }
            Some(&VERSION) => {}
            Some(&v) => return Err(Error::UnsupportedVersion(v)),
        }
        if sealed.len() < OVERHEAD {
            return Err(Error::Truncated {
                len: sealed.len(),
                min: OVERHEAD,
            });
        }
        // Refused from the length alone, before anything is copied or decrypted.
        if sealed.len() > MAX_PLAINTEXT + OVERHEAD {
            return Err(Error::TooLarge(sealed.len()));
        }
        let suite = match sealed.get(1) {
            Some(&s) if is_suite(s) => s,
            Some(&s) => return Err(Error::UnsupportedSuite(s)),
            None => {
                return Err(Error::Truncated {
                    len: sealed.len(),
                    min: OVERHEAD,
                });
            }
        };
        let id = sealed
            .get(KEY_ID_RANGE)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(Error::Truncated {
                len: sealed.len(),
                min: OVERHEAD,
            })?;
        Ok(Self {
            key_id: KeyId::from(id),
            suite,
        })
    }
}

/// Whether `suite` is one this build opens.
pub const fn is_suite(suite: u8) -> bool {
    matches!(suite, SUITE_AES256GCM..=SUITE_AES256GCMSIV_ROW_SCHEMA)
}

fn fixed_header(key_id: KeyId, suite: u8) -> [u8; 6] {
    let [a, b, c, d] = key_id.get().to_be_bytes();
    [VERSION, suite, a, b, c, d]
}

/// Seals `value` under `key` with a fresh random nonce, in suite 2 (suite 4 when `ctx` names a
/// schema).
///
/// `ctx.tenant` must be the key's tenant; [`crate::Encrypted`](struct@crate::Encrypted) guarantees that.
///
/// # Errors
/// [`Error::Unencodable`], [`Error::TooLarge`], [`Error::ContextTooLong`] or [`Error::Rng`].
pub fn seal<T: Plaintext>(key: &DataKey, ctx: &Context<'_>, value: &T) -> Result<Vec<u8>, Error> {
    seal_inner(
        key,
        ctx,
        None,
        value,
        suite_of(false, ctx.schema.is_some()),
        nonce::generate()?,
    )
}

/// Seals `value` bound to `row` (suite 3, or 5 when `ctx` names a schema): it opens only with
/// [`open_bound`] and the same row.
///
/// # Errors
/// As [`seal`], and [`Error::InvalidRowBinding`].
pub fn seal_bound<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: &RowBinding,
    value: &T,
) -> Result<Vec<u8>, Error> {
    bound_with_nonce(key, ctx, row, value, nonce::generate()?)
}

/// [`seal_bound`] under `nonce`, in the bound suite of `ctx`.
fn bound_with_nonce<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: &RowBinding,
    value: &T,
    nonce: [u8; 12],
) -> Result<Vec<u8>, Error> {
    let suite = suite_of(true, ctx.schema.is_some());
    seal_inner(key, ctx, Some(row), value, suite, nonce)
}

/// Seals in suite 1 with a caller-chosen nonce: the frozen suite-1 known-answer vectors. Only
/// for tests, behind the `test-vectors` feature: a nonce must never repeat under one key.
#[cfg(feature = "test-vectors")]
pub fn seal_with_nonce<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    value: &T,
    nonce: [u8; 12],
) -> Result<Vec<u8>, Error> {
    seal_inner(key, ctx, None, value, SUITE_AES256GCM, nonce)
}

/// Seals in `suite` with a caller-chosen nonce: known-answer vectors of every suite, and
/// tables of values sealed in suite 1 for upgrade tests. Behind the `test-vectors` feature.
///
/// # Errors
/// As [`seal`], and [`Error::UnsupportedSuite`].
#[cfg(feature = "test-vectors")]
pub fn seal_with_suite<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    value: &T,
    suite: u8,
    nonce: [u8; 12],
) -> Result<Vec<u8>, Error> {
    if is_bound(suite) || !is_suite(suite) {
        return Err(Error::UnsupportedSuite(suite));
    }
    seal_inner(key, ctx, None, value, suite, nonce)
}

/// [`seal_bound`] with a caller-chosen nonce: the suite-3 known-answer vectors. Behind the
/// `test-vectors` feature.
///
/// # Errors
/// As [`seal_bound`].
#[cfg(feature = "test-vectors")]
pub fn seal_bound_with_nonce<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: &RowBinding,
    value: &T,
    nonce: [u8; 12],
) -> Result<Vec<u8>, Error> {
    bound_with_nonce(key, ctx, row, value, nonce)
}

/// `row` is given exactly for suites 3 and 5, `ctx.schema` for suites 4 and 5.
fn seal_inner<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: Option<&RowBinding>,
    value: &T,
    suite: u8,
    nonce: [u8; 12],
) -> Result<Vec<u8>, Error> {
    seal_framed(key.id, ctx, row, value, suite, &nonce, |aad, body| {
        aead_seal(key, suite, &nonce, aad, body)
    })
}

/// Lays out header, nonce and encoded value, and lets `aead` encrypt the body in place under
/// the value's AAD: one framing for a lone value and for the fields of a row.
fn seal_framed<T: Plaintext>(
    key_id: KeyId,
    ctx: &Context<'_>,
    row: Option<&RowBinding>,
    value: &T,
    suite: u8,
    nonce: &[u8; 12],
    aead: impl FnOnce(&[u8], &mut [u8]) -> Result<[u8; TAG_LEN], Error>,
) -> Result<Vec<u8>, Error> {
    if is_bound(suite) != row.is_some() || has_schema(suite) != ctx.schema.is_some() {
        return Err(Error::UnsupportedSuite(suite));
    }
    let row = row
        .map(RowBinding::checked)
        .transpose()?
        .unwrap_or_default();
    let fixed = fixed_header(key_id, suite);
    // Refuse an oversized value before encoding (and copying) it, when its size is known.
    if value.encoded_len_hint() > MAX_PLAINTEXT {
        return Err(Error::TooLarge(value.encoded_len_hint()));
    }
    let mut buf = SecretBuf::with_capacity(OVERHEAD + value.encoded_len_hint());
    buf.extend_from_slice(&fixed);
    buf.extend_from_slice(nonce);
    value.encode(&mut buf)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_PLAINTEXT {
        return Err(Error::TooLarge(len));
    }
    let (_, body) = buf.as_mut_slice().split_at_mut(HEADER_LEN);
    let tag = with_aad(&fixed, ctx, row, |aad| aead(aad, body))?;
    buf.extend_from_slice(&tag);
    Ok(buf.into_vec())
}

/// Opens a sealed value, decrypting in place inside `sealed` so the plaintext is never copied
/// more than the decoder needs. Every byte of plaintext left in `sealed` is wiped.
///
/// # Errors
/// [`Error::AuthenticationFailed`] for any tag or context mismatch, [`Error::InvalidPlaintext`]
/// when the decrypted bytes are not a valid `T`.
///
/// A value bound to a row (suite 3 or 5) fails with [`Error::RowBinding`]: use [`open_bound`].
/// A value sealed with a schema (suites 4 and 5) opens only in a context naming it; one sealed
/// without fails in such a context with [`Error::SchemaMismatch`].
pub fn open<T: Plaintext>(key: &DataKey, ctx: &Context<'_>, sealed: Vec<u8>) -> Result<T, Error> {
    open_inner(key, ctx, None, sealed)
}

/// Opens a value of a column whose values are bound to their row, with the identity of the
/// row it was read from. A value bound to another row fails with
/// [`Error::AuthenticationFailed`]; a value bound to no row (suites 1 and 2, sealed before the
/// model declared `bind_row`, or copied from such a row) fails with [`Error::RowBinding`].
///
/// # Errors
/// As [`open`], and [`Error::RowBinding`], [`Error::InvalidRowBinding`].
pub fn open_bound<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: &RowBinding,
    sealed: Vec<u8>,
) -> Result<T, Error> {
    open_inner(key, ctx, Some(row), sealed)
}

/// A value as the jobs find it: bound values open with `row`, unbound ones (which the job is
/// about to bind, or which belong to a model without `bind_row`) without it.
fn open_stored<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: Option<&RowBinding>,
    sealed: Vec<u8>,
) -> Result<T, Error> {
    match sealed.get(1) {
        Some(&s) if is_bound(s) => open_inner(key, ctx, row, sealed),
        _ => open_inner(key, ctx, None, sealed),
    }
}

fn open_inner<T: Plaintext>(
    key: &DataKey,
    ctx: &Context<'_>,
    row: Option<&RowBinding>,
    sealed: Vec<u8>,
) -> Result<T, Error> {
    open_framed(ctx, row, sealed, |suite, nonce, aad, body, tag| {
        aead_open(key, suite, nonce, aad, body, tag)
    })
}

/// Checks a value's suite against its context, splits it, and lets `aead` decrypt the body in
/// place under the value's AAD: one framing for a lone value and for the fields of a row.
fn open_framed<T: Plaintext>(
    ctx: &Context<'_>,
    row: Option<&RowBinding>,
    mut sealed: Vec<u8>,
    aead: impl FnOnce(u8, &[u8; 12], &[u8], &mut [u8], &[u8; TAG_LEN]) -> Result<(), Error>,
) -> Result<T, Error> {
    let fixed = sealed
        .get(..6)
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
        .ok_or(Error::AuthenticationFailed)?;
    // Bound values open only with their row, and a bound column accepts no unbound value.
    let row = match (is_bound(fixed[1]), row) {
        (true, Some(r)) => r.checked()?,
        (false, None) => &[],
        _ => return Err(Error::RowBinding),
    };
    // A value names a schema exactly when its context does. A column with no schema reads no
    // suite 4 or 5, as a build before them did; one with a schema refuses a value sealed
    // without it, which could come from the table of the same name in another schema.
    match (has_schema(fixed[1]), ctx.schema.is_some()) {
        (true, false) => return Err(Error::UnsupportedSuite(fixed[1])),
        (false, true) => return Err(Error::SchemaMismatch),
        _ => {}
    }
    let nonce = sealed
        .get(NONCE_RANGE)
        .and_then(|b| <[u8; 12]>::try_from(b).ok())
        .ok_or(Error::AuthenticationFailed)?;
    let body_end = sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::AuthenticationFailed)?;
    let (head, tag) = sealed.split_at_mut(body_end);
    let tag: [u8; TAG_LEN] = (&*tag)
        .try_into()
        .map_err(|_| Error::AuthenticationFailed)?;
    let body = head
        .get_mut(HEADER_LEN..)
        .ok_or(Error::AuthenticationFailed)?;
    if let Err(e) = with_aad(&fixed, ctx, row, |aad| {
        aead(fixed[1], &nonce, aad, body, &tag)
    }) {
        // Neither AEAD releases plaintext when the tag fails, but make sure of it.
        body.zeroize();
        return Err(e);
    }
    // Keep only the plaintext: drop the tag, then shift the plaintext over the header.
    sealed.truncate(body_end);
    sealed.drain(..HEADER_LEN);
    T::decode_owned(sealed)
}

/// The AEAD seal every value goes through: `body` is encrypted in place, the tag returned.
fn aead_seal(
    key: &DataKey,
    suite: u8,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
) -> Result<[u8; TAG_LEN], Error> {
    let len = body.len();
    match suite {
        SUITE_AES256GCMSIV..=SUITE_AES256GCMSIV_ROW_SCHEMA => key
            .siv()
            .seal(nonce, aad, body)
            .map_err(|_| Error::TooLarge(len)),
        SUITE_AES256GCM => key
            .gcm()
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, body.into())
            .map(Into::into)
            .map_err(|_| Error::TooLarge(len)),
        s => Err(Error::UnsupportedSuite(s)),
    }
}

/// The AEAD open every value goes through: `body` is decrypted in place if the tag verifies.
fn aead_open(
    key: &DataKey,
    suite: u8,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), Error> {
    let opened = match suite {
        SUITE_AES256GCMSIV..=SUITE_AES256GCMSIV_ROW_SCHEMA => {
            return key
                .siv()
                .open(nonce, aad, body, tag)
                .map_err(|_| Error::AuthenticationFailed);
        }
        SUITE_AES256GCM => key.gcm().decrypt_inout_detached(
            &Nonce::from(*nonce),
            aad,
            body.into(),
            &Tag::from(*tag),
        ),
        s => return Err(Error::UnsupportedSuite(s)),
    };
    opened.map_err(|_| Error::AuthenticationFailed)
}
