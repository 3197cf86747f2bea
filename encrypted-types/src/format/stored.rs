//! The keyed operations on stored bytes, for the jobs and the migration fallback: telling a
//! sealed value from legacy plaintext, and moving one between keys without decoding it.

#[allow(clippy::wildcard_imports)] // the format's own types and constants
use super::*;

/// The data keys the keyed operations below ([`reseal`], [`classify`], [`open_raw`],
/// [`seal_raw`]) look up: implemented by [`crate::Keyring`]. The format names keys through this
/// trait so that it depends on no key store.
pub trait KeySet {
    /// The key with this id: [`Error::UnknownKeyId`] or [`Error::KeyDestroyed`] otherwise.
    ///
    /// # Errors
    /// As said.
    fn key(&self, id: KeyId) -> Result<&DataKey, Error>;
    /// The key that seals new values of `tenant`.
    ///
    /// # Errors
    /// [`Error::NoPrimaryKey`].
    fn primary_key(&self, tenant: Option<&TenantId>) -> Result<&DataKey, Error>;
    /// Whether `key` is its tenant's primary key.
    fn is_primary(&self, key: &DataKey) -> bool;
    /// Whether a key with this id is known (live or destroyed).
    fn knows(&self, id: KeyId) -> bool;
}

// `Keyring::current()` hands out an `Arc<Keyring>`: it works where a keyring does.
impl<K: KeySet + ?Sized> KeySet for std::sync::Arc<K> {
    fn key(&self, id: KeyId) -> Result<&DataKey, Error> {
        (**self).key(id)
    }

    fn primary_key(&self, tenant: Option<&TenantId>) -> Result<&DataKey, Error> {
        (**self).primary_key(tenant)
    }

    fn is_primary(&self, key: &DataKey) -> bool {
        (**self).is_primary(key)
    }

    fn knows(&self, id: KeyId) -> bool {
        (**self).knows(id)
    }
}

/// Plaintext bytes moved between keys without decoding them.
struct Raw(Vec<u8>);

impl Plaintext for Raw {
    // Never part of a context: `reseal` passes the column's own type tag.
    const TYPE: &'static str = "raw";

    fn encode(&self, out: &mut SecretBuf) -> Result<(), Error> {
        out.extend_from_slice(&self.0);
        Ok(())
    }

    fn encoded_len_hint(&self) -> usize {
        self.0.len()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(Self(bytes.to_vec()))
    }

    fn decode_owned(bytes: Vec<u8>) -> Result<Self, Error> {
        Ok(Self(bytes))
    }

    fn wipe(&mut self) {
        self.0.zeroize();
    }
}

/// How far a model that names its schema has adopted it: which values it reads, and whether
/// it seals with the schema (`docs/KEYS.md`, "Tables in several schemas").
///
/// A rolling adoption goes through [`Prepare`](Self::Prepare) (every process learns to read
/// values with the schema while still sealing without it), then [`Adopt`](Self::Adopt) (new
/// values are sealed with it, and a rotation re-seals the rest), then [`Done`](Self::Done).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Adoption {
    /// Adopted: only values sealed with the schema are read (suites 4 and 5).
    #[default]
    Done,
    /// `adopt_schema(prepare)`: values with and without the schema are read, new values are
    /// sealed without it, and a rotation re-seals none into it.
    Prepare,
    /// `adopt_schema`: values with and without the schema are read, new values are sealed with
    /// it, and a rotation re-seals the others with it.
    Adopt,
}

/// Where a value lives, as its context names it: a [`Context`] but the tenant, which the keyed
/// operations below take from the key, and how far its model has adopted its schema.
///
/// ```
/// use encrypted_types::format::{Adoption, Site, SUITE, SUITE_AES256GCMSIV_SCHEMA};
/// let site = Site::new("patients", "email", "string").in_schema(Some("clinic_a"), Adoption::Adopt);
/// assert_eq!(site.context(SUITE_AES256GCMSIV_SCHEMA, None).schema, Some("clinic_a"));
/// // Adopting: a value sealed before the model named its schema opens in its old context.
/// assert_eq!(site.context(SUITE, None).schema, None);
/// assert_eq!(site.sealing_schema(), Some("clinic_a"));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Site<'a> {
    /// SQL table name.
    pub table: &'a str,
    /// The column's context name.
    pub column: &'a str,
    /// The value's type tag.
    pub value_type: &'a str,
    /// The table's schema, if the model names one.
    pub schema: Option<&'a str>,
    /// How far the model has adopted its schema ([`Adoption::Done`] when it names none).
    pub adoption: Adoption,
}

impl<'a> Site<'a> {
    /// A site naming no schema.
    pub const fn new(table: &'a str, column: &'a str, value_type: &'a str) -> Self {
        Self {
            table,
            column,
            value_type,
            schema: None,
            adoption: Adoption::Done,
        }
    }

    /// The same site in `schema`, at stage `adoption` of adopting it.
    #[must_use]
    pub const fn in_schema(mut self, schema: Option<&'a str>, adoption: Adoption) -> Self {
        self.schema = schema;
        self.adoption = if schema.is_some() {
            adoption
        } else {
            Adoption::Done
        };
        self
    }

    /// Whether values sealed without the schema are read: while adopting it.
    const fn reads_unqualified(&self) -> bool {
        !matches!(self.adoption, Adoption::Done)
    }

    /// The schema new values are sealed with: the site's, but none while preparing.
    pub const fn sealing_schema(&self) -> Option<&'a str> {
        match self.adoption {
            Adoption::Prepare => None,
            _ => self.schema,
        }
    }

    /// The context a value of `suite` opens in: the site's, or while adopting, for a value
    /// sealed without a schema, the same with no schema. Any other mismatch is left for the
    /// open to refuse ([`Error::SchemaMismatch`]).
    pub const fn context(&self, suite: u8, tenant: Option<&'a TenantId>) -> Context<'a> {
        let schema = if self.reads_unqualified() && !has_schema(suite) {
            None
        } else {
            self.schema
        };
        Context::new(self.table, self.column, tenant, self.value_type).in_schema(schema)
    }

    /// The schema a rotation re-seals a value of `suite` with: the sealing schema, and never
    /// none for a value that has one (preparing, a value already sealed with it keeps it).
    const fn reseal_schema(&self, suite: u8) -> Option<&'a str> {
        if has_schema(suite) && self.schema.is_some() {
            self.schema
        } else {
            self.sealing_schema()
        }
    }
}

/// Re-seals a value of `site` under the primary key of the tenant of the key that sealed it,
/// in the site's suite: bound to `row` when the model binds its values to their row (whatever
/// value the row holds is bound to it), naming the site's schema when it names one. Returns
/// `None` when it is already under that primary key and in that suite. The plaintext is never
/// decoded, and is wiped after use.
///
/// # Errors
/// As opening and sealing: the header errors, [`Error::AuthenticationFailed`],
/// [`Error::SchemaMismatch`], [`Error::NoPrimaryKey`].
pub fn reseal(
    keyring: &(impl KeySet + ?Sized),
    site: &Site<'_>,
    row: Option<&RowBinding>,
    sealed: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    let header = Header::parse(sealed)?;
    let old = keyring.key(header.key_id)?;
    let schema = site.reseal_schema(header.suite);
    if keyring.is_primary(old) && header.suite == suite_of(row.is_some(), schema.is_some()) {
        return Ok(None);
    }
    let from = site.context(header.suite, old.tenant());
    let mut plain: Raw = open_stored(old, &from, row, sealed.to_vec())?;
    let new = keyring.primary_key(old.tenant())?;
    let to = from.in_schema(schema);
    let resealed = match row {
        Some(row) => seal_bound(new, &to, row, &plain),
        None => seal(new, &to, &plain),
    };
    plain.wipe();
    resealed.map(Some)
}

/// What a stored value is, by the one test the fallback read, the backfill job and
/// `jobs::count_plaintext` share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stored {
    /// A value of ours: opening it decides whether it is genuine. Never read as plaintext.
    Sealed,
    /// Shaped like a whole sealed value of this format (version 1, suite 1 to 5, long enough) but
    /// naming a key id this keyring does not hold: most likely sealed by a process that knows
    /// a newer key. Never read, sealed again or counted done as plaintext.
    Unknown,
    /// Legacy plaintext, readable while its column is in fallback.
    Legacy,
}

/// Tells a sealed value from legacy plaintext without decrypting. A value is *sealed* when it
/// has a version 1 header (at least 6 bytes, first byte 1) naming a key id that the keyring
/// knows, live or destroyed; *unknown* when it has the whole shape of a version 1 value (first
/// bytes `01 01` to `01 05`, at least the 34 bytes of header and tag) under a key id the keyring does not
/// know; anything else is *legacy*. So a legacy `i16` 257 (`01 01`), a UUID that starts
/// `01 01`, or a short or foreign string are legacy, while a sealed value that was tampered
/// with, copied from another column, sealed under a shredded tenant's destroyed key, or sealed
/// with a key created after this keyring was loaded is never mistaken for plaintext.
///
/// ```
/// use encrypted_types::{format::{self, Stored}, Keyring, KeyMaterial};
/// let kr = Keyring::builder()
///     .data_key(7, None, KeyMaterial::generate().unwrap())
///     .primary(None, 7)
///     .build()
///     .unwrap();
/// assert_eq!(format::classify(&kr, &257_i16.to_be_bytes()), Stored::Legacy);
/// assert_eq!(format::classify(&kr, &[1, 1, 0, 0, 0, 8, 0]), Stored::Legacy);
/// assert_eq!(format::classify(&kr, &[1, 1, 0, 0, 0, 7, 0]), Stored::Sealed);
/// let mut newer = vec![1, 1, 0, 0, 0, 8];
/// newer.resize(40, 0);
/// assert_eq!(format::classify(&kr, &newer), Stored::Unknown);
/// ```
pub fn classify(keyring: &(impl KeySet + ?Sized), stored: &[u8]) -> Stored {
    match stored.get(..6) {
        Some([VERSION, suite, a, b, c, d]) => {
            if keyring.knows(KeyId::from(u32::from_be_bytes([*a, *b, *c, *d]))) {
                Stored::Sealed
            } else if is_suite(*suite) && stored.len() >= OVERHEAD {
                Stored::Unknown
            } else {
                Stored::Legacy
            }
        }
        _ => Stored::Legacy,
    }
}

/// Opens a value of `site` to its plaintext bytes, undecoded, with the tenant of the key that
/// sealed it: what a job needs to recompute a blind index. A value bound to its row needs
/// `row`.
///
/// # Errors
/// As opening: the header errors, [`Error::AuthenticationFailed`], [`Error::SchemaMismatch`].
pub fn open_raw(
    keyring: &(impl KeySet + ?Sized),
    site: &Site<'_>,
    row: Option<&RowBinding>,
    sealed: &[u8],
) -> Result<(zeroize::Zeroizing<Vec<u8>>, Option<TenantId>), Error> {
    let header = Header::parse(sealed)?;
    let key = keyring.key(header.key_id)?;
    let ctx = site.context(header.suite, key.tenant());
    let mut plain: Raw = open_stored(key, &ctx, row, sealed.to_vec())?;
    Ok((
        zeroize::Zeroizing::new(std::mem::take(&mut plain.0)),
        key.tenant().cloned(),
    ))
}

/// Seals plaintext bytes (a legacy value's canonical encoding, of the site's type) for `site`
/// under the primary key of `tenant`, bound to `row` if given: the plaintext-migration
/// backfill.
///
/// # Errors
/// [`Error::NoPrimaryKey`], [`Error::TooLarge`].
pub fn seal_raw(
    keyring: &(impl KeySet + ?Sized),
    site: &Site<'_>,
    tenant: Option<&TenantId>,
    row: Option<&RowBinding>,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let key = keyring.primary_key(tenant)?;
    let mut raw = Raw(plaintext.to_vec());
    let ctx = Context::new(site.table, site.column, tenant, site.value_type)
        .in_schema(site.sealing_schema());
    let sealed = match row {
        Some(row) => seal_bound(key, &ctx, row, &raw),
        None => seal(key, &ctx, &raw),
    };
    raw.wipe();
    sealed
}
