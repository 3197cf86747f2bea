//! The key table's manifest under concurrent key operations, on committed data: two writers
//! rotate tenants' keys and create tenants at once while a reader loads the whole table and
//! single tenants in a loop, each through a fresh store (a process starting up). No load and
//! no write may be refused as a rollback (`Error::Manifest`): a write may fail only as a
//! database conflict (deadlock, serialization) that a rerun clears, a load only as "changed
//! during each read". Afterwards the manifest matches the records and its epoch counts the
//! rotations that committed, independently of the library's own report.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types::{Error, TenantId};
use encrypted_types_tests::{connect, database};

const TENANTS: u64 = 8;
const ROTATIONS_PER_WRITER: u64 = 25;

/// A failure a rerun clears: the database refused the transaction (deadlock, lock wait,
/// serialization), or the table moved during every read of a load.
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Store(_))
}

fn run<C>(url: &str, migrate: impl Fn(&mut C))
where
    C: diesel::connection::LoadConnection<Backend: encrypted_types::store::KeyTable>
        + SimpleConnection,
{
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("k.kek");
    LocalKek::create(&kek).unwrap();
    let store = || KeyStore::new(LocalKek::open(&kek).unwrap());
    let conn = &mut connect::<C>(url);
    migrate(conn);
    for t in 0..TENANTS {
        store()
            .create_tenant(conn, Some(&TenantId::from(t.to_string().as_str())))
            .unwrap();
    }
    let start = store().manifest_epoch(conn).unwrap().unwrap();

    let rotated = AtomicU64::new(0);
    let conflicts = AtomicU64::new(0);
    let loads = AtomicU64::new(0);
    let writers_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (rotated, conflicts, store) = (&rotated, &conflicts, &store);
                s.spawn(move || {
                    let conn = &mut connect::<C>(url);
                    let s = store();
                    for i in 0..ROTATIONS_PER_WRITER {
                        let tenant =
                            TenantId::from(((w * 7 + i * 3) % TENANTS).to_string().as_str());
                        match s.rotate_data_key(conn, Some(&tenant)) {
                            Ok(_) => {
                                rotated.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) if retryable(&e) => {
                                conflicts.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("writer {w}, rotation {i}: {e:?}"),
                        }
                        // A tenant created now and then: its own row at epoch 0, no lock on
                        // the deployment row.
                        if i % 5 == 0 {
                            let new = TenantId::from(format!("new-{w}-{i}").as_str());
                            match s.create_tenant(conn, Some(&new)) {
                                Ok(_) => {}
                                Err(e) if retryable(&e) => {
                                    conflicts.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => panic!("writer {w}, creation {i}: {e:?}"),
                            }
                        }
                    }
                })
            })
            .collect();
        let reader = s.spawn(|| {
            let conn = &mut connect::<C>(url);
            while !writers_done.load(Ordering::SeqCst) {
                let fresh = store();
                match fresh.load(conn) {
                    Ok(_) => {
                        loads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if retryable(&e) => {}
                    Err(e) => panic!("a full load during the writes: {e:?}"),
                }
                match store().load_tenants(conn, &["3".into()]) {
                    Ok(_) => {
                        loads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if retryable(&e) => {}
                    Err(e) => panic!("a load of tenant 3 during the writes: {e:?}"),
                }
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        writers_done.store(true, Ordering::SeqCst);
        reader.join().unwrap();
    });

    let rotated = rotated.load(Ordering::SeqCst);
    eprintln!(
        "{url}: {rotated} rotations committed, {} conflicts, {} loads during the writes",
        conflicts.load(Ordering::SeqCst),
        loads.load(Ordering::SeqCst)
    );
    assert!(rotated > 0, "no rotation committed");
    assert!(
        loads.load(Ordering::SeqCst) > 0,
        "no load succeeded during the writes"
    );
    let fresh = store();
    let report = fresh.load(conn).unwrap().1;
    assert_eq!(
        report.manifest_epoch,
        Some(start + rotated),
        "one epoch per committed rotation ({} conflicts)",
        conflicts.load(Ordering::SeqCst)
    );
    let status = fresh.manifest_status(conn).unwrap();
    assert!(status.differing.is_empty() && status.adds_up, "{status:?}");
    // Read from the key records, not the manifest: the retired data keys are the committed
    // rotations.
    let retired = encrypted_types::store::list_keys(conn)
        .unwrap()
        .into_iter()
        .filter(|k| {
            k.purpose == encrypted_types::kek::Purpose::Data
                && k.state == encrypted_types::store::KeyState::Retired
        })
        .count();
    assert_eq!(u64::try_from(retired).unwrap(), rotated);
}

#[test]
fn concurrent_rotations_and_loads_on_postgres_are_never_taken_for_a_rollback() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let url = database::<PgConnection>(
        Some(encrypted_types_tests::pg_url()),
        "et_manifest_pg",
        &dir,
    );
    run::<PgConnection>(&url, |c| KeyStore::<LocalKek>::run_migrations(c).unwrap());
}

#[test]
fn concurrent_rotations_and_loads_on_mariadb_are_never_taken_for_a_rollback() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let url = database::<MysqlConnection>(
        Some(encrypted_types_tests::mysql_url()),
        "et_manifest_my",
        &dir,
    );
    run::<MysqlConnection>(&url, |c| KeyStore::<LocalKek>::run_migrations(c).unwrap());
}

#[test]
fn concurrent_rotations_and_loads_on_sqlite_are_never_taken_for_a_rollback() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let url = database::<SqliteConnection>(None, "et_manifest_sqlite", &dir);
    run::<SqliteConnection>(&url, |c| KeyStore::<LocalKek>::run_migrations(c).unwrap());
}
