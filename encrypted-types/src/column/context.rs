//! The column context that every sealed value is bound to.
//!
//! Diesel's `ToSql` and `FromSql` see only the value, never the column it is written to. So the
//! column travels in the type: `Encrypted<T, C>` where `C: ColumnContext` names the table and
//! column at compile time (see `docs/adr/0001-column-context.md`). The table, column, tenant and
//! value type are all part of the authenticated data, so a ciphertext copied into another
//! column, table or tenant fails to open.

/// Names the table and column a value is sealed for.
///
/// `#[derive(Encrypted)]` generates one marker per encrypted field; by hand, use
/// [`column_context!`](crate::column_context).
///
/// ```
/// use encrypted_types::ColumnContext;
/// encrypted_types::column_context!(pub PatientEmail = "patients"."email");
/// assert_eq!(PatientEmail::TABLE, "patients");
/// assert_eq!(PatientEmail::COLUMN, "email");
/// ```
pub trait ColumnContext: 'static {
    /// SQL table name.
    const TABLE: &'static str;
    /// The column's context name, bound into every value (FORMAT.md §2, "column"). The
    /// derive uses the field's name unless `context = ".."` pins it; it stays the same when
    /// the SQL column is renamed, so no stored value changes.
    const COLUMN: &'static str;
    /// The SQL column the values live in: [`COLUMN`](Self::COLUMN) unless the derive's
    /// `column = ..` (or diesel's `column_name`) names another. Used in messages and audit
    /// events only, never in the authenticated data.
    ///
    /// ```
    /// use encrypted_types::ColumnContext;
    /// encrypted_types::column_context!(pub Email = "patients"."email");
    /// assert_eq!(Email::SQL_COLUMN, "email");
    /// ```
    const SQL_COLUMN: &'static str = Self::COLUMN;
    /// The table's schema (on MySQL, its database), bound into every value (suites 4 and 5,
    /// FORMAT.md §2.2) so that a value copied from the table of the same name in another
    /// schema fails. `None`: the model names no schema.
    ///
    /// ```
    /// use encrypted_types::ColumnContext;
    /// encrypted_types::column_context!(pub Email = "clinic_a"."patients"."email");
    /// assert_eq!(Email::SCHEMA, Some("clinic_a"));
    /// assert_eq!(Email::TABLE, "patients");
    /// ```
    const SCHEMA: Option<&'static str> = None;
    /// How far the model has adopted [`SCHEMA`](Self::SCHEMA): while it adopts it, values
    /// sealed before it named one still open (in their old context). Once adopted they are
    /// refused with [`Error::SchemaMismatch`](crate::Error::SchemaMismatch).
    ///
    /// ```
    /// use encrypted_types::{ColumnContext, format::Adoption};
    /// encrypted_types::column_context!(pub Email = "patients"."email");
    /// assert_eq!(Email::SCHEMA_ADOPTION, Adoption::Done);
    /// ```
    const SCHEMA_ADOPTION: crate::format::Adoption = crate::format::Adoption::Done;
}

/// The default context: no table and no column.
///
/// Values sealed with it are still bound to their tenant and value type, but one could be moved
/// into another `Unbound` column without detection. Give every production column its own
/// context.
///
/// ```
/// use encrypted_types::{ColumnContext, Unbound};
/// assert_eq!(Unbound::TABLE, "");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unbound;

impl ColumnContext for Unbound {
    const TABLE: &'static str = "";
    const COLUMN: &'static str = "";
}

/// Declares a unit struct that implements [`ColumnContext`].
///
/// ```
/// encrypted_types::column_context!(pub UsersSsn = "users"."ssn");
/// let ssn: encrypted_types::Encrypted<String, UsersSsn> = "123-45-6789".to_owned().into();
/// assert_eq!(ssn.len(), 11);
/// ```
#[macro_export]
macro_rules! column_context {
    ($(#[$meta:meta])* $vis:vis $name:ident = $schema:literal . $table:literal . $column:literal) => {
        $(#[$meta])*
        #[doc = concat!("Column context for `", $schema, ".", $table, ".", $column, "`.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        $vis struct $name;
        impl $crate::ColumnContext for $name {
            const TABLE: &'static str = $table;
            const COLUMN: &'static str = $column;
            const SCHEMA: Option<&'static str> = Some($schema);
        }
    };
    ($(#[$meta:meta])* $vis:vis $name:ident = $table:literal . $column:literal) => {
        $(#[$meta])*
        #[doc = concat!("Column context for `", $table, ".", $column, "`.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        $vis struct $name;
        impl $crate::ColumnContext for $name {
            const TABLE: &'static str = $table;
            const COLUMN: &'static str = $column;
        }
    };
}
