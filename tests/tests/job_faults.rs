//! Faults in the middle of a job: the rotation's own database connection is terminated by the
//! server between a batch's read and its write (`pg_terminate_backend`, MariaDB `KILL`), or
//! the server restarts there. The job fails with a typed error, nothing half-written stays,
//! and a rerun of the same job on a new connection finishes: an SQL count finds no value left
//! on the retired keys and every row opens with what was written.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::jobs::{JobOptions, rotate_data_keys};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, count_rows_with_keys};
use encrypted_types::{EncryptedModel, Error};
use encrypted_types_tests::models::Patient;
use encrypted_types_tests::schema::et_patients;
use encrypted_types_tests::{connect, database};

/// The database URL and the server's id of the job's connection, for the hook.
static TARGET: Mutex<Option<(String, i64)>> = Mutex::new(None);
static WRITES: AtomicUsize = AtomicUsize::new(0);

/// Runs before each batch's write: at the third, the server terminates the job's connection.
fn kill_the_job_connection() {
    if WRITES.fetch_add(1, Ordering::SeqCst) != 2 {
        return;
    }
    let (url, id) = TARGET.lock().unwrap().clone().unwrap();
    if url.starts_with("postgres") {
        let admin = &mut connect::<PgConnection>(&url);
        admin
            .batch_execute(&format!("SELECT pg_terminate_backend({id})"))
            .unwrap();
    } else {
        connect::<MysqlConnection>(&url)
            .batch_execute(&format!("KILL {id}"))
            .unwrap();
    }
}

/// Runs before each batch's write: at the third, the database server restarts (the job's
/// connection dies with it), and the hook returns once the server answers again.
fn restart_the_server() {
    if WRITES.fetch_add(1, Ordering::SeqCst) != 2 {
        return;
    }
    let (url, _) = TARGET.lock().unwrap().clone().unwrap();
    let sh = |cmd: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap();
        assert!(status.success(), "{cmd}: {status}");
    };
    if url.starts_with("postgres") {
        sh(
            "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | sort -V | tail -1)\" main restart",
        );
        sh(
            "for i in $(seq 1 60); do pg_isready -q -h 127.0.0.1 && exit 0; sleep 0.5; done; exit 1",
        );
    } else {
        // As .ci/run starts it: shut down, wait until the process is gone (it closes its port
        // before InnoDB is flushed, and a start meanwhile finds it running), start again.
        sh("mariadb-admin --protocol=tcp -h127.0.0.1 -uroot shutdown");
        sh(
            "for i in $(seq 1 120); do pidof mariadbd >/dev/null || exit 0; sleep 0.5; done; exit 1",
        );
        sh("start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd");
        sh(
            "for i in $(seq 1 60); do mariadb-admin --protocol=tcp -h127.0.0.1 -uroot ping >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1",
        );
    }
}

macro_rules! killed_connection_test {
    ($name:ident, $db:literal, $conn:ty, $blob:literal, $id_sql:literal, $admin:expr) => {
        killed_connection_test!(
            $name,
            $db,
            $conn,
            $blob,
            $id_sql,
            $admin,
            kill_the_job_connection
        );
    };
    ($name:ident, $db:literal, $conn:ty, $blob:literal, $id_sql:literal, $admin:expr, $fault:expr) => {
        #[test]
        fn $name() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let url = database::<$conn>($admin, $db, &dir);
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut connect::<$conn>(&url);
            KeyStore::<LocalKek>::run_migrations(conn).unwrap();
            for stmt in encrypted_types_tests::ddl($blob) {
                conn.batch_execute(&stmt).unwrap();
            }
            let old = store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let rows: Vec<Patient> = (0..1_000)
                .map(|i| Patient::sample(i, 1, &format!("k{i}@example.org"), &format!("{i:09}")))
                .collect();
            for chunk in rows.chunks(250) {
                diesel::insert_into(et_patients::table)
                    .values(Patient::batch(chunk))
                    .execute(conn)
                    .unwrap();
            }
            let all_values: u64 = encrypted_types::jobs::key_counts(conn, &Patient::MODEL)
                .unwrap()
                .iter()
                .map(|(_, _, n)| n)
                .sum();
            store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();

            // The job runs on a connection of its own, which the server terminates mid-job.
            let job_conn = &mut connect::<$conn>(&url);
            let id = encrypted_types_tests::sql_count!(job_conn, $id_sql);
            *TARGET.lock().unwrap() = Some((url.clone(), id));
            WRITES.store(0, Ordering::SeqCst);
            // A worker name of its own: the rerun is the same worker restarted, which takes its
            // unit back at once (another name would wait out the dead worker's lease).
            let opts = JobOptions {
                batch: 50,
                worker: Some("rotator-1".into()),
                before_write: Some($fault),
                ..JobOptions::default()
            };
            let err = rotate_data_keys(job_conn, &Patient::MODEL, "rotate", &opts, |_| {})
                .expect_err("the job went on after its connection was terminated");
            println!("{}: the job stopped with {err:?}", stringify!($name));
            // A connection of its own for the checks: after a restart the first one is gone.
            let conn = &mut connect::<$conn>(&url);
            // The driver's message, as the job's error: the job cannot tell a terminated
            // connection from any other failed statement, and says which job it was.
            assert!(matches!(err, Error::Job(_)), "{err:?}");
            assert_eq!(err.reason(), "job");
            // Values, not rows: a rotation re-seals column by column, so every row still has
            // columns on the retired key. Two batches committed before the kill, no more.
            let on_old = |c: &mut $conn| -> u64 {
                encrypted_types::jobs::key_counts(c, &Patient::MODEL)
                    .unwrap()
                    .iter()
                    .filter(|(_, k, _)| *k == old.data)
                    .map(|(_, _, n)| n)
                    .sum()
            };
            let before = on_old(conn);
            assert_eq!(
                before,
                all_values - 100,
                "two batches of 50 re-sealed before the kill"
            );

            // A rerun of the same job on a new connection finishes what was left.
            let fresh = &mut connect::<$conn>(&url);
            let report = rotate_data_keys(
                fresh,
                &Patient::MODEL,
                "rotate",
                &JobOptions {
                    batch: 50,
                    worker: Some("rotator-1".into()),
                    ..JobOptions::default()
                },
                |_| {},
            )
            .unwrap();
            println!("{}: the rerun: {report:?}", stringify!($name));
            assert!(report.finished, "{report:?}");
            // Verified apart from the job: an SQL count by key id, then every row read back.
            assert_eq!(
                count_rows_with_keys(fresh, &[Patient::MODEL], &[old.data]).unwrap(),
                0
            );
            assert_eq!(on_old(fresh), 0);
            assert_eq!(
                report.written, before,
                "the rerun wrote exactly what was left"
            );
            let back: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .order(et_patients::id)
                .load(fresh)
                .unwrap();
            assert_eq!(back.len(), rows.len());
            for (b, r) in back.iter().zip(&rows) {
                assert!(b == r, "row {} changed", r.id);
            }
        }
    };
}

killed_connection_test!(
    a_rotation_whose_connection_is_terminated_is_rerun_to_the_end_on_postgres,
    "et_job_fault_pg",
    PgConnection,
    "BYTEA",
    "SELECT CAST(pg_backend_pid() AS BIGINT) AS n",
    Some(encrypted_types_tests::pg_url())
);
killed_connection_test!(
    a_rotation_whose_connection_is_killed_is_rerun_to_the_end_on_mariadb,
    "et_job_fault_my",
    MysqlConnection,
    "LONGBLOB",
    "SELECT CAST(CONNECTION_ID() AS SIGNED) AS n",
    Some(encrypted_types_tests::mysql_url())
);

// The server itself restarts mid-job: the same typed error, and a rerun after it is back
// finishes with nothing lost. (This binary's tests hold the serial lock, and cargo runs test
// binaries one at a time, so no other test sees the restart.)
killed_connection_test!(
    a_rotation_whose_server_restarts_is_rerun_to_the_end_on_postgres,
    "et_job_restart_pg",
    PgConnection,
    "BYTEA",
    "SELECT CAST(pg_backend_pid() AS BIGINT) AS n",
    Some(encrypted_types_tests::pg_url()),
    restart_the_server
);
killed_connection_test!(
    a_rotation_whose_server_restarts_is_rerun_to_the_end_on_mariadb,
    "et_job_restart_my",
    MysqlConnection,
    "LONGBLOB",
    "SELECT CAST(CONNECTION_ID() AS SIGNED) AS n",
    Some(encrypted_types_tests::mysql_url()),
    restart_the_server
);
