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
use crate::context::ColumnContext;
use crate::encrypted::Encrypted;

impl<T: Plaintext, C: ColumnContext, DB: Backend> FromSql<Binary, DB> for Encrypted<T, C>
where
    Vec<u8>: FromSql<Binary, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let sealed = <Vec<u8> as FromSql<Binary, DB>>::from_sql(bytes)?;
        Ok(Self::open_owned(sealed)?)
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! raw_bytes_to_sql {
    ($db:ty) => {
        impl<T: Plaintext, C: ColumnContext> diesel::serialize::ToSql<Binary, $db>
            for Encrypted<T, C>
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, $db>,
            ) -> diesel::serialize::Result {
                use std::io::Write;
                // The collector copies the bytes, so the temporary ciphertext can be dropped.
                out.write_all(&self.seal()?)?;
                Ok(diesel::serialize::IsNull::No)
            }
        }
    };
}

#[cfg(feature = "postgres")]
raw_bytes_to_sql!(diesel::pg::Pg);
#[cfg(feature = "mysql")]
raw_bytes_to_sql!(diesel::mysql::Mysql);

#[cfg(feature = "sqlite")]
impl<T: Plaintext, C: ColumnContext> diesel::serialize::ToSql<Binary, diesel::sqlite::Sqlite>
    for Encrypted<T, C>
{
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::sqlite::Sqlite>,
    ) -> diesel::serialize::Result {
        // SQLite's collector may borrow from `self`; an owned ciphertext has to be moved in.
        out.set_value(self.seal()?);
        Ok(diesel::serialize::IsNull::No)
    }
}

impl crate::Error {
    /// Finds the library error inside a Diesel error, if that is what failed.
    ///
    /// Diesel boxes errors from `ToSql`/`FromSql`, and wraps read errors once more with the
    /// field name; this looks through both.
    ///
    /// ```
    /// use encrypted_types::Error;
    /// let diesel_err = diesel::result::Error::DeserializationError(Box::new(Error::AuthenticationFailed));
    /// assert_eq!(Error::from_diesel(&diesel_err), Some(&Error::AuthenticationFailed));
    /// assert_eq!(Error::from_diesel(&diesel::result::Error::NotFound), None);
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
