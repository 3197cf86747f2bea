//! Blind indexes: keyed hashes of a normalized value, stored beside its ciphertext, so a row can
//! be found by equality without decrypting the table.
//!
//! `index = HMAC-SHA256(K, value)` truncated to `bits`, where `K` is derived with HKDF-SHA256 from
//! the tenant's blind-index root key, per table, column, tenant, value type and index version
//! (`docs/FORMAT.md` §7). The root key never encrypts anything and data keys never index
//! anything. An index leaks equality: rows with the same normalized value have the same index.
//! Truncation makes unrelated values collide on purpose ([`plan`] sizes it), and the query
//! helpers then re-check every candidate row by decrypted equality.

use std::fmt;
use std::marker::PhantomData;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::Error;
use crate::codec::{Plaintext, SecretBuf};
use crate::format::Context;
use crate::tenant::TenantId;

/// HMAC-SHA256 keyed with a derived blind-index key.
/// The keyed HMAC of one index (HMAC-SHA256).
pub type IndexMac = hmac::Hmac<Sha256>;

mod compound;
mod unicode;

pub use compound::{CompoundField, CompoundIndex, CompoundParams, CompoundSpec, MAX_FIELDS};

/// A normalization step applied to a string before it is indexed, so that values a person
/// considers equal ("Ann@Example.org " and "ann@example.org") index equally.
///
/// Every step is pinned to Unicode 14.0.0 (`docs/FORMAT.md` §7.1), whatever Unicode version
/// the compiler's standard library or the normalization crates follow: a code point unassigned
/// in 14.0.0 is copied unchanged (dropped by `digits`) and splits the string into runs that are
/// mapped separately. A newer toolchain therefore never changes an index; a newer Unicode
/// version would be new normalizer names, hence a new index version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Normalizer {
    /// Strip the 25 `White_Space` code points at both ends (not U+001C..U+001F, U+180E or
    /// U+200B).
    Trim,
    /// The full Unicode lowercase mapping, with the final-sigma rule and no language tailoring
    /// ("İ" becomes "i̇", "ẞ" becomes "ß").
    Lowercase,
    /// An email address: trim, then lowercase.
    Email,
    /// NFKC (so full-width and other compatibility digits become 0-9), then keep only the ASCII
    /// digits 0-9 (phone numbers, SSNs). Other scripts' digits (Arabic-Indic) are dropped.
    Digits,
    /// NFKC, then full default case folding, once ("Straße" and "STRASSE" match).
    Casefold,
    /// `Digits`, then the last four of them (all, if fewer): a partial index of an SSN or a
    /// card number, which leaks only those four digits' equality.
    Last4,
    /// The first `n` code points (all, if fewer), `n >= 1`: a prefix index ("first three
    /// letters of the surname").
    Prefix(u16),
}

impl Normalizer {
    /// The step's name as written in `#[encrypted(blind_index(normalize = ...))]` (`prefix`
    /// without its length; [`Normalizer::label`] has it).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Trim => "trim",
            Self::Lowercase => "lowercase",
            Self::Email => "email",
            Self::Digits => "digits",
            Self::Casefold => "casefold",
            Self::Last4 => "last4",
            Self::Prefix(_) => "prefix",
        }
    }

    /// The step as the key derivation names it (`docs/FORMAT.md` §7): its name, and for
    /// `prefix` its length, `prefix(3)`.
    ///
    /// ```
    /// use encrypted_types::index::Normalizer;
    /// assert_eq!(Normalizer::Prefix(3).label(), "prefix(3)");
    /// assert_eq!(Normalizer::Last4.label(), "last4");
    /// ```
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            Self::Prefix(n) => format!("prefix({n})").into(),
            other => other.name().into(),
        }
    }

    fn apply(self, s: &str) -> Zeroizing<String> {
        use unicode_normalization::UnicodeNormalization;
        match self {
            Self::Trim => Zeroizing::new(trim(s).to_owned()),
            Self::Lowercase => by_runs(s, true, |run, out| {
                // `str::to_lowercase` applies the final-sigma rule within the run.
                push_wiped(out, &Zeroizing::new(run.to_lowercase()));
            }),
            Self::Email => Self::Lowercase.apply(trim(s)),
            Self::Digits => by_runs(s, false, |run, out| {
                for d in run.nfkc().filter(char::is_ascii_digit) {
                    push_wiped(out, d.encode_utf8(&mut [0; 4]));
                }
            }),
            Self::Casefold => by_runs(s, true, |run, out| {
                let mut nfkc = Zeroizing::new(String::with_capacity(run.len()));
                for c in run.nfkc() {
                    push_wiped(&mut nfkc, c.encode_utf8(&mut [0; 4]));
                }
                let folded = Zeroizing::new(caseless::default_case_fold_str(&nfkc));
                push_wiped(out, &folded);
            }),
            Self::Last4 => {
                let digits = Self::Digits.apply(s);
                let skip = digits.len().saturating_sub(4); // ASCII digits: a byte each
                Zeroizing::new(digits.get(skip..).unwrap_or_default().to_owned())
            }
            Self::Prefix(n) => {
                let end = s
                    .char_indices()
                    .nth(usize::from(n))
                    .map_or(s.len(), |(i, _)| i);
                Zeroizing::new(s.get(..end).unwrap_or_default().to_owned())
            }
        }
    }
}

impl std::str::FromStr for Normalizer {
    type Err = Error;

    /// A step from its [`Normalizer::label`]: `casefold`, `prefix(3)`.
    ///
    /// ```
    /// use encrypted_types::index::Normalizer;
    /// assert_eq!("prefix(3)".parse::<Normalizer>()?, Normalizer::Prefix(3));
    /// assert!("prefix(0)".parse::<Normalizer>().is_err());
    /// assert!("prefix(03)".parse::<Normalizer>().is_err());
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Error> {
        let unknown = Error::InvalidIndex("unknown normalizer");
        Ok(match s {
            "trim" => Self::Trim,
            "lowercase" => Self::Lowercase,
            "email" => Self::Email,
            "digits" => Self::Digits,
            "casefold" => Self::Casefold,
            "last4" => Self::Last4,
            _ => {
                let n = s
                    .strip_prefix("prefix(")
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or(unknown.clone())?;
                // Shortest decimal only: the label is part of the key.
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(unknown);
                }
                Self::Prefix(n.parse().map_err(|_| unknown)?)
            }
        })
    }
}

/// The `White_Space` property: stable since Unicode 6.3, and written out so that it is.
const WHITE_SPACE: [char; 25] = [
    '\u{9}', '\u{A}', '\u{B}', '\u{C}', '\u{D}', '\u{20}', '\u{85}', '\u{A0}', '\u{1680}',
    '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}',
    '\u{2008}', '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
];

/// Whether `c` is assigned (General_Category other than Cn) in Unicode 14.0.0.
fn assigned(c: char) -> bool {
    use std::cmp::Ordering;
    let cp = u32::from(c);
    // Everything below U+0378 is assigned: ASCII and Latin never reach the search.
    cp < 0x378
        || unicode::UNASSIGNED
            .binary_search_by(|&(lo, hi)| {
                if hi < cp {
                    Ordering::Less
                } else if lo > cp {
                    Ordering::Greater
                } else {
                    Ordering::Equal
                }
            })
            .is_err()
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c| WHITE_SPACE.contains(&c))
}

/// Maps each maximal run of code points assigned in Unicode 14.0.0 with `step`; a code point
/// unassigned there ends the run and is copied (`keep`) or dropped.
fn by_runs(
    s: &str,
    keep: bool,
    mut step: impl FnMut(&str, &mut Zeroizing<String>),
) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(s.len()));
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if assigned(c) {
            continue;
        }
        step(s.get(start..i).unwrap_or_default(), &mut out);
        if keep {
            push_wiped(&mut out, c.encode_utf8(&mut [0; 4]));
        }
        start = i + c.len_utf8();
    }
    step(s.get(start..).unwrap_or_default(), &mut out);
    out
}

/// Appends `piece`, moving to a larger buffer by hand when it must grow: `String`'s own
/// growth would free the old buffer, plaintext and all, without wiping it.
fn push_wiped(out: &mut Zeroizing<String>, piece: &str) {
    if out.capacity() - out.len() < piece.len() {
        let mut bigger = Zeroizing::new(String::with_capacity((out.len() + piece.len()) * 2));
        bigger.push_str(out);
        *out = bigger; // the old buffer is wiped as its `Zeroizing` drops
    }
    out.push_str(piece);
}

/// Applies `steps` in order.
///
/// ```
/// use encrypted_types::index::{Normalizer, normalize};
/// assert_eq!(*normalize(&[Normalizer::Email], " Ann@Example.ORG "), "ann@example.org");
/// assert_eq!(*normalize(&[Normalizer::Digits], "123-45-6789"), "123456789");
/// assert_eq!(*normalize(&[Normalizer::Casefold], "STRASSE"), *normalize(&[Normalizer::Casefold], "Straße"));
/// ```
pub fn normalize(steps: &[Normalizer], s: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(s.to_owned());
    for step in steps {
        out = step.apply(&out);
    }
    out
}

/// The bytes an index hashes for `value` (`docs/FORMAT.md` §7): the string after `steps`, or
/// the canonical encoding of any other value.
pub(crate) fn input_of<T: Plaintext>(
    steps: &[Normalizer],
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    if T::TYPE == "json" {
        // Equal JSON values need not be equal bytes (docs/FORMAT.md §3.1).
        return Err(Error::InvalidIndex("a JSON value has no blind index"));
    }
    match (value.as_str(), steps) {
        (Some(s), steps) => Ok(Zeroizing::new(normalize(steps, s).as_bytes().to_vec())),
        (None, []) => {
            let mut buf = SecretBuf::default();
            value.encode(&mut buf)?;
            Ok(Zeroizing::new(buf.as_slice().to_vec()))
        }
        (None, _) => Err(Error::InvalidIndex("normalizers apply to strings only")),
    }
}

/// [`input_of`] from a value's plaintext encoding (type tag `value_type`), for jobs that never
/// decode.
pub(crate) fn input_raw(
    steps: &[Normalizer],
    value_type: &'static str,
    plaintext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    if value_type == "json" {
        return Err(Error::InvalidIndex("a JSON value has no blind index"));
    }
    if steps.is_empty() {
        return Ok(Zeroizing::new(plaintext.to_vec()));
    }
    // As `input_of`: a value that is not a string is never normalized, whatever its bytes.
    if value_type != "string" {
        return Err(Error::InvalidIndex("normalizers apply to strings only"));
    }
    let text = std::str::from_utf8(plaintext).map_err(|_| Error::InvalidPlaintext {
        type_name: value_type,
    })?;
    Ok(Zeroizing::new(normalize(steps, text).as_bytes().to_vec()))
}

/// Appends `u8(count) ‖ (u8(len) ‖ label)*` of `steps` to a key derivation's `info`.
fn push_steps(info: &mut Vec<u8>, steps: &[Normalizer]) -> Result<(), Error> {
    info.push(u8::try_from(steps.len()).map_err(|_| Error::InvalidIndex("too many normalizers"))?);
    for step in steps {
        if *step == Normalizer::Prefix(0) {
            return Err(Error::InvalidIndex("prefix(0) is not a normalizer"));
        }
        let label = step.label();
        info.push(u8::try_from(label.len()).map_err(|_| Error::InvalidIndex("normalizer name"))?);
        info.extend_from_slice(label.as_bytes());
    }
    Ok(())
}

/// Everything that identifies one blind index. Generated by `#[derive(Encrypted)]`.
#[derive(Debug, Clone, Copy)]
pub struct IndexParams {
    /// Table of the encrypted column.
    pub table: &'static str,
    /// The context name of the encrypted column the index is computed from (its
    /// [`ColumnInfo::context`](crate::ColumnInfo)): bound into the index key, so renaming the
    /// SQL column changes no index.
    pub column: &'static str,
    /// The companion column that stores the index (SQL).
    pub index_column: &'static str,
    /// Index version; a new version means a new key and recomputed indexes.
    pub version: u32,
    /// Bits kept, 1..=256. Below 256, unrelated values collide on purpose.
    pub bits: u16,
    /// Normalization steps, for string values.
    pub normalize: &'static [Normalizer],
    /// The root key the index derives from.
    pub root: IndexRoot,
}

/// Which of a tenant's blind-index root keys an index derives from. Only a lookup of the
/// previous version during a root replacement uses the retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IndexRoot {
    /// The tenant's active root key.
    #[default]
    Current,
    /// The root key being replaced, where the tenant has one, else the active one
    /// (`previous(.., root = retired)`).
    Retired,
}

impl IndexParams {
    /// Bytes an index occupies: `ceil(bits / 8)`.
    pub const fn byte_len(&self) -> usize {
        (self.bits as usize).div_ceil(8)
    }

    /// Whether the index keeps fewer than all 256 bits, so lookups must re-check candidates.
    pub const fn is_truncated(&self) -> bool {
        self.bits < 256
    }

    /// Whether two values are equal as this index sees them (after normalization).
    ///
    /// # Errors
    /// [`Error::InvalidIndex`] if normalizers are set on a value that is not a string.
    pub fn same<T: Plaintext>(&self, a: &T, b: &T) -> Result<bool, Error> {
        Ok(*self.input(a)? == *self.input(b)?)
    }

    /// [`IndexParams::same`] for text, without allocating the `String`s.
    pub fn same_str(&self, a: &str, b: &str) -> bool {
        *normalize(self.normalize, a) == *normalize(self.normalize, b)
    }

    /// The bytes that are hashed: the normalized string, or the canonical encoding of any
    /// other value.
    fn input<T: Plaintext>(&self, value: &T) -> Result<Zeroizing<Vec<u8>>, Error> {
        input_of(self.normalize, value)
    }

    /// The HKDF `info` that derives this index's key: a domain string, then the context
    /// encoding of FORMAT.md §2 (table, column, tenant, value type), then the version.
    pub(crate) fn key_info(
        &self,
        tenant: Option<&TenantId>,
        value_type: &str,
    ) -> Result<Vec<u8>, Error> {
        let mut info = b"encrypted-types/blind-index/v1".to_vec();
        Context::new(self.table, self.column, tenant, value_type).encode(&mut info)?;
        info.extend_from_slice(&self.version.to_be_bytes());
        // Length and normalizers are part of the key: a 16-bit index is not a prefix of a
        // full-length one, and differently normalized indexes of one column never agree.
        info.extend_from_slice(&self.bits.to_be_bytes());
        push_steps(&mut info, self.normalize)?;
        Ok(info)
    }

    /// Computes the index of `value` for `tenant` under `keyring`.
    ///
    /// # Errors
    /// [`Error::NoBlindIndexKey`] if the keyring has no blind-index root key for the tenant,
    /// [`Error::InvalidIndex`] for normalizers on a non-string value.
    pub fn compute<T: Plaintext>(
        &self,
        keyring: &(impl IndexKeys + ?Sized),
        tenant: Option<&TenantId>,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        if !(1..=256).contains(&self.bits) {
            return Err(Error::InvalidIndex("bits must be between 1 and 256"));
        }
        let mut mac = keyring.index_mac(self, tenant, T::TYPE)?;
        mac.update(&self.input(value)?);
        Ok(truncate(mac, self.bits))
    }
}

impl IndexParams {
    /// [`IndexParams::compute`] from plaintext bytes (a value's canonical encoding, type tag
    /// `value_type`) instead of a typed value: for jobs that never decode.
    ///
    /// # Errors
    /// As [`IndexParams::compute`]; [`Error::InvalidPlaintext`] when normalizers meet bytes that
    /// are not UTF-8.
    pub fn compute_raw(
        &self,
        keyring: &(impl IndexKeys + ?Sized),
        tenant: Option<&TenantId>,
        value_type: &'static str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        if !(1..=256).contains(&self.bits) {
            return Err(Error::InvalidIndex("bits must be between 1 and 256"));
        }
        let input = input_raw(self.normalize, value_type, plaintext)?;
        let mut mac = keyring.index_mac(self, tenant, value_type)?;
        mac.update(&input);
        Ok(truncate(mac, self.bits))
    }
}

/// The values of an `IN` lookup as the index sees them (normalized, or encoded), each computed
/// once and kept sorted, so the decrypted re-check of every returned row is a binary search
/// rather than a normalization per value. Generated code uses it (`find_by_*_in`).
#[doc(hidden)]
pub struct Wanted {
    params: IndexParams,
    sorted: Vec<Zeroizing<Vec<u8>>>,
}

impl Wanted {
    /// The lookup's values, normalized once.
    pub fn new<T: Plaintext>(params: IndexParams, values: &[T]) -> Self {
        let mut sorted: Vec<Zeroizing<Vec<u8>>> =
            values.iter().filter_map(|v| params.input(v).ok()).collect();
        sorted.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        Self { params, sorted }
    }

    /// Whether a decrypted `stored` value equals one of the values.
    pub fn contains<T: Plaintext>(&self, stored: &T) -> bool {
        self.params.input(stored).is_ok_and(|s| {
            self.sorted
                .binary_search_by(|w| w.as_slice().cmp(s.as_slice()))
                .is_ok()
        })
    }
}

impl fmt::Debug for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wanted(<{} values>)", self.sorted.len())
    }
}

/// Finishes a MAC and keeps `bits` of it: `ceil(bits/8)` bytes, spare low bits cleared so
/// equal prefixes give equal bytes.
fn truncate(mac: IndexMac, bits: u16) -> Vec<u8> {
    let full = mac.finalize().into_bytes();
    let len = usize::from(bits).div_ceil(8);
    let mut out = full.get(..len).unwrap_or_default().to_vec();
    let spare = (len * 8).saturating_sub(usize::from(bits));
    if let Some(last) = out.last_mut() {
        *last &= 0xFFu8.checked_shl(spare as u32).unwrap_or(0);
    }
    out
}

/// The blind-index MAC on its own, for checking it against external test vectors (Project
/// Wycheproof's HMAC-SHA256) through the code path that finishes every index. Behind the
/// `test-vectors` feature.
#[cfg(feature = "test-vectors")]
pub mod hazmat {
    use hmac::{KeyInit, Mac};

    use super::{Error, IndexMac, truncate};

    /// HMAC-SHA256 of `msg` under `key`, truncated to `bits` with the spare bits cleared,
    /// exactly as [`super::IndexParams::compute`] finishes an index.
    ///
    /// # Errors
    /// [`Error::InvalidIndex`] for `bits` outside 1..=256.
    pub fn index_mac(key: &[u8], msg: &[u8], bits: u16) -> Result<Vec<u8>, Error> {
        if !(1..=256).contains(&bits) {
            return Err(Error::InvalidIndex("bits must be between 1 and 256"));
        }
        let mut mac = <IndexMac as KeyInit>::new_from_slice(key)
            .map_err(|_| Error::InvalidIndex("HMAC key length"))?;
        mac.update(msg);
        Ok(truncate(mac, bits))
    }
}

/// Derives the keyed HMAC for one index from a root key.
pub(crate) fn derive_mac(root: &[u8; 32], info: &[u8]) -> Result<IndexMac, Error> {
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(None, root)
        .expand(info, &mut *okm)
        .map_err(|_| Error::InvalidIndex("HKDF output length"))?;
    <IndexMac as KeyInit>::new_from_slice(&*okm).map_err(|_| Error::InvalidIndex("HMAC key length"))
}

/// Where an index's keyed MAC comes from: implemented by [`crate::Keyring`], which derives one
/// per index and tenant from the tenant's blind-index root key and caches it. The index
/// module names keys through this trait so that it depends on no key store.
pub trait IndexKeys {
    /// The keyed HMAC of the index `params` for `tenant` and a value of type `value_type`.
    ///
    /// # Errors
    /// [`Error::NoBlindIndexKey`] without a root key for the tenant.
    fn index_mac(
        &self,
        params: &IndexParams,
        tenant: Option<&TenantId>,
        value_type: &'static str,
    ) -> Result<IndexMac, Error>;

    /// The keyed HMAC of the compound index `params` for `tenant`.
    ///
    /// # Errors
    /// [`Error::NoBlindIndexKey`] without a root key for the tenant.
    fn compound_mac(
        &self,
        params: &CompoundParams,
        tenant: Option<&TenantId>,
    ) -> Result<IndexMac, Error>;
}

// `Keyring::current()` hands out an `Arc<Keyring>`: it works where a keyring does.
impl<K: IndexKeys + ?Sized> IndexKeys for std::sync::Arc<K> {
    fn index_mac(
        &self,
        params: &IndexParams,
        tenant: Option<&TenantId>,
        value_type: &'static str,
    ) -> Result<IndexMac, Error> {
        (**self).index_mac(params, tenant, value_type)
    }

    fn compound_mac(
        &self,
        params: &CompoundParams,
        tenant: Option<&TenantId>,
    ) -> Result<IndexMac, Error> {
        (**self).compound_mac(params, tenant)
    }
}

/// Names one blind index at the type level. `#[derive(Encrypted)]` generates one per index.
pub trait IndexSpec: 'static {
    /// The index.
    const PARAMS: IndexParams;
}

/// A value to be written to (or compared with) a blind-index column. Like
/// [`crate::Encrypted`](struct@crate::Encrypted), it holds plaintext in Rust and becomes index bytes only in `ToSql`,
/// under the installed keyring.
///
/// ```
/// use encrypted_types::index::{BlindIndex, IndexParams, IndexRoot, IndexSpec, Normalizer};
/// use encrypted_types::{KeyMaterial, Keyring};
///
/// struct EmailIdx;
/// impl IndexSpec for EmailIdx {
///     const PARAMS: IndexParams = IndexParams {
///         table: "patients", column: "email", index_column: "email_bidx",
///         version: 1, bits: 256, normalize: &[Normalizer::Email], root: IndexRoot::Current,
///     };
/// }
/// Keyring::builder().blind_index_root(None, KeyMaterial::generate()?).build()?.install();
/// let a = BlindIndex::<String, EmailIdx>::new("Ann@Example.org ".into()).compute()?;
/// let b = BlindIndex::<String, EmailIdx>::new("ann@example.org".into()).compute()?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 32);
/// # Ok::<(), encrypted_types::Error>(())
/// ```
#[derive(diesel::expression::AsExpression)]
#[diesel(sql_type = diesel::sql_types::Binary)]
pub struct BlindIndex<T: Plaintext, S: IndexSpec> {
    pub(crate) value: T,
    pub(crate) tenant: Option<TenantId>,
    spec: PhantomData<fn() -> S>,
}

impl<T: Plaintext, S: IndexSpec> BlindIndex<T, S> {
    /// The index of a value that belongs to no tenant.
    pub fn new(value: T) -> Self {
        Self {
            value,
            tenant: None,
            spec: PhantomData,
        }
    }

    /// The index of `tenant`'s value, under the tenant's own blind-index key.
    pub fn for_tenant(value: T, tenant: Option<TenantId>) -> Self {
        Self {
            value,
            tenant,
            spec: PhantomData,
        }
    }
}

impl<T: Plaintext, S: IndexSpec> Drop for BlindIndex<T, S> {
    fn drop(&mut self) {
        self.value.wipe();
    }
}

impl<T: Plaintext, S: IndexSpec> fmt::Debug for BlindIndex<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BlindIndex({}.{}, <redacted>)",
            S::PARAMS.table,
            S::PARAMS.index_column
        )
    }
}

/// The advice of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPlan {
    /// Rows the table is expected to hold.
    pub rows: u64,
    /// Distinct values expected in the column.
    pub distinct: u64,
    /// Fewest bits that keep the expected candidates per lookup below `sqrt(rows)`.
    pub min_bits: u16,
    /// Most bits that keep at least 2 distinct values per index value (the CipherSweet bound):
    /// more bits than this and an index value names a single value.
    pub max_bits: u16,
    /// The recommended length: `max_bits`, or `min_bits` if the bound cannot be met.
    pub recommended_bits: u16,
}

/// What [`IndexPlan::check`] thinks of a configured length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexVerdict {
    /// Within the bound.
    Ok,
    /// More bits than `max_bits`: index values tell distinct values apart, leaking more
    /// than the documented bound (frequency analysis recovers common values).
    LeaksMore {
        /// Configured bits.
        bits: u16,
        /// The bound.
        max_bits: u16,
    },
    /// Fewer bits than `min_bits`: each lookup returns more candidate rows than `sqrt(rows)`.
    TooManyCandidates {
        /// Configured bits.
        bits: u16,
        /// The bound.
        min_bits: u16,
    },
}

/// Sizes a truncated blind index for `rows` rows holding `distinct` distinct values, by
/// CipherSweet's rule: the expected number of distinct values sharing an index value, `C =
/// distinct / 2^bits`, should satisfy `2 <= C < sqrt(rows)`.
///
/// ```
/// use encrypted_types::index::{plan, IndexVerdict};
/// let p = plan(1_000_000, 1_000_000);
/// assert_eq!(p.max_bits, 18); // 2^18 = 262144 buckets: about 3.8 values each
/// assert_eq!(p.recommended_bits, 18);
/// assert!(matches!(p.check(256), IndexVerdict::LeaksMore { .. }));
/// assert_eq!(p.check(16), IndexVerdict::Ok);
/// ```
pub fn plan(rows: u64, distinct: u64) -> IndexPlan {
    let distinct = distinct.max(1);
    let sqrt_rows = (rows.max(1) as f64).sqrt();
    // C = distinct / 2^bits >= 2  <=>  bits <= log2(distinct / 2)
    let max = (distinct as f64 / 2.0).log2().floor().clamp(0.0, 256.0) as u16;
    // C < sqrt(rows)  <=>  bits > log2(distinct / sqrt(rows))
    let min = ((distinct as f64 / sqrt_rows).log2().floor() + 1.0).clamp(0.0, 256.0) as u16;
    let max_bits = max.max(1);
    let min_bits = min.max(1);
    IndexPlan {
        rows,
        distinct,
        min_bits,
        max_bits,
        recommended_bits: max_bits.max(min_bits),
    }
}

impl IndexPlan {
    /// Judges a configured length against the bound.
    pub fn check(&self, bits: u16) -> IndexVerdict {
        if bits > self.max_bits && bits > self.min_bits {
            IndexVerdict::LeaksMore {
                bits,
                max_bits: self.max_bits,
            }
        } else if bits < self.min_bits {
            IndexVerdict::TooManyCandidates {
                bits,
                min_bits: self.min_bits,
            }
        } else {
            IndexVerdict::Ok
        }
    }
}
