//! One nonce per row write (ADR 0004, FORMAT.md §3.1), on every backend: a whole-model write
//! seals its fields under one nonce, each field still fails when moved to another column (any
//! model) or another row (`bind_row`), a field updated alone gets a nonce of its own and the
//! row still opens; under diesel-async, which serializes binds twice, one insert is one seal
//! per field (counted through the `metrics` facade).
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::Error;
use encrypted_types_tests::models::{BoundPatient, Patient, PatientPatch};

/// The nonce of a sealed value (FORMAT.md §1: bytes 6 to 18), read without the library.
fn nonce(sealed: &[u8]) -> &[u8] {
    &sealed[6..18]
}

/// The error a failed read carries, looked up through Diesel's wrapping.
fn read_error(e: &diesel::result::Error) -> Error {
    Error::from_diesel(e)
        .cloned()
        .unwrap_or_else(|| panic!("not a library error: {e}"))
}

fn bound(id: i64) -> BoundPatient {
    BoundPatient {
        id,
        clinic_id: 1,
        ssn: format!("{id:03}-44-5555"),
        notes: Some(format!("notes of bound patient {id}")),
    }
}

macro_rules! sync_suite {
    ($connect:path, $conn:ty) => {
        use super::*;
        use encrypted_types_tests::real_schema::et_bound;
        use encrypted_types_tests::schema::et_patients;

        type Raw = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

        fn raw(conn: &mut $conn, id: i32) -> Raw {
            et_patients::table
                .find(id)
                .select((
                    et_patients::name,
                    et_patients::email,
                    et_patients::ssn,
                    et_patients::dob,
                    et_patients::notes,
                ))
                .first(conn)
                .unwrap()
        }

        #[test]
        fn a_rows_fields_share_one_nonce_and_none_opens_in_another_column() {
            let conn = &mut $connect();
            let p = Patient::sample(
                encrypted_types_tests::next_id(),
                1,
                "nonce@example.org",
                "123-45-6789",
            );
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            let (name, email, ssn, dob, notes) = raw(conn, p.id);
            let notes = notes.unwrap();
            for other in [&email, &ssn, &dob, &notes] {
                assert_eq!(nonce(other), nonce(&name));
            }
            let back: Patient = et_patients::table
                .find(p.id)
                .select(Patient::as_select())
                .first(conn)
                .unwrap();
            assert!(back == p);

            // A field updated alone is sealed under a nonce of its own; the row still opens.
            let patch = PatientPatch {
                id: p.id,
                clinic_id: 1,
                email: None,
                notes: Some("updated alone".into()),
            };
            diesel::update(et_patients::table.find(p.id))
                .set(&patch)
                .execute(conn)
                .unwrap();
            let (name2, _, _, _, notes2) = raw(conn, p.id);
            assert_eq!(name2, name);
            assert_ne!(nonce(notes2.as_ref().unwrap()), nonce(&name));
            let back: Patient = et_patients::table
                .find(p.id)
                .select(Patient::as_select())
                .first(conn)
                .unwrap();
            assert_eq!(back.notes.as_deref(), Some("updated alone"));

            // A database writer moves each string field into another column of the same row
            // (same nonce, same key, same tenant): every one is refused.
            for (from, to) in [
                (&name, "email"),
                (&email, "ssn"),
                (&ssn, "name"),
                (&notes, "name"),
            ] {
                let (name_v, email_v, ssn_v) = match to {
                    "email" => (name.clone(), from.clone(), ssn.clone()),
                    "ssn" => (name.clone(), email.clone(), from.clone()),
                    _ => (from.clone(), email.clone(), ssn.clone()),
                };
                diesel::update(et_patients::table.find(p.id))
                    .set((
                        et_patients::name.eq(&name_v),
                        et_patients::email.eq(&email_v),
                        et_patients::ssn.eq(&ssn_v),
                    ))
                    .execute(conn)
                    .unwrap();
                let err = et_patients::table
                    .find(p.id)
                    .select(Patient::as_select())
                    .first::<Patient>(conn)
                    .err()
                    .unwrap_or_else(|| panic!("a value moved into {to} opened"));
                assert_eq!(
                    read_error(&err),
                    Error::AuthenticationFailed,
                    "moved into {to}"
                );
            }
        }

        #[test]
        fn a_bound_rows_fields_share_one_nonce_and_none_opens_in_another_row() {
            let conn = &mut $connect();
            let (a, b) = (bound(701), bound(702));
            diesel::insert_into(et_bound::table)
                .values(BoundPatient::batch(&[a.clone(), b.clone()]))
                .execute(conn)
                .unwrap();
            let fields = |conn: &mut $conn, id: i64| -> (Vec<u8>, Vec<u8>) {
                let (ssn, notes): (Vec<u8>, Option<Vec<u8>>) = et_bound::table
                    .find(id)
                    .select((et_bound::ssn, et_bound::notes))
                    .first(conn)
                    .unwrap();
                (ssn, notes.unwrap())
            };
            let (ssn_a, notes_a) = fields(conn, 701);
            let (ssn_b, notes_b) = fields(conn, 702);
            assert_eq!(nonce(&ssn_a), nonce(&notes_a));
            assert_eq!(nonce(&ssn_b), nonce(&notes_b));
            // Two rows of one batch are two row writes: two nonces.
            assert_ne!(nonce(&ssn_a), nonce(&ssn_b));
            // Row 701's ssn, then its notes, copied into row 702: refused each time.
            for (ssn, notes) in [(&ssn_a, &notes_b), (&ssn_b, &notes_a)] {
                diesel::update(et_bound::table.find(702))
                    .set((et_bound::ssn.eq(ssn), et_bound::notes.eq(notes)))
                    .execute(conn)
                    .unwrap();
                let err = et_bound::table
                    .find(702)
                    .select(BoundPatient::as_select())
                    .first::<BoundPatient>(conn)
                    .err()
                    .expect("a value of row 701 opened in row 702");
                assert_eq!(read_error(&err), Error::AuthenticationFailed);
            }
            let back: BoundPatient = et_bound::table
                .find(701)
                .select(BoundPatient::as_select())
                .first(conn)
                .unwrap();
            assert!(back == a);
        }
    };
}

mod sqlite {
    use diesel::prelude::*;
    sync_suite!(encrypted_types_tests::sqlite, SqliteConnection);
}

mod postgres {
    use diesel::prelude::*;
    sync_suite!(encrypted_types_tests::pg, PgConnection);
}

mod mysql {
    use diesel::prelude::*;
    sync_suite!(encrypted_types_tests::mysql, MysqlConnection);
}

encrypted_types::column_context!(PatientsNotes = "et_patients"."notes");

/// diesel-async serializes an insert's binds twice (once to prepare, once to execute): the
/// seals happen when the write struct is built, so one insert is one seal per field.
macro_rules! async_seal_count {
    ($name:ident, $connect:path) => {
        #[test]
        fn $name() {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use encrypted_types_tests::schema::et_patients;
            use metrics_util::debugging::{DebugValue, DebuggingRecorder};

            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // The recorder is this thread's; a current-thread runtime polls everything here.
            let back = metrics::with_local_recorder(&recorder, || {
                rt.block_on(async {
                    let conn = &mut $connect().await;
                    let p = Patient::sample(
                        encrypted_types_tests::next_id(),
                        2,
                        "async-count@example.org",
                        "987-65-4321",
                    );
                    diesel::insert_into(et_patients::table)
                        .values(&p)
                        .execute(conn)
                        .await
                        .unwrap();
                    let back: Patient = et_patients::table
                        .find(p.id)
                        .select(Patient::as_select())
                        .first(conn)
                        .await
                        .unwrap();
                    assert!(back == p);
                    // A hand-written `Encrypted` seals on its first `ToSql` and keeps the bytes.
                    let notes = encrypted_types::Encrypted::<String, PatientsNotes>::for_tenant(
                        "by hand".into(),
                        2_i64,
                    );
                    diesel::update(et_patients::table.find(p.id))
                        .set(et_patients::notes.eq(Some(notes)))
                        .execute(conn)
                        .await
                        .unwrap();
                    let back: Patient = et_patients::table
                        .find(p.id)
                        .select(Patient::as_select())
                        .first(conn)
                        .await
                        .unwrap();
                    assert_eq!(back.notes.as_deref(), Some("by hand"));
                    back
                })
            });
            let seals: Vec<(String, u64)> = snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter(|(k, _, _, _)| k.key().name() == "encrypted_types_seals_total")
                .map(|(k, _, _, v)| {
                    let column = k
                        .key()
                        .labels()
                        .find(|l| l.key() == "column")
                        .map(|l| l.value().to_owned())
                        .unwrap();
                    let n = match v {
                        DebugValue::Counter(n) => n,
                        _ => 0,
                    };
                    (column, n)
                })
                .collect();
            // name, email, ssn, dob and notes: phone is `None`, so nothing to seal.
            let mut columns: Vec<&str> = seals.iter().map(|(c, _)| c.as_str()).collect();
            columns.sort_unstable();
            assert_eq!(
                columns,
                ["dob", "email", "name", "notes", "ssn"],
                "{seals:?}"
            );
            for (column, n) in &seals {
                // The insert's seal, and for notes the hand-written update's.
                let expected = if column == "notes" { 2 } else { 1 };
                assert_eq!(*n, expected, "{column}: {seals:?}");
            }
            assert!(back.phone.is_none());
        }
    };
}

async_seal_count!(
    one_async_insert_is_one_seal_per_field_on_postgres,
    encrypted_types_tests::async_pg
);
async_seal_count!(
    one_async_insert_is_one_seal_per_field_on_mysql,
    encrypted_types_tests::async_mysql
);

/// A PostgreSQL enum: diesel-async looks its OID up by serializing the query's binds twice and
/// comparing the two outputs, so every bind must serialize to the same bytes both times.
mod pg_custom_type {
    use diesel::deserialize::{self, FromSql, FromSqlRow};
    use diesel::expression::AsExpression;
    use diesel::pg::{Pg, PgValue};
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use std::io::Write;

    #[derive(Debug, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "et_mood"))]
    pub struct MoodSql;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
    #[diesel(sql_type = MoodSql)]
    pub enum Mood {
        Calm,
        Anxious,
    }

    impl ToSql<MoodSql, Pg> for Mood {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
            out.write_all(match self {
                Self::Calm => b"calm",
                Self::Anxious => b"anxious",
            })?;
            Ok(IsNull::No)
        }
    }

    impl FromSql<MoodSql, Pg> for Mood {
        fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
            match bytes.as_bytes() {
                b"calm" => Ok(Self::Calm),
                b"anxious" => Ok(Self::Anxious),
                _ => Err("unknown mood".into()),
            }
        }
    }

    diesel::table! {
        use diesel::sql_types::*;
        use super::MoodSql;
        et_moods (id) {
            id -> Integer,
            clinic_id -> BigInt,
            mood -> MoodSql,
            note -> Binary,
        }
    }

    #[derive(Clone, PartialEq, encrypted_types::Encrypted)]
    #[encrypted(table = et_moods, tenant = clinic_id)]
    pub struct MoodNote {
        pub id: i32,
        pub clinic_id: i64,
        pub mood: Mood,
        #[encrypted]
        pub note: String,
    }

    #[test]
    fn a_query_with_a_custom_type_writes_one_seal_that_opens() {
        use diesel::prelude::*;
        use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                // Inside the test transaction: the type and table are rolled back with it.
                let conn = &mut encrypted_types_tests::async_pg().await;
                conn.batch_execute(
                    "CREATE TYPE et_mood AS ENUM ('calm', 'anxious');
                     CREATE TABLE et_moods (id INT PRIMARY KEY, clinic_id BIGINT NOT NULL,
                                            mood et_mood NOT NULL, note BYTEA NOT NULL);",
                )
                .await
                .unwrap();
                let m = MoodNote {
                    id: 1,
                    clinic_id: 1,
                    mood: Mood::Anxious,
                    note: "slept badly".into(),
                };
                diesel::insert_into(et_moods::table)
                    .values(&m)
                    .execute(conn)
                    .await
                    .unwrap();
                // A hand-written value in a query that has the custom type too.
                let by_hand = encrypted_types::Encrypted::<String, MoodsNote>::for_tenant(
                    "calmer".into(),
                    1_i64,
                );
                diesel::update(et_moods::table.find(1))
                    .set((et_moods::mood.eq(Mood::Calm), et_moods::note.eq(by_hand)))
                    .execute(conn)
                    .await
                    .unwrap();
                let back: MoodNote = et_moods::table
                    .find(1)
                    .select(MoodNote::as_select())
                    .first(conn)
                    .await
                    .unwrap();
                assert!(
                    back == MoodNote {
                        mood: Mood::Calm,
                        note: "calmer".into(),
                        ..m
                    }
                );
            })
        });
        let seals: u64 = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, _, _, _)| k.key().name() == "encrypted_types_seals_total")
            .map(|(_, _, _, v)| match v {
                metrics_util::debugging::DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum();
        assert_eq!(seals, 2, "one seal for the insert, one for the update");
    }

    encrypted_types::column_context!(MoodsNote = "et_moods"."note");
}
