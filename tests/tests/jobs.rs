//! The data-key rotation job: rows found by key id in SQL, re-sealed in checkpointed batches,
//! resumed after a stop and after SIGKILL, split across workers by primary-key range.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use diesel::prelude::*;
use encrypted_types::jobs::{JobOptions, RowKey, Scope, rotate_data_keys};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, count_rows_with_keys};
use encrypted_types::{EncryptedModel, KeyId, Keyring};
use encrypted_types_tests::models::Patient;
use encrypted_types_tests::schema::et_patients;

fn patients(n: i32) -> Vec<Patient> {
    (0..n)
        .map(|i| {
            let mut p = Patient::sample(
                100_000 + i,
                1 + i64::from(i % 2),
                &format!("r{i}@example.org"),
                &format!("{i:09}"),
            );
            p.phone = (i % 3 == 0).then(|| format!("555-{i:04}"));
            p
        })
        .collect()
}

/// Rows per key id over every encrypted column of the model.
fn on_keys(
    conn: &mut impl diesel::connection::LoadConnection<Backend = impl encrypted_types::store::KeyTable>,
    ids: &[KeyId],
) -> u64 {
    count_rows_with_keys(conn, &[Patient::MODEL], ids).unwrap()
}

macro_rules! job_suite {
    ($connect:path) => {
        use super::*;

        #[test]
        fn rotation_reseals_every_row_resumes_and_splits_by_range() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            // No grace period: this test destroys right after the rotation it runs itself.
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap())
                .with_destroy_grace(std::time::Duration::ZERO);
            let conn = &mut $connect();
            let one = store.create_tenant(conn, Some(&"1".into())).unwrap();
            let two = store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let ps = patients(600);
            for chunk in ps.chunks(200) {
                diesel::insert_into(et_patients::table)
                    .values(Patient::batch(chunk))
                    .execute(conn)
                    .unwrap();
            }
            let old = [one.data, two.data];
            assert_eq!(on_keys(conn, &old), 600);

            // New primaries; nothing is re-sealed yet, everything still opens.
            let new = [
                store.rotate_data_key(conn, Some(&"1".into())).unwrap(),
                store.rotate_data_key(conn, Some(&"2".into())).unwrap(),
            ];
            store.load_and_install(conn).unwrap();
            let mut retired = Keyring::current().unwrap().retired_key_ids();
            retired.sort();
            let mut want = old.to_vec();
            want.sort();
            assert_eq!(retired, want);

            // A key that rows still reference cannot be destroyed.
            let refused = store.destroy_key(conn, one.data, &[Patient::MODEL]).err().unwrap();
            assert!(matches!(refused, encrypted_types::Error::NotDestroyable { key_id, .. } if key_id == one.data), "{refused}");

            // Worker A takes ids below 100300 and stops after 2 batches; worker B the rest.
            let a = JobOptions {
                batch: 50,
                scope: Scope::Range { from: Some(0.into()), to: Some(100_300.into()) },
                max_batches: Some(2),
                ..JobOptions::default()
            };
            let first = rotate_data_keys(conn, &Patient::MODEL, "t", &a, |_| {}).unwrap();
            assert!(!first.finished);
            assert_eq!(first.batches, 2);
            assert_eq!(first.written, 100, "two batches of one column");
            assert_eq!(
                on_keys(conn, &old),
                600,
                "every row still has other columns on the old key"
            );
            let b = JobOptions {
                batch: 64,
                scope: Scope::Range { from: Some(100_300.into()), to: None },
                ..JobOptions::default()
            };
            let mut seen = 0;
            let mut last = (0, None);
            let second = rotate_data_keys(conn, &Patient::MODEL, "t", &b, |p| {
                seen = p.rows_done;
                last = (p.written, p.estimated_total);
            })
            .unwrap();
            assert!(second.finished && second.conflicts == 0);
            assert!(seen > 0);
            // Progress carries the run's total, counted in SQL when it began: exactly what it
            // then wrote in its own range, which no other writer touched.
            assert_eq!(last, (second.written, Some(second.written)));
            // Worker A resumes from its checkpoint: it does not redo its first 100 values.
            let resumed = rotate_data_keys(
                conn,
                &Patient::MODEL,
                "t",
                &JobOptions {
                    max_batches: None,
                    ..a.clone()
                },
                |_| {},
            )
            .unwrap();
            assert!(resumed.finished);
            let total_values: u64 = ps
                .iter()
                .map(|p| 5 + u64::from(p.phone.is_some()) * 1)
                .sum();
            assert_eq!(
                first.written + second.written + resumed.written,
                total_values
            );

            // Verification: no row on an old key, every row opens on the new ones.
            assert_eq!(on_keys(conn, &old), 0);
            assert_eq!(on_keys(conn, &new), 600);
            let back: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .order(et_patients::id)
                .load(conn)
                .unwrap();
            assert_eq!(back, ps);
            // The verification scan counts values per column and key: only the new keys remain.
            let counts = encrypted_types::jobs::key_counts(conn, &Patient::MODEL).unwrap();
            assert!(counts.iter().all(|(_, id, _)| new.contains(id)), "{counts:?}");
            let names: u64 = counts.iter().filter(|(c, _, _)| *c == "name").map(|(_, _, n)| n).sum();
            assert_eq!(names, 600);
            // Now the old keys can go; their rows are gone from them.
            store.destroy_key(conn, one.data, &[Patient::MODEL]).unwrap();
            store.destroy_key(conn, two.data, &[Patient::MODEL]).unwrap();
            assert!(store.destroy_key(conn, new[0], &[Patient::MODEL]).is_err(), "an active key in use");
            // A second full run finds nothing to do.
            let again = rotate_data_keys(
                conn,
                &Patient::MODEL,
                "t2",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert_eq!((again.written, again.finished), (0, true));
        }

        #[test]
        fn rotation_upgrades_suite_1_values_to_suite_2_with_no_retired_key() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let ps = patients(300);
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            // A table written before suite 2: `name` and `dob` re-sealed in suite 1 (the same
            // key, a random nonce), as a release before suite 2 wrote them.
            let keyring = Keyring::current().unwrap();
            let rows: Vec<(i32, Vec<u8>, Vec<u8>)> = et_patients::table
                .select((et_patients::id, et_patients::name, et_patients::dob))
                .load(conn)
                .unwrap();
            for (id, name, dob) in rows {
                let downgrade = |column: &str, value_type: &str, sealed: &[u8]| {
                    let key = keyring
                        .key(encrypted_types::format::Header::parse(sealed).unwrap().key_id)
                        .unwrap();
                    let (plain, tenant) = encrypted_types::format::open_raw(
                        &keyring,
                        &encrypted_types::format::Site::new("et_patients", column, value_type),
                        None,
                        sealed,
                    )
                    .unwrap();
                    let ctx = encrypted_types::format::Context::new("et_patients", column, tenant.as_ref(), value_type);
                    let mut nonce = [0u8; 12];
                    getrandom::fill(&mut nonce).unwrap();
                    encrypted_types::format::seal_with_suite(key, &ctx, &plain.to_vec(), 1, nonce)
                        .unwrap()
                };
                diesel::update(et_patients::table.find(id))
                    .set((
                        et_patients::name.eq(downgrade("name", "string", &name)),
                        et_patients::dob.eq(downgrade("dob", "date", &dob)),
                    ))
                    .execute(conn)
                    .unwrap();
            }
            // The independent check: the suite byte of every stored value, read back raw.
            let suites = |conn: &mut _| -> std::collections::BTreeMap<(&'static str, u8), u64> {
                let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = et_patients::table
                    .select((et_patients::name, et_patients::dob, et_patients::email))
                    .load(conn)
                    .unwrap();
                let mut out = std::collections::BTreeMap::new();
                for (name, dob, email) in rows {
                    for (c, v) in [("name", name), ("dob", dob), ("email", email)] {
                        assert_eq!(v[0], 1, "version");
                        *out.entry((c, v[1])).or_insert(0) += 1;
                    }
                }
                out
            };
            assert_eq!(
                suites(conn),
                [(("dob", 1), 300), (("email", 2), 300), (("name", 1), 300)].into(),
            );
            let back: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .order(et_patients::id)
                .load(conn)
                .unwrap();
            assert_eq!(back, ps, "suite-1 values open");
            assert!(Keyring::current().unwrap().retired_key_ids().is_empty());

            let opts = JobOptions { batch: 70, ..JobOptions::default() };
            let r = rotate_data_keys(conn, &Patient::MODEL, "suite", &opts, |_| {}).unwrap();
            assert!(r.finished && r.remaining == 0 && r.skipped_total() == 0, "{r:?}");
            assert_eq!(r.written, 600, "exactly the suite-1 values");
            assert_eq!(
                suites(conn),
                [(("dob", 2), 300), (("email", 2), 300), (("name", 2), 300)].into(),
                "no suite-1 value is left"
            );
            let back: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .order(et_patients::id)
                .load(conn)
                .unwrap();
            assert_eq!(back, ps);
            let again =
                rotate_data_keys(conn, &Patient::MODEL, "suite-again", &opts, |_| {}).unwrap();
            assert_eq!((again.written, again.finished), (0, true));
        }
    };
}

macro_rules! reindex_suite {
    ($connect:path) => {
        use super::*;
        use encrypted_types::jobs::reindex;
        use encrypted_types_tests::models::{PatientRotated, PatientRotating};

        /// Blind-index key rotation: during it, lookups match both versions; the reindex job
        /// moves every row to the new one; after it, the new version alone finds every row.
        #[test]
        fn blind_index_rotation_matches_both_versions_then_reindexes() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let old = patients(120);
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&old))
                .execute(conn)
                .unwrap();
            // New rows written during the rotation carry version 2.
            let new: Vec<PatientRotating> = (0..10)
                .map(|i| {
                    let p = Patient::sample(200_000 + i, 1, &format!("new{i}@example.org"), "1");
                    PatientRotating {
                        id: p.id,
                        clinic_id: p.clinic_id,
                        name: p.name,
                        email: p.email,
                        ssn: p.ssn,
                        dob: p.dob,
                        notes: p.notes,
                        phone: p.phone,
                    }
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(PatientRotating::batch(&new))
                .execute(conn)
                .unwrap();

            let old_one = &old[0];
            assert_eq!(
                PatientRotating::find_by_email(
                    conn,
                    &old_one.clinic_id,
                    old_one.email.to_uppercase()
                )
                .unwrap()
                .len(),
                1
            );
            assert_eq!(
                PatientRotating::find_by_email(conn, &1, "NEW3@example.org")
                    .unwrap()
                    .len(),
                1
            );
            // Version 2 alone does not yet find the old rows.
            let v2_only = |conn: &mut _, p: &Patient| -> usize {
                et_patients::table
                    .select(PatientRotated::as_select())
                    .filter(PatientRotated::email_eq(&p.clinic_id, p.email.clone()))
                    .load::<PatientRotated>(conn)
                    .unwrap()
                    .len()
            };
            assert_eq!(v2_only(conn, old_one), 0);

            let report = reindex(
                conn,
                &PatientRotating::MODEL,
                "bidx-v2",
                &JobOptions {
                    batch: 32,
                    ..JobOptions::default()
                },
                |_| {},
            )
            .unwrap();
            assert!(report.finished);
            assert_eq!(report.written, 120, "only the 120 old email indexes change");
            for p in &old {
                assert_eq!(v2_only(conn, p), 1, "{}", p.email);
            }
            let again = reindex(
                conn,
                &PatientRotating::MODEL,
                "bidx-v2-again",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert_eq!(again.written, 0);
        }

        /// `previous(version, bits, normalize)`: a rotation that widens the SSN index from 16
        /// bits of `digits` to 256 bits of `trim` still finds the old rows while it runs.
        #[test]
        fn previous_with_its_own_bits_and_normalizers_finds_old_rows() {
            use encrypted_types_tests::models::{PatientSsnWide, PatientSsnWidening};
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let old = patients(50);
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&old))
                .execute(conn)
                .unwrap();
            let find = |conn: &mut _, p: &Patient| {
                PatientSsnWidening::find_by_ssn(conn, &p.clinic_id, p.ssn.clone())
                    .unwrap()
                    .into_iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>()
            };
            let wide_only = |conn: &mut _, p: &Patient| {
                PatientSsnWide::find_by_ssn(conn, &p.clinic_id, p.ssn.clone())
                    .unwrap()
                    .len()
            };
            for p in &old {
                assert_eq!(
                    find(conn, p),
                    vec![p.id],
                    "old row found during the rotation"
                );
            }
            assert_eq!(
                wide_only(conn, &old[0]),
                0,
                "version 2 alone does not see it yet"
            );
            let r = reindex(
                conn,
                &PatientSsnWidening::MODEL,
                "ssn-wide",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(r.finished);
            assert_eq!(r.written, 50, "every ssn index rewritten");
            for p in &old {
                assert_eq!(wide_only(conn, p), 1);
            }
        }
    };
}

macro_rules! migration_suite {
    ($connect:path) => {
        use super::*;
        use encrypted_types::jobs::{count_plaintext, encrypt_column};
        use encrypted_types::migration;

        /// A column that held plaintext: read with fallback (counted), backfilled in batches,
        /// verified at zero, then strict again; the blind index is written with each value.
        #[test]
        fn a_plaintext_column_is_encrypted_without_downtime() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let mut ps = patients(40);
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            // 30 rows as a legacy application left them: plaintext bytes, no index yet.
            for p in ps.iter_mut().take(30) {
                p.name = format!("Legacy Name {}", p.id);
                diesel::update(et_patients::table.find(p.id))
                    .set((
                        et_patients::name.eq(p.name.as_bytes().to_vec()),
                        et_patients::email.eq(p.email.as_bytes().to_vec()),
                        et_patients::email_bidx.eq(vec![0u8; 32]),
                    ))
                    .execute(conn)
                    .unwrap();
            }
            let read_all = |conn: &mut _| {
                et_patients::table
                    .select(Patient::as_select())
                    .order(et_patients::id)
                    .load::<Patient>(conn)
            };
            assert!(
                read_all(conn).is_err(),
                "plaintext must not be read without the fallback"
            );

            migration::allow_plaintext("et_patients", "name");
            migration::allow_plaintext("et_patients", "email");
            assert_eq!(read_all(conn).unwrap(), ps);
            assert_eq!(migration::plaintext_reads("et_patients", "name"), Some(30));
            assert_eq!(count_plaintext(conn, &Patient::MODEL, "name").unwrap(), 30);

            let options = JobOptions {
                batch: 7,
                ..JobOptions::default()
            };
            let names =
                encrypt_column(conn, &Patient::MODEL, "name", "migrate", &options, |_| {}).unwrap();
            let emails =
                encrypt_column(conn, &Patient::MODEL, "email", "migrate", &options, |_| {})
                    .unwrap();
            assert_eq!(
                (names.written, emails.written, names.finished),
                (30, 30, true)
            );
            assert_eq!(count_plaintext(conn, &Patient::MODEL, "name").unwrap(), 0);
            assert_eq!(count_plaintext(conn, &Patient::MODEL, "email").unwrap(), 0);

            migration::stop_plaintext("et_patients", "name");
            migration::stop_plaintext("et_patients", "email");
            assert_eq!(
                read_all(conn).unwrap(),
                ps,
                "every row reads strictly after the backfill"
            );
            // The index was written with each value: lookups work for migrated rows.
            let p = &ps[3];
            assert_eq!(
                Patient::find_by_email(conn, &p.clinic_id, p.email.to_uppercase()).unwrap(),
                vec![p.clone()]
            );
            let raw: Vec<u8> = et_patients::table
                .find(p.id)
                .select(et_patients::name)
                .first(conn)
                .unwrap();
            assert!(!encrypted_types_tests::contains(&raw, b"Legacy Name"));
        }
    };
}

mod migrate_sqlite {
    migration_suite!(encrypted_types_tests::keystore::sqlite);
}

mod migrate_postgres {
    migration_suite!(encrypted_types_tests::keystore::pg);
}

mod migrate_mysql {
    migration_suite!(encrypted_types_tests::keystore::mysql);
}

mod reindex_sqlite {
    reindex_suite!(encrypted_types_tests::keystore::sqlite);
}

mod reindex_postgres {
    reindex_suite!(encrypted_types_tests::keystore::pg);
}

mod reindex_mysql {
    reindex_suite!(encrypted_types_tests::keystore::mysql);
}

mod sqlite {
    job_suite!(encrypted_types_tests::keystore::sqlite);
}

mod postgres {
    job_suite!(encrypted_types_tests::keystore::pg);
}

mod mysql {
    job_suite!(encrypted_types_tests::keystore::mysql);
}

/// A SQLite file with keys for tenants 1 and 2, `n` patients sealed under the first data keys,
/// then rotated: the new keys are primary and nothing is re-sealed yet.
fn rotated_file_db(
    dir: &tempfile::TempDir,
    n: i32,
) -> (
    std::path::PathBuf,
    KeyStore<LocalKek>,
    Vec<Patient>,
    [KeyId; 2],
    [KeyId; 2],
) {
    let db = dir.path().join("c.db");
    let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
    let conn = &mut file_conn(&db);
    KeyStore::<LocalKek>::run_migrations(conn).unwrap();
    for stmt in encrypted_types_tests::ddl("BLOB") {
        diesel::connection::SimpleConnection::batch_execute(conn, &stmt).unwrap();
    }
    let one = store.create_tenant(conn, Some(&"1".into())).unwrap();
    let two = store.create_tenant(conn, Some(&"2".into())).unwrap();
    store.load_and_install(conn).unwrap();
    let ps = patients(n);
    for chunk in ps.chunks(500) {
        diesel::insert_into(et_patients::table)
            .values(Patient::batch(chunk))
            .execute(conn)
            .unwrap();
    }
    let new = [
        store.rotate_data_key(conn, Some(&"1".into())).unwrap(),
        store.rotate_data_key(conn, Some(&"2".into())).unwrap(),
    ];
    store.load_and_install(conn).unwrap();
    (db, store, ps, [one.data, two.data], new)
}

fn file_conn(db: &std::path::Path) -> SqliteConnection {
    let mut c = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    diesel::connection::SimpleConnection::batch_execute(&mut c, "PRAGMA busy_timeout = 10000")
        .unwrap();
    c
}

/// An application thread keeps updating random rows while the job runs: none of its writes is
/// lost (compare-and-swap), checked row by row, and every row ends on the new keys.
#[test]
fn concurrent_application_writes_are_never_lost() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let (db, _store, mut ps, old, _) = rotated_file_db(&dir, 1500);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop, ps) = (db.clone(), stop.clone(), ps.clone());
        std::thread::spawn(move || {
            let conn = &mut file_conn(&db);
            let mut written = std::collections::HashMap::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 50 {
                let mut p = ps[(i.wrapping_mul(7919) % ps.len() as u64) as usize].clone();
                p.notes = Some(format!("application write {i}"));
                diesel::update(et_patients::table.find(p.id))
                    .set(&p)
                    .execute(conn)
                    .unwrap();
                written.insert(p.id, p);
                i += 1;
            }
            written
        })
    };
    let conn = &mut file_conn(&db);
    let mut report = rotate_data_keys(
        conn,
        &Patient::MODEL,
        "cas",
        &JobOptions {
            batch: 25,
            ..JobOptions::default()
        },
        |_| {},
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    // The application wrote with the new primary keys, so a second pass finds nothing left.
    let second = rotate_data_keys(
        conn,
        &Patient::MODEL,
        "cas-2",
        &JobOptions::default(),
        |_| {},
    )
    .unwrap();
    report.written += second.written;
    assert!(report.finished && second.finished);
    assert!(written.len() > 10, "the application thread barely ran");
    for (id, p) in &written {
        ps.iter_mut()
            .filter(|q| q.id == *id)
            .for_each(|q| *q = p.clone());
    }
    let back: Vec<Patient> = et_patients::table
        .select(Patient::as_select())
        .order(et_patients::id)
        .load(conn)
        .unwrap();
    assert_eq!(back, ps, "an application write was lost or a row changed");
    assert_eq!(on_keys(conn, &old), 0);
}

/// Two workers on the same range at once, and two on disjoint ranges: the same final state.
#[test]
fn two_workers_on_one_range_or_on_split_ranges_end_consistent() {
    let _g = encrypted_types_tests::serial();
    for split in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (db, _store, ps, old, _) = rotated_file_db(&dir, 1200);
        let mid = 100_600;
        let workers: Vec<_> = [
            (0i64, split.then_some(mid), "w1"),
            (if split { mid } else { 0 }, None, "w2"),
        ]
        .into_iter()
        .map(|(from, to, name)| {
            let db = db.clone();
            std::thread::spawn(move || {
                let conn = &mut file_conn(&db);
                rotate_data_keys(
                    conn,
                    &Patient::MODEL,
                    name,
                    &JobOptions {
                        batch: 40,
                        scope: Scope::Range {
                            from: Some(from.into()),
                            to: to.map(RowKey::from),
                        },
                        ..JobOptions::default()
                    },
                    |_| {},
                )
                .unwrap()
            })
        })
        .collect();
        let reports: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(reports.iter().all(|r| r.finished));
        let conn = &mut file_conn(&db);
        assert_eq!(on_keys(conn, &old), 0, "split = {split}");
        let back: Vec<Patient> = et_patients::table
            .select(Patient::as_select())
            .order(et_patients::id)
            .load(conn)
            .unwrap();
        assert_eq!(back, ps, "split = {split}");
        let values: u64 = ps.iter().map(|p| 5 + u64::from(p.phone.is_some())).sum();
        let resealed: u64 = reports.iter().map(|r| r.written).sum();
        // Each value is re-sealed exactly once in effect: a second worker's write of the same
        // value misses its compare-and-swap.
        assert_eq!(resealed, values, "split = {split}");
    }
}

/// A blind-index rotation and a data-key rotation at the same time, after one tenant was
/// shredded: the reindex finishes, reports the shredded rows as skipped, and leaves no stale
/// index even where the rotation re-sealed a value between its read and its write (the
/// compare-and-swap miss is retried from a fresh read).
#[test]
fn reindex_and_rotation_at_once_leave_no_stale_index() {
    use encrypted_types::jobs::{SkipReason, reindex};
    use encrypted_types_tests::models::{PatientRotated, PatientRotating};
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let (db, store, ps, _, _) = rotated_file_db(&dir, 1200);
    let conn = &mut file_conn(&db);
    // Tenant 3's rows, then tenant 3 shredded.
    store.create_tenant(conn, Some(&"3".into())).unwrap();
    store.load_and_install(conn).unwrap();
    let erased: Vec<Patient> = (0..40)
        .map(|i| Patient::sample(300_000 + i, 3, &format!("gone{i}@example.org"), "1"))
        .collect();
    diesel::insert_into(et_patients::table)
        .values(Patient::batch(&erased))
        .execute(conn)
        .unwrap();
    store
        .shred_tenant(conn, &"3".into(), &[Patient::MODEL])
        .unwrap();
    // The rotation runs, whole, between the reindex's first read and its first write: every
    // value the reindex read has been re-sealed by the time it writes.
    static DB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    static ROTATED: std::sync::Mutex<Option<encrypted_types::jobs::JobReport>> =
        std::sync::Mutex::new(None);
    DB.set(db.clone()).unwrap();
    fn rotate_now() {
        let mut done = ROTATED.lock().unwrap();
        if done.is_none() {
            let conn = &mut file_conn(DB.get().unwrap());
            *done = Some(
                rotate_data_keys(
                    conn,
                    &Patient::MODEL,
                    "at-once",
                    &JobOptions::default(),
                    |_| {},
                )
                .unwrap(),
            );
        }
    }
    let opts = JobOptions {
        batch: 10,
        before_write: Some(rotate_now),
        ..JobOptions::default()
    };
    let reindexed = reindex(conn, &PatientRotating::MODEL, "at-once-idx", &opts, |_| {}).unwrap();
    let rotated = ROTATED.lock().unwrap().take().unwrap();
    assert!(reindexed.finished, "{reindexed:?}");
    // email and ssn of each erased row (no phones): skipped, not an abort.
    assert_eq!(
        reindexed.skipped.get(&SkipReason::KeyDestroyed),
        Some(&80),
        "{reindexed:?}"
    );
    // The erased rows are on destroyed keys, not retired ones: the rotation never selects them.
    assert_eq!(rotated.skipped.get(&SkipReason::KeyDestroyed), None);
    assert!(rotated.finished, "{rotated:?}");
    for p in &ps {
        let found = et_patients::table
            .select(PatientRotated::as_select())
            .filter(PatientRotated::email_eq(&p.clinic_id, p.email.clone()))
            .load::<PatientRotated>(conn)
            .unwrap();
        assert_eq!(found.len(), 1, "stale index for {}", p.email);
    }
}

fn bound_patient(id: i64, ssn: &str) -> encrypted_types_tests::models::BoundPatient {
    encrypted_types_tests::models::BoundPatient {
        id,
        clinic_id: 1,
        ssn: ssn.to_owned(),
        notes: Some(format!("notes of patient {id}")),
    }
}

/// The rotation job on a `bind_row` model, on every backend: values unbound (written before
/// `bind_row`) are bound to their row, rotated values stay bound to theirs, and a swap still
/// fails afterwards.
macro_rules! bind_job_suite {
    ($connect:path, $uuid_model:ty, $uuid_table:ident, $uuid_id:expr) => {
        use super::*;
        use encrypted_types::Error;
        use encrypted_types_tests::models::BoundPatient;
        use encrypted_types_tests::real_schema::et_bound;

        #[test]
        fn rotation_binds_unbound_values_and_keeps_bound_ones_on_their_row() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let ps: Vec<BoundPatient> = (0..120).map(|i| bound_patient(700 + i, &format!("{i:09}"))).collect();
            diesel::insert_into(et_bound::table).values(BoundPatient::batch(&ps)).execute(conn).unwrap();
            // A third of the rows hold SSNs sealed before `bind_row`: unbound, suite 2.
            encrypted_types::column_context!(Ssn = "et_bound"."ssn");
            for p in ps.iter().step_by(3) {
                let unbound = encrypted_types::Encrypted::<String, Ssn>::for_tenant(p.ssn.clone(), 1_i64)
                    .seal()
                    .unwrap();
                diesel::update(et_bound::table.find(p.id)).set(et_bound::ssn.eq(unbound)).execute(conn).unwrap();
            }
            let suites = |conn: &mut _| {
                let raw: Vec<Vec<u8>> = et_bound::table.select(et_bound::ssn).load(conn).unwrap();
                let mut n = [0u64; 4];
                for v in raw {
                    n[usize::from(v[1])] += 1;
                }
                n
            };
            assert_eq!(suites(conn), [0, 0, 40, 80]);
            store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            // A routine rotation binds nothing it finds unbound: it skips those values, says
            // why, and does not finish.
            let routine = rotate_data_keys(conn, &BoundPatient::MODEL, "routine", &JobOptions { batch: 50, ..JobOptions::default() }, |_| {})
                .unwrap();
            assert!(!routine.finished, "{routine:?}");
            assert_eq!(routine.skipped.get(&encrypted_types::jobs::SkipReason::RowBinding), Some(&40), "{routine:?}");
            assert_eq!(suites(conn), [0, 0, 40, 80]);
            // Adoption: once, with `bind_unbound`.
            let adopt = JobOptions { batch: 50, bind_unbound: true, ..JobOptions::default() };
            let r = rotate_data_keys(conn, &BoundPatient::MODEL, "bind", &adopt, |_| {})
                .unwrap();
            assert!(r.finished && r.remaining == 0 && r.skipped_total() == 0, "{r:?}");
            // Every value is bound now (an independent read of the suite bytes), and opens.
            assert_eq!(suites(conn), [0, 0, 0, 120]);
            let back: Vec<BoundPatient> = et_bound::table.select(BoundPatient::as_select()).order(et_bound::id).load(conn).unwrap();
            assert!(back == ps);
            // Bound to its own row: a swap after the rotation still fails.
            let raw: Vec<u8> = et_bound::table.find(700).select(et_bound::ssn).first(conn).unwrap();
            diesel::update(et_bound::table.find(701)).set(et_bound::ssn.eq(raw)).execute(conn).unwrap();
            let err = et_bound::table.find(701).select(BoundPatient::as_select()).first(conn).err().unwrap();
            assert_eq!(Error::from_diesel(&err), Some(&Error::AuthenticationFailed));
        }

        /// The jobs build a row's identity from SQL, the derive from the Rust fields: on a
        /// composite integer + text key and on a UUID key (native on PostgreSQL, 16 bytes
        /// elsewhere) they must agree, or the job could not open what the derive sealed.
        #[test]
        fn jobs_and_derive_agree_on_composite_text_and_uuid_identities() {
            use encrypted_types_tests::real_schema::{et_visits, $uuid_table};
            type UuidModel = $uuid_model;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $connect();
            store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let visits: Vec<encrypted_types_tests::models::BoundVisit> = (0..40)
                .map(|i| encrypted_types_tests::models::BoundVisit {
                    clinic_id: 1,
                    patient_no: format!("p-{i:03}"),
                    note: format!("visit note {i}"),
                    code: i,
                    ref_id: (i % 2 == 0).then(|| super::fake_uuid(1000 + i as u128)),
                })
                .collect();
            for v in &visits {
                diesel::insert_into(et_visits::table).values(v).execute(conn).unwrap();
            }
            let records: Vec<UuidModel> = (0..40)
                .map(|i| UuidModel {
                    id: $uuid_id(super::fake_uuid(i)),
                    clinic_id: 1,
                    name: format!("name {i}"),
                    email: format!("u{i}@example.org"),
                })
                .collect();
            for r in &records {
                diesel::insert_into($uuid_table::table).values(r).execute(conn).unwrap();
            }
            store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            // Every value is bound (suite 3) and under the retired key: the job opens each with
            // the identity it reads from SQL, which must be the derive's.
            let opts = JobOptions { batch: 15, ..JobOptions::default() };
            let v = rotate_data_keys(conn, &encrypted_types_tests::models::BoundVisit::MODEL, "bv", &opts, |_| {}).unwrap();
            assert!(v.finished && v.skipped_total() == 0, "{v:?}");
            assert_eq!(v.written, 40 + 40 + 20);
            let r = rotate_data_keys(conn, &UuidModel::MODEL, "bu", &opts, |_| {}).unwrap();
            assert!(r.finished && r.skipped_total() == 0, "{r:?}");
            assert_eq!(r.written, 80);
            // And the derive opens what the job sealed.
            let back: Vec<encrypted_types_tests::models::BoundVisit> = et_visits::table
                .select(encrypted_types_tests::models::BoundVisit::as_select())
                .order(et_visits::patient_no)
                .load(conn)
                .unwrap();
            assert!(back == visits);
            let mut want = records.clone();
            want.sort_by(|a, b| a.id.cmp(&b.id));
            let back: Vec<UuidModel> = $uuid_table::table
                .select(UuidModel::as_select())
                .order($uuid_table::id)
                .load(conn)
                .unwrap();
            assert!(back == want);
            // A visit's note copied into another visit of the same clinic fails.
            let raw: Vec<u8> = et_visits::table
                .filter(et_visits::patient_no.eq("p-000"))
                .select(et_visits::note)
                .first(conn)
                .unwrap();
            diesel::update(et_visits::table.filter(et_visits::patient_no.eq("p-001")))
                .set(et_visits::note.eq(raw))
                .execute(conn)
                .unwrap();
            let err = et_visits::table
                .filter(et_visits::patient_no.eq("p-001"))
                .select(encrypted_types_tests::models::BoundVisit::as_select())
                .first(conn)
                .err()
                .unwrap();
            assert_eq!(Error::from_diesel(&err), Some(&Error::AuthenticationFailed));
            // `verify` names that copy by its composite (integer, text) key, and a name copied
            // between two UUID-keyed records by the UUID, on every backend's key type.
            use encrypted_types::jobs::{KeyPart, SkipReason, verify};
            let report = verify(conn, &encrypted_types_tests::models::BoundVisit::MODEL, None).unwrap();
            let named: Vec<_> = report.unopenable.iter().map(|u| (u.column, u.key.0.clone(), u.reason)).collect();
            assert_eq!(
                named,
                [("note", vec![KeyPart::Int(1), KeyPart::Text("p-001".into())], SkipReason::AuthenticationFailed)]
            );
            assert!(verify(conn, &UuidModel::MODEL, None).unwrap().ok());
            let name0: Vec<u8> = $uuid_table::table
                .find($uuid_id(super::fake_uuid(0)))
                .select($uuid_table::name)
                .first(conn)
                .unwrap();
            diesel::update($uuid_table::table.find($uuid_id(super::fake_uuid(1))))
                .set($uuid_table::name.eq(name0))
                .execute(conn)
                .unwrap();
            let report = verify(conn, &UuidModel::MODEL, None).unwrap();
            let [bad] = report.unopenable.as_slice() else { panic!("{report:?}") };
            let key: &[u8] = match bad.key.0.as_slice() {
                [KeyPart::Uuid(u)] => u,
                [KeyPart::Bytes(b)] => b,
                other => panic!("{other:?}"),
            };
            assert_eq!((bad.column, key, bad.reason), ("name", &super::fake_uuid(1).as_bytes()[..], SkipReason::AuthenticationFailed));
        }
    };
}

/// Distinct UUIDs in no particular order (the `uuid` crate is built without `v4` here).
fn fake_uuid(i: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            ^ 0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8,
    )
}

fn uuid_bytes(u: uuid::Uuid) -> Vec<u8> {
    u.as_bytes().to_vec()
}

mod bind_sqlite {
    bind_job_suite!(
        encrypted_types_tests::keystore::sqlite,
        encrypted_types_tests::models::BoundBinRecord,
        et_uuid_bin,
        uuid_bytes
    );
}
mod bind_postgres {
    bind_job_suite!(
        encrypted_types_tests::keystore::pg,
        encrypted_types_tests::models::BoundUuidRecord,
        et_uuid_pg,
        std::convert::identity
    );
}
mod bind_mysql {
    bind_job_suite!(
        encrypted_types_tests::keystore::mysql,
        encrypted_types_tests::models::BoundBinRecord,
        et_uuid_bin,
        uuid_bytes
    );
}
