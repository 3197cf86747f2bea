//! Reading rows one by one: a row that cannot be opened (a crypto-shredded tenant's, a value
//! under a destroyed key, a tampered one) is reported beside the others instead of failing the
//! whole query.

use diesel::backend::Backend;
use diesel::deserialize;
use diesel::prelude::{Queryable, Selectable};

use crate::{Error, RowKey};

/// Implemented by `#[derive(Encrypted)]` (with `Queryable`): the row as stored, and how it is
/// opened. [`Fallible`] and the model's own `Queryable` both go through [`FallibleModel::open`].
pub trait FallibleModel: Sized {
    /// The stored row: ciphertext bytes where the model holds plaintext.
    type Raw;

    /// Opens every encrypted value of `raw` and checks it belongs to the row's tenant.
    ///
    /// # Errors
    /// [`Unreadable`]: the first value that does not open, with the row's key and column.
    fn open(raw: Self::Raw) -> Result<Self, Box<Unreadable>>;
}

/// Why one row could not be read: its primary key, the column, and the library's error. Holds
/// no plaintext. Its message prints the key by [`RowKey`]'s rule: integer and UUID keys in
/// full, text and binary keys (which may be natural keys, such as an email) as their kind and
/// length; [`Unreadable::key`] holds every part, for the operator who must find the row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table} row {key}: column {column}: {error}")]
#[non_exhaustive]
pub struct Unreadable {
    /// The row's primary key, every part in full (`key.full()` prints it so).
    pub key: RowKey,
    /// The table.
    pub table: &'static str,
    /// The column whose value did not open.
    pub column: &'static str,
    /// Why. Part of the message, so not also its `source()`: a report that prints the chain
    /// would say it twice.
    pub error: Error,
}

impl Unreadable {
    /// The report of `column` of the row keyed `key`.
    #[doc(hidden)]
    #[must_use]
    pub fn new(key: RowKey, table: &'static str, column: &'static str, error: Error) -> Box<Self> {
        Box::new(Self {
            key,
            table,
            column,
            error,
        })
    }
}

/// A row read without failing the query: the model, or why this one row could not be opened.
///
/// Load it where you would load the model; every readable row comes back, and each unreadable
/// one says which it is:
///
/// ```
/// use diesel::prelude::*;
/// use encrypted_types::{Encrypted, Error, Fallible, Keyring, KeyMaterial};
///
/// diesel::table! { notes (id) { id -> Integer, body -> Binary } }
///
/// #[derive(Encrypted)]
/// #[encrypted(table = notes)]
/// struct Note {
///     id: i32,
///     #[encrypted]
///     body: String,
/// }
///
/// Keyring::builder()
///     .data_key(1, None, KeyMaterial::generate()?)
///     .primary(None, 1)
///     .build()?
///     .install();
/// let mut conn = SqliteConnection::establish(":memory:").unwrap();
/// diesel::sql_query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
///     .execute(&mut conn)
///     .unwrap();
/// diesel::insert_into(notes::table)
///     .values(&Note { id: 1, body: "kept".into() })
///     .execute(&mut conn)
///     .unwrap();
/// // A row whose value does not open (here: garbage; after a tenant is shredded: its rows).
/// diesel::sql_query("INSERT INTO notes VALUES (2, x'0101000000ff')")
///     .execute(&mut conn)
///     .unwrap();
///
/// let rows: Vec<Fallible<Note>> = notes::table
///     .select(Fallible::<Note>::as_select())
///     .order(notes::id)
///     .load(&mut conn)
///     .unwrap();
/// let (ok, bad): (Vec<_>, Vec<_>) = rows.into_iter().map(Fallible::into_result).partition(Result::is_ok);
/// assert_eq!(ok.len(), 1);
/// let bad = bad.into_iter().next().unwrap().err().unwrap();
/// assert_eq!((bad.key.to_string().as_str(), bad.column), ("2", "body"));
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug)]
pub struct Fallible<M>(Result<M, Box<Unreadable>>);

impl<M> Fallible<M> {
    /// The model, or why the row could not be read.
    ///
    /// # Errors
    /// [`Unreadable`] for a row with a value that does not open.
    pub fn into_result(self) -> Result<M, Box<Unreadable>> {
        self.0
    }

    /// The model, if the row could be read.
    pub fn ok(self) -> Option<M> {
        self.0.ok()
    }
}

impl<M, ST, DB> Queryable<ST, DB> for Fallible<M>
where
    M: FallibleModel,
    M::Raw: Queryable<ST, DB>,
    DB: Backend,
{
    type Row = <M::Raw as Queryable<ST, DB>>::Row;

    fn build(row: Self::Row) -> deserialize::Result<Self> {
        // Only a row that does not even have the stored shape fails the query.
        let raw = <M::Raw as Queryable<ST, DB>>::build(row)?;
        Ok(Self(M::open(raw)))
    }
}

impl<M, DB> Selectable<DB> for Fallible<M>
where
    M: FallibleModel,
    M::Raw: Selectable<DB>,
    DB: Backend,
{
    type SelectExpression = <M::Raw as Selectable<DB>>::SelectExpression;

    fn construct_selection() -> Self::SelectExpression {
        <M::Raw as Selectable<DB>>::construct_selection()
    }
}
