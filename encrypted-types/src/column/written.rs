//! [`Written`]: the bytes a derived write struct binds for one column, computed once when the
//! struct is built.

use std::fmt;

use crate::Error;

/// A column's bytes as a derived model's write struct binds them: a value sealed (under the
/// row's one nonce) or a blind index computed, once, when the write struct was built from the
/// model. `ToSql` only writes them, however often Diesel calls it (diesel-async serializes its
/// binds twice), so one insert is one seal per field.
///
/// Building the write struct cannot fail (`From<&Model>`), so a seal or index that failed is
/// kept here and returned by `ToSql`, which Diesel reports as the query's error.
///
/// ```
/// use encrypted_types::{Error, Written};
/// let ok = Written::new(Ok(vec![1, 2, 3]));
/// assert_eq!(ok.bytes(), Ok(&[1u8, 2, 3][..]));
/// assert_eq!(format!("{ok:?}"), "Written(<sealed>)");
/// let failed = Written::new(Err(Error::NoKeyring));
/// assert_eq!(failed.bytes(), Err(Error::NoKeyring));
/// assert_eq!(format!("{failed:?}"), "Written(<failed: no_keyring>)");
/// ```
#[derive(diesel::expression::AsExpression)]
#[diesel(sql_type = diesel::sql_types::Binary)]
pub struct Written(Result<Vec<u8>, Error>);

impl Written {
    /// The bytes of a column, or why they could not be computed.
    pub fn new(bytes: Result<Vec<u8>, Error>) -> Self {
        Self(bytes)
    }

    /// The bytes to bind, or the error that kept them from being computed.
    ///
    /// # Errors
    /// The seal's or the index's error, as it happened when the write struct was built.
    pub fn bytes(&self) -> Result<&[u8], Error> {
        match &self.0 {
            Ok(b) => Ok(b),
            Err(e) => Err(e.clone()),
        }
    }
}

impl fmt::Debug for Written {
    // As `Encrypted` prints: nothing of the value, not even its length; a failure by its kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("Written(<sealed>)"),
            Err(e) => write!(f, "Written(<failed: {}>)", e.reason()),
        }
    }
}
