//! The patients model and the benchmark's tables.

use diesel::prelude::*;
use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> BigInt,
        clinic_id -> BigInt,
        name -> Binary,
        email -> Binary,
        email_bidx -> Binary,
        ssn -> Binary,
        ssn_bidx -> Binary,
        date_of_birth -> Binary,
        notes -> Nullable<Binary>,
        ssn4_dob_bidx -> Nullable<Binary>,
    }
}

/// A patient, as the application sees it. The derive stores five fields encrypted and keeps
/// blind indexes of the email and the SSN; the clinic is the tenant. Every value is bound to
/// the patient's id (`bind_row`, assigned by the application, not the database): a value
/// copied into another patient's row does not open. The front desk finds a patient by the
/// last four SSN digits and the date of birth (`ssn4_dob`, a compound index over both).
#[derive(Encrypted, Clone, PartialEq)]
#[encrypted(
    table = patients,
    tenant = clinic_id,
    bind_row = id,
    compound_index(name = ssn4_dob, fields(ssn(last4), date_of_birth))
)]
pub(crate) struct Patient {
    pub(crate) id: i64,
    pub(crate) clinic_id: i64,
    #[encrypted]
    pub(crate) name: String,
    #[encrypted(blind_index(normalize = email))]
    pub(crate) email: String,
    #[encrypted(blind_index(normalize = digits))]
    pub(crate) ssn: String,
    #[encrypted]
    pub(crate) date_of_birth: chrono::NaiveDate,
    #[encrypted]
    pub(crate) notes: Option<String>,
}

diesel::table! {
    bench_encrypted (id) {
        id -> BigInt,
        clinic_id -> BigInt,
        name -> Binary,
        email -> Binary,
        email_bidx -> Binary,
        ssn -> Binary,
        ssn_bidx -> Binary,
        notes -> Binary,
    }
}

diesel::table! {
    bench_plain (id) {
        id -> BigInt,
        clinic_id -> BigInt,
        name -> Text,
        email -> Text,
        ssn -> Text,
        notes -> Text,
    }
}

/// The benchmark's encrypted row.
#[derive(Encrypted, Clone, PartialEq)]
#[encrypted(table = bench_encrypted, tenant = clinic_id, derive(Queryable, Selectable, Insertable))]
pub(crate) struct BenchEncrypted {
    pub(crate) id: i64,
    pub(crate) clinic_id: i64,
    #[encrypted]
    pub(crate) name: String,
    #[encrypted(blind_index(normalize = email))]
    pub(crate) email: String,
    #[encrypted(blind_index(normalize = digits))]
    pub(crate) ssn: String,
    #[encrypted]
    pub(crate) notes: String,
}

/// The same row in plaintext.
#[derive(Queryable, Selectable, Insertable, Debug, Clone, PartialEq)]
#[diesel(table_name = bench_plain)]
pub(crate) struct BenchPlain {
    pub(crate) id: i64,
    pub(crate) clinic_id: i64,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) ssn: String,
    pub(crate) notes: String,
}
