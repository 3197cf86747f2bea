//! Key-store operations and jobs on diesel-async connections (PostgreSQL and MariaDB natively,
//! SQLite through `SyncConnectionWrapper`), with no `spawn_blocking`: each flow runs as one
//! `tokio::spawn`ed task, which also proves at compile time that its futures are `Send`.
//! And a second process that learns of a rotation by polling the key table's generation.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::EncryptedModel;
use encrypted_types::jobs::JobOptions;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types_tests::models::Patient;

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The key id in a sealed value's header (FORMAT.md §1), read without the library.
fn header_key_id(sealed: &[u8]) -> u32 {
    u32::from_be_bytes(sealed[2..6].try_into().unwrap())
}

fn patients() -> Vec<Patient> {
    (0..40)
        .map(|i| {
            let mut p = Patient::sample(
                900 + i,
                1 + i64::from(i % 2),
                &format!("async{i}@example.org"),
                &format!("{i:03}-11-2222"),
            );
            p.phone = (i % 4 == 0).then(|| format!("555-{i:04}"));
            p
        })
        .collect()
}

macro_rules! async_flow {
    ($name:ident, $connect:path) => {
        mod $name {
            use super::*;
            use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
            use diesel_async::RunQueryDsl;
            use encrypted_types::jobs;
            use encrypted_types_tests::schema::et_patients;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_rows_rotation_job_and_shredding_on_an_async_connection() {
                // Each flow installs its keyring process-wide: one at a time.
                let _g = LOCK.lock().await;
                let task = tokio::spawn(async {
                    let conn = &mut $connect().await;
                    let dir = tempfile::tempdir().unwrap();
                    let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
                    for t in ["1", "2"] {
                        store
                            .create_tenant_async(conn, Some(&t.into()))
                            .await
                            .unwrap();
                    }
                    let report = store.load_and_install_async(conn).await.unwrap();
                    assert_eq!(report.data_keys, 2);
                    let ps = patients();
                    // One by one: diesel's SQLite batch insert is sync-only.
                    for p in &ps {
                        diesel::insert_into(et_patients::table)
                            .values(p)
                            .execute(conn)
                            .await
                            .unwrap();
                    }
                    let load = async |conn: &mut _| -> Vec<Patient> {
                        et_patients::table
                            .filter(et_patients::id.ge(900))
                            .filter(et_patients::clinic_id.eq(1))
                            .order(et_patients::id)
                            .select(Patient::as_select())
                            .load(conn)
                            .await
                            .unwrap()
                    };

                    // Rotate tenant 1's data key; the generation moves; the job re-seals.
                    let before = store.generation_async(conn).await.unwrap();
                    let new = store
                        .rotate_data_key_async(conn, Some(&"1".into()))
                        .await
                        .unwrap();
                    assert_ne!(store.generation_async(conn).await.unwrap(), before);
                    store.load_and_install_async(conn).await.unwrap();
                    let r = jobs::rotate_data_keys_async(
                        conn,
                        &Patient::MODEL,
                        "async-rotation",
                        &JobOptions {
                            batch: 7,
                            ..JobOptions::default()
                        },
                        |_| {},
                    )
                    .await
                    .unwrap();
                    assert!(r.finished, "{r:?}");
                    // 20 rows of tenant 1: name, email, ssn, dob, notes (some NULL), phone.
                    assert!(r.written >= 80, "{r:?}");
                    // Checked from the stored bytes, not by the job: every value of tenant 1
                    // names the new key.
                    let sealed: Vec<(i64, Vec<u8>, Vec<u8>)> = et_patients::table
                        .filter(et_patients::id.ge(900))
                        .select((et_patients::clinic_id, et_patients::name, et_patients::ssn))
                        .load(conn)
                        .await
                        .unwrap();
                    assert_eq!(sealed.len(), 40);
                    for (clinic, name, ssn) in &sealed {
                        if *clinic == 1 {
                            assert_eq!(header_key_id(name), new.get());
                            assert_eq!(header_key_id(ssn), new.get());
                        } else {
                            assert_ne!(header_key_id(name), new.get());
                        }
                    }
                    let want: Vec<Patient> =
                        ps.iter().filter(|p| p.clinic_id == 1).cloned().collect();
                    assert_eq!(load(conn).await, want);

                    // A keyring of tenant 2 only; tenant 1 added outside the query.
                    let (partial, _) = store.load_tenants_async(conn, &["2".into()]).await.unwrap();
                    partial.install();
                    let err = et_patients::table
                        .filter(et_patients::clinic_id.eq(1))
                        .select(Patient::as_select())
                        .load::<Patient>(conn)
                        .await
                        .unwrap_err();
                    assert!(format!("{err:?}").contains("KeyNotLoaded"), "{err:?}");
                    let added = store
                        .ensure_loaded_async(conn, &["1".into(), "2".into()])
                        .await
                        .unwrap();
                    assert_eq!(added, 1);
                    assert_eq!(load(conn).await, want);
                    store.load_and_install_async(conn).await.unwrap();

                    // Shred tenant 2: its rows are counted, no longer open, and purged.
                    let shred = store
                        .shred_tenant_async(conn, &"2".into(), &[Patient::MODEL])
                        .await
                        .unwrap();
                    assert_eq!(shred.rows_unreadable, 20);
                    store.load_and_install_async(conn).await.unwrap();
                    let err = et_patients::table
                        .filter(et_patients::clinic_id.eq(2))
                        .filter(et_patients::id.ge(900))
                        .select(Patient::as_select())
                        .load::<Patient>(conn)
                        .await
                        .unwrap_err();
                    assert!(format!("{err:?}").contains("KeyDestroyed"), "{err:?}");
                    let purged =
                        jobs::purge_tenant_async(conn, &store, &Patient::MODEL, &"2".into(), 6)
                            .await
                            .unwrap();
                    assert_eq!(purged, 20);
                    let left: i64 = et_patients::table
                        .filter(et_patients::id.ge(900))
                        .filter(et_patients::clinic_id.eq(2))
                        .count()
                        .get_result(conn)
                        .await
                        .unwrap();
                    assert_eq!(left, 0);
                    assert_eq!(load(conn).await, want, "tenant 1 is untouched");
                    // The schema check and the reindex job run on the same connection too.
                    assert!(
                        encrypted_types::schema::check_async(conn, &[Patient::MODEL])
                            .await
                            .unwrap()
                            .is_empty()
                    );
                    let r = jobs::reindex_async(
                        conn,
                        &Patient::MODEL,
                        "async-reindex",
                        &JobOptions::default(),
                        |_| {},
                    )
                    .await
                    .unwrap();
                    assert!(r.finished, "{r:?}");
                });
                task.await.unwrap();
            }
        }
    };
}

async_flow!(postgres, encrypted_types_tests::keystore::async_pg);
async_flow!(mysql, encrypted_types_tests::keystore::async_mysql);
async_flow!(sqlite, encrypted_types_tests::keystore::async_sqlite);

/// The second process of [`a_second_process_picks_up_a_rotation_without_restart`]: loads the
/// keyring, says it is ready, polls the key table's generation until it moves, reloads, and
/// writes down the tenant's primary key id before and after.
#[tokio::test]
#[ignore = "run by a_second_process_picks_up_a_rotation_without_restart in its own process"]
async fn generation_child() {
    use diesel_async::AsyncConnection;
    let var = |k: &str| std::env::var(k).unwrap();
    let store = KeyStore::new(LocalKek::open(var("ET_KEK")).unwrap());
    let (url, out, ready) = (var("ET_URL"), var("ET_OUT"), var("ET_READY"));
    match var("ET_BACKEND").as_str() {
        "postgres" => {
            let conn = diesel_async::AsyncPgConnection::establish(&url)
                .await
                .unwrap();
            watch(conn, &store, &out, &ready).await;
        }
        "mysql" => {
            let conn = diesel_async::AsyncMysqlConnection::establish(&url)
                .await
                .unwrap();
            watch(conn, &store, &out, &ready).await;
        }
        _ => {
            let conn = diesel_async::sync_connection_wrapper::SyncConnectionWrapper::<
                diesel::SqliteConnection,
            >::establish(&url)
            .await
            .unwrap();
            watch(conn, &store, &out, &ready).await;
        }
    }
}

async fn watch<C>(mut conn: C, store: &KeyStore<LocalKek>, out: &str, ready: &str)
where
    C: diesel_async::AsyncConnection,
    C::Backend: encrypted_types::jobs::JobTable,
{
    let primary = || {
        encrypted_types::Keyring::current()
            .unwrap()
            .primary_key(Some(&"1".into()))
            .unwrap()
            .id()
            .get()
    };
    store.load_and_install_async(&mut conn).await.unwrap();
    let seen = store.generation_async(&mut conn).await.unwrap();
    let first = primary();
    std::fs::write(ready, "ready").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.generation_async(&mut conn).await.unwrap() == seen {
        assert!(std::time::Instant::now() < deadline, "no change seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    store.load_and_install_async(&mut conn).await.unwrap();
    std::fs::write(out, format!("{first} {}", primary())).unwrap();
}

/// Two processes on one database: this one rotates a tenant's data key while the other,
/// started before and never restarted, notices through the generation and seals with the new
/// key. On the three backends, with committed data (a fresh database each).
#[test]
fn a_second_process_picks_up_a_rotation_without_restart() {
    let _g = encrypted_types_tests::serial();
    let backends: [(&str, Option<String>); 3] = [
        ("postgres", Some(encrypted_types_tests::pg_url())),
        ("mysql", Some(encrypted_types_tests::mysql_url())),
        ("sqlite", None),
    ];
    for (backend, admin) in backends {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("k.kek");
        let store = KeyStore::new(LocalKek::create(&kek).unwrap());
        let url = match backend {
            "postgres" => encrypted_types_tests::database::<diesel::PgConnection>(
                admin,
                "et_generation",
                &dir,
            ),
            "mysql" => encrypted_types_tests::database::<diesel::MysqlConnection>(
                admin,
                "et_generation",
                &dir,
            ),
            _ => encrypted_types_tests::database::<diesel::SqliteConnection>(
                admin,
                "et_generation",
                &dir,
            ),
        };
        let rotate = |store: &KeyStore<LocalKek>, first: bool| -> u32 {
            macro_rules! on {
                ($c:ty) => {{
                    let conn = &mut encrypted_types_tests::connect::<$c>(&url);
                    if first {
                        KeyStore::<LocalKek>::run_migrations(conn).unwrap();
                        store
                            .create_tenant(conn, Some(&"1".into()))
                            .unwrap()
                            .data
                            .get()
                    } else {
                        store
                            .rotate_data_key(conn, Some(&"1".into()))
                            .unwrap()
                            .get()
                    }
                }};
            }
            match backend {
                "postgres" => on!(diesel::PgConnection),
                "mysql" => on!(diesel::MysqlConnection),
                _ => on!(diesel::SqliteConnection),
            }
        };
        let old = rotate(&store, true);
        let (out, ready) = (dir.path().join("out"), dir.path().join("ready"));
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "generation_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ET_BACKEND", backend)
            .env("ET_URL", &url)
            .env("ET_KEK", &kek)
            .env("ET_OUT", &out)
            .env("ET_READY", &ready)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend}: the child never got ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let new = rotate(&store, false);
        let done = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(
            done.status.success() && text.contains("1 passed"),
            "{backend}: {text}"
        );
        let seen = std::fs::read_to_string(&out).unwrap();
        assert_eq!(seen, format!("{old} {new}"), "{backend}");
        assert_ne!(old, new);
    }
}
