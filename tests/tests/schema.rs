//! `schema::check` against the real catalogues of the three backends: the test schema passes;
//! a `TEXT` ciphertext column (PostgreSQL), a `VARCHAR` one (MariaDB), a missing index column
//! (SQLite), a missing tenant-leading index and a missing legacy column are refused, each
//! naming its table and column.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::schema::{Mismatch, alter, check};
use encrypted_types::{Encrypted, EncryptedModel};
use encrypted_types_tests::models::{Contact, Patient, Visit};
use encrypted_types_tests::{connect, database};

diesel::table! {
    et_schema_users (id) {
        id -> Integer,
        org -> BigInt,
        email -> Binary,
        email_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = et_schema_users, tenant = org)]
#[allow(dead_code)] // only its metadata is used
struct SchemaUser {
    id: i32,
    org: i64,
    #[encrypted(blind_index(normalize = email))]
    email: String,
}

fn names(found: &[Mismatch]) -> Vec<String> {
    found.iter().map(ToString::to_string).collect()
}

macro_rules! schema_test {
    ($name:ident, $conn:ty, $backend:literal, $blob:literal, $admin:expr, $bad:literal, $want:pat_param if $guard:expr) => {
        #[test]
        fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            let conn = &mut connect::<$conn>(&url);
            for stmt in encrypted_types_tests::ddl($blob)
                .into_iter()
                .chain(encrypted_types_tests::real_schema::ddl($backend))
            {
                conn.batch_execute(&stmt).unwrap();
            }
            // The test schema is what its models want.
            assert_eq!(names(&check(conn, &[Patient::MODEL, Visit::MODEL]).unwrap()), Vec::<String>::new());

            // The mistake of this backend.
            conn.batch_execute($bad).unwrap();
            let found = check(conn, &[SchemaUser::MODEL]).unwrap();
            assert!(matches!(found.as_slice(), $want if $guard), "{:?}", names(&found));
            for m in &found {
                assert!(m.to_string().contains("et_schema_users."), "{m}");
            }

            // No tenant-leading index: refused, then accepted once it exists.
            conn.batch_execute("DROP INDEX et_patients_email ON et_patients")
                .or_else(|_| conn.batch_execute("DROP INDEX et_patients_email"))
                .unwrap();
            let found = check(conn, &[Patient::MODEL]).unwrap();
            assert!(
                matches!(found.as_slice(), [Mismatch::NoIndex { table, column, leading }]
                    if table == "et_patients" && column == "email_bidx" && leading == "clinic_id, email_bidx"),
                "{:?}",
                names(&found)
            );
            // A model of a table that is not there, and a legacy column that is not there.
            assert!(matches!(
                check(conn, &[Contact::MODEL]).unwrap().as_slice(),
                [Mismatch::NoTable { table }] if table == "et_contacts"
            ));
            for stmt in encrypted_types_tests::real_schema::legacy_contacts_ddl($backend)
                .into_iter()
                .chain(encrypted_types_tests::real_schema::expand_contacts_ddl($backend))
            {
                conn.batch_execute(&stmt).unwrap();
            }
            assert_eq!(names(&check(conn, &[Contact::MODEL]).unwrap()), Vec::<String>::new());
            let migration = encrypted_types_tests::real_schema::contacts_migration($backend);

            // `alter` against the live table: nothing missing, nothing to add or drop.
            let a = alter(conn, &[Contact::MODEL]).unwrap();
            assert!(a.migration.up.is_empty() && a.migration.down.is_empty() && a.problems.is_empty(), "{a:?}");
            // One index column is missing (as when a blind index is added to the model): `up`
            // adds exactly it and its index, `down` drops exactly those, every other column
            // (and its data) stays.
            for stmt in migration.down.iter().filter(|s| s.contains("email_bidx")) {
                conn.batch_execute(stmt).unwrap();
            }
            let a = alter(conn, &[Contact::MODEL]).unwrap();
            assert!(a.problems.is_empty(), "{:?}", a.problems);
            assert_eq!(a.migration.up.len(), 2, "{:?}", a.migration.up);
            assert!(a.migration.up[0].contains("ADD COLUMN") && a.migration.up[0].contains("email_bidx"), "{:?}", a.migration.up);
            assert!(a.migration.up[1].starts_with("CREATE INDEX") && a.migration.up[1].contains("email_bidx"), "{:?}", a.migration.up);
            assert_eq!(a.migration.down.len(), 2, "{:?}", a.migration.down);
            assert!(a.migration.down[0].starts_with("DROP INDEX"), "{:?}", a.migration.down);
            assert!(a.migration.down[1].contains("DROP COLUMN") && a.migration.down[1].contains("email_bidx"), "{:?}", a.migration.down);
            assert!(a.migration.up.iter().chain(&a.migration.down).all(|s| !s.contains("\"email\"") && !s.contains("`email`") && !s.contains("note")));
            for stmt in &a.migration.up {
                conn.batch_execute(stmt).unwrap();
            }
            assert_eq!(names(&check(conn, &[Contact::MODEL]).unwrap()), Vec::<String>::new());
            for stmt in &a.migration.down {
                conn.batch_execute(stmt).unwrap();
            }
            let mut left: Vec<String> = check(conn, &[Contact::MODEL]).unwrap().iter().map(|m| match m {
                Mismatch::NoColumn { column, .. } => format!("column {column}"),
                Mismatch::NoIndex { column, .. } => format!("index {column}"),
                other => panic!("{other}"),
            }).collect();
            left.sort();
            assert_eq!(left, ["column email_bidx", "index email_bidx"]);
            for stmt in &a.migration.up {
                conn.batch_execute(stmt).unwrap();
            }
            // A column with the wrong type is reported, never altered; a missing table too.
            let a = alter(conn, &[SchemaUser::MODEL, Patient::MODEL]).unwrap();
            let found = check(conn, &[SchemaUser::MODEL]).unwrap();
            for m in &found {
                if let Mismatch::NotBinary { column, .. } = m {
                    assert!(a.problems.contains(m), "{a:?}");
                    assert!(a.migration.up.iter().all(|s| !s.contains(&format!("ADD COLUMN \"{column}\"")) && !s.contains(&format!("ADD COLUMN `{column}`"))), "{a:?}");
                }
            }
            assert!(matches!(
                alter(conn, &[Visit::MODEL, Contact::MODEL]).unwrap().problems.as_slice(),
                []
            ));

            // The generated `down` takes away exactly what `up` added, and `up` puts it back.
            for stmt in &migration.down {
                conn.batch_execute(stmt).unwrap();
            }
            let found = check(conn, &[Contact::MODEL]).unwrap();
            let mut missing: Vec<(&str, &str)> = found
                .iter()
                .map(|m| match m {
                    Mismatch::NoColumn { column, .. } => ("column", column.as_str()),
                    Mismatch::NoIndex { column, .. } => ("index", column.as_str()),
                    other => panic!("{other}"),
                })
                .collect();
            missing.sort_unstable();
            assert_eq!(
                missing,
                [("column", "email"), ("column", "email_bidx"), ("column", "note"), ("index", "email_bidx")]
            );
            for stmt in &migration.up {
                conn.batch_execute(stmt).unwrap();
            }
            assert_eq!(names(&check(conn, &[Contact::MODEL]).unwrap()), Vec::<String>::new());
            conn.batch_execute("ALTER TABLE et_contacts DROP COLUMN note_plain").unwrap();
            assert!(matches!(
                check(conn, &[Contact::MODEL]).unwrap().as_slice(),
                [Mismatch::NoColumn { table, column }] if table == "et_contacts" && column == "note_plain"
            ));
        }
    };
}

schema_test!(
    a_text_ciphertext_column_is_refused_on_postgres,
    PgConnection,
    "postgres",
    "BYTEA",
    Some(encrypted_types_tests::pg_url()),
    "CREATE TABLE et_schema_users (id INTEGER PRIMARY KEY, org BIGINT NOT NULL, email TEXT NOT NULL, \
     email_bidx BYTEA NOT NULL); CREATE INDEX et_schema_users_bidx ON et_schema_users (org, email_bidx)",
    [Mismatch::NotBinary { column, found, .. }] if column == "email" && found == "text"
);
schema_test!(
    a_varchar_ciphertext_column_is_refused_on_mariadb,
    MysqlConnection,
    "mysql",
    "LONGBLOB",
    Some(encrypted_types_tests::mysql_url()),
    "CREATE TABLE et_schema_users (id INTEGER PRIMARY KEY, org BIGINT NOT NULL, email VARCHAR(255) NOT NULL, \
     email_bidx VARBINARY(32) NOT NULL, INDEX et_schema_users_bidx (org, email_bidx))",
    [Mismatch::NotBinary { column, found, .. }] if column == "email" && found == "varchar"
);
schema_test!(
    a_missing_index_column_is_refused_on_sqlite,
    SqliteConnection,
    "sqlite",
    "BLOB",
    None,
    "CREATE TABLE et_schema_users (id INTEGER PRIMARY KEY, org BIGINT NOT NULL, email BLOB NOT NULL)",
    [Mismatch::NoColumn { column, .. }, Mismatch::NoIndex { .. }] if column == "email_bidx"
);

/// `schema::create` (the toolkit's `schema`) applied to a fresh database of each backend: the
/// tables it writes pass `check`, hold a round trip of every model on them (a tenant, a
/// composite key with a text part, legacy `TEXT` columns of a migration), and `down` removes
/// them.
macro_rules! create_test {
    ($name:ident, $conn:ty, $dialect:expr, $admin:expr) => {
        #[test]
        fn $name() {
            use encrypted_types::schema::create;
            use encrypted_types_tests::models::PatientPatch;
            use encrypted_types_tests::real_schema::{et_contacts, et_visits};
            use encrypted_types_tests::schema::et_patients;
            encrypted_types_tests::install_keyring();
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            let conn = &mut connect::<$conn>(&url);
            let models = [
                Patient::MODEL,
                PatientPatch::MODEL,
                Visit::MODEL,
                Contact::MODEL,
            ];
            let migration = create(&models, $dialect).unwrap();
            // One table per model table: the changeset adds nothing to its model's.
            assert_eq!(
                migration
                    .up
                    .iter()
                    .filter(|s| s.starts_with("CREATE TABLE"))
                    .count(),
                3
            );
            for stmt in &migration.up {
                conn.batch_execute(stmt)
                    .unwrap_or_else(|e| panic!("{stmt}: {e}"));
            }
            assert_eq!(names(&check(conn, &models).unwrap()), Vec::<String>::new());

            let mut p = Patient::sample(1, 1, "ann@example.org", "123-45-6789");
            p.phone = Some("555 0100".into());
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            let visit = Visit {
                clinic_id: 1,
                patient_no: "P-0001".into(),
                note: "follow-up".into(),
                code: -3,
                ref_id: None,
            };
            diesel::insert_into(et_visits::table)
                .values(&visit)
                .execute(conn)
                .unwrap();
            let contact = Contact {
                id: 5,
                clinic_id: 1,
                email: "c@example.org".into(),
                note: None,
            };
            diesel::insert_into(et_contacts::table)
                .values(&contact)
                .execute(conn)
                .unwrap();
            let read: Patient = et_patients::table
                .select(Patient::as_select())
                .first(conn)
                .unwrap();
            assert!(read == p, "the patient did not round-trip");
            let found = Patient::find_by_email(conn, &1, " ANN@example.org").unwrap();
            assert_eq!(found.len(), 1);
            let read: Visit = et_visits::table
                .select(Visit::as_select())
                .first(conn)
                .unwrap();
            assert!(read == visit, "the visit did not round-trip");
            let read: Contact = et_contacts::table
                .select(Contact::as_select())
                .first(conn)
                .unwrap();
            assert!(read == contact, "the contact did not round-trip");

            for stmt in &migration.down {
                conn.batch_execute(stmt).unwrap();
            }
            assert_eq!(
                check(conn, &models).unwrap().len(),
                4,
                "every table is gone"
            );
        }
    };
}

create_test!(
    create_writes_tables_that_round_trip_on_postgres,
    PgConnection,
    encrypted_types::schema::Dialect::Postgres,
    Some(encrypted_types_tests::pg_url())
);
create_test!(
    create_writes_tables_that_round_trip_on_mariadb,
    MysqlConnection,
    encrypted_types::schema::Dialect::Mysql,
    Some(encrypted_types_tests::mysql_url())
);
create_test!(
    create_writes_tables_that_round_trip_on_sqlite,
    SqliteConnection,
    encrypted_types::schema::Dialect::Sqlite,
    None
);

/// A type only PostgreSQL has is refused for the other backends, naming the column, and
/// written as `UUID` for PostgreSQL.
#[test]
fn create_refuses_a_type_the_backend_does_not_have() {
    use encrypted_types::schema::{CreateError, Dialect, create};
    use encrypted_types_tests::models::UuidRecord;
    let pg = create(&[UuidRecord::MODEL], Dialect::Postgres).unwrap();
    assert!(pg.up[0].contains("\"id\" UUID NOT NULL"), "{}", pg.up[0]);
    for dialect in [Dialect::Sqlite, Dialect::Mysql] {
        assert_eq!(
            create(&[UuidRecord::MODEL], dialect),
            Err(CreateError::UnknownType {
                table: "et_uuid_pg".into(),
                column: "id".into()
            })
        );
    }
}
