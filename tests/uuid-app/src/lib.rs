//! A model with a UUID primary key bound to its rows (`bind_row = id`), as a PostgreSQL
//! application writes it with the crate features README documents: `derive`, `postgres` and
//! `uuid`.

use encrypted_types::Encrypted;

/// The table, as `diesel print-schema` writes it.
#[allow(missing_docs)] // `diesel::table!` writes items without documentation
pub mod schema {
    diesel::table! {
        et_uuid_app (id) {
            id -> Uuid,
            clinic_id -> BigInt,
            name -> Binary,
        }
    }
}

/// An employee, its values bound to its UUID.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_uuid_app, tenant = clinic_id, bind_row = id)]
pub struct Employee {
    /// Assigned by the application.
    pub id: uuid::Uuid,
    /// The tenant.
    pub clinic_id: i64,
    /// Sealed, bound to `id`.
    #[encrypted]
    pub name: String,
}
