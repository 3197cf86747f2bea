//! A rolling deploy in the middle of a TEXT-column migration, as KEYS.md documents it: the
//! legacy columns keep their names (`email`, `note`), which the old application version still
//! writes through its own Diesel binds; the new version seals into `email_sealed` and
//! `note_sealed` (`#[encrypted(column = ..)]` and diesel's `column_name`), bound to the
//! fields' context names. Both versions write while the backfill runs. Then: no write lost or
//! overwritten, no plaintext in a sealed column (counted in SQL and by `verify`), a value
//! planted there by raw SQL reported by name, and after the contract step the sealed columns
//! renamed back to the fields' names with every value and index still matching.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::jobs::{
    Content, JobOptions, JobReport, SkipReason, count_plaintext, encrypt_column, inventory, verify,
};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::schema::{Dialect, expand};
use encrypted_types::store::KeyStore;
use encrypted_types::{EncryptedModel, TenantId};
use encrypted_types_tests::models::{OldStaff, Staff, StaffContracted};
use encrypted_types_tests::real_schema::{contracted, et_staff, old};
use encrypted_types_tests::sql_count as count;
use encrypted_types_tests::{connect, database};

const CLINICS: [i64; 3] = [1, 2, 3];

/// One row as the application last wrote it: clinic, email, note.
type Row = (i64, String, Option<String>);

fn clinic_of(id: i64) -> i64 {
    CLINICS[usize::try_from(id.rem_euclid(3)).unwrap()]
}

/// A small deterministic generator, one per writer.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

macro_rules! rolling_deploy_test {
    ($name:ident, $conn:ty, $backend:literal, $dialect:expr, $admin:expr) => {
        #[test]
        fn $name() {
            let _g = encrypted_types_tests::serial();
            let rows: i64 = 600;
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut connect::<$conn>(&url);
            KeyStore::<LocalKek>::run_migrations(conn).unwrap();
            // The legacy table. SQLite cannot drop a NOT NULL constraint without rebuilding
            // the table, so there the column is nullable from the start.
            let (create, nullable): (&str, Option<&str>) = match $backend {
                "postgres" => (
                    "CREATE TABLE et_staff (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, email TEXT NOT NULL, note TEXT)",
                    Some("ALTER TABLE et_staff ALTER COLUMN email DROP NOT NULL"),
                ),
                "mysql" => (
                    "CREATE TABLE et_staff (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, email VARCHAR(255) NOT NULL, note TEXT)",
                    Some("ALTER TABLE et_staff MODIFY email VARCHAR(255) NULL"),
                ),
                _ => (
                    "CREATE TABLE et_staff (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, email TEXT, note TEXT)",
                    None,
                ),
            };
            conn.batch_execute("DROP TABLE IF EXISTS et_staff").unwrap();
            conn.batch_execute(create).unwrap();
            for c in CLINICS {
                store
                    .create_tenant(conn, Some(&TenantId::from(c.to_string().as_str())))
                    .unwrap();
            }
            store.load_and_install(conn).unwrap();

            // The old version's rows, through its own model.
            let mut expected: HashMap<i64, Row> = HashMap::new();
            let legacy: Vec<OldStaff> = (0..rows)
                .map(|i| {
                    let (clinic_id, email, note) = legacy_row(i);
                    OldStaff { id: i, clinic_id, email, note }
                })
                .collect();
            for chunk in legacy.chunks(200) {
                diesel::insert_into(old::et_staff::table)
                    .values(chunk)
                    .execute(conn)
                    .unwrap();
            }
            for s in &legacy {
                expected.insert(s.id, (s.clinic_id, s.email.clone(), s.note.clone()));
            }

            // Expand: the legacy column may now be NULL (the new version clears it), and the
            // sealed columns are added beside it under their own names.
            if let Some(sql) = nullable {
                conn.batch_execute(sql).unwrap();
            }
            let up = expand(&[Staff::MODEL], $dialect).up;
            assert!(
                up.iter().any(|s| s.contains("email_sealed_bidx"))
                    && up.iter().any(|s| s.contains("note_sealed"))
                    && !up.iter().any(|s| s.contains("ADD COLUMN email ") || s.contains("ADD COLUMN note ")),
                "{up:?}"
            );
            for stmt in &up {
                conn.batch_execute(stmt).unwrap();
            }

            // Both versions write while the backfill runs. One lock orders the writes, so
            // `written` holds what the database holds last for each row.
            let written: Arc<Mutex<HashMap<i64, Row>>> = Arc::new(Mutex::new(HashMap::new()));
            let stop_old = Arc::new(AtomicBool::new(false));
            let stop_new = Arc::new(AtomicBool::new(false));
            let (old_n, new_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let old_app = {
                let (written, stop, n, url) = (written.clone(), stop_old.clone(), old_n.clone(), url.clone());
                std::thread::spawn(move || {
                    let conn = &mut connect::<$conn>(&url);
                    let mut seed = 7u64;
                    let mut k = 0i64;
                    while !stop.load(Ordering::SeqCst) {
                        k += 1;
                        let mut w = written.lock().unwrap();
                        let s = if k % 4 == 0 {
                            let id = 2_000_000 + k;
                            let s = OldStaff {
                                id,
                                clinic_id: clinic_of(id),
                                email: format!("old.insert.{k}@example.org"),
                                note: Some(format!("old note {k}")),
                            };
                            diesel::insert_into(old::et_staff::table).values(&s).execute(conn).unwrap();
                            s
                        } else {
                            let id = i64::try_from(next(&mut seed) % rows as u64).unwrap();
                            let s = OldStaff {
                                id,
                                clinic_id: clinic_of(id),
                                email: format!("old.{k}.{id}@example.org"),
                                note: Some(format!("old note {k}")),
                            };
                            diesel::update(old::et_staff::table.find(id)).set(&s).execute(conn).unwrap();
                            s
                        };
                        w.insert(s.id, (s.clinic_id, s.email, s.note));
                        drop(w);
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };
            let new_app = {
                let (written, stop, n, url) = (written.clone(), stop_new.clone(), new_n.clone(), url.clone());
                std::thread::spawn(move || {
                    let conn = &mut connect::<$conn>(&url);
                    let mut seed = 11u64;
                    let mut k = 0i64;
                    while !stop.load(Ordering::SeqCst) {
                        k += 1;
                        let id = i64::try_from(next(&mut seed) % rows as u64).unwrap();
                        let mut w = written.lock().unwrap();
                        match k % 3 {
                            0 => {
                                let s = Staff {
                                    id: 1_000_000 + k,
                                    clinic_id: clinic_of(k),
                                    email: format!("new.insert.{k}@example.org"),
                                    note: (k % 2 == 0).then(|| format!("new note {k}")),
                                };
                                diesel::insert_into(et_staff::table).values(&s).execute(conn).unwrap();
                                w.insert(s.id, (s.clinic_id, s.email.clone(), s.note.clone()));
                            }
                            1 => {
                                let s = Staff {
                                    id,
                                    clinic_id: clinic_of(id),
                                    email: format!("new.{k}.{id}@example.org"),
                                    note: (k % 2 == 0).then(|| format!("new note {k}")),
                                };
                                diesel::update(et_staff::table.find(id)).set(&s).execute(conn).unwrap();
                                w.insert(s.id, (s.clinic_id, s.email.clone(), s.note.clone()));
                            }
                            _ => {
                                // One field alone: the setter writes `email_sealed`, its index
                                // and NULL into the legacy `email`.
                                let email = format!("set.{k}.{id}@example.org");
                                diesel::update(et_staff::table.find(id))
                                    .set(Staff::set_email(&clinic_of(id), email.clone()))
                                    .execute(conn)
                                    .unwrap();
                                let prev = w
                                    .get(&id)
                                    .cloned()
                                    .unwrap_or_else(|| legacy_row(id));
                                w.insert(id, (prev.0, email, prev.2));
                            }
                        }
                        drop(w);
                        n.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            };

            let opts = JobOptions { batch: 50, ..JobOptions::default() };
            let run = |conn: &mut $conn, column: &str| -> JobReport {
                encrypt_column(conn, &Staff::MODEL, column, &format!("staff-{column}"), &opts, |_| {})
                    .unwrap()
            };
            // The columns are named by their SQL names.
            let first = [run(conn, "email_sealed"), run(conn, "note_sealed")];
            while old_n.load(Ordering::SeqCst) < 150 || new_n.load(Ordering::SeqCst) < 150 {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The deploy finishes: the old version stops, the new one keeps writing.
            stop_old.store(true, Ordering::SeqCst);
            old_app.join().unwrap();
            let second = [run(conn, "email_sealed"), run(conn, "note_sealed")];
            stop_new.store(true, Ordering::SeqCst);
            new_app.join().unwrap();
            let mut last = [run(conn, "email_sealed"), run(conn, "note_sealed")];
            for _ in 0..3 {
                if last.iter().all(|r| r.finished) {
                    break;
                }
                last = [run(conn, "email_sealed"), run(conn, "note_sealed")];
            }
            println!(
                "{}: {rows} legacy rows; {} writes by the old version, {} by the new; runs: {first:?} {second:?} {last:?}",
                $backend,
                old_n.load(Ordering::SeqCst),
                new_n.load(Ordering::SeqCst)
            );
            assert!(last.iter().all(|r| r.finished && r.remaining == 0), "{last:?}");
            for (id, v) in written.lock().unwrap().drain() {
                expected.insert(id, v);
            }

            // Counted in SQL: no legacy plaintext left, every email sealed with its index,
            // and no value in a sealed column that is not sealed.
            assert_eq!(count!(conn, "SELECT COUNT(*) AS n FROM et_staff WHERE email IS NOT NULL OR note IS NOT NULL"), 0);
            assert_eq!(count!(conn, "SELECT COUNT(*) AS n FROM et_staff WHERE email_sealed IS NULL OR email_sealed_bidx IS NULL"), 0);
            assert_eq!(count!(conn, "SELECT COUNT(*) AS n FROM et_staff"), expected.len() as i64);
            assert_eq!(count_plaintext(conn, &Staff::MODEL, "email_sealed").unwrap(), 0);
            let report = verify(conn, &Staff::MODEL, None).unwrap();
            assert!(report.ok(), "{report:?}");
            let inv = inventory(conn, &[Staff::MODEL]).unwrap();
            assert!(inv.iter().all(|e| matches!(e.content, Content::Sealed { .. })), "{inv:?}");
            // Every row holds its last write, of either version.
            let back: Vec<Staff> = et_staff::table
                .select(Staff::as_select())
                .order(et_staff::id)
                .load(conn)
                .unwrap();
            assert_eq!(back.len(), expected.len());
            for s in &back {
                let want = &expected[&s.id];
                assert_eq!((s.clinic_id, &s.email, &s.note), (want.0, &want.1, &want.2), "row {} lost a write", s.id);
            }
            for s in back.iter().step_by(7) {
                let found = Staff::find_by_email(conn, &s.clinic_id, s.email.clone()).unwrap();
                assert!(found.iter().any(|f| f.id == s.id), "row {} not found by its index", s.id);
            }

            // Plaintext planted in the sealed column by raw SQL: reported, by column name.
            let planted = match $backend {
                "postgres" => "UPDATE et_staff SET email_sealed = convert_to('planted@example.org', 'UTF8') WHERE id = 3",
                "mysql" => "UPDATE et_staff SET email_sealed = CAST('planted@example.org' AS BINARY) WHERE id = 3",
                _ => "UPDATE et_staff SET email_sealed = CAST('planted@example.org' AS BLOB) WHERE id = 3",
            };
            conn.batch_execute(planted).unwrap();
            let report = verify(conn, &Staff::MODEL, None).unwrap();
            assert_eq!(report.by_reason.get(&SkipReason::Plaintext), Some(&1), "{report:?}");
            assert_eq!(report.unopenable.len(), 1, "{report:?}");
            assert_eq!(
                (report.unopenable[0].column, report.unopenable[0].reason, report.unopenable[0].key.full().to_string()),
                ("email_sealed", SkipReason::Plaintext, "3".to_owned())
            );
            let inv = inventory(conn, &[Staff::MODEL]).unwrap();
            let odd: Vec<_> = inv.iter().filter(|e| e.content == Content::Unrecognized).map(|e| (e.column, e.values)).collect();
            assert_eq!(odd, [("email_sealed", 1)], "{inv:?}");
            // The application writes the row again; nothing is left to report.
            let row3 = Staff { id: 3, clinic_id: clinic_of(3), email: expected[&3].1.clone(), note: expected[&3].2.clone() };
            diesel::update(et_staff::table.find(3)).set(&row3).execute(conn).unwrap();
            assert!(verify(conn, &Staff::MODEL, None).unwrap().ok());

            // Contract, then rename the sealed columns to the fields' names: the values are
            // bound to the context names, so every one still opens and every index matches.
            let contract: &[&str] = if $backend == "sqlite" {
                &[
                    "ALTER TABLE et_staff DROP COLUMN email",
                    "ALTER TABLE et_staff DROP COLUMN note",
                    "ALTER TABLE et_staff RENAME COLUMN email_sealed TO email",
                    "ALTER TABLE et_staff RENAME COLUMN email_sealed_bidx TO email_bidx",
                    "ALTER TABLE et_staff RENAME COLUMN note_sealed TO note",
                ]
            } else {
                &[
                    "ALTER TABLE et_staff DROP COLUMN email, DROP COLUMN note",
                    "ALTER TABLE et_staff RENAME COLUMN email_sealed TO email",
                    "ALTER TABLE et_staff RENAME COLUMN email_sealed_bidx TO email_bidx",
                    "ALTER TABLE et_staff RENAME COLUMN note_sealed TO note",
                ]
            };
            for stmt in contract {
                conn.batch_execute(stmt).unwrap();
            }
            let after: Vec<StaffContracted> = contracted::et_staff::table
                .select(StaffContracted::as_select())
                .order(contracted::et_staff::id)
                .load(conn)
                .unwrap();
            assert_eq!(after.len(), expected.len());
            for s in &after {
                let want = &expected[&s.id];
                assert_eq!((s.clinic_id, &s.email, &s.note), (want.0, &want.1, &want.2), "row {} after the rename", s.id);
            }
            for s in after.iter().step_by(7) {
                let found = StaffContracted::find_by_email(conn, &s.clinic_id, s.email.clone()).unwrap();
                assert!(found.iter().any(|f| f.id == s.id), "row {} not found after the rename", s.id);
            }
            assert!(verify(conn, &StaffContracted::MODEL, None).unwrap().ok());
        }
    };
}

/// A legacy row as the old version first wrote it.
fn legacy_row(id: i64) -> Row {
    (
        clinic_of(id),
        format!("staff.{id}@example.org"),
        (id % 3 != 0).then(|| format!("legacy note {id}")),
    )
}

rolling_deploy_test!(
    rolling_deploy_on_postgres,
    PgConnection,
    "postgres",
    Dialect::Postgres,
    Some(encrypted_types_tests::pg_url())
);
rolling_deploy_test!(
    rolling_deploy_on_mysql,
    MysqlConnection,
    "mysql",
    Dialect::Mysql,
    Some(encrypted_types_tests::mysql_url())
);
rolling_deploy_test!(
    rolling_deploy_on_sqlite,
    SqliteConnection,
    "sqlite",
    Dialect::Sqlite,
    None
);

/// A column whose name is a Rust keyword, given as diesel does (`column_name = "type"`, the
/// `table!` column `r#type`): sealed into `type`, its blind index in `type_bidx`, and found by it.
#[test]
fn a_keyword_column_named_as_a_string_is_sealed_and_found() {
    use encrypted_types::Encrypted;

    diesel::table! { et_keyword (id) { id -> Integer, r#type -> Binary, type_bidx -> Binary } }

    #[derive(Clone, PartialEq, Encrypted)]
    #[encrypted(table = et_keyword)]
    struct Kind {
        id: i32,
        #[encrypted(blind_index)]
        #[diesel(column_name = "type")]
        kind: String,
    }

    // The raw form names the same column (it panicked the derive once).
    #[derive(Clone, PartialEq, Encrypted)]
    #[encrypted(table = et_keyword)]
    struct KindRaw {
        id: i32,
        #[encrypted(blind_index)]
        #[diesel(column_name = "r#type")]
        kind: String,
    }

    encrypted_types_tests::install_keyring();
    let conn = &mut encrypted_types_tests::sqlite();
    conn.batch_execute(
        "CREATE TABLE et_keyword (id INTEGER PRIMARY KEY, \"type\" BLOB NOT NULL, type_bidx BLOB NOT NULL)",
    )
    .unwrap();
    let row = Kind {
        id: 1,
        kind: "referral".into(),
    };
    diesel::insert_into(et_keyword::table)
        .values(&row)
        .execute(conn)
        .unwrap();
    let stored: Vec<u8> = et_keyword::table
        .select(et_keyword::r#type)
        .first(conn)
        .unwrap();
    assert!(!encrypted_types_tests::contains(&stored, b"referral"));
    let found = Kind::find_by_kind(conn, "referral".to_owned()).unwrap();
    assert!(found == vec![row]);
    let raw = KindRaw::find_by_kind(conn, "referral".to_owned()).unwrap();
    assert!(raw.len() == 1 && raw[0].id == 1);
    assert_eq!(Kind::MODEL.columns[0].column, "type");
    assert_eq!(KindRaw::MODEL.columns[0].column, "type");
    assert_eq!(Kind::MODEL.columns[0].context, "kind");
}
