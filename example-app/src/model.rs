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
///
/// The indexes are sized for about 10,000 patients per clinic (`bits = 12`: CipherSweet's rule
/// `2 <= distinct / 2^bits < sqrt(rows)`; `clinic index-leakage` checks the live rows). They
/// were full-length (256 bits, version 1) before 0.2: version 2 is the new size, and
/// `previous(..)` keeps lookups matching rows still on version 1 until `clinic jobs reindex`
/// has moved them, after which `previous` can go.
#[derive(Encrypted, Clone, PartialEq)]
#[encrypted(
    table = patients,
    tenant = clinic_id,
    bind_row = id,
    compound_index(
        name = ssn4_dob,
        fields(ssn(last4), date_of_birth),
        bits = 12,
        version = 2,
        previous(version = 1, bits = 256)
    )
)]
pub(crate) struct Patient {
    pub(crate) id: i64,
    pub(crate) clinic_id: i64,
    #[encrypted]
    pub(crate) name: String,
    #[encrypted(blind_index(normalize = email, bits = 12, version = 2, previous(version = 1, bits = 256)))]
    pub(crate) email: String,
    #[encrypted(blind_index(normalize = digits, bits = 12, version = 2, previous(version = 1, bits = 256)))]
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

diesel::table! {
    bench_control (id) {
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

/// The benchmark's control row: the encrypted row's columns and byte widths, holding random
/// bytes, with no cryptography, so the bench can tell storage expansion from crypto and glue.
#[derive(Queryable, Selectable, Insertable, Debug, Clone, PartialEq)]
#[diesel(table_name = bench_control)]
pub(crate) struct BenchControl {
    pub(crate) id: i64,
    pub(crate) clinic_id: i64,
    pub(crate) name: Vec<u8>,
    pub(crate) email: Vec<u8>,
    pub(crate) email_bidx: Vec<u8>,
    pub(crate) ssn: Vec<u8>,
    pub(crate) ssn_bidx: Vec<u8>,
    pub(crate) notes: Vec<u8>,
}

/// The byte widths of each row's columns as the encrypted table stores them (name, email,
/// email index, ssn, ssn index, notes), from the rows the library seals for them.
pub(crate) fn sealed_widths(rows: &[BenchEncrypted]) -> Vec<[usize; 6]> {
    // A value that failed to seal would fail the encrypted insert too; 0 keeps the shapes.
    let len = |w: &encrypted_types::Written| w.bytes().map_or(0, <[u8]>::len);
    BenchEncrypted::batch(rows)
        .iter()
        .map(|w| {
            [
                len(&w.name),
                len(&w.email),
                len(&w.email_bidx),
                len(&w.ssn),
                len(&w.ssn_bidx),
                len(&w.notes),
            ]
        })
        .collect()
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
