//! Row keys in `Unreadable` (review 3, L8): a row whose value does not open is reported with a
//! key an operator can find, printed by one rule. Integer and UUID keys are surrogates and print
//! in full; text and binary keys may be natural keys (an email) and print as kind and length;
//! `Unreadable::key` always holds every part. SQLite (a composite integer-and-text key, a binary
//! key) and PostgreSQL (a `uuid` key), each value tampered by SQL.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::{Error, Fallible, KeyPart, RowKey, Unreadable};
use encrypted_types_tests::models::{BinRecord, UuidRecord, Visit};
use encrypted_types_tests::real_schema::{self, et_uuid_bin, et_uuid_pg, et_visits};

/// The first unreadable row of a `Fallible` read.
fn first_unreadable<T>(rows: Vec<Fallible<T>>) -> Box<Unreadable> {
    rows.into_iter()
        .find_map(|r| r.into_result().err())
        .expect("a tampered row is reported")
}

fn setup<C: SimpleConnection>(conn: &mut C, backend: &str) {
    encrypted_types_tests::install_keyring();
    for stmt in real_schema::ddl(backend) {
        conn.batch_execute(&stmt).unwrap();
    }
}

#[test]
fn text_and_binary_keys_print_as_kind_and_length_and_are_held_in_full() {
    let conn = &mut encrypted_types_tests::sqlite();
    setup(conn, "sqlite");
    let visit = Visit {
        clinic_id: 1,
        patient_no: "ann@example.org".into(),
        note: "a note".into(),
        code: 7,
        ref_id: None,
    };
    diesel::insert_into(et_visits::table)
        .values(Visit::batch(std::slice::from_ref(&visit)))
        .execute(conn)
        .unwrap();
    // Another row's value copied over this one's: it opens under its key but not here.
    conn.batch_execute("UPDATE et_visits SET note = code")
        .unwrap();
    let rows: Vec<Fallible<Visit>> = et_visits::table
        .select(Fallible::<Visit>::as_select())
        .load(conn)
        .unwrap();
    let u = first_unreadable(rows);
    assert_eq!(
        u.key,
        RowKey(vec![
            KeyPart::Int(1),
            KeyPart::Text("ann@example.org".into())
        ])
    );
    assert_eq!(u.column, "note");
    assert_eq!(u.error, Error::AuthenticationFailed);
    let message = u.to_string();
    assert_eq!(
        message,
        "et_visits row 1, <text, 15 bytes>: column note: authentication failed"
    );
    assert!(!format!("{u:?}").contains("ann@"), "{u:?}");
    assert_eq!(u.key.full().to_string(), "1, \"ann@example.org\"");

    let id = vec![0xab_u8; 16];
    let record = BinRecord {
        id: id.clone(),
        clinic_id: 2,
        name: "Ann".into(),
        email: "ann@example.org".into(),
    };
    diesel::insert_into(et_uuid_bin::table)
        .values(BinRecord::batch(std::slice::from_ref(&record)))
        .execute(conn)
        .unwrap();
    conn.batch_execute("UPDATE et_uuid_bin SET name = email")
        .unwrap();
    let rows: Vec<Fallible<BinRecord>> = et_uuid_bin::table
        .select(Fallible::<BinRecord>::as_select())
        .load(conn)
        .unwrap();
    let u = first_unreadable(rows);
    assert_eq!(u.key, RowKey(vec![KeyPart::Bytes(id)]));
    assert_eq!(
        u.to_string(),
        "et_uuid_bin row <binary, 16 bytes>: column name: authentication failed"
    );
    assert_eq!(u.key.full().to_string(), format!("x'{}'", "ab".repeat(16)));
}

#[test]
fn uuid_keys_print_in_full() {
    let conn = &mut encrypted_types_tests::pg();
    let _serial = encrypted_types_tests::serial();
    setup(conn, "postgres");
    let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let record = UuidRecord {
        id,
        clinic_id: 1,
        name: "Ann".into(),
        email: "ann@example.org".into(),
    };
    diesel::insert_into(et_uuid_pg::table)
        .values(UuidRecord::batch(std::slice::from_ref(&record)))
        .execute(conn)
        .unwrap();
    conn.batch_execute("UPDATE et_uuid_pg SET name = email")
        .unwrap();
    let rows: Vec<Fallible<UuidRecord>> = et_uuid_pg::table
        .select(Fallible::<UuidRecord>::as_select())
        .load(conn)
        .unwrap();
    let u = first_unreadable(rows);
    assert_eq!(u.key, RowKey::from(id));
    assert_eq!(
        u.to_string(),
        "et_uuid_pg row 01234567-89ab-cdef-0123-456789abcdef: column name: authentication failed"
    );
    conn.batch_execute("DROP TABLE et_uuid_pg").unwrap();
}
