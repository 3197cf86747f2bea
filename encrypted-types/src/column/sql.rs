//! Diesel glue: `Encrypted<T, C>` is SQL type `Binary` on every enabled backend.
//!
//! `ToSql` is written once per backend because Diesel's bind collectors differ: PostgreSQL and
//! MySQL copy written bytes, SQLite takes an owned value. A single generic impl would conflict
//! (E0119) with the SQLite one in a downstream crate. `FromSql` is generic: it receives the
//! bytes as an owned `Vec<u8>` and decrypts in place, so no second copy of the plaintext exists.
//! Nothing here performs I/O: keys come from the installed keyring, loaded at startup.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::sql_types::Binary;

use crate::codec::Plaintext;
use crate::column::context::ColumnContext;
use crate::column::encrypted::Encrypted;

impl<T: Plaintext, C: ColumnContext, DB: Backend> FromSql<Binary, DB> for Encrypted<T, C>
where
    Vec<u8>: FromSql<Binary, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let sealed = <Vec<u8> as FromSql<Binary, DB>>::from_sql(bytes)?;
        Ok(Self::open_owned(sealed)?)
    }
}

/// `ToSql<Binary>` on every enabled backend for a type whose SQL value is computed on bind:
/// the sealed bytes of an [`Encrypted`] (kept while its key is current), the index bytes of a
/// [`BlindIndex`](crate::index::BlindIndex), the bytes a [`crate::Written`] holds. PostgreSQL's and MySQL's collectors copy written
/// bytes; SQLite's may borrow from `self`, so the owned bytes are moved in with `set_value`.
macro_rules! computed_binary_to_sql {
    (impl<$($g:ident: $b:path),*> for $ty:ty => |$this:ident| $bytes:expr) => {
        #[cfg(feature = "postgres")]
        computed_binary_to_sql!(@raw diesel::pg::Pg, impl<$($g: $b),*> for $ty => |$this| $bytes);
        #[cfg(feature = "mysql")]
        computed_binary_to_sql!(@raw diesel::mysql::Mysql, impl<$($g: $b),*> for $ty => |$this| $bytes);
        #[cfg(feature = "sqlite")]
        impl<$($g: $b),*> diesel::serialize::ToSql<Binary, diesel::sqlite::Sqlite> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::sqlite::Sqlite>,
            ) -> diesel::serialize::Result {
                let $this = self;
                out.set_value($bytes?);
                Ok(diesel::serialize::IsNull::No)
            }
        }
    };
    (@raw $db:ty, impl<$($g:ident: $b:path),*> for $ty:ty => |$this:ident| $bytes:expr) => {
        impl<$($g: $b),*> diesel::serialize::ToSql<Binary, $db> for $ty {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, $db>,
            ) -> diesel::serialize::Result {
                use std::io::Write;
                let $this = self;
                out.write_all(&$bytes?)?;
                Ok(diesel::serialize::IsNull::No)
            }
        }
    };
}

computed_binary_to_sql!(impl<T: Plaintext, C: ColumnContext> for Encrypted<T, C> => |v| v.bound_bytes());
computed_binary_to_sql!(impl<> for crate::Written => |v| v.bytes());
computed_binary_to_sql!(
    impl<T: Plaintext, S: crate::index::IndexSpec> for crate::index::BlindIndex<T, S> => |v| v.compute()
);
computed_binary_to_sql!(
    impl<S: crate::index::CompoundSpec> for crate::index::CompoundIndex<S> => |v| v.compute()
);

impl crate::Error {
    /// Finds the library error inside a Diesel error, if that is what failed.
    ///
    /// Diesel boxes errors from `ToSql`/`FromSql`, and wraps read errors once more with the
    /// field name; this looks through both, and into an [`crate::Unreadable`] row.
    ///
    /// ```
    /// use encrypted_types::Error;
    /// let diesel_err = diesel::result::Error::DeserializationError(Box::new(Error::AuthenticationFailed));
    /// assert_eq!(Error::from_diesel(&diesel_err), Some(&Error::AuthenticationFailed));
    /// assert_eq!(Error::from_diesel(&diesel::result::Error::NotFound), None);
    ///
    /// // One row of a `Fallible` read: the reason is in the message once, and found here.
    /// let row = encrypted_types::Unreadable::new(7_i64.into(), "patients", "ssn", Error::AuthenticationFailed);
    /// let message = fail_chain(&*row);
    /// assert_eq!(message, "patients row 7: column ssn: authentication failed");
    /// let diesel_err = diesel::result::Error::DeserializationError(row);
    /// assert_eq!(Error::from_diesel(&diesel_err), Some(&Error::AuthenticationFailed));
    /// # fn fail_chain(e: &dyn std::error::Error) -> String {
    /// #     let mut s = e.to_string();
    /// #     let mut c = e.source();
    /// #     while let Some(x) = c { s.push_str(&format!(": {x}")); c = x.source(); }
    /// #     s
    /// # }
    /// ```
    pub fn from_diesel(err: &diesel::result::Error) -> Option<&Self> {
        let (diesel::result::Error::DeserializationError(inner)
        | diesel::result::Error::SerializationError(inner)) = err
        else {
            return None;
        };
        let mut current: &(dyn std::error::Error + 'static) = &**inner;
        loop {
            if let Some(found) = current.downcast_ref::<Self>() {
                return Some(found);
            }
            // One row of a `Fallible` read: its message holds the error, so it is a field, not
            // the `source()`.
            if let Some(row) = current.downcast_ref::<crate::Unreadable>() {
                return Some(&row.error);
            }
            if let Some(row) = current.downcast_ref::<Box<crate::Unreadable>>() {
                return Some(&row.error);
            }
            current = current.source()?;
        }
    }
}

/// Key-table operations run inside Diesel transactions, whose error type must absorb Diesel's.
impl From<diesel::result::Error> for crate::Error {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.to_string())
    }
}
