//! Field-level encryption for Diesel.
//!
//! [`Encrypted<T, C>`](struct@Encrypted) is a Diesel column type over `Binary` (`BYTEA`, `BLOB`,
//! `VARBINARY`). Writing one seals its value with AES-256-GCM under the process-wide
//! [`Keyring`]; reading one opens it with exactly the key its header names. The table and column
//! (the [`ColumnContext`] `C`), the tenant and the value type are authenticated with every
//! value, so ciphertext copied to another column or table does not open, and one copied to
//! another tenant's row is refused when the row is read (`#[derive(Encrypted)]`,
//! [`Encrypted::verify_tenant`]). The byte format is specified in `docs/FORMAT.md`.
//!
//! ```
//! use diesel::prelude::*;
//! use encrypted_types::{Encrypted, KeyMaterial, Keyring};
//!
//! diesel::table! { patients (id) { id -> Integer, ssn -> Binary, notes -> Nullable<Binary> } }
//! encrypted_types::column_context!(PatientsSsn = "patients"."ssn");
//! encrypted_types::column_context!(PatientsNotes = "patients"."notes");
//!
//! #[derive(Queryable, Insertable, Debug)]
//! #[diesel(table_name = patients)]
//! struct Patient {
//!     id: i32,
//!     ssn: Encrypted<String, PatientsSsn>,
//!     notes: Option<Encrypted<String, PatientsNotes>>,
//! }
//!
//! // At startup: in production the key material comes unwrapped from a KMS or HSM.
//! Keyring::builder().data_key(1, None, KeyMaterial::generate()?).primary(None, 1).build()?.install();
//!
//! let conn = &mut SqliteConnection::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE patients (id INTEGER PRIMARY KEY, ssn BLOB NOT NULL, notes BLOB)")
//!     .execute(conn)?;
//! let ann = Patient { id: 1, ssn: Encrypted::new("123-45-6789".into()), notes: None };
//! diesel::insert_into(patients::table).values(&ann).execute(conn)?;
//!
//! let back: Patient = patients::table.find(1).first(conn)?;
//! assert_eq!(back.ssn.as_str(), "123-45-6789");
//! assert!(!format!("{back:?}").contains("6789"));
//!
//! let stored: Vec<u8> = patients::table.select(patients::ssn).first::<Vec<u8>>(conn)?;
//! assert!(!stored.windows(4).any(|w| w == b"6789"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |------------|------|
//! | `derive` (default) | `#[derive(Encrypted)]` |
//! | `sqlite` | `ToSql`/`FromSql` for `Encrypted` and blind indexes on SQLite (also under diesel-async's `SyncConnectionWrapper`) |
//! | `postgres` | the same on PostgreSQL (diesel's `Pg` backend, sync or diesel-async) |
//! | `mysql` | the same on MySQL and MariaDB (diesel's `Mysql` backend, sync or diesel-async) |
//! | `chrono` | codecs for `NaiveDate`, `NaiveDateTime`, `DateTime<Utc>` |
//! | `uuid` | codec for `uuid::Uuid` |
//! | `json` | codecs for `serde_json::Value` and [`Json<T>`](Json) (any serde type) |
//! | `keystore` | the key table and its loader ([`store`]), the KEK provider trait ([`kek`]) |
//! | `migrations` | the key table's embedded migrations (`KeyStore::run_migrations`) |
//! | `async` | key-store operations, jobs and [`schema::check`] on diesel-async connections (`*_async`, awaited; tokio for the waits) |
//! | `local-kek` | a KEK file for development |
//! | `aws-kms` | AWS KMS as KEK provider (the AWS SDK; Rust 1.94.1) |
//! | `pkcs11` | an HSM through PKCS#11 as KEK provider |
//! | `cli` | the operator's toolkit ([`cli`]): `keys`, `jobs`, `inventory`, `verify`, `check`, `schema` commands to mount in an application's binary (clap, indicatif) |
//! | `postgres-connection`, `mysql-connection` | [`cli::run`] connects to `postgres://` and `mysql://` URLs (libpq, libmysqlclient) |
//! | `metrics` | seal, open and failure counters through the [`metrics`](https://docs.rs/metrics) facade ([`audit`]) |
//! | `test-vectors` | `format::seal_with_nonce`, `format::seal_with_suite`, `format::hazmat` and `index::hazmat`, for known-answer tests only |
//!
//! Only `derive` is on by default; enable the backends and codecs you use.
// `unsafe` is denied (workspace lint) everywhere but `format/nonce/page.rs`, which says why.
#![doc(test(attr(deny(warnings))))]

pub mod audit;
mod binding;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod column;
#[cfg(feature = "keystore")]
#[doc(hidden)]
pub mod db;
mod error;
pub mod format;
pub mod index;
#[cfg(feature = "keystore")]
pub mod jobs;
#[cfg(feature = "keystore")]
pub mod kek;
mod keyring;
pub mod migration;
mod model;
mod row_key;
#[cfg(feature = "keystore")]
pub mod schema;
#[cfg(feature = "keystore")]
pub mod store;
mod tenant;

pub use binding::{MAX_ROW_PARTS, RowBinding, RowColumn, RowIdentity, RowKind, RowPart};
#[cfg(feature = "json")]
pub use codec::Json;
pub use codec::{Plaintext, SecretBuf};
pub use column::context::{ColumnContext, Unbound};
pub use column::encrypted::Encrypted;
pub use column::row::{Fallible, FallibleModel, Unreadable};
pub use column::written::Written;
pub use error::Error;
pub use format::key::{BlindIndexRootKey, DataKey, KeyId, KeyMaterial};
pub use keyring::{Keyring, KeyringBuilder};
pub use model::{
    ColumnInfo, EncryptedModel, LegacyColumn, ModelInfo, PlainColumn, SqlKind,
    validate as model_validate,
};
pub use row_key::{FullKey, KeyPart, RowKey, ToKeyPart};

/// Derives field-level encryption for a Diesel model struct.
///
/// Mark the fields to encrypt with `#[encrypted]`; add `blind_index` to find rows by a field.
/// The table needs a `Binary` column per encrypted field and one per blind index
/// (`<field>_bidx` unless `column = ...` names it).
///
/// ```
/// # use encrypted_types::{Encrypted, KeyMaterial, Keyring};
/// # use diesel::prelude::*;
/// # diesel::table! { patients (id) { id -> Integer, clinic_id -> BigInt, name -> Binary,
/// #   email -> Binary, email_bidx -> Binary, ssn -> Binary, ssn_bidx -> Binary,
/// #   dob -> Binary, notes -> Nullable<Binary> } }
/// #[derive(Encrypted, PartialEq)]
/// #[encrypted(table = patients, tenant = clinic_id)]
/// struct Patient {
///     id: i32,
///     clinic_id: i64,
///     #[encrypted]
///     name: String,
///     #[encrypted(blind_index(normalize = email))]
///     email: String,
///     #[encrypted(blind_index(normalize = digits, bits = 16))]
///     ssn: String,
///     #[encrypted]
///     dob: chrono::NaiveDate,
///     #[encrypted]
///     notes: Option<String>,
/// }
/// # Keyring::builder().data_key(1, Some("7".into()), KeyMaterial::generate()?)
/// #   .primary(Some("7".into()), 1).blind_index_root(Some("7".into()), KeyMaterial::generate()?)
/// #   .build()?.install();
/// # let conn = &mut SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE patients (id INTEGER PRIMARY KEY, clinic_id BIGINT NOT NULL, \
/// #   name BLOB NOT NULL, email BLOB NOT NULL, email_bidx BLOB NOT NULL, ssn BLOB NOT NULL, \
/// #   ssn_bidx BLOB NOT NULL, dob BLOB NOT NULL, notes BLOB)").execute(conn)?;
///
/// let ann = Patient { id: 1, clinic_id: 7, name: "Ann".into(), email: "ann@example.org".into(),
///     ssn: "123-45-6789".into(), dob: chrono::NaiveDate::from_ymd_opt(1980, 2, 29).unwrap(), notes: None };
/// diesel::insert_into(patients::table).values(&ann).execute(conn)?;
/// let found = Patient::find_by_email(conn, &7, " Ann@Example.ORG")?;
/// assert_eq!(found, vec![ann]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Attributes
///
/// On the struct, `#[encrypted(...)]`:
///
/// | key | meaning |
/// |---|---|
/// | `table = path` | the `diesel::table!` module (or `#[diesel(table_name = path)]`); required |
/// | `tenant = field` | the field holding the row's tenant id: values are sealed and indexed with the tenant's keys, and a value from another tenant's row is refused on read (`Error::TenantMismatch`) |
/// | `primary_key(a, b)` | primary-key fields (default `id`); never encrypted, skipped by `AsChangeset` |
/// | `bind_row = field` / `bind_row(a, b)` | binds every encrypted value to the row's identity, which is the primary key (all of its fields, up to 4; suite 3): a value copied into another row fails with `Error::AuthenticationFailed`, an unbound value in the column with `Error::RowBinding`. The key must be written by the insert (not `Option`, not `skip_insertion`): use a client-generated id. Not with `migrate_from`. Setters take them after the tenant. `docs/KEYS.md`, "Binding values to their row" |
/// | `derive(...)` | which of `Queryable`, `Selectable`, `Insertable`, `AsChangeset` to implement (default: all four) |
/// | `debug = redacted` / `debug = none` | `Debug` for the model, printing every encrypted field as `<redacted>` (the default: a model holds plaintext, and `{:?}` is how it reaches logs), or none, for a model that writes its own. A `#[derive(Debug)]` beside `Encrypted` conflicts with it (E0119): remove it, or write `debug = none` |
/// | `zeroize` | the model wipes every encrypted field's plaintext when it is dropped (`Drop`, through the generated `wipe_plaintext`). A type with `Drop` cannot have a field moved out of it (E0509): clone the field or `std::mem::take` it |
/// | `none = null` / `none = skip` | what an update writes for a `None` field: NULL, value and index gone (the default), or nothing, the column kept (a patch struct); `#[diesel(treat_none_as_null = ..)]` is read too |
/// | `compound_index(name = n, fields(a(..), b, ..), bits = .., column = .., version = .., previous = ..)` | one blind index over 1 to 8 encrypted fields, each with its own normalizers, in column `<n>_bidx`: `Model::<n>_eq`, `<n>_matches`, `find_by_<n>` and `find_by_<n>_async` take the values as one tuple of references in field order (below). Repeatable. Over one field it is a *partial* index beside the field's own (`fields(ssn(last4))`). `docs/FORMAT.md` §7.2 |
///
/// On a field, `#[encrypted]` or `#[encrypted(blind_index(...))]` with these optional keys:
/// `normalize = email` or `normalize(trim, lowercase)` (strings only: `trim`, `lowercase`,
/// `email`, `digits`, `casefold`, `last4`, `prefix(n)`), `bits = N` (1..=256, default 256; size it with
/// [`index::plan`]), `column = name` (default `<field>_bidx`), `version = N` (default 1), and
/// during a blind-index key rotation `previous = N - 1`: lookups then match both versions while
/// `jobs::reindex` moves the rows to the new one (`docs/KEYS.md`). A rotation that also changes
/// the length or the normalizers names the old ones:
/// `previous(version = 1, bits = 16, normalize = digits)` (what it omits is the new version's).
/// `migrate_from = legacy_column` moves a `String` field out of a legacy `TEXT`/`VARCHAR` column
/// (a `Vec<u8>` field out of a binary one) without rewriting the table: the legacy value, while
/// there is one, is what reads return; every write seals the value and sets the legacy column
/// to NULL; `jobs::encrypt_column` moves the rest (`docs/KEYS.md`, "Encrypting a column that
/// held plaintext").
///
/// `column = name` at the field level (or diesel's own `#[diesel(column_name = name)]`) stores
/// the field in another SQL column, and its blind index in `<name>_bidx` by default. Values and
/// blind indexes are bound to the field's *context name*, not to the SQL column: by default the
/// field's name, or `context = "name"` to pin it (unique within the table). Renaming a column
/// later changes no stored value; renaming the Rust *field* does, so pin the old name with
/// `context = "old_name"` when you rename a field. Two models of one table must not give one
/// context name to two different columns (the derive sees one model at a time). During a migration the sealed column takes a new name and the
/// legacy one keeps its own, so an application version that still writes the old name writes
/// the legacy column, never the sealed one:
///
/// ```
/// # use encrypted_types::{Encrypted, KeyMaterial, Keyring};
/// # use diesel::prelude::*;
/// # diesel::table! { staff (id) { id -> Integer, email -> Nullable<Text>,
/// #   email_sealed -> Nullable<Binary>, email_sealed_bidx -> Nullable<Binary> } }
/// #[derive(Encrypted)]
/// #[encrypted(table = staff)]
/// struct Staff {
///     id: i32,
///     // Sealed into `email_sealed` under the context name `email`; read from the legacy
///     // `email` while it holds a value.
///     #[encrypted(column = email_sealed, migrate_from = email, blind_index(normalize = email))]
///     email: String,
/// }
/// # Keyring::builder().data_key(1, None, KeyMaterial::generate()?).primary(None, 1)
/// #   .blind_index_root(None, KeyMaterial::generate()?).build()?.install();
/// # let conn = &mut SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE staff (id INTEGER PRIMARY KEY, email TEXT, email_sealed BLOB, email_sealed_bidx BLOB)").execute(conn)?;
/// diesel::insert_into(staff::table)
///     .values(&Staff { id: 1, email: "ann@example.org".into() })
///     .execute(conn)?;
/// let plain: Option<String> = staff::table.select(staff::email).first(conn)?;
/// assert_eq!(plain, None);
/// assert_eq!(Staff::find_by_email(conn, "ann@example.org")?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A compound index finds a patient by last name and date of birth, or by the last four SSN
/// digits and date of birth, with the decrypted re-check of every field:
///
/// ```
/// # use encrypted_types::{Encrypted, KeyMaterial, Keyring};
/// # use diesel::prelude::*;
/// # diesel::table! { people (id) { id -> Integer, clinic -> BigInt, last_name -> Binary,
/// #   born -> Binary, ssn -> Binary, name_born_bidx -> Binary, ssn4_born_bidx -> Binary } }
/// #[derive(Encrypted, PartialEq)]
/// #[encrypted(
///     table = people,
///     tenant = clinic,
///     compound_index(name = name_born, fields(last_name(trim, casefold), born), bits = 16),
///     compound_index(name = ssn4_born, fields(ssn(last4), born), bits = 16),
/// )]
/// struct Person {
///     id: i32,
///     clinic: i64,
///     #[encrypted]
///     last_name: String,
///     #[encrypted]
///     born: chrono::NaiveDate,
///     #[encrypted]
///     ssn: String,
/// }
/// # Keyring::builder().data_key(1, Some("7".into()), KeyMaterial::generate()?)
/// #   .primary(Some("7".into()), 1).blind_index_root(Some("7".into()), KeyMaterial::generate()?)
/// #   .build()?.install();
/// # let conn = &mut SqliteConnection::establish(":memory:")?;
/// # diesel::sql_query("CREATE TABLE people (id INTEGER PRIMARY KEY, clinic BIGINT NOT NULL, \
/// #   last_name BLOB NOT NULL, born BLOB NOT NULL, ssn BLOB NOT NULL, \
/// #   name_born_bidx BLOB NOT NULL, ssn4_born_bidx BLOB NOT NULL)").execute(conn)?;
/// let born = chrono::NaiveDate::from_ymd_opt(1985, 3, 14).unwrap();
/// let p = Person { id: 1, clinic: 7, last_name: "Müller".into(), born, ssn: "123-45-6789".into() };
/// diesel::insert_into(people::table).values(&p).execute(conn)?;
/// assert_eq!(Person::find_by_name_born(conn, &7, (" MÜLLER", &born))?, vec![p]);
/// assert_eq!(Person::find_by_ssn4_born(conn, &7, ("6789", &born))?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Every write of the whole model (insert, `AsChangeset`, `batch`) writes every compound index
/// from all of its fields; a row with a `None` field gets a NULL index. A field of a compound
/// index has no `set_<field>` (calling it is a compile error that says why): a changeset of one
/// field cannot compute an index over several, so update through the whole model. For the
/// same reason a `none = skip` patch may not skip a field of a compound index, and a field
/// still migrated from a legacy column (`migrate_from`) cannot be in one. `jobs::reindex`
/// recomputes compound indexes too, reading every field of each row; `jobs::encrypt_column`
/// of a field recomputes the compound indexes over it once the field is sealed.
///
/// The same holds for compound indexes: every model that writes a field of one must declare it
/// (a patch model writing `ssn` without `ssn4_dob` leaves that index stale).
///
/// Every model that writes a field must declare the same `blind_index` on it (columns, bits,
/// normalizers, version): a model that writes the value without its index, or with another
/// configuration, leaves the stored index stale. Declare one model per table for writes, or keep
/// the declarations identical.
///
/// # What is generated
///
/// - `Selectable`, `Queryable`, `Insertable` (for `&Model` and `Model`) and `AsChangeset`
///   impls on the model itself, through hidden row types holding [`Encrypted`](struct@Encrypted) values and
///   [`index::BlindIndex`] companions: every write path that writes a field writes its index.
///   A `None` field writes NULL for both (unless `none = skip`), so saving a model with a note
///   removed leaves no ciphertext of it. Read with `select(Model::as_select())`.
/// - Per encrypted field, with `AsChangeset` (and not `none = skip`): `Model::set_email([tenant,] value)`, a changeset
///   of that field alone (value, blind index, legacy column) for `diesel::update(..).set(..)`.
/// - `Debug` (unless `debug = none`): clear fields as they are, encrypted ones `<redacted>`.
/// - `Model::batch(&[Model])`: rows for `insert_into(..).values(..)` batch inserts.
/// - Per blind index: `Model::email_eq([tenant,] value)`, a filter composable with other Diesel
///   filters on sync and async connections; `model.email_matches(value)`, the decrypted
///   equality check; `Model::find_by_email(conn, [tenant,] value)`, which runs the lookup and
///   re-checks every candidate, so a truncated index never returns a wrong row.
///   `Model::email_in([tenant,] values)` and `Model::find_by_email_in(conn, [tenant,] values)`
///   do the same for many values in one `IN (...)` query (both versions during a rotation).
///   With this crate's `async` feature, `find_by_email_async` and `find_by_email_in_async`
///   do it on diesel-async connections.
/// - Per compound index `n`: `Model::n_eq([tenant,] (a, b))`, `model.n_matches((a, b))`,
///   `Model::find_by_n(conn, [tenant,] (a, b))` and (`async`) `find_by_n_async`, where `(a, b)`
///   are references in field order (`&str` for a `String` field) or, for an index of one field,
///   the reference alone.
/// - [`EncryptedModel`]: the model's table, key, tenant column, encrypted columns and compound
///   indexes, for the rotation and migration jobs.
#[cfg(feature = "derive")]
pub use encrypted_derive::Encrypted;

/// Keeps its input (the derive's diesel-async lookups) when this crate has its `async` feature.
#[cfg(feature = "async")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_async {
    ($($t:tt)*) => { $($t)* };
}

/// Drops its input: this crate was built without its `async` feature.
#[cfg(not(feature = "async"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_async {
    ($($t:tt)*) => {};
}

/// What generated code reaches through (`::encrypted_types::__private`), so users need no
/// direct dependency on the crates it uses. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::format;
    pub use crate::index::{
        BlindIndex, CompoundField, CompoundIndex, CompoundParams, CompoundSpec, IndexParams,
        IndexRoot, IndexSpec, Normalizer, Wanted,
    };
    pub use crate::keyring::RowKeys;
    pub use crate::model::probe::{SqlKnown, SqlProbe, SqlUnknown};
    pub use crate::row_key::{KeyPartOf, ViaDebug, ViaToKeyPart};
    pub use crate::{
        ColumnContext, ColumnInfo, Encrypted, EncryptedModel, Error, FallibleModel, LegacyColumn,
        ModelInfo, PlainColumn, Plaintext, RowBinding, RowColumn, RowIdentity, RowKey, RowKind,
        RowPart, TenantId, Unreadable, Written, model_validate,
    };
    pub use diesel;
    #[cfg(feature = "async")]
    pub use diesel_async;

    pub use crate::__if_async as if_async;

    /// The values of `columns` in one row of `table` were opened: one call to the audit sink
    /// (and the `metrics` counters) per row read that opened any.
    pub fn audit_row(tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        if !columns.is_empty() {
            crate::audit::opened_row(tenant, table, columns);
        }
    }

    /// What a model's derived `Debug` prints in place of an encrypted field.
    #[derive(Clone, Copy)]
    pub struct Redacted;

    impl core::fmt::Debug for Redacted {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("<redacted>")
        }
    }

    /// A column of `Table`: what the derive checks each column it writes against, so a column
    /// missing from `table!` is reported at the field, with what to add.
    #[diagnostic::on_unimplemented(
        message = "the `table!` of `{Table}` has no column `{Self}`",
        label = "this field is written to it",
        note = "help: add the column to the `table!` declaration (`Binary`, or `Nullable<Binary>` for an optional field; a blind index is `<field>_bidx` unless `column = ...` names it) and to the table in a migration"
    )]
    pub trait ColumnOf<Table> {}
    impl<C: diesel::Column> ColumnOf<C::Table> for C {}

    /// Implemented by no type: the bound of the `set_<field>` a field of a compound index
    /// does not get, so that a call says why instead of "no function found".
    #[diagnostic::on_unimplemented(
        message = "a field of a compound index has no `set_<field>` of its own",
        label = "this value would be written without the other fields of the index",
        note = "help: a compound index is computed from all of its fields: update them through the whole model's changeset, `diesel::update(..).set(&model)`, which writes every field and every index together"
    )]
    pub trait CompoundFieldHasNoSetter {
        /// Never called.
        fn refuse(self) -> core::convert::Infallible;
    }

    /// A column declared `Binary` or `Nullable<Binary>`.
    pub trait BinaryColumn {}
    impl<C> BinaryColumn for C
    where
        C: diesel::Expression,
        C::SqlType: BinarySql,
    {
    }

    /// `Binary` and `Nullable<Binary>`: the SQL type of a column that holds sealed bytes.
    #[diagnostic::on_unimplemented(
        message = "a column of this encrypted field is declared `{Self}` in `table!`, not `Binary`",
        label = "its ciphertext or blind-index column",
        note = "help: declare it `Binary` (or `Nullable<Binary>`) and make the SQL column BYTEA, VARBINARY/BLOB or BLOB: a text column stores or converts the bytes as text"
    )]
    pub trait BinarySql {}
    impl BinarySql for diesel::sql_types::Binary {}
    impl BinarySql for diesel::sql_types::Nullable<diesel::sql_types::Binary> {}

    /// Compiles when `C` is a binary column of `Table`.
    pub fn binary_column<Table, C: ColumnOf<Table> + BinaryColumn>() {}

    /// Compiles when `C` is a column of `Table`.
    pub fn column<Table, C: ColumnOf<Table>>() {}
}
pub use tenant::TenantId;
