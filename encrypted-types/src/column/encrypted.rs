//! `Encrypted<T, C>`: a plaintext value that is sealed when written and opened when read.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use crate::DataKey;
use crate::Error;
use crate::audit;
use crate::binding::RowBinding;
use crate::codec::Plaintext;
use crate::column::context::{ColumnContext, Unbound};
use crate::format::{self, Context, Header, RowOpen, RowSeal, Site};
use crate::keyring::Keyring;
use crate::tenant::TenantId;

/// A value of type `T` stored encrypted in the column named by `C`.
///
/// In Rust it is plaintext: read it through `Deref`. In SQL it is an AES-256-GCM sealed value
/// (SQL type `Binary`): Diesel's `ToSql` seals it under the installed [`Keyring`]'s primary key
/// for its tenant, and `FromSql` opens it with exactly the key its header names. The table,
/// column, tenant and type are authenticated, so a ciphertext moved to another column or table,
/// or relabelled with another key id, fails with [`Error::AuthenticationFailed`]. A value copied
/// from another tenant's row opens as that tenant's value: [`Encrypted::verify_tenant`] (which
/// `#[derive(Encrypted)]` calls) turns that into [`Error::TenantMismatch`].
///
/// `Debug` never shows the value (Diesel prints bind parameters through `Debug`), and the
/// value's heap memory is wiped on drop.
///
/// ```
/// use encrypted_types::{Encrypted, KeyMaterial, Keyring};
/// encrypted_types::column_context!(PatientsEmail = "patients"."email");
///
/// Keyring::builder().data_key(1, None, KeyMaterial::generate()?).primary(None, 1).build()?.install();
///
/// let email: Encrypted<String, PatientsEmail> = Encrypted::new("ann@example.org".to_owned());
/// assert_eq!(format!("{email:?}"), "Encrypted<string>(<redacted>)");
/// let sealed = email.seal()?;
/// let opened = Encrypted::<String, PatientsEmail>::open(&sealed)?;
/// assert_eq!(opened.as_str(), "ann@example.org");
/// # Ok::<(), encrypted_types::Error>(())
/// ```
#[derive(diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Binary)]
pub struct Encrypted<T: Plaintext, C: ColumnContext = Unbound> {
    /// Always `Some`: only [`Encrypted::into_inner`], which consumes `self`, takes it out
    /// (`Drop` wipes the value, so it cannot simply be moved out).
    value: Option<T>,
    tenant: Option<TenantId>,
    /// Read as legacy plaintext under [`crate::migration`] fallback: it had no key, so no
    /// tenant to check.
    legacy: bool,
    /// The row identity it is sealed bound to (suite 3), if its model declares `bind_row`.
    row: Option<RowBinding>,
    /// Its sealed bytes, from a `ToSql`: diesel-async serializes a query's binds twice when it
    /// has a PostgreSQL custom type, and compares the two. Reused while the tenant's primary key
    /// is the one they name; never cloned, and no error is kept.
    written: Mutex<Option<Vec<u8>>>,
    context: PhantomData<fn() -> C>,
}

impl<T: Plaintext, C: ColumnContext> Encrypted<T, C> {
    /// A value that belongs to no tenant.
    pub fn new(value: T) -> Self {
        Self::with_tenant(value, None)
    }

    /// A value owned by `tenant`: it is sealed with that tenant's primary key and its
    /// ciphertext opens only as that tenant's value.
    pub fn for_tenant(value: T, tenant: impl Into<TenantId>) -> Self {
        Self::with_tenant(value, Some(tenant.into()))
    }

    /// A value owned by `tenant`, or by no tenant.
    pub fn with_tenant(value: T, tenant: Option<TenantId>) -> Self {
        Self {
            value: Some(value),
            tenant,
            legacy: false,
            row: None,
            written: Mutex::new(None),
            context: PhantomData,
        }
    }

    /// Binds the value to the row identified by `row` (suite 3): sealed this way, it opens
    /// only with [`Encrypted::open_owned_bound`] and the same identity, so a copy into
    /// another row fails with [`Error::AuthenticationFailed`]. `#[encrypted(bind_row = ..)]`
    /// does this for every field of a model.
    ///
    /// ```
    /// use encrypted_types::{Encrypted, Error, KeyMaterial, Keyring, RowBinding, RowPart};
    /// encrypted_types::column_context!(Ssn = "patients"."ssn");
    /// let keyring = Keyring::builder().data_key(1, None, KeyMaterial::generate()?).primary(None, 1).build()?;
    /// let row_7 = RowBinding::new(&[RowPart::Int(7)])?;
    /// let row_8 = RowBinding::new(&[RowPart::Int(8)])?;
    /// let sealed = Encrypted::<String, Ssn>::new("123-45-6789".into()).bound_to(row_7.clone()).seal_with(&keyring)?;
    /// let opened = Encrypted::<String, Ssn>::open_owned_bound_with(&keyring, sealed.clone(), &row_7)?;
    /// assert_eq!(opened.as_str(), "123-45-6789");
    /// // Copied into row 8, it does not open; read without a row, it is refused.
    /// assert_eq!(Encrypted::<String, Ssn>::open_owned_bound_with(&keyring, sealed.clone(), &row_8).err(), Some(Error::AuthenticationFailed));
    /// assert_eq!(Encrypted::<String, Ssn>::open_with(&keyring, &sealed).err(), Some(Error::RowBinding));
    /// # Ok::<(), Error>(())
    /// ```
    #[must_use]
    pub fn bound_to(mut self, row: RowBinding) -> Self {
        self.row = Some(row);
        self.written = Mutex::new(None);
        self
    }

    /// The plaintext.
    pub fn get(&self) -> &T {
        match &self.value {
            Some(v) => v,
            // `value` is `None` only inside `into_inner`, after which `self` is gone.
            None => unreachable!("Encrypted value taken"),
        }
    }

    /// The tenant the value belongs to. After a read, this is the tenant of the key that
    /// opened it, which callers compare with the row's own tenant column.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// Checks that the value belongs to `expected`, the tenant of the row it was read from.
    ///
    /// `FromSql` cannot see the row, so a ciphertext copied from another tenant's row in the
    /// same column opens (under that tenant's key) and reports that tenant. Code that reads
    /// tenant rows by hand must call this; `#[derive(Encrypted)]` does it for every field.
    ///
    /// ```
    /// use encrypted_types::{Encrypted, Error, KeyMaterial, Keyring, TenantId};
    /// let keyring = Keyring::builder()
    ///     .data_key(1, Some("a".into()), KeyMaterial::generate()?)
    ///     .primary(Some("a".into()), 1)
    ///     .build()?;
    /// let sealed = Encrypted::<String>::for_tenant("x".into(), "a").seal_with(&keyring)?;
    /// let opened = Encrypted::<String>::open_with(&keyring, &sealed)?;
    /// assert!(opened.verify_tenant(Some(&"a".into()), "notes").is_ok());
    /// assert_eq!(
    ///     opened.verify_tenant(Some(&TenantId::from("b")), "notes"),
    ///     Err(Error::TenantMismatch { column: "notes" })
    /// );
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::TenantMismatch`] naming `column` if the tenants differ.
    pub fn verify_tenant(
        &self,
        expected: Option<&TenantId>,
        column: &'static str,
    ) -> Result<(), Error> {
        if self.legacy || self.tenant.as_ref() == expected {
            Ok(())
        } else {
            let err = Error::TenantMismatch { column };
            audit::open_failed(C::TABLE, C::SQL_COLUMN, T::TYPE, &err);
            Err(err)
        }
    }

    /// Takes the plaintext out. The caller now owns it, and its wiping.
    pub fn into_inner(mut self) -> T {
        match self.value.take() {
            Some(v) => v,
            None => unreachable!("Encrypted value taken"),
        }
    }

    /// The context new values are sealed in.
    fn context(&self) -> Context<'_> {
        Context::new(C::TABLE, C::COLUMN, self.tenant.as_ref(), T::TYPE)
            .in_schema(Self::SITE.sealing_schema())
    }

    const SITE: Site<'static> =
        Site::new(C::TABLE, C::COLUMN, T::TYPE).in_schema(C::SCHEMA, C::SCHEMA_ADOPTION);

    /// Seals the value under the installed keyring.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::NoPrimaryKey`], or an encoding error.
    pub fn seal(&self) -> Result<Vec<u8>, Error> {
        Keyring::with_current(|k| self.seal_with(k))
    }

    /// The bytes `ToSql` binds: the bytes of an earlier call while they name the tenant's
    /// current primary key, else sealed now. The key is looked up on every call, so the
    /// keyring's seal limit and a rotation apply to a value bound again as to a new one.
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub(crate) fn bound_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        Keyring::with_current(|k| {
            let key = k.primary_key(self.tenant.as_ref())?;
            if let Some(bytes) = written.as_ref()
                && Header::parse(bytes).is_ok_and(|h| h.key_id == key.id())
            {
                return Ok(bytes.clone());
            }
            let fresh = self.seal_with(k)?;
            *written = Some(fresh.clone());
            Ok(fresh)
        })
    }

    /// Seals the value under `keyring` rather than the installed one.
    ///
    /// # Errors
    /// [`Error::NoPrimaryKey`], or an encoding error.
    pub fn seal_with(&self, keyring: &Keyring) -> Result<Vec<u8>, Error> {
        let sealed = keyring
            .primary_key(self.tenant.as_ref())
            .and_then(|key| match &self.row {
                Some(row) => format::seal_bound(key, &self.context(), row, self.get()),
                None => format::seal(key, &self.context(), self.get()),
            });
        match &sealed {
            Ok(_) => audit::metrics::sealed(C::TABLE, C::SQL_COLUMN),
            Err(e) => audit::metrics::seal_failed(C::TABLE, C::SQL_COLUMN, e),
        }
        sealed
    }

    /// Opens a sealed value with the installed keyring.
    ///
    /// # Errors
    /// See [`Encrypted::open_with`].
    pub fn open(sealed: &[u8]) -> Result<Self, Error> {
        // Oversized input is refused before it is copied.
        format::check_len(sealed)?;
        Self::open_owned(sealed.to_vec())
    }

    /// Opens a sealed value held in an owned buffer, decrypting in place and wiping it.
    ///
    /// # Errors
    /// See [`Encrypted::open_with`].
    pub fn open_owned(sealed: Vec<u8>) -> Result<Self, Error> {
        Keyring::with_current(|k| Self::open_owned_with(k, sealed))
    }

    /// Opens a sealed value with `keyring`.
    ///
    /// The header is checked first (length, version, suite, key id), so malformed input and
    /// unknown keys are reported before any cryptography runs. Exactly one key is tried.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::UnsupportedVersion`], [`Error::UnsupportedSuite`],
    /// [`Error::UnknownKeyId`], [`Error::KeyDestroyed`], [`Error::AuthenticationFailed`] or
    /// [`Error::InvalidPlaintext`].
    pub fn open_with(keyring: &Keyring, sealed: &[u8]) -> Result<Self, Error> {
        format::check_len(sealed)?;
        Self::open_owned_with(keyring, sealed.to_vec())
    }

    /// [`Encrypted::open_with`] on an owned buffer, which it decrypts in place.
    ///
    /// # Errors
    /// See [`Encrypted::open_with`].
    pub fn open_owned_with(keyring: &Keyring, sealed: Vec<u8>) -> Result<Self, Error> {
        Self::open_audited(keyring, sealed, None)
    }

    /// Opens a value of a column whose values are bound to their row (`bind_row`), read from
    /// the row identified by `row`, with the installed keyring.
    ///
    /// # Errors
    /// As [`Encrypted::open_with`]; [`Error::AuthenticationFailed`] for a value bound to
    /// another row, [`Error::RowBinding`] for a value bound to no row.
    pub fn open_owned_bound(sealed: Vec<u8>, row: &RowBinding) -> Result<Self, Error> {
        Keyring::with_current(|k| Self::open_owned_bound_with(k, sealed, row))
    }

    /// [`Encrypted::open_owned_bound`] with `keyring`.
    ///
    /// # Errors
    /// See [`Encrypted::open_owned_bound`].
    pub fn open_owned_bound_with(
        keyring: &Keyring,
        sealed: Vec<u8>,
        row: &RowBinding,
    ) -> Result<Self, Error> {
        Self::open_audited(keyring, sealed, Some(row))
    }

    /// Seals `value` as this column's field of a row write (the derive's write structs): under
    /// the row's nonce and key, for the key's tenant, bound to `row` when given.
    ///
    /// # Errors
    /// As [`Encrypted::seal_with`].
    #[doc(hidden)]
    pub fn seal_in_row(
        seal: &mut RowSeal<'_>,
        value: &T,
        row: Option<&RowBinding>,
    ) -> Result<Vec<u8>, Error> {
        let tenant = seal.key().tenant();
        let ctx = Context::new(C::TABLE, C::COLUMN, tenant, T::TYPE)
            .in_schema(Self::SITE.sealing_schema());
        let sealed = seal.seal(&ctx, row, value);
        match &sealed {
            Ok(_) => audit::metrics::sealed(C::TABLE, C::SQL_COLUMN),
            Err(e) => audit::metrics::seal_failed(C::TABLE, C::SQL_COLUMN, e),
        }
        sealed
    }

    /// Opens this column's field of a row read (the derive's `FallibleModel::open`), sharing
    /// the per-nonce state with the row's other fields, and checks that it belongs to
    /// `expected`, the row's tenant, without copying either. A success is not reported to the
    /// audit sink here: the row reports its opened columns together (`audit_row`).
    ///
    /// # Errors
    /// As [`Encrypted::open_with`] (or [`Encrypted::open_owned_bound_with`] with `row`), and
    /// [`Error::TenantMismatch`].
    #[doc(hidden)]
    pub fn open_in_row<'k>(
        reader: &mut RowOpen<'k>,
        keyring: &'k Keyring,
        sealed: Vec<u8>,
        row: Option<&RowBinding>,
        expected: Option<&TenantId>,
    ) -> Result<T, Error> {
        let opened = Self::open_inner(keyring, sealed, row, |key, ctx, row, sealed| {
            reader.open(key, ctx, row, sealed)
        })
        .and_then(|(mut value, tenant, legacy)| {
            if legacy || tenant == expected {
                Ok(value)
            } else {
                // Another tenant's plaintext: wiped, not just dropped.
                value.wipe();
                Err(Error::TenantMismatch {
                    column: C::SQL_COLUMN,
                })
            }
        });
        opened.inspect_err(|e| audit::open_failed(C::TABLE, C::SQL_COLUMN, T::TYPE, e))
    }

    fn open_audited(
        keyring: &Keyring,
        sealed: Vec<u8>,
        row: Option<&RowBinding>,
    ) -> Result<Self, Error> {
        let opened = Self::open_inner(keyring, sealed, row, |key, ctx, row, sealed| match row {
            Some(row) => format::open_bound(key, ctx, row, sealed),
            None => format::open(key, ctx, sealed),
        })
        .map(|(value, tenant, legacy)| {
            let mut v = Self::with_tenant(value, tenant.cloned());
            v.legacy = legacy;
            v
        });
        match &opened {
            Ok(v) => audit::opened(v.tenant(), C::TABLE, C::SQL_COLUMN),
            Err(e) => audit::open_failed(C::TABLE, C::SQL_COLUMN, T::TYPE, e),
        }
        opened
    }

    /// Finds the key a value names (or, during a migration, reads it as legacy plaintext) and
    /// opens it with `open`: the value, its key's tenant, and whether it was legacy plaintext.
    fn open_inner<'k>(
        keyring: &'k Keyring,
        sealed: Vec<u8>,
        row: Option<&RowBinding>,
        open: impl FnOnce(&'k DataKey, &Context<'_>, Option<&RowBinding>, Vec<u8>) -> Result<T, Error>,
    ) -> Result<(T, Option<&'k TenantId>, bool), Error> {
        // The hot path: a header naming a key of the keyring opens under it, nothing else runs.
        let found = Header::parse(&sealed).and_then(|h| keyring.key(h.key_id));
        let key = match found {
            Ok(key) => key,
            // Legacy plaintext, if the column is being migrated: by the same test the backfill
            // job and `count_plaintext` use, so the three agree on every value.
            // Never for a value bound to its row: plaintext there is bound to nothing.
            Err(_)
                if row.is_none()
                    && format::classify(keyring, &sealed) == format::Stored::Legacy
                    && crate::migration::take_plaintext(C::SCHEMA, C::TABLE, C::SQL_COLUMN) =>
            {
                return Ok((T::decode_owned(sealed)?, None, true));
            }
            Err(e) => return Err(e),
        };
        let suite = sealed.get(1).copied().unwrap_or_default();
        let ctx = Self::SITE.context(suite, key.tenant());
        Ok((open(key, &ctx, row, sealed)?, key.tenant(), false))
    }
}

impl<T: Plaintext, C: ColumnContext> Drop for Encrypted<T, C> {
    fn drop(&mut self) {
        if let Some(v) = &mut self.value {
            v.wipe();
        }
    }
}

impl<T: Plaintext, C: ColumnContext> Deref for Encrypted<T, C> {
    type Target = T;

    fn deref(&self) -> &T {
        self.get()
    }
}

impl<T: Plaintext, C: ColumnContext> From<T> for Encrypted<T, C> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: Plaintext + Clone, C: ColumnContext> Clone for Encrypted<T, C> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            tenant: self.tenant.clone(),
            legacy: self.legacy,
            row: self.row.clone(),
            written: Mutex::new(None),
            context: PhantomData,
        }
    }
}

impl<T: Plaintext + PartialEq, C: ColumnContext> PartialEq for Encrypted<T, C> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() && self.tenant == other.tenant
    }
}

impl<T: Plaintext, C: ColumnContext> fmt::Debug for Encrypted<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encrypted<{}>(<redacted>)", T::TYPE)
    }
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::KeyMaterial;

    crate::column_context!(Notes = "patients"."notes");

    fn keyring(primary: u32) -> Keyring {
        Keyring::builder()
            .data_key(1, Some("a".into()), KeyMaterial::from_bytes([1; 32]))
            .data_key(2, Some("a".into()), KeyMaterial::from_bytes([2; 32]))
            .primary(Some("a".into()), primary)
            .build()
            .unwrap()
    }

    /// The bytes `ToSql` binds are kept while they name the tenant's primary key (one seal for
    /// diesel-async's two serializations), sealed again after a rotation, and an error is not
    /// kept. The only test of this crate's units that installs a keyring.
    #[test]
    fn bound_bytes_are_kept_while_their_key_is_primary() {
        Keyring::uninstall();
        let v = Encrypted::<String, Notes>::for_tenant("x".into(), "a");
        assert_eq!(v.bound_bytes(), Err(Error::NoKeyring));
        keyring(1).install();
        let first = v.bound_bytes().unwrap();
        assert_eq!(first[2..6], 1u32.to_be_bytes());
        assert_eq!(v.bound_bytes().unwrap(), first);
        // A clone is another value: its own nonce.
        assert_ne!(v.clone().bound_bytes().unwrap(), first);
        keyring(2).install();
        let rotated = v.bound_bytes().unwrap();
        assert_eq!(rotated[2..6], 2u32.to_be_bytes());
        assert_eq!(v.bound_bytes().unwrap(), rotated);
        assert_eq!(
            Encrypted::<String, Notes>::open_owned(rotated)
                .unwrap()
                .get(),
            "x"
        );
        Keyring::uninstall();
    }
}
