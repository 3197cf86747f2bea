//! Field-level encryption for Diesel.
//!
//! [`Encrypted<T, C>`](Encrypted) is a Diesel column type over `Binary` (`BYTEA`, `BLOB`,
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
//! | feature    | adds |
//! |------------|------|
//! | `sqlite`   | `ToSql`/`FromSql` for `Encrypted` on SQLite (also under diesel-async's `SyncConnectionWrapper`) |
//! | `postgres` | the same on PostgreSQL (diesel's `Pg` backend, sync or diesel-async) |
//! | `mysql`    | the same on MySQL and MariaDB (diesel's `Mysql` backend, sync or diesel-async) |
//! | `chrono`   | codecs for `NaiveDate`, `NaiveDateTime`, `DateTime<Utc>` |
//! | `uuid`     | codec for `uuid::Uuid` |
//! | `json`     | codecs for `serde_json::Value` and [`Json<T>`](Json) (any serde type) |
//!
//! None is on by default; enable the backends you use.
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod codec;
mod context;
mod encrypted;
mod error;
pub mod format;
pub mod index;
mod key;
mod keyring;
mod model;
mod nonce;
mod sql;
mod tenant;

#[cfg(feature = "json")]
pub use codec::Json;
pub use codec::{Plaintext, SecretBuf};
pub use context::{ColumnContext, Unbound};
pub use encrypted::Encrypted;
pub use error::Error;
pub use key::{BlindIndexRootKey, DataKey, KeyId, KeyMaterial};
pub use keyring::{Keyring, KeyringBuilder};
pub use model::{ColumnInfo, EncryptedModel, ModelInfo};

#[cfg(feature = "derive")]
pub use encrypted_derive::Encrypted;

/// What generated code reaches through, so a renamed dependency still works. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::index::{BlindIndex, IndexParams, IndexSpec, Normalizer};
    pub use crate::{
        ColumnContext, ColumnInfo, Encrypted, EncryptedModel, Error, ModelInfo, Plaintext, TenantId,
    };
    pub use diesel;
}
pub use tenant::TenantId;
