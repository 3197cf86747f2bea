//! The same table name in two schemas (on MySQL, two databases): a model that names its schema
//! (`schema = ".."`) seals in suite 4, so a value copied from the other schema's table fails;
//! a model adopting its schema reads the values sealed before it, and a rotation re-seals
//! them. On every backend, with the jobs' catalogue queries reading the named schema.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use diesel::prelude::*;
use encrypted_types::jobs::{Content, JobOptions, SkipReason, inventory, rotate_data_keys, verify};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types::{Encrypted, EncryptedModel, Error, format};

mod a {
    diesel::table! {
        et_clinic_a.et_charts (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            diagnosis -> Binary,
            note -> Nullable<Binary>,
        }
    }
}

mod b {
    diesel::table! {
        et_clinic_b.et_charts (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            diagnosis -> Binary,
            note -> Nullable<Binary>,
        }
    }
}

mod idx {
    diesel::table! {
        et_clinic_a.et_indexed (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            mrn -> Binary,
            mrn_bidx -> Binary,
        }
    }
}

/// A table `schema::create` writes in clinic A's schema, with a blind index (and its index).
#[derive(encrypted_types::Encrypted, Clone, PartialEq)]
#[encrypted(table = idx::et_indexed, schema = "et_clinic_a", tenant = clinic_id)]
struct Indexed {
    id: i64,
    clinic_id: i64,
    #[encrypted(blind_index(bits = 32))]
    mrn: String,
}

/// The chart of clinic A's schema.
#[derive(encrypted_types::Encrypted, Clone, PartialEq)]
#[encrypted(table = a::et_charts, schema = "et_clinic_a", tenant = clinic_id)]
struct ChartA {
    id: i64,
    clinic_id: i64,
    #[encrypted]
    diagnosis: String,
    #[encrypted]
    note: Option<String>,
}

/// The same table in clinic B's schema.
#[derive(encrypted_types::Encrypted, Clone, PartialEq)]
#[encrypted(table = b::et_charts, schema = "et_clinic_b", tenant = clinic_id)]
struct ChartB {
    id: i64,
    clinic_id: i64,
    #[encrypted]
    diagnosis: String,
    #[encrypted]
    note: Option<String>,
}

/// Clinic A's model while it adopts its schema: values sealed before it named one still open.
#[derive(encrypted_types::Encrypted, Clone, PartialEq)]
#[encrypted(table = a::et_charts, schema = "et_clinic_a", adopt_schema, tenant = clinic_id)]
struct ChartAdopting {
    id: i64,
    clinic_id: i64,
    #[encrypted]
    diagnosis: String,
    #[encrypted]
    note: Option<String>,
}

/// Clinic A's model in the first step of a rolling adoption: it reads values with and without
/// the schema, and still seals without it.
#[derive(encrypted_types::Encrypted, Clone, PartialEq)]
#[encrypted(table = a::et_charts, schema = "et_clinic_a", adopt_schema(prepare), tenant = clinic_id)]
struct ChartPreparing {
    id: i64,
    clinic_id: i64,
    #[encrypted]
    diagnosis: String,
    #[encrypted]
    note: Option<String>,
}

// What the model sealed before it named its schema: the table and column with no schema.
encrypted_types::column_context!(OldDiagnosis = "et_charts"."diagnosis");
encrypted_types::column_context!(OldNote = "et_charts"."note");

/// Writes a row as an application version that named no schema did.
fn insert_unqualified(
    conn: &mut impl diesel::connection::LoadConnection<Backend = impl DbOf>,
    id: i64,
) {
    let diagnosis = Encrypted::<String, OldDiagnosis>::for_tenant(format!("diagnosis {id}"), 1_i64)
        .seal()
        .unwrap();
    let note = Encrypted::<String, OldNote>::for_tenant(format!("note {id}"), 1_i64)
        .seal()
        .unwrap();
    assert_eq!(diagnosis[1], format::SUITE);
    DbOf::insert_raw(conn, id, diagnosis, Some(note));
}

/// Raw inserts into `et_clinic_a.et_charts` on each backend.
trait DbOf: diesel::backend::Backend + encrypted_types::jobs::JobTable {
    fn insert_raw(
        conn: &mut impl diesel::connection::LoadConnection<Backend = Self>,
        id: i64,
        diagnosis: Vec<u8>,
        note: Option<Vec<u8>>,
    );
}

macro_rules! db_of {
    ($($backend:ty),*) => {$(
        impl DbOf for $backend {
            fn insert_raw(
                conn: &mut impl diesel::connection::LoadConnection<Backend = Self>,
                id: i64,
                diagnosis: Vec<u8>,
                note: Option<Vec<u8>>,
            ) {
                diesel::insert_into(a::et_charts::table)
                    .values((
                        a::et_charts::id.eq(id),
                        a::et_charts::clinic_id.eq(1_i64),
                        a::et_charts::diagnosis.eq(diagnosis),
                        a::et_charts::note.eq(note),
                    ))
                    .execute(conn)
                    .unwrap();
            }
        }
    )*};
}
db_of!(diesel::sqlite::Sqlite, diesel::pg::Pg, diesel::mysql::Mysql);

fn chart(id: i64) -> ChartA {
    ChartA {
        id,
        clinic_id: 1,
        diagnosis: format!("diagnosis {id}"),
        note: Some(format!("note {id}")),
    }
}

/// The error a failed read carries, looked up through Diesel's wrapping.
fn read_error(e: &diesel::result::Error) -> Error {
    Error::from_diesel(e)
        .cloned()
        .unwrap_or_else(|| panic!("not a library error: {e}"))
}

/// The two schemas' tables, created once per server outside the test transactions.
fn ddl(blob: &str, qualify: &dyn Fn(&str) -> String) -> Vec<String> {
    ["et_clinic_a", "et_clinic_b"]
        .iter()
        .flat_map(|s| {
            let t = qualify(s);
            [
                format!("DROP TABLE IF EXISTS {t}"),
                format!(
                    "CREATE TABLE {t} (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, \
                     diagnosis {blob} NOT NULL, note {blob})"
                ),
            ]
        })
        .collect()
}

fn sqlite() -> SqliteConnection {
    let mut conn = encrypted_types_tests::keystore::sqlite();
    use diesel::connection::SimpleConnection;
    conn.batch_execute(
        "ATTACH DATABASE ':memory:' AS et_clinic_a; ATTACH DATABASE ':memory:' AS et_clinic_b;",
    )
    .unwrap();
    for s in ddl("BLOB", &|s| format!("{s}.et_charts")) {
        conn.batch_execute(&s).unwrap();
    }
    conn
}

/// Creates the two schemas (`kind`: `SCHEMA` or `DATABASE`) and their tables on a server, once
/// per process, outside the test transactions.
fn on_server<C: Connection + diesel::connection::SimpleConnection>(
    url: &str,
    kind: &str,
    blob: &str,
) {
    let mut raw = C::establish(url).unwrap();
    raw.batch_execute(&format!(
        "CREATE {kind} IF NOT EXISTS et_clinic_a; CREATE {kind} IF NOT EXISTS et_clinic_b;"
    ))
    .unwrap();
    for s in ddl(blob, &|s| format!("{s}.et_charts")) {
        raw.batch_execute(&s).unwrap();
    }
}

fn pg() -> PgConnection {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        on_server::<PgConnection>(&encrypted_types_tests::pg_url(), "SCHEMA", "BYTEA");
    });
    encrypted_types_tests::keystore::pg()
}

fn mysql() -> MysqlConnection {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        on_server::<MysqlConnection>(&encrypted_types_tests::mysql_url(), "DATABASE", "LONGBLOB");
    });
    encrypted_types_tests::keystore::mysql()
}

/// A connection with one tenant's keys created and installed, under the serial lock (the tests
/// install process-wide keyrings): the lock, the KEK's directory and the store come with it.
macro_rules! keyed {
    ($connect:path) => {{
        let guard = encrypted_types_tests::serial();
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
        let mut conn = $connect();
        store.create_tenant(&mut conn, Some(&"1".into())).unwrap();
        store.load_and_install(&mut conn).unwrap();
        (guard, dir, conn)
    }};
}

/// Stored values of `et_clinic_a.et_charts` whose suite is not 4, counted in SQL: what a
/// finished adoption leaves (none).
fn not_in_schema_suite(
    conn: &mut impl diesel::connection::LoadConnection<Backend = impl DbOf>,
) -> u64 {
    inventory(conn, &[ChartA::MODEL])
        .unwrap()
        .iter()
        .filter(|e| {
            assert_eq!(e.schema, Some("et_clinic_a"));
            !matches!(
                e.content,
                Content::Sealed {
                    suite: format::SUITE_AES256GCMSIV_SCHEMA,
                    ..
                }
            )
        })
        .map(|e| e.values)
        .sum()
}

macro_rules! suite {
    ($connect:path) => {
        use super::*;

        #[test]
        fn a_value_copied_from_the_same_table_in_another_schema_fails() {
            let (_g, _dir, mut conn) = keyed!($connect);
            let conn = &mut conn;

            let a = chart(1);
            let b = ChartB {
                diagnosis: "another clinic's diagnosis".into(),
                ..ChartB::from(chart(1))
            };
            diesel::insert_into(a::et_charts::table)
                .values(&a)
                .execute(conn)
                .unwrap();
            diesel::insert_into(b::et_charts::table)
                .values(&b)
                .execute(conn)
                .unwrap();
            let raw_a: Vec<u8> = a::et_charts::table
                .find(1)
                .select(a::et_charts::diagnosis)
                .first(conn)
                .unwrap();
            assert_eq!(raw_a[1], format::SUITE_AES256GCMSIV_SCHEMA);
            let back: ChartB = b::et_charts::table
                .find(1)
                .select(ChartB::as_select())
                .first(conn)
                .unwrap();
            assert_eq!(back, b);

            // A database writer copies clinic A's diagnosis into clinic B's table: same table
            // name, column, tenant and key; only the schema differs.
            diesel::update(b::et_charts::table.find(1))
                .set(b::et_charts::diagnosis.eq(&raw_a))
                .execute(conn)
                .unwrap();
            let err = b::et_charts::table
                .find(1)
                .select(ChartB::as_select())
                .first(conn)
                .err()
                .unwrap();
            assert_eq!(read_error(&err), Error::AuthenticationFailed);
            let one: ChartA = a::et_charts::table
                .find(1)
                .select(ChartA::as_select())
                .first(conn)
                .unwrap();
            assert_eq!(one, a);

            // A value sealed with no schema (an old version, or a schema-less copy of the
            // table) is refused by a model that names its schema and does not adopt.
            insert_unqualified(conn, 2);
            let err = a::et_charts::table
                .find(2)
                .select(ChartA::as_select())
                .first(conn)
                .err()
                .unwrap();
            assert_eq!(read_error(&err), Error::SchemaMismatch);
        }

        #[test]
        fn adopting_a_schema_reads_old_values_and_a_rotation_reseals_them() {
            let (_g, _dir, mut conn) = keyed!($connect);
            let conn = &mut conn;
            for id in 1..=30 {
                insert_unqualified(conn, id);
            }
            assert_eq!(not_in_schema_suite(conn), 60);

            // Without adopt_schema the old values are refused, and a rotation skips them.
            let err = a::et_charts::table
                .find(7)
                .select(ChartA::as_select())
                .first(conn)
                .err()
                .unwrap();
            assert_eq!(read_error(&err), Error::SchemaMismatch);
            let strict = rotate_data_keys(
                conn,
                &ChartA::MODEL,
                "strict",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(!strict.finished, "{strict:?}");
            assert_eq!(strict.written, 0);
            assert_eq!(
                strict.skipped.get(&SkipReason::SchemaMismatch),
                Some(&60),
                "{strict:?}"
            );
            let report = verify(conn, &ChartA::MODEL, None).unwrap();
            assert_eq!(report.schema, Some("et_clinic_a"));
            assert_eq!(report.unopenable_total(), 60, "{report:?}");

            // While adopting, every old value opens, and new writes are sealed with the schema.
            let all: Vec<ChartAdopting> = a::et_charts::table
                .select(ChartAdopting::as_select())
                .order(a::et_charts::id)
                .load(conn)
                .unwrap();
            assert_eq!(all.len(), 30);
            assert_eq!(all[6].diagnosis, "diagnosis 7");
            diesel::update(a::et_charts::table.find(3))
                .set(ChartAdopting::set_diagnosis(&1, "rewritten 3"))
                .execute(conn)
                .unwrap();
            assert_eq!(not_in_schema_suite(conn), 59);

            // The adoption: a rotation (no key retired) re-seals every value with the schema.
            let report = rotate_data_keys(
                conn,
                &ChartAdopting::MODEL,
                "adopt",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(report.finished, "{report:?}");
            assert_eq!(report.written, 59);
            assert!(report.skipped.is_empty(), "{report:?}");
            // Verified independently: 0 values outside suite 4 by the SQL count, and the strict
            // model (adopt_schema removed) opens every row with the same plaintext.
            assert_eq!(not_in_schema_suite(conn), 0);
            let strict: Vec<ChartA> = a::et_charts::table
                .select(ChartA::as_select())
                .order(a::et_charts::id)
                .load(conn)
                .unwrap();
            assert_eq!(strict.len(), 30);
            for (s, old) in strict.iter().zip(&all) {
                let diagnosis = if s.id == 3 {
                    "rewritten 3".to_owned()
                } else {
                    old.diagnosis.clone()
                };
                assert_eq!(
                    (s.id, &s.diagnosis, &s.note),
                    (old.id, &diagnosis, &old.note)
                );
            }
            assert!(
                verify(conn, &ChartA::MODEL, None)
                    .unwrap()
                    .unopenable_total()
                    == 0
            );

            // A schema-less value planted afterwards is not laundered by a routine rotation.
            insert_unqualified(conn, 31);
            let after = rotate_data_keys(
                conn,
                &ChartA::MODEL,
                "routine",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert_eq!(after.written, 0);
            assert!(!after.finished, "{after:?}");
            assert_eq!(
                after.skipped.get(&SkipReason::SchemaMismatch),
                Some(&2),
                "{after:?}"
            );
            assert_eq!(not_in_schema_suite(conn), 2);
        }

        #[test]
        fn a_rolling_adoption_never_leaves_a_value_unreadable() {
            let (_g, _dir, mut conn) = keyed!($connect);
            let conn = &mut conn;
            for id in 1..=10 {
                insert_unqualified(conn, id);
            }
            let suite_of = |conn: &mut _, id: i64| -> u8 {
                let raw: Vec<u8> = a::et_charts::table
                    .find(id)
                    .select(a::et_charts::diagnosis)
                    .first(conn)
                    .unwrap();
                raw[1]
            };
            // Step 1 (every process): reads both, seals as before, so a process not yet on
            // step 1 reads what it writes.
            let p = ChartPreparing {
                id: 11,
                clinic_id: 1,
                diagnosis: "diagnosis 11".into(),
                note: None,
            };
            diesel::insert_into(a::et_charts::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            assert_eq!(suite_of(conn, 11), format::SUITE);
            // Step 2 (rolling): a step-2 process seals with the schema; step-1 processes read it.
            let q = ChartAdopting {
                id: 12,
                clinic_id: 1,
                diagnosis: "diagnosis 12".into(),
                note: None,
            };
            diesel::insert_into(a::et_charts::table)
                .values(&q)
                .execute(conn)
                .unwrap();
            assert_eq!(suite_of(conn, 12), format::SUITE_AES256GCMSIV_SCHEMA);
            let read: Vec<ChartPreparing> = a::et_charts::table
                .select(ChartPreparing::as_select())
                .order(a::et_charts::id)
                .load(conn)
                .unwrap();
            assert_eq!(read.len(), 12);
            assert_eq!(read[11].diagnosis, "diagnosis 12");
            // A rotation run from a step-1 process moves nothing into or out of the schema.
            let prep = rotate_data_keys(
                conn,
                &ChartPreparing::MODEL,
                "prep",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(prep.finished, "{prep:?}");
            assert_eq!(prep.written, 0);
            assert_eq!(suite_of(conn, 12), format::SUITE_AES256GCMSIV_SCHEMA);
            // Once every process is on step 2, the rotation re-seals the rest; then step 3.
            let adopt = rotate_data_keys(
                conn,
                &ChartAdopting::MODEL,
                "adopt",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(adopt.finished, "{adopt:?}");
            assert_eq!(adopt.written, 21);
            assert_eq!(not_in_schema_suite(conn), 0);
            let strict: Vec<ChartA> = a::et_charts::table
                .select(ChartA::as_select())
                .order(a::et_charts::id)
                .load(conn)
                .unwrap();
            assert_eq!(strict.len(), 12);
            assert_eq!(strict[10].diagnosis, "diagnosis 11");
        }

        #[test]
        fn the_plaintext_fallback_of_one_schema_never_reaches_the_other() {
            let (_g, _dir, mut conn) = keyed!($connect);
            let conn = &mut conn;
            diesel::insert_into(a::et_charts::table)
                .values(&chart(1))
                .execute(conn)
                .unwrap();
            diesel::insert_into(b::et_charts::table)
                .values(&ChartB::from(chart(1)))
                .execute(conn)
                .unwrap();
            // A writer plants plaintext in both schemas' note.
            let planted = Some(b"planted".to_vec());
            diesel::update(a::et_charts::table.find(1))
                .set(a::et_charts::note.eq(&planted))
                .execute(conn)
                .unwrap();
            diesel::update(b::et_charts::table.find(1))
                .set(b::et_charts::note.eq(&planted))
                .execute(conn)
                .unwrap();
            // The fallback of clinic A's table, by its qualified name, reads A's plaintext only;
            // the unqualified name reaches neither.
            for (allowed, reads_a) in [("et_clinic_a.et_charts", true), ("et_charts", false)] {
                encrypted_types::migration::allow_plaintext(allowed, "note");
                let in_a = a::et_charts::table
                    .find(1)
                    .select(ChartA::as_select())
                    .first(conn);
                let in_b = b::et_charts::table
                    .find(1)
                    .select(ChartB::as_select())
                    .first(conn);
                encrypted_types::migration::stop_plaintext(allowed, "note");
                assert_eq!(in_a.is_ok(), reads_a, "{allowed}");
                if reads_a {
                    assert_eq!(in_a.unwrap().note.as_deref(), Some("planted"));
                }
                assert!(in_b.is_err(), "{allowed}: clinic B read planted plaintext");
            }
        }

        #[test]
        fn schema_create_writes_the_table_and_its_index_in_the_schema() {
            let (_g, _dir, mut conn) = keyed!($connect);
            let conn = &mut conn;
            let dialect = dialect_of(conn);
            if dialect == encrypted_types::schema::Dialect::Mysql {
                // MySQL commits DDL at once: the statements are checked as text only.
                let m = encrypted_types::schema::create(&[Indexed::MODEL], dialect).unwrap();
                assert!(m.up[0].starts_with("CREATE TABLE `et_clinic_a`.`et_indexed`"), "{:?}", m.up);
                assert_eq!(m.up[1], "CREATE INDEX `et_indexed_mrn_bidx` ON `et_clinic_a`.`et_indexed` (`clinic_id`, `mrn_bidx`)");
                assert_eq!(m.down, ["DROP TABLE `et_clinic_a`.`et_indexed`"]);
                return;
            }
            use diesel::connection::SimpleConnection;
            let m = encrypted_types::schema::create(&[Indexed::MODEL], dialect).unwrap();
            for s in &m.up {
                conn.batch_execute(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            // The catalogue of the schema now has it all, index included.
            let alter = encrypted_types::schema::alter(conn, &[Indexed::MODEL]).unwrap();
            assert!(alter.problems.is_empty() && alter.migration.up.is_empty(), "{alter:?}");
            let row = Indexed { id: 1, clinic_id: 1, mrn: "MRN-0042".into() };
            diesel::insert_into(idx::et_indexed::table).values(&row).execute(conn).unwrap();
            let found = Indexed::find_by_mrn(conn, &1, "MRN-0042").unwrap();
            assert!(found.iter().any(|r| r.id == 1));
            // The expand step's down drops the index by its qualified name.
            let alter_down = encrypted_types::schema::expand(&[Indexed::MODEL], dialect);
            assert!(alter_down.down.iter().any(|s| s.contains("\"et_clinic_a\".\"et_indexed_mrn_bidx\"")), "{:?}", alter_down.down);
            for s in &m.down {
                conn.batch_execute(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        }

        #[test]
        fn the_catalogue_is_read_in_the_models_schema() {
            let conn = &mut $connect();
            // The table exists only in the named schemas: a catalogue read of the connection's
            // own schema would report it missing.
            let alter =
                encrypted_types::schema::alter(conn, &[ChartA::MODEL, ChartB::MODEL]).unwrap();
            assert!(alter.problems.is_empty(), "{:?}", alter.problems);
            assert!(alter.migration.up.is_empty(), "{:?}", alter.migration.up);
        }
    };
}

/// The dialect `schema::create` writes for a connection's backend.
fn dialect_of<C: Connection>(_: &C) -> encrypted_types::schema::Dialect {
    match std::any::type_name::<C::Backend>() {
        b if b.ends_with("Pg") => encrypted_types::schema::Dialect::Postgres,
        b if b.ends_with("Mysql") => encrypted_types::schema::Dialect::Mysql,
        _ => encrypted_types::schema::Dialect::Sqlite,
    }
}

impl From<ChartA> for ChartB {
    fn from(a: ChartA) -> Self {
        Self {
            id: a.id,
            clinic_id: a.clinic_id,
            diagnosis: a.diagnosis.clone(),
            note: a.note.clone(),
        }
    }
}

mod on_sqlite {
    suite!(sqlite);
}
mod on_postgres {
    suite!(pg);
}
mod on_mysql {
    suite!(mysql);
}
