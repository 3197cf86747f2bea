//! `jobs::verify`: every stored value opened as the application would read it, and each one
//! that does not reported by row key, column and reason, on every backend, sync and async.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::jobs::{RowKey, SkipReason, Unopenable, VerifyReport};
use encrypted_types_tests::models::{BoundPatient, Patient};

fn patients() -> Vec<Patient> {
    (0..30)
        .map(|i| {
            let mut p = Patient::sample(
                7_000 + i,
                1 + i64::from(i % 2),
                &format!("v{i}@example.org"),
                &format!("{i:09}"),
            );
            p.phone = (i % 3 == 0).then(|| format!("555-{i:04}"));
            p.notes = (i % 5 != 0).then(|| format!("notes {i}"));
            p
        })
        .collect()
}

fn bad(column: &'static str, id: i64, reason: SkipReason) -> (&'static str, RowKey, SkipReason) {
    (column, RowKey::from(id), reason)
}

fn found(report: &VerifyReport) -> Vec<(&'static str, RowKey, SkipReason)> {
    report
        .unopenable
        .iter()
        .map(
            |Unopenable {
                 column,
                 key,
                 reason,
                 ..
             }| (*column, key.clone(), *reason),
        )
        .collect()
}

macro_rules! verify_suite {
    ($connect:path) => {
        use super::*;
        use diesel::prelude::*;
        use encrypted_types::EncryptedModel;
        use encrypted_types::jobs::verify;
        use encrypted_types_tests::real_schema::et_bound;
        use encrypted_types_tests::schema::et_patients;

        /// Non-NULL stored values over the model's encrypted columns, counted in SQL.
        fn stored_values(conn: &mut _Conn) -> u64 {
            let t = et_patients::table;
            let n: [i64; 6] = [
                t.filter(et_patients::name.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
                t.filter(et_patients::email.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
                t.filter(et_patients::ssn.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
                t.filter(et_patients::dob.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
                t.filter(et_patients::notes.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
                t.filter(et_patients::phone.is_not_null())
                    .count()
                    .get_result(conn)
                    .unwrap(),
            ];
            n.iter().sum::<i64>() as u64
        }

        #[test]
        fn every_value_is_opened_and_each_unopenable_one_is_named() {
            let _g = encrypted_types_tests::serial();
            let conn = &mut $connect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&patients()))
                .execute(conn)
                .unwrap();

            let clean = verify(conn, &Patient::MODEL, None).unwrap();
            assert!(clean.ok(), "{clean:?}");
            let values = stored_values(conn);
            assert_eq!(values, 30 * 4 + 24 + 10, "fixture");
            assert_eq!((clean.values, clean.checked), (values, values));

            // A database writer flips one bit of 7003's SSN, copies tenant 2's name of 7001
            // into tenant 1's row 7002, and cuts 7004's notes short.
            let ssn: Vec<u8> = et_patients::table
                .find(7003)
                .select(et_patients::ssn)
                .first(conn)
                .unwrap();
            let mut flipped = ssn.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 0x20;
            diesel::update(et_patients::table.find(7003))
                .set(et_patients::ssn.eq(&flipped))
                .execute(conn)
                .unwrap();
            let other: Vec<u8> = et_patients::table
                .find(7001)
                .select(et_patients::name)
                .first(conn)
                .unwrap();
            diesel::update(et_patients::table.find(7002))
                .set(et_patients::name.eq(&other))
                .execute(conn)
                .unwrap();
            let notes: Option<Vec<u8>> = et_patients::table
                .find(7004)
                .select(et_patients::notes)
                .first(conn)
                .unwrap();
            diesel::update(et_patients::table.find(7004))
                .set(et_patients::notes.eq(notes.unwrap()[..5].to_vec()))
                .execute(conn)
                .unwrap();

            // And a raw SQL write puts plaintext in 7005's sealed name column.
            diesel::update(et_patients::table.find(7005))
                .set(et_patients::name.eq(b"Alice Planted".to_vec()))
                .execute(conn)
                .unwrap();

            let report = verify(conn, &Patient::MODEL, None).unwrap();
            assert!(!report.ok());
            assert_eq!(report.values, values, "nothing was written");
            assert_eq!(
                found(&report),
                [
                    bad("name", 7002, SkipReason::TenantMismatch),
                    bad("name", 7005, SkipReason::Plaintext),
                    bad("ssn", 7003, SkipReason::AuthenticationFailed),
                    bad("notes", 7004, SkipReason::Other),
                ]
            );
            // The application agrees: those four rows are the ones that do not read.
            let unreadable: Vec<i32> = et_patients::table
                .select(et_patients::id)
                .order(et_patients::id)
                .load::<i32>(conn)
                .unwrap()
                .into_iter()
                .filter(|id| {
                    et_patients::table
                        .find(*id)
                        .select(Patient::as_select())
                        .first(conn)
                        .is_err()
                })
                .collect();
            assert_eq!(unreadable, [7002, 7003, 7004, 7005]);

            // A sample opens exactly as many values per column as asked, and still reads all.
            let sampled = verify(conn, &Patient::MODEL, Some(5)).unwrap();
            assert_eq!(sampled.values, values);
            assert_eq!(sampled.checked, 6 * 5);
        }

        #[test]
        fn a_value_copied_into_another_row_of_a_bound_model_is_named() {
            let _g = encrypted_types_tests::serial();
            let conn = &mut $connect();
            let rows: Vec<BoundPatient> = (0..4)
                .map(|i| BoundPatient {
                    id: 9_100 + i,
                    clinic_id: 1,
                    ssn: format!("{i:09}"),
                    notes: Some(format!("notes {i}")),
                })
                .collect();
            diesel::insert_into(et_bound::table)
                .values(BoundPatient::batch(&rows))
                .execute(conn)
                .unwrap();
            assert!(verify(conn, &BoundPatient::MODEL, None).unwrap().ok());
            let ssn: Vec<u8> = et_bound::table
                .find(9_100)
                .select(et_bound::ssn)
                .first(conn)
                .unwrap();
            diesel::update(et_bound::table.find(9_102))
                .set(et_bound::ssn.eq(&ssn))
                .execute(conn)
                .unwrap();
            let report = verify(conn, &BoundPatient::MODEL, None).unwrap();
            assert_eq!(
                found(&report),
                [bad("ssn", 9_102, SkipReason::AuthenticationFailed)]
            );
        }
    };
}

mod sqlite {
    type _Conn = SqliteConnection;
    verify_suite!(encrypted_types_tests::sqlite);
}
mod postgres {
    type _Conn = PgConnection;
    verify_suite!(encrypted_types_tests::pg);
}
mod mysql {
    type _Conn = MysqlConnection;
    verify_suite!(encrypted_types_tests::mysql);
}

macro_rules! async_verify {
    ($connect:path) => {
        use super::*;
        use diesel_async::RunQueryDsl;
        use encrypted_types::EncryptedModel;
        use encrypted_types_tests::schema::et_patients;

        #[tokio::test]
        async fn verify_async_names_a_tampered_value() {
            let conn = &mut $connect().await;
            // One row at a time: diesel-async's SQLite wrapper has no batch insert. Ids of
            // their own, so the sync suite's rows never wait on these.
            for mut p in patients().into_iter().take(4) {
                p.id += 1_000;
                diesel::insert_into(et_patients::table)
                    .values(&p)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            assert!(
                encrypted_types::jobs::verify_async(conn, &Patient::MODEL, None)
                    .await
                    .unwrap()
                    .ok()
            );
            diesel::sql_query("UPDATE et_patients SET email = name WHERE id = 8001")
                .execute(conn)
                .await
                .unwrap();
            let report = encrypted_types::jobs::verify_async(conn, &Patient::MODEL, None)
                .await
                .unwrap();
            assert_eq!(
                found(&report),
                [bad("email", 8001, SkipReason::AuthenticationFailed)]
            );
        }
    };
}

mod async_sqlite {
    async_verify!(encrypted_types_tests::async_sqlite);
}
mod async_postgres {
    async_verify!(encrypted_types_tests::async_pg);
}
mod async_mysql {
    async_verify!(encrypted_types_tests::async_mysql);
}

/// A field that is not optional, `NULL` in its sealed column and in its legacy column during a
/// plaintext migration: the application cannot read the row, and `verify` names it. (SQLite
/// only: the test builds its own table, and DDL would end MySQL's test transaction.)
#[test]
fn a_required_value_missing_from_both_columns_is_named() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use encrypted_types::EncryptedModel;
    use encrypted_types_tests::models::Contact;
    use encrypted_types_tests::real_schema::{
        et_contacts, expand_contacts_ddl, legacy_contacts_ddl,
    };
    let conn = &mut encrypted_types_tests::sqlite();
    for sql in legacy_contacts_ddl("sqlite")
        .into_iter()
        .chain(expand_contacts_ddl("sqlite"))
    {
        conn.batch_execute(&sql).unwrap();
    }
    // 1: legacy plaintext only; 2: written by the application (sealed); 3: neither.
    conn.batch_execute(
        "INSERT INTO et_contacts (id, clinic_id, email_plain) VALUES (1, 1, 'one@example.org')",
    )
    .unwrap();
    let two = Contact {
        id: 2,
        clinic_id: 1,
        email: "two@example.org".into(),
        note: None,
    };
    diesel::insert_into(et_contacts::table)
        .values(&two)
        .execute(conn)
        .unwrap();
    conn.batch_execute("INSERT INTO et_contacts (id, clinic_id) VALUES (3, 1)")
        .unwrap();

    let report = encrypted_types::jobs::verify(conn, &Contact::MODEL, None).unwrap();
    assert_eq!(found(&report), [bad("email", 3, SkipReason::NoValue)]);
    assert_eq!(report.by_reason.get(&SkipReason::NoValue), Some(&1));
    let reads: Vec<bool> = (1..=3)
        .map(|id| {
            et_contacts::table
                .find(id)
                .select(Contact::as_select())
                .first(conn)
                .is_ok()
        })
        .collect();
    assert_eq!(
        reads,
        [true, true, false],
        "the application reads rows 1 and 2 only"
    );

    // Plaintext planted in row 2's legacy column: the application now reads it instead of the
    // sealed value, and verify names the row.
    conn.batch_execute("UPDATE et_contacts SET email_plain = 'planted@example.org' WHERE id = 2")
        .unwrap();
    let read = et_contacts::table
        .find(2)
        .select(Contact::as_select())
        .first(conn)
        .unwrap();
    assert_eq!(
        read.email, "planted@example.org",
        "the legacy value wins the read"
    );
    let report = encrypted_types::jobs::verify(conn, &Contact::MODEL, None).unwrap();
    assert_eq!(
        found(&report),
        [
            bad("email", 3, SkipReason::NoValue),
            bad("email", 2, SkipReason::LegacyShadows),
        ]
    );
}
