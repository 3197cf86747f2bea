//! The jobs on the shapes real schemas have: UUID keys (PostgreSQL `uuid`, 16 bytes in a
//! binary column), a composite `(clinic_id, patient_no)` key with a text part and the
//! boundary values `i64::MIN`, `i64::MAX` and `""`; SIGKILL at random points; four worker
//! processes sharing one rotation through leases; a job's identity; legacy values that look
//! like headers; refusals before any write.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::jobs::{JobOptions, Scope, SkipReason, rotate_data_keys};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, count_rows_with_keys};
use encrypted_types::{EncryptedModel, KeyId};
use encrypted_types_tests::models::{BinRecord, UuidRecord, Visit};
use encrypted_types_tests::real_schema::{et_uuid_bin, et_uuid_pg, et_visits};
use encrypted_types_tests::{connect, database};

/// Tenants of the visits: the integer boundaries are tenants (and key parts) too.
const TENANTS: [i64; 4] = [i64::MIN, 1, 2, i64::MAX];
const UUID_ROWS: usize = 100_000;
const VISITS: usize = 20_000;

/// Spread-out UUIDs (an odd multiplier is a bijection of u128), with the nil and max UUIDs.
fn uuid_of(i: usize) -> uuid::Uuid {
    if i == UUID_ROWS - 1 {
        return uuid::Uuid::max();
    }
    uuid::Uuid::from_u128((i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
}

fn visits(n: usize) -> Vec<Visit> {
    (0..n)
        .map(|i| Visit {
            clinic_id: TENANTS[i % 4],
            // One empty text key per clinic.
            patient_no: if i < 4 {
                String::new()
            } else {
                format!("p{i:07}")
            },
            note: format!("visit note {i}: canary-notes"),
            code: (i % 3000) as i16 - 1000,
            ref_id: (i % 2 == 0).then(|| uuid_of(i)),
        })
        .collect()
}

fn visit_values(vs: &[Visit]) -> i64 {
    vs.iter().map(|v| 2 + i64::from(v.ref_id.is_some())).sum()
}

fn sorted_visits(mut v: Vec<Visit>) -> Vec<Visit> {
    v.sort_by(|a, b| (a.clinic_id, &a.patient_no).cmp(&(b.clinic_id, &b.patient_no)));
    v
}

fn tenant(t: i64) -> encrypted_types::TenantId {
    t.to_string().as_str().into()
}

fn random_ms(from: u64, span: u64) -> u64 {
    let k = encrypted_types::KeyMaterial::generate().unwrap();
    let b = k.expose();
    from + u64::from(u16::from_be_bytes([b[0], b[1]])) % span
}

fn child(mode: &str, backend: &str, url: &str, kek: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "job_child",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("ET_MODE", mode)
    .env("ET_BACKEND", backend)
    .env("ET_URL", url)
    .env("ET_KEK", kek)
    .stderr(std::process::Stdio::null());
    c
}

macro_rules! real_schema_test {
    ($name:ident, $conn:ty, $backend:literal, $admin:expr, $rec:ident, $table:ident,
     $id:expr, $bigint:literal, $four:expr) => {
        /// 100,000 UUID-keyed rows and 20,000 composite-keyed visits, rotated with the job
        /// killed by SIGKILL at ten random points and resumed; then (on the servers) a second
        /// rotation of the visits shared by four worker processes, one killed mid-range.
        #[test]
        fn $name() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            let kek = dir.path().join("k.kek");
            let store = KeyStore::new(LocalKek::create(&kek).unwrap());
            let conn = &mut connect::<$conn>(&url);
            KeyStore::<LocalKek>::run_migrations(conn).unwrap();
            for stmt in encrypted_types_tests::real_schema::ddl($backend) {
                conn.batch_execute(&stmt).unwrap();
            }
            let mut old = Vec::new();
            for t in TENANTS {
                old.push(store.create_tenant(conn, Some(&tenant(t))).unwrap().data);
            }
            store.load_and_install(conn).unwrap();
            let make_id: fn(uuid::Uuid) -> _ = $id;
            let recs: Vec<$rec> = (0..UUID_ROWS)
                .map(|i| $rec {
                    id: make_id(uuid_of(i)),
                    clinic_id: 1 + (i % 2) as i64,
                    name: format!("{} {i}", encrypted_types_tests::CANARY_NAME),
                    email: format!("u{i}@example.org"),
                })
                .collect();
            for chunk in recs.chunks(1000) {
                conn.transaction(|c| {
                    diesel::insert_into($table::table)
                        .values($rec::batch(chunk))
                        .execute(c)
                })
                .unwrap();
            }
            let vs = visits(VISITS);
            for chunk in vs.chunks(1000) {
                conn.transaction(|c| {
                    diesel::insert_into(et_visits::table)
                        .values(Visit::batch(chunk))
                        .execute(c)
                })
                .unwrap();
            }
            let models = [$rec::MODEL, Visit::MODEL];
            let mut new = Vec::new();
            for t in TENANTS {
                new.push(store.rotate_data_key(conn, Some(&tenant(t))).unwrap());
            }

            // Ten runs killed at random points; half of them start with the visits, so kills
            // land in both tables' rotations.
            for k in 0..10 {
                let mode = if k % 2 == 0 {
                    "kill-uuid-first"
                } else {
                    "kill-visits-first"
                };
                let mut c = child(mode, $backend, &url, &kek)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(random_ms(400, 1600)));
                let _ = c.kill(); // SIGKILL
                let _ = c.wait();
            }
            let moved = count_rows_with_keys(conn, &models, &new).unwrap();
            assert!(moved > 0, "no killed run committed a batch");
            store.load_and_install(conn).unwrap();
            let opts = JobOptions {
                worker: Some("kill".into()),
                ..JobOptions::default()
            };
            for m in &models {
                let r = rotate_data_keys(conn, m, "kill", &opts, |_| {}).unwrap();
                assert!(r.finished && r.remaining == 0, "{}: {r:?}", m.table);
                assert_eq!(r.skipped_total(), 0, "{r:?}");
            }
            // Independent checks: an SQL count of values still naming an old key id, and
            // every row read back and compared.
            assert_eq!(count_rows_with_keys(conn, &models, &old).unwrap(), 0);
            let mut back: Vec<$rec> = $table::table.select($rec::as_select()).load(conn).unwrap();
            back.sort_by(|a, b| a.id.cmp(&b.id));
            let mut want = recs.clone();
            want.sort_by(|a, b| a.id.cmp(&b.id));
            assert!(back == want, "a UUID-keyed row changed or failed to open");
            let back = sorted_visits(
                et_visits::table
                    .select(Visit::as_select())
                    .load(conn)
                    .unwrap(),
            );
            assert!(
                back == sorted_visits(vs.clone()),
                "a visit changed or failed to open"
            );
            println!("{}: {moved} values re-sealed by the killed runs", $backend);

            if !$four {
                return;
            }
            // A second rotation of the visits, split into 8 ranges that four worker processes
            // claim; one of them is killed while it holds a range it has started.
            // The keys of the first rotation are retired now.
            let mut newest = Vec::new();
            for t in TENANTS {
                newest.push(store.rotate_data_key(conn, Some(&tenant(t))).unwrap());
            }
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    child(&format!("worker-w{w}"), $backend, &url, &kek)
                        .stdout(std::process::Stdio::piped())
                        // A worker's failure shows in the test's output.
                        .stderr(std::process::Stdio::inherit())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let held = format!(
                "SELECT COUNT(*) AS n FROM encrypted_types_jobs WHERE job = 'four' \
                 AND lease_owner = 'w3' AND state = 'pending' AND rows_done > 0"
            );
            let started = std::time::Instant::now();
            let mut workers = workers;
            while count!(conn, &held) == 0 {
                for w in &mut workers {
                    if let Some(status) = w.try_wait().unwrap() {
                        assert!(status.success(), "a worker failed before w3 held a range");
                    }
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "w3 never held a range"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut w3 = workers.pop().unwrap();
            let _ = w3.kill(); // SIGKILL, mid-range
            let _ = w3.wait();
            for w in workers {
                let out = w.wait_with_output().unwrap();
                assert!(out.status.success(), "a surviving worker failed");
                let text = String::from_utf8_lossy(&out.stdout);
                // The harness may print "test job_child ... " before it on the same line.
                let line = text
                    .lines()
                    .find_map(|l| l.find("REPORT ").map(|i| &l[i..]))
                    .unwrap_or_else(|| panic!("no report from a worker: {text}"));
                assert!(line.contains("finished=true"), "{line}");
            }
            let sum = format!(
                "SELECT CAST(COALESCE(SUM(rows_done), 0) AS {}) AS n FROM encrypted_types_jobs \
                 WHERE job = 'four'",
                $bigint
            );
            assert_eq!(
                count!(conn, &sum),
                visit_values(&vs),
                "each value re-sealed exactly once, counted in the job table"
            );
            assert_eq!(
                count_rows_with_keys(conn, &[Visit::MODEL], &new).unwrap(),
                0
            );
            assert_eq!(
                count_rows_with_keys(conn, &[Visit::MODEL], &newest).unwrap(),
                VISITS as u64
            );
            store.load_and_install(conn).unwrap();
            let back = sorted_visits(
                et_visits::table
                    .select(Visit::as_select())
                    .load(conn)
                    .unwrap(),
            );
            assert!(
                back == sorted_visits(vs),
                "a visit changed or failed to open"
            );
        }
    };
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `SELECT COUNT(*) AS n ...` (or any single BIGINT named `n`).
macro_rules! count {
    ($conn:expr, $sql:expr) => {
        diesel::sql_query($sql).get_result::<N>($conn).unwrap().n
    };
}

real_schema_test!(
    real_schemas_on_sqlite,
    SqliteConnection,
    "sqlite",
    None,
    BinRecord,
    et_uuid_bin,
    |u| u.as_bytes().to_vec(),
    "BIGINT",
    false
);
real_schema_test!(
    real_schemas_on_postgres,
    PgConnection,
    "postgres",
    Some(encrypted_types_tests::pg_url()),
    UuidRecord,
    et_uuid_pg,
    |u| u,
    "BIGINT",
    true
);
real_schema_test!(
    real_schemas_on_mysql,
    MysqlConnection,
    "mysql",
    Some(encrypted_types_tests::mysql_url()),
    BinRecord,
    et_uuid_bin,
    |u| u.as_bytes().to_vec(),
    "SIGNED",
    true
);

macro_rules! child_body {
    ($conn:ty, $rec:ident) => {{
        let url = std::env::var("ET_URL").unwrap();
        let kek = std::env::var("ET_KEK").unwrap();
        let mode = std::env::var("ET_MODE").unwrap();
        let conn = &mut connect::<$conn>(&url);
        KeyStore::new(LocalKek::open(&kek).unwrap())
            .load_and_install(conn)
            .unwrap();
        if let Some(name) = mode.strip_prefix("worker-") {
            let r = rotate_data_keys(
                conn,
                &Visit::MODEL,
                "four",
                &JobOptions {
                    batch: 25,
                    scope: Scope::Parts(8),
                    lease: Duration::from_secs(2),
                    worker: Some(name.to_owned()),
                    ..JobOptions::default()
                },
                |_| {},
            )
            .unwrap();
            println!("REPORT finished={} written={}", r.finished, r.written);
        } else {
            // A restarted worker with the same name takes its ranges back at once.
            let opts = JobOptions {
                batch: 200,
                worker: Some("kill".into()),
                ..JobOptions::default()
            };
            let mut order = [$rec::MODEL, Visit::MODEL];
            if mode == "kill-visits-first" {
                order.reverse();
            }
            for m in &order {
                rotate_data_keys(conn, m, "kill", &opts, |_| {}).unwrap();
            }
        }
    }};
}

/// The child of the tests above: a killed rotation run, or one of four workers.
#[test]
#[ignore = "run (and killed) by the real-schema tests"]
fn job_child() {
    match std::env::var("ET_BACKEND")
        .expect("run by a parent test")
        .as_str()
    {
        "sqlite" => child_body!(SqliteConnection, BinRecord),
        "postgres" => child_body!(PgConnection, UuidRecord),
        _ => child_body!(MysqlConnection, BinRecord),
    }
}

/// The model of `et_visits` with only part of its key: the jobs must refuse it.
#[derive(Clone, PartialEq, encrypted_types::Encrypted)]
#[encrypted(table = encrypted_types_tests::real_schema::et_visits, tenant = clinic_id, primary_key(clinic_id))]
struct VisitHalfKey {
    clinic_id: i64,
    patient_no: String,
    #[encrypted]
    note: String,
    #[encrypted]
    code: i16,
    #[encrypted]
    ref_id: Option<uuid::Uuid>,
}

macro_rules! in_transaction_suite {
    ($connect:path, $ct:ty) => {
        use super::*;
        use encrypted_types::Error;
        use encrypted_types::jobs::{count_plaintext, encrypt_column, reindex};
        use encrypted_types::migration;

        /// Keys for every tenant and `n` visits sealed under them; returns the store, the
        /// connection and the visits.
        macro_rules! setup {
            ($dir:expr, $n:expr) => {{
                let store = KeyStore::new(LocalKek::create($dir.path().join("k.kek")).unwrap());
                let mut conn = $connect();
                for t in TENANTS {
                    store.create_tenant(&mut conn, Some(&tenant(t))).unwrap();
                }
                store.load_and_install(&mut conn).unwrap();
                let vs = visits($n);
                diesel::insert_into(et_visits::table)
                    .values(Visit::batch(&vs))
                    .execute(&mut conn)
                    .unwrap();
                (store, conn, vs)
            }};
        }

        fn rotate_all(store: &KeyStore<LocalKek>, conn: &mut $ct) -> Vec<KeyId> {
            let ids = TENANTS
                .iter()
                .map(|t| store.rotate_data_key(conn, Some(&tenant(*t))).unwrap())
                .collect();
            store.load_and_install(conn).unwrap();
            ids
        }

        fn set_raw(conn: &mut $ct, v: &Visit, code: Vec<u8>, ref_id: Option<Vec<u8>>) {
            let n = diesel::update(
                et_visits::table
                    .filter(et_visits::clinic_id.eq(v.clinic_id))
                    .filter(et_visits::patient_no.eq(v.patient_no.clone())),
            )
            .set((et_visits::code.eq(code), et_visits::ref_id.eq(ref_id)))
            .execute(conn)
            .unwrap();
            assert_eq!(n, 1);
        }

        #[test]
        fn a_model_whose_key_the_jobs_cannot_page_is_refused_before_any_write() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (store, mut conn, _) = setup!(dir, 40);
            let conn = &mut conn;
            let new = rotate_all(&store, conn);
            let err = rotate_data_keys(
                conn,
                &VisitHalfKey::MODEL,
                "half",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap_err();
            assert!(matches!(err, Error::UnpageableKey { .. }), "{err}");
            assert!(err.to_string().contains("(clinic_id, patient_no)"), "{err}");
            assert_eq!(
                count!(
                    conn,
                    "SELECT COUNT(*) AS n FROM encrypted_types_jobs WHERE job = 'half'"
                ),
                0,
                "nothing recorded"
            );
            assert_eq!(
                count_rows_with_keys(conn, &[Visit::MODEL], &new).unwrap(),
                0,
                "nothing re-sealed"
            );
        }

        #[test]
        fn a_job_name_keeps_its_operation_and_target_and_says_when_it_had_finished() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (store, mut conn, vs) = setup!(dir, 40);
            let conn = &mut conn;
            rotate_all(&store, conn);
            let opts = JobOptions {
                batch: 7,
                ..JobOptions::default()
            };
            let first = rotate_data_keys(conn, &Visit::MODEL, "ident", &opts, |_| {}).unwrap();
            assert!(first.finished && !first.already_finished, "{first:?}");
            assert_eq!(first.written as i64, visit_values(&vs));
            let again = rotate_data_keys(conn, &Visit::MODEL, "ident", &opts, |_| {}).unwrap();
            assert!(
                again.finished && again.already_finished && again.written == 0,
                "{again:?}"
            );
            // Another rotation retires other keys: the same name is another target now.
            rotate_all(&store, conn);
            let e = rotate_data_keys(conn, &Visit::MODEL, "ident", &opts, |_| {}).unwrap_err();
            assert!(matches!(e, Error::JobMismatch { .. }), "{e}");
            let e = reindex(conn, &Visit::MODEL, "ident", &opts, |_| {}).unwrap_err();
            assert!(
                matches!(e, Error::JobMismatch { .. }),
                "another operation: {e}"
            );
            let fresh = rotate_data_keys(conn, &Visit::MODEL, "ident-2", &opts, |_| {}).unwrap();
            assert!(fresh.finished && fresh.written as i64 == visit_values(&vs));
        }

        #[test]
        fn legacy_values_that_look_like_headers_are_migrated_and_invalid_ones_skipped() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (_store, mut conn, mut vs) = setup!(dir, 40);
            let conn = &mut conn;
            // Legacy rows: an i16 of 257 is the bytes 01 01, and so is the start of this UUID.
            let legacy = uuid::Uuid::from_bytes([
                1, 1, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
            ]);
            for v in vs.iter_mut().take(10) {
                v.code = 257;
                v.ref_id = Some(legacy);
                set_raw(
                    conn,
                    v,
                    257_i16.to_be_bytes().to_vec(),
                    Some(legacy.as_bytes().to_vec()),
                );
            }
            // Three bytes are no i16: sealing them would make every later read fail.
            let bad = vs.remove(20);
            set_raw(conn, &bad, vec![1, 1, 1], None);
            migration::allow_plaintext("et_visits", "code");
            migration::allow_plaintext("et_visits", "ref_id");
            assert_eq!(count_plaintext(conn, &Visit::MODEL, "code").unwrap(), 11);
            assert_eq!(count_plaintext(conn, &Visit::MODEL, "ref_id").unwrap(), 10);
            let opts = JobOptions {
                batch: 6,
                ..JobOptions::default()
            };
            let r = encrypt_column(conn, &Visit::MODEL, "code", "legacy", &opts, |_| {}).unwrap();
            assert_eq!(r.written, 10, "{r:?}");
            assert_eq!(
                r.skipped.get(&SkipReason::InvalidLegacyValue),
                Some(&1),
                "{r:?}"
            );
            assert!(
                !r.finished && r.remaining == 1,
                "a column with plaintext left is not finished: {r:?}"
            );
            let raw: Vec<u8> = et_visits::table
                .filter(et_visits::clinic_id.eq(bad.clinic_id))
                .filter(et_visits::patient_no.eq(bad.patient_no.clone()))
                .select(et_visits::code)
                .first(conn)
                .unwrap();
            assert_eq!(raw, vec![1, 1, 1], "the invalid value was not sealed");
            let r = encrypt_column(conn, &Visit::MODEL, "ref_id", "legacy", &opts, |_| {}).unwrap();
            assert!(r.finished && r.written == 10, "{r:?}");
            // The operator deals with the invalid row (here: deletes it); a new run finishes.
            diesel::delete(
                et_visits::table
                    .filter(et_visits::clinic_id.eq(bad.clinic_id))
                    .filter(et_visits::patient_no.eq(bad.patient_no.clone())),
            )
            .execute(conn)
            .unwrap();
            let r = encrypt_column(conn, &Visit::MODEL, "code", "legacy-2", &opts, |_| {}).unwrap();
            assert!(r.finished && r.written == 0, "{r:?}");
            assert_eq!(count_plaintext(conn, &Visit::MODEL, "code").unwrap(), 0);
            assert_eq!(count_plaintext(conn, &Visit::MODEL, "ref_id").unwrap(), 0);
            migration::stop_plaintext("et_visits", "code");
            migration::stop_plaintext("et_visits", "ref_id");
            let back = sorted_visits(
                et_visits::table
                    .select(Visit::as_select())
                    .load(conn)
                    .unwrap(),
            );
            assert_eq!(
                back,
                sorted_visits(vs),
                "every row reads strictly, 257 and the UUID included"
            );
        }

        #[test]
        fn reindex_after_a_tenant_is_shredded_finishes_and_reports_the_shredded_rows() {
            use encrypted_types_tests::models::{Patient, PatientRotated, PatientRotating};
            use encrypted_types_tests::schema::et_patients;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let ps: Vec<Patient> = (0..30)
                .map(|i| {
                    let mut p = Patient::sample(
                        300 + i,
                        1 + i64::from(i % 2),
                        &format!("s{i}@example.org"),
                        "123",
                    );
                    p.phone = (i % 3 == 0).then(|| format!("555-{i:04}"));
                    p
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            store
                .shred_tenant(conn, &"2".into(), &[Patient::MODEL])
                .unwrap();
            let r = reindex(
                conn,
                &PatientRotating::MODEL,
                "after-shred",
                &JobOptions {
                    batch: 8,
                    ..JobOptions::default()
                },
                |_| {},
            )
            .unwrap();
            let erased: Vec<&Patient> = ps.iter().filter(|p| p.clinic_id == 2).collect();
            let indexes = erased
                .iter()
                .map(|p| 2 + u64::from(p.phone.is_some()))
                .sum::<u64>();
            assert!(r.finished, "{r:?}");
            assert_eq!(
                r.skipped.get(&SkipReason::KeyDestroyed),
                Some(&indexes),
                "{r:?}"
            );
            assert_eq!(
                r.written, 15,
                "the live tenant's email indexes move to version 2"
            );
            for p in ps.iter().filter(|p| p.clinic_id == 1) {
                let found = et_patients::table
                    .select(PatientRotated::as_select())
                    .filter(PatientRotated::email_eq(&p.clinic_id, p.email.clone()))
                    .load::<PatientRotated>(conn)
                    .unwrap();
                assert_eq!(found.len(), 1, "{}", p.email);
            }
        }

        #[test]
        fn a_value_under_a_key_this_process_does_not_know_is_never_taken_for_plaintext() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (_store, mut conn, vs) = setup!(dir, 12);
            let conn = &mut conn;
            // The shape of a sealed value under a key id the key table does not hold (one
            // created by another process after this one loaded its keys).
            let mut newer = vec![1, 1, 0x7f, 0xee, 0xdd, 0xcc];
            newer.resize(60, 0x42);
            let v = &vs[5];
            let n = diesel::update(
                et_visits::table
                    .filter(et_visits::clinic_id.eq(v.clinic_id))
                    .filter(et_visits::patient_no.eq(v.patient_no.clone())),
            )
            .set(et_visits::note.eq(newer.clone()))
            .execute(conn)
            .unwrap();
            assert_eq!(n, 1);
            migration::allow_plaintext("et_visits", "note");
            let read = et_visits::table
                .select(Visit::as_select())
                .load::<Visit>(conn);
            let opts = JobOptions::default();
            let r = encrypt_column(conn, &Visit::MODEL, "note", "unknown", &opts, |_| {});
            let left = count_plaintext(conn, &Visit::MODEL, "note");
            migration::stop_plaintext("et_visits", "note");
            // The whole cause chain: Diesel names the field, the library says why.
            let err = read.unwrap_err();
            let mut e = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                e.push_str(&format!(": {c}"));
                cause = c.source();
            }
            assert!(
                e.contains("no key with id"),
                "not refused as an unknown key: {e}"
            );
            let r = r.unwrap();
            assert_eq!(r.skipped.get(&SkipReason::UnknownKey), Some(&1), "{r:?}");
            assert!(!r.finished && r.written == 0, "{r:?}");
            assert_eq!(left.unwrap(), 1);
            let raw: Vec<u8> = et_visits::table
                .filter(et_visits::clinic_id.eq(v.clinic_id))
                .filter(et_visits::patient_no.eq(v.patient_no.clone()))
                .select(et_visits::note)
                .first(conn)
                .unwrap();
            assert_eq!(raw, newer, "not sealed a second time");
        }

        #[test]
        fn a_ciphertext_copied_into_another_tenants_row_is_skipped_by_the_jobs() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (store, mut conn, vs) = setup!(dir, 8);
            let conn = &mut conn;
            // vs[1] is tenant 1's, vs[2] tenant 2's: the note moves across tenants.
            let from: Vec<u8> = et_visits::table
                .filter(et_visits::clinic_id.eq(vs[1].clinic_id))
                .filter(et_visits::patient_no.eq(vs[1].patient_no.clone()))
                .select(et_visits::note)
                .first(conn)
                .unwrap();
            diesel::update(
                et_visits::table
                    .filter(et_visits::clinic_id.eq(vs[2].clinic_id))
                    .filter(et_visits::patient_no.eq(vs[2].patient_no.clone())),
            )
            .set(et_visits::note.eq(from))
            .execute(conn)
            .unwrap();
            rotate_all(&store, conn);
            let r = rotate_data_keys(conn, &Visit::MODEL, "swap", &JobOptions::default(), |_| {})
                .unwrap();
            assert_eq!(
                r.skipped.get(&SkipReason::TenantMismatch),
                Some(&1),
                "{r:?}"
            );
            assert!(!r.finished && r.remaining == 1, "{r:?}");
        }

        /// The live leakage report: `ssn` indexed on 16 bits over 200 distinct values per
        /// clinic leaks more than the bound allows, and the report says which bits to use.
        #[test]
        fn the_leakage_report_judges_each_index_on_live_rows() {
            use encrypted_types::index::IndexVerdict;
            use encrypted_types::jobs::index_leakage;
            use encrypted_types_tests::models::Patient;
            use encrypted_types_tests::schema::et_patients;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let ps: Vec<Patient> = (0..400)
                .map(|i| {
                    // Tenant 2's emails repeat: 10 distinct values over 200 rows.
                    let email = if i % 2 == 0 {
                        format!("p{i}@example.org")
                    } else {
                        format!("shared{}@example.org", i % 20)
                    };
                    Patient::sample(500 + i, 1 + i64::from(i % 2), &email, &format!("{i:09}"))
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            let report = index_leakage(conn, &Patient::MODEL).unwrap();
            let get = |col: &str, tenant: &str| {
                report
                    .iter()
                    .find(|l| l.index_column == col && l.tenant.as_deref() == Some(tenant))
                    .unwrap()
                    .clone()
            };
            let ssn = get("ssn_bidx", "1");
            assert_eq!(
                (ssn.rows, ssn.distinct_values, ssn.unreadable),
                (200, 200, 0)
            );
            assert!(ssn.distinct_index_values <= 200 && ssn.distinct_index_values > 190);
            assert_eq!(
                ssn.verdict,
                IndexVerdict::LeaksMore {
                    bits: 16,
                    max_bits: 6
                },
                "{ssn:?}"
            );
            assert_eq!(ssn.plan.recommended_bits, 6);
            let shared = get("email_bidx", "2");
            assert_eq!((shared.rows, shared.distinct_values), (200, 10));
            assert_eq!(
                shared.distinct_index_values, 10,
                "a full index shows each repeat"
            );
            // No phone was written: that index has no rows to judge.
            assert!(report.iter().all(|l| l.index_column != "phone_bidx"));
        }

        #[test]
        fn rotating_a_tenant_that_has_no_keys_is_refused() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let (store, mut conn, _) = setup!(dir, 4);
            let conn = &mut conn;
            let e = store
                .rotate_data_key(conn, Some(&"no-such-clinic".into()))
                .unwrap_err();
            assert!(matches!(e, Error::NoPrimaryKey { .. }), "{e}");
            // No half-tenant was left behind: the key table still loads.
            store.load_and_install(conn).unwrap();
        }

        #[test]
        fn a_replaced_blind_index_root_key_is_reindexed_and_destroyed() {
            use encrypted_types_tests::models::{
                Patient, PatientRootReplaced, PatientRootReplacing,
            };
            use encrypted_types_tests::schema::et_patients;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            // No grace period: this test destroys right after the replacement it runs itself.
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap())
                .with_destroy_grace(std::time::Duration::ZERO);
            let conn = &mut $connect();
            for t in ["1", "2"] {
                store.create_tenant(conn, Some(&t.into())).unwrap();
            }
            store.load_and_install(conn).unwrap();
            let ps: Vec<Patient> = (0..20)
                .map(|i| {
                    let mut p = Patient::sample(
                        700 + i,
                        1 + i64::from(i % 2),
                        &format!("r{i}@example.org"),
                        &format!("{i:03}-00-0000"),
                    );
                    p.phone = (i % 3 == 0).then(|| format!("555-{i:04}"));
                    p
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            let stored = |conn: &mut $ct| -> Vec<Vec<u8>> {
                et_patients::table
                    .filter(et_patients::id.ge(700))
                    .order(et_patients::id)
                    .select(et_patients::email_bidx)
                    .load(conn)
                    .unwrap()
            };
            let before = stored(conn);

            // Tenant 1's root is compromised: replaced, and every process reloads.
            let (new, old) = store
                .replace_blind_index_root(conn, Some(&"1".into()))
                .unwrap();
            assert_ne!(new, old);
            assert!(
                store
                    .replace_blind_index_root(conn, Some(&"1".into()))
                    .is_err(),
                "a second replacement before the first is done"
            );
            store.load_and_install(conn).unwrap();
            // The old version under the new root finds nothing of tenant 1 ...
            assert!(
                Patient::find_by_email(conn, &1, "r0@example.org")
                    .unwrap()
                    .is_empty()
            );
            // ... while the replacing model finds every row through the retired root, and
            // tenant 2 (never replaced) through its own.
            for p in &ps {
                let found =
                    PatientRootReplacing::find_by_email(conn, &p.clinic_id, p.email.clone())
                        .unwrap();
                assert_eq!(
                    found.iter().map(|f| f.id).collect::<Vec<_>>(),
                    vec![p.id],
                    "{}",
                    p.email
                );
                assert!(
                    PatientRootReplacing::find_by_ssn(conn, &p.clinic_id, p.ssn.clone())
                        .unwrap()
                        .iter()
                        .any(|f| f.id == p.id)
                );
            }
            let r = reindex(
                conn,
                &PatientRootReplacing::MODEL,
                "root-1",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(r.finished, "{r:?}");
            let after = stored(conn);
            assert!(
                before.iter().zip(&after).all(|(a, b)| a != b),
                "an index kept its old bytes"
            );
            // The retired root is destroyed; lookups of version 2 under the new root find
            // every row of both tenants.
            store.destroy_key(conn, old, &[]).unwrap();
            store.load_and_install(conn).unwrap();
            for p in &ps {
                let found = PatientRootReplaced::find_by_email(conn, &p.clinic_id, p.email.clone())
                    .unwrap();
                assert_eq!(found.len(), 1, "{}", p.email);
                if let Some(phone) = &p.phone {
                    assert_eq!(
                        PatientRootReplaced::find_by_phone(conn, &p.clinic_id, phone.clone())
                            .unwrap()
                            .len(),
                        1
                    );
                }
            }
            let destroyed: i64 = encrypted_types::store::encrypted_types_keys::table
                .filter(
                    encrypted_types::store::encrypted_types_keys::key_id.eq(i64::from(old.get())),
                )
                .filter(encrypted_types::store::encrypted_types_keys::state.eq("destroyed"))
                .filter(encrypted_types::store::encrypted_types_keys::wrapped_key.is_null())
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(destroyed, 1, "the old root's bytes are still stored");
        }

        #[test]
        fn after_a_tenant_is_shredded_a_listing_reports_its_rows_and_the_purge_removes_them() {
            use encrypted_types::jobs::purge_tenant;
            use encrypted_types::{Fallible, TenantId};
            use encrypted_types_tests::models::Patient;
            use encrypted_types_tests::schema::et_patients;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            for t in ["1", "2", "3"] {
                store.create_tenant(conn, Some(&t.into())).unwrap();
            }
            store.load_and_install(conn).unwrap();
            let ps: Vec<Patient> = (0..30)
                .map(|i| {
                    Patient::sample(
                        600 + i,
                        1 + i64::from(i % 3),
                        &format!("e{i}@example.org"),
                        "123",
                    )
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            // Legacy plaintext notes of clinics 1 and 2, from before the column was encrypted.
            for id in [603, 604] {
                diesel::update(et_patients::table.find(id))
                    .set(et_patients::notes.eq(Some(b"legacy note".to_vec())))
                    .execute(conn)
                    .unwrap();
            }
            store
                .shred_tenant(conn, &"2".into(), &[Patient::MODEL])
                .unwrap();
            store.load_and_install(conn).unwrap();

            // The plain listing fails on the first erased row, and says which.
            let all = et_patients::table
                .filter(et_patients::id.ge(600))
                .select(Patient::as_select())
                .order(et_patients::id)
                .load::<Patient>(conn);
            let e = all.unwrap_err();
            assert!(
                matches!(Error::from_diesel(&e), Some(Error::KeyDestroyed(_))),
                "{e}"
            );
            assert!(
                e.to_string().contains("et_patients row 601: column name"),
                "{e}"
            );
            // Row by row: every other clinic's row, and a report of each erased one.
            let rows: Vec<Fallible<Patient>> = et_patients::table
                .filter(et_patients::id.ge(600))
                .select(Fallible::<Patient>::as_select())
                .order(et_patients::id)
                .load(conn)
                .unwrap();
            let (mut ok, mut bad) = (Vec::new(), Vec::new());
            for r in rows {
                match r.into_result() {
                    Ok(p) => ok.push(p),
                    Err(u) => bad.push(u),
                }
            }
            let mut kept: Vec<Patient> = ps.iter().filter(|p| p.clinic_id != 2).cloned().collect();
            // 603 (clinic 1) holds legacy plaintext, which reads only with the fallback on.
            kept.iter_mut().find(|p| p.id == 603).unwrap().notes = Some("legacy note".into());
            assert_eq!(ok.len() + bad.len(), 30);
            assert!(
                bad.iter().all(|u| u.column == "name" || u.key.to_string() == "603"),
                "{bad:?}"
            );
            let erased: Vec<String> = ps
                .iter()
                .filter(|p| p.clinic_id == 2)
                .map(|p| p.id.to_string())
                .collect();
            for id in &erased {
                assert!(
                    bad.iter()
                        .any(|u| u.key.to_string() == *id && matches!(u.error, Error::KeyDestroyed(_))),
                    "{id}: {bad:?}"
                );
            }
            assert!(ok.iter().all(|p| p.clinic_id != 2));
            // The backfill seals clinic 1's legacy note and reports clinic 2's: its tenant is
            // shredded, so there is no key to seal it (the plaintext stays until the purge).
            let r = encrypt_column(
                conn,
                &Patient::MODEL,
                "notes",
                "notes-after-shred",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert_eq!(r.written, 1, "{r:?}");
            assert_eq!(r.skipped.get(&SkipReason::NoTenantKey), Some(&1), "{r:?}");
            assert!(!r.finished);

            // The purge: refused for a live tenant, then the erased rows leave the table.
            assert!(matches!(
                purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("1"), 4),
                Err(Error::NotShredded { .. })
            ));
            assert_eq!(
                purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("2"), 4).unwrap(),
                erased.len() as u64
            );
            let left: i64 = et_patients::table
                .filter(et_patients::clinic_id.eq(2))
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(left, 0, "a row of the erased tenant is left");
            let back = et_patients::table
                .filter(et_patients::id.ge(600))
                .select(Patient::as_select())
                .order(et_patients::id)
                .load::<Patient>(conn)
                .unwrap();
            assert_eq!(back, kept);
            let r = encrypt_column(
                conn,
                &Patient::MODEL,
                "notes",
                "notes-after-purge",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(r.finished, "{r:?}");
        }

        /// The purge acts on authenticated evidence from the key table, never on what a keyring
        /// lacks: a live tenant whose own KEK is not configured in this process (its keyring
        /// shows no key for it, `TenantUnavailable`), one not loaded (`TenantNotLoaded`), one
        /// with no records and one whose records a database writer set to destroyed are all
        /// refused, and each keeps every row (an SQL count).
        #[test]
        fn the_purge_refuses_every_tenant_the_key_table_does_not_show_shredded() {
            use encrypted_types::jobs::purge_tenant;
            use encrypted_types::kek::KekProvider;
            use encrypted_types::{Keyring, TenantId};
            use encrypted_types_tests::models::Patient;
            use encrypted_types_tests::schema::et_patients;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let theirs = LocalKek::create(dir.path().join("clinic-5.kek")).unwrap();
            let their_ref = theirs.kek_ref();
            let full = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap())
                .with_tenant_kek("5", theirs);
            let conn = &mut $connect();
            for t in ["1", "2", "3"] {
                full.create_tenant(conn, Some(&t.into())).unwrap();
            }
            full.create_tenant_with_kek(conn, &"5".into(), &their_ref)
                .unwrap();
            full.load_and_install(conn).unwrap();
            let ps: Vec<Patient> = (0..16)
                .map(|i| {
                    let clinic = [1, 2, 3, 5][i as usize % 4];
                    Patient::sample(700 + i, clinic, &format!("p{i}@example.org"), "123")
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            let rows = |conn: &mut $ct, clinic: i64| -> i64 {
                et_patients::table
                    .filter(et_patients::id.ge(700))
                    .filter(et_patients::clinic_id.eq(clinic))
                    .count()
                    .get_result(conn)
                    .unwrap()
            };

            // Tenant 5's KEK is not configured here: its keyring has no key for it.
            let store = KeyStore::new(LocalKek::open(dir.path().join("k.kek")).unwrap());
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(report.unavailable.len(), 1, "{report:?}");
            assert!(Keyring::current().unwrap().primary_key(Some(&"5".into())).is_err());
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("5"), 3)
                .unwrap_err();
            assert!(matches!(e, Error::NotShredded { .. }), "{e:?}");
            assert_eq!(rows(conn, 5), 4);

            // Tenant 2 is live but not loaded in this process.
            store
                .load_tenants(conn, &["1".into()])
                .unwrap()
                .0
                .install();
            assert!(Keyring::current().unwrap().primary_key(Some(&"2".into())).is_err());
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("2"), 3)
                .unwrap_err();
            assert!(matches!(e, Error::NotShredded { .. }), "{e:?}");
            assert_eq!(rows(conn, 2), 4);

            // A tenant the key table does not know.
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("4"), 3)
                .unwrap_err();
            assert!(matches!(e, Error::NotShredded { .. }), "{e:?}");

            // A writer marks tenant 3's keys destroyed by SQL: the records no longer verify.
            conn.batch_execute(
                "UPDATE encrypted_types_keys SET state = 'destroyed', wrapped_key = NULL WHERE tenant = '3'",
            )
            .unwrap();
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("3"), 3)
                .unwrap_err();
            assert!(matches!(e, Error::KeyRecord { .. }), "{e:?}");
            assert_eq!(rows(conn, 3), 4);

            // Shredded for real (with its own KEK present to shred it): the purge removes
            // exactly its rows, and a tenant re-created afterwards is live again.
            full.shred_tenant(conn, &"5".into(), &[Patient::MODEL])
                .unwrap();
            assert_eq!(
                purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("5"), 3).unwrap(),
                4
            );
            assert_eq!(rows(conn, 5), 0);
            assert_eq!(rows(conn, 1), 4);
            full.create_tenant(conn, Some(&"5".into())).unwrap();
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("5"), 3)
                .unwrap_err();
            assert!(matches!(e, Error::NotShredded { .. }), "{e:?}");

            // The re-created tenant writes rows; a writer then deletes its new key records, so
            // that only the destroyed ones (authentic, from the shred) are left. The manifest
            // says they are not all of its records: refused, every row kept.
            // (Tenant 3's records were altered above: a load of tenant 5 alone.)
            full.load_tenants(conn, &["5".into()]).unwrap().0.install();
            let again: Vec<Patient> = (0..2)
                .map(|i| Patient::sample(720 + i, 5, &format!("q{i}@example.org"), "123"))
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&again))
                .execute(conn)
                .unwrap();
            conn.batch_execute(
                "DELETE FROM encrypted_types_keys WHERE tenant = '5' AND state <> 'destroyed'",
            )
            .unwrap();
            let e = purge_tenant(conn, &store, &Patient::MODEL, &TenantId::from("5"), 3)
                .unwrap_err();
            assert!(
                matches!(&e, Error::Manifest { scope, .. } if scope == "tenant 5"),
                "{e:?}"
            );
            assert_eq!(rows(conn, 5), 2);
        }
    };
}

mod sqlite {
    in_transaction_suite!(encrypted_types_tests::keystore::sqlite, SqliteConnection);
}

mod postgres {
    in_transaction_suite!(encrypted_types_tests::keystore::pg, PgConnection);
}

mod mysql {
    in_transaction_suite!(encrypted_types_tests::keystore::mysql, MysqlConnection);
}
