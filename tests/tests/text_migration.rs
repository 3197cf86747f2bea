//! Legacy plaintext in `TEXT`/`VARCHAR` columns encrypted without a table rewrite: the
//! expand/contract path of `#[encrypted(migrate_from = ...)]`. The encrypted columns are added
//! beside the legacy ones; reads take the legacy value while there is one; every write seals
//! and clears it; `jobs::encrypt_column` moves the rest in compare-and-swap batches while an
//! application thread keeps inserting and updating (with the new code, and with an old
//! version that writes only the legacy columns); the verification counts what is left; the
//! contract step drops the legacy columns.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::jobs::{JobOptions, JobReport, SkipReason, count_plaintext, encrypt_column};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types::{EncryptedModel, TenantId};
use encrypted_types_tests::models::Contact;
use encrypted_types_tests::real_schema::{self, et_contacts};
use encrypted_types_tests::sql_count as count;
use encrypted_types_tests::{connect, database};

const CLINICS: [i64; 3] = [1, 2, 3];

fn clinic_of(id: i64) -> i64 {
    CLINICS[usize::try_from(id.rem_euclid(3)).unwrap()]
}

/// The legacy rows, as the old application wrote them: some with trailing spaces or capitals
/// (equal to other values under MySQL's default collation), some non-ASCII, a third without
/// a note.
fn legacy_email(i: i64) -> String {
    match i % 50 {
        7 => format!("zoë.{i}@example.org"),
        13 => format!("Trailing.{i}@Example.org "),
        _ => format!("legacy.user{i}@example.org"),
    }
}

fn legacy_note(i: i64) -> Option<String> {
    (i % 3 != 0).then(|| format!("legacy note {i}: canary-notes"))
}

type Expected = HashMap<i64, (String, Option<String>)>;

/// Where the hook below connects.
static HOOK_URL: Mutex<String> = Mutex::new(String::new());
static HOOK_FIRED: AtomicBool = AtomicBool::new(false);

/// Runs between the backfill's read of its first batch and its writes, once: an old
/// application version changes row 0's legacy email only by case and a trailing space. A
/// compare-and-swap that compared through a collation would take the old value for the new
/// one and seal it, losing the write.
fn change_row_0_by_case() {
    if HOOK_FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    let url = HOOK_URL.lock().unwrap().clone();
    let url = url.as_str();
    let sql = "UPDATE et_contacts SET email_plain = 'LEGACY.USER0@EXAMPLE.ORG ' WHERE id = 0";
    if url.starts_with("postgres") {
        connect::<PgConnection>(url).batch_execute(sql).unwrap();
    } else if url.starts_with("mysql") {
        connect::<MysqlConnection>(url).batch_execute(sql).unwrap();
    } else {
        connect::<SqliteConnection>(url).batch_execute(sql).unwrap();
    }
}

macro_rules! load_all {
    ($conn:expr) => {
        et_contacts::table
            .select(Contact::as_select())
            .order(et_contacts::id)
            .load::<Contact>($conn)
            .unwrap()
    };
}

macro_rules! text_migration_test {
    ($name:ident, $conn:ty, $backend:literal, $admin:expr, $rows:expr) => {
        #[test]
        fn $name() {
            let _g = encrypted_types_tests::serial();
            let rows: i64 = $rows;
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            url.clone_into(&mut HOOK_URL.lock().unwrap());
            HOOK_FIRED.store(false, Ordering::SeqCst);
            let kek = dir.path().join("k.kek");
            let store = KeyStore::new(LocalKek::create(&kek).unwrap());
            let conn = &mut connect::<$conn>(&url);
            KeyStore::<LocalKek>::run_migrations(conn).unwrap();
            for stmt in real_schema::legacy_contacts_ddl($backend) {
                conn.batch_execute(&stmt).unwrap();
            }
            for c in CLINICS {
                store
                    .create_tenant(conn, Some(&TenantId::from(c.to_string().as_str())))
                    .unwrap();
            }
            store.load_and_install(conn).unwrap();

            // The old application's rows: plaintext in TEXT/VARCHAR columns.
            let mut expected: Expected = HashMap::new();
            let ids: Vec<i64> = (0..rows).collect();
            for chunk in ids.chunks(1000) {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|&i| {
                        let note = legacy_note(i).map_or("NULL".to_owned(), |n| format!("'{n}'"));
                        format!("({i}, {}, '{}', {note})", clinic_of(i), legacy_email(i))
                    })
                    .collect();
                conn.batch_execute(&format!(
                    "INSERT INTO et_contacts (id, clinic_id, email_plain, note_plain) VALUES {}",
                    values.join(", ")
                ))
                .unwrap();
                for &i in chunk {
                    expected.insert(i, (legacy_email(i), legacy_note(i)));
                }
            }
            let filenode = if $backend == "postgres" {
                "SELECT CAST(pg_relation_filenode('et_contacts') AS BIGINT) AS n"
            } else {
                ""
            };
            let node_before = (!filenode.is_empty()).then(|| count!(conn, filenode));

            // Expand: the encrypted columns beside the legacy ones.
            for stmt in real_schema::expand_contacts_ddl($backend) {
                conn.batch_execute(&stmt).unwrap();
            }
            if let Some(n) = node_before {
                assert_eq!(count!(conn, filenode), n, "adding the columns rewrote the table");
            }
            // Before the backfill the new code reads the legacy values.
            let before = load_all!(conn);
            assert_eq!(before.len(), rows as usize);
            for c in &before {
                assert_eq!((&c.email, &c.note), (&expected[&c.id].0, &expected[&c.id].1));
            }

            // The application keeps writing while the backfill runs: the new code through the
            // model, and (until `old_code` goes false) an old version that writes only the
            // legacy columns.
            let stop = Arc::new(AtomicBool::new(false));
            let old_code = Arc::new(AtomicBool::new(true));
            let written: Arc<Mutex<Expected>> = Arc::new(Mutex::new(HashMap::new()));
            let app = {
                let (stop, old_code, written, url) =
                    (stop.clone(), old_code.clone(), written.clone(), url.clone());
                std::thread::spawn(move || {
                    let conn = &mut connect::<$conn>(&url);
                    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
                    let mut k: i64 = 0;
                    let mut old_writes = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        // Row 0 is the hook's.
                        let id = 1 + i64::try_from((seed >> 33) % (rows as u64 - 1)).unwrap();
                        k += 1;
                        let (id, value) = match k % 3 {
                            1 => {
                                // A new row, by the new code.
                                let c = Contact {
                                    id: 10_000_000 + k,
                                    clinic_id: clinic_of(k),
                                    email: format!("new.{k}@example.org"),
                                    note: (k % 2 == 0).then(|| format!("new note {k}")),
                                };
                                diesel::insert_into(et_contacts::table)
                                    .values(&c)
                                    .execute(conn)
                                    .unwrap();
                                (c.id, (c.email, c.note))
                            }
                            2 if old_code.load(Ordering::SeqCst) => {
                                // The old version: plaintext into the legacy columns only.
                                let (e, n) = (format!("old.{k}.{id}@example.org"), format!("old note {k}"));
                                diesel::sql_query(format!(
                                    "UPDATE et_contacts SET email_plain = '{e}', note_plain = '{n}' WHERE id = {id}"
                                ))
                                .execute(conn)
                                .unwrap();
                                old_writes += 1;
                                (id, (e, Some(n)))
                            }
                            _ => {
                                let c = Contact {
                                    id,
                                    clinic_id: clinic_of(id),
                                    email: format!("app.{k}.{id}@example.org"),
                                    note: Some(format!("app note {k}")),
                                };
                                diesel::update(et_contacts::table.find(id))
                                    .set(&c)
                                    .execute(conn)
                                    .unwrap();
                                (id, (c.email, c.note))
                            }
                        };
                        written.lock().unwrap().insert(id, value);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    (k, old_writes)
                })
            };

            let opts = JobOptions {
                batch: 500,
                before_write: Some(change_row_0_by_case),
                ..JobOptions::default()
            };
            let run = |conn: &mut $conn, column: &str| -> JobReport {
                encrypt_column(conn, &Contact::MODEL, column, &format!("contacts-{column}"), &opts, |_| {})
                    .unwrap()
            };
            let first = [run(conn, "email"), run(conn, "note")];
            // The old version is gone (the deploy finished); the new code keeps writing.
            old_code.store(false, Ordering::SeqCst);
            let second = [run(conn, "email"), run(conn, "note")];
            stop.store(true, Ordering::SeqCst);
            let (app_writes, old_writes) = app.join().unwrap();
            // Old-version writes behind the first pass reopened it; after them, runs end.
            let mut last = [run(conn, "email"), run(conn, "note")];
            for _ in 0..3 {
                if last.iter().all(|r| r.finished) {
                    break;
                }
                last = [run(conn, "email"), run(conn, "note")];
            }
            println!(
                "{}: {rows} legacy rows, {app_writes} application writes ({old_writes} by the old \
                 version) during the backfill; runs: {first:?} {second:?} {last:?}",
                $backend
            );
            assert!(last.iter().all(|r| r.finished && r.remaining == 0), "{last:?}");
            assert!(HOOK_FIRED.load(Ordering::SeqCst));
            expected.insert(0, ("LEGACY.USER0@EXAMPLE.ORG ".into(), legacy_note(0)));
            for (id, v) in written.lock().unwrap().drain() {
                expected.insert(id, v);
            }

            // Verified independently of the job: SQL counts, then every row read back.
            assert_eq!(
                count!(conn, "SELECT COUNT(*) AS n FROM et_contacts WHERE email_plain IS NOT NULL OR note_plain IS NOT NULL"),
                0,
                "legacy plaintext left"
            );
            assert_eq!(count!(conn, "SELECT COUNT(*) AS n FROM et_contacts WHERE email IS NULL OR email_bidx IS NULL"), 0);
            assert_eq!(
                count!(conn, "SELECT COUNT(*) AS n FROM et_contacts WHERE note IS NULL"),
                expected.values().filter(|v| v.1.is_none()).count() as i64
            );
            assert_eq!(count_plaintext(conn, &Contact::MODEL, "email").unwrap(), 0);
            assert_eq!(count_plaintext(conn, &Contact::MODEL, "note").unwrap(), 0);
            // The inventory agrees with the SQL counts: no legacy value, every email sealed.
            let inv = encrypted_types::jobs::inventory(conn, &[Contact::MODEL]).unwrap();
            assert!(inv.iter().all(|e| matches!(e.content, encrypted_types::jobs::Content::Sealed { .. })), "{inv:?}");
            let sealed: u64 = inv.iter().filter(|e| e.column == "email").map(|e| e.values).sum();
            assert_eq!(sealed as i64, count!(conn, "SELECT COUNT(*) AS n FROM et_contacts WHERE email IS NOT NULL"));
            let back = load_all!(conn);
            assert_eq!(back.len(), expected.len());
            for c in &back {
                let want = &expected[&c.id];
                assert_eq!((&c.email, &c.note), (&want.0, &want.1), "row {} lost a write", c.id);
            }
            // Every migrated row is found through its blind index.
            for c in &back {
                let found = Contact::find_by_email(conn, &c.clinic_id, c.email.clone()).unwrap();
                assert!(found.iter().any(|f| f.id == c.id), "row {} not found by its index", c.id);
            }
            if let Some(n) = node_before {
                assert_eq!(count!(conn, filenode), n, "the backfill rewrote the table");
                #[derive(QueryableByName, Debug)]
                #[allow(dead_code)] // printed
                struct Stat {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n_tup_upd: i64,
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n_tup_hot_upd: i64,
                }
                let s: Stat = diesel::sql_query(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'et_contacts'",
                )
                .get_result(conn)
                .unwrap();
                println!("postgres: relfilenode {n} unchanged; {s:?}");
            }

            // Contract: the legacy columns dropped (a catalogue change, no rewrite either).
            let drops: &[&str] = if $backend == "sqlite" {
                &["ALTER TABLE et_contacts DROP COLUMN email_plain", "ALTER TABLE et_contacts DROP COLUMN note_plain"]
            } else {
                &["ALTER TABLE et_contacts DROP COLUMN email_plain, DROP COLUMN note_plain"]
            };
            for d in drops {
                conn.batch_execute(d).unwrap();
            }
            if let Some(n) = node_before {
                assert_eq!(count!(conn, filenode), n, "dropping the legacy columns rewrote the table");
            }
            let sealed: Vec<Option<Vec<u8>>> = et_contacts::table
                .select(et_contacts::email)
                .order(et_contacts::id)
                .load(conn)
                .unwrap();
            assert_eq!(sealed.len(), back.len());
        }
    };
}

text_migration_test!(
    text_column_migration_on_postgres,
    PgConnection,
    "postgres",
    Some(encrypted_types_tests::pg_url()),
    100_000
);
text_migration_test!(
    text_column_migration_on_mysql,
    MysqlConnection,
    "mysql",
    Some(encrypted_types_tests::mysql_url()),
    5_000
);
text_migration_test!(
    text_column_migration_on_sqlite,
    SqliteConnection,
    "sqlite",
    None,
    5_000
);

/// The reads and writes of a model in migration, and a legacy value the backfill must not
/// seal, on SQLite in memory.
#[test]
fn a_legacy_value_that_is_not_text_is_reported_and_left() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    KeyStore::<LocalKek>::run_migrations(conn).unwrap();
    for stmt in real_schema::legacy_contacts_ddl("sqlite")
        .into_iter()
        .chain(real_schema::expand_contacts_ddl("sqlite"))
    {
        conn.batch_execute(&stmt).unwrap();
    }
    store
        .create_tenant(conn, Some(&TenantId::from("1")))
        .unwrap();
    store.load_and_install(conn).unwrap();
    conn.batch_execute(
        "INSERT INTO et_contacts (id, clinic_id, email_plain, note_plain) VALUES \
         (1, 1, 'a@example.org', 'n'), (2, 1, CAST(x'ff00' AS TEXT), NULL)",
    )
    .unwrap();
    // A write through the model seals and clears the legacy column at once.
    let c = Contact {
        id: 1,
        clinic_id: 1,
        email: "b@example.org".into(),
        note: None,
    };
    diesel::update(et_contacts::table.find(1))
        .set(&c)
        .execute(conn)
        .unwrap();
    let raw: (Option<String>, Option<String>, Option<Vec<u8>>) = et_contacts::table
        .find(1)
        .select((
            et_contacts::email_plain,
            et_contacts::note_plain,
            et_contacts::email,
        ))
        .first(conn)
        .unwrap();
    assert_eq!(
        (raw.0, raw.1),
        (None, None),
        "the legacy columns were not cleared"
    );
    assert!(!raw.2.unwrap().windows(13).any(|w| w == b"b@example.org"));
    let r = encrypt_column(
        conn,
        &Contact::MODEL,
        "email",
        "bad",
        &JobOptions::default(),
        |_| {},
    )
    .unwrap();
    assert!(!r.finished, "{r:?}");
    assert_eq!(
        r.skipped.get(&SkipReason::InvalidLegacyValue),
        Some(&1),
        "{r:?}"
    );
    assert_eq!(r.remaining, 1);
    assert_eq!(count_plaintext(conn, &Contact::MODEL, "email").unwrap(), 1);
    // The inventory of a legacy TEXT column: one plaintext email left, one sealed (row 1's),
    // and the note column with nothing at all.
    let inv = encrypted_types::jobs::inventory(conn, &[Contact::MODEL]).unwrap();
    let legacy: Vec<(&str, u64)> = inv
        .iter()
        .filter(|e| e.content == encrypted_types::jobs::Content::LegacyPlaintext)
        .map(|e| (e.column, e.values))
        .collect();
    assert_eq!(legacy, [("email", 1)], "{inv:?}");
    let sealed: u64 = inv
        .iter()
        .filter(|e| {
            e.column == "email"
                && matches!(e.content, encrypted_types::jobs::Content::Sealed { .. })
        })
        .map(|e| e.values)
        .sum();
    assert_eq!(sealed, 1, "{inv:?}");
    let left: Option<Vec<u8>> =
        diesel::sql_query("SELECT CAST(email_plain AS BLOB) AS b FROM et_contacts WHERE id = 2")
            .get_result::<B>(conn)
            .unwrap()
            .b;
    assert_eq!(
        left.as_deref(),
        Some(&[0xff, 0x00][..]),
        "the invalid value was changed"
    );
    assert!(
        et_contacts::table
            .find(2)
            .select(et_contacts::email)
            .first::<Option<Vec<u8>>>(conn)
            .unwrap()
            .is_none()
    );
}

#[derive(QueryableByName)]
struct B {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    b: Option<Vec<u8>>,
}
