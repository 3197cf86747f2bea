//! The key-table and job-table migrations exist twice: in `encrypted-types/migrations/`, where
//! the published crate embeds them (`KeyStore::run_migrations`), and at the top level, where
//! Diesel CLI users copy them from. The two trees must be identical, file for file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_embedded_migrations_are_the_ones_users_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let embedded = tree(&root.join("encrypted-types/migrations"));
    let copied = tree(&root.join("migrations"));
    assert!(embedded.len() >= 18, "{:?}", embedded.keys());
    assert_eq!(
        embedded.keys().collect::<Vec<_>>(),
        copied.keys().collect::<Vec<_>>(),
        "the same migrations in both places"
    );
    for (name, sql) in &embedded {
        assert!(
            copied.get(name) == Some(sql),
            "{name} differs between the two copies"
        );
    }
}

/// A database that lacks one of the library's migrations (an application that copied the first
/// ones, or applied them by hand): the key-store load and the job table's first query fail with
/// `MissingMigration` naming it, migration by migration, until all are applied. Each backend
/// gets a database of its own (a PostgreSQL schema, a MariaDB database), outside any
/// transaction, as an application's startup runs.
macro_rules! missing_migration_test {
    ($name:ident, $backend:literal, $conn:expr) => {
        #[test]
        fn $name() {
            use diesel::connection::SimpleConnection;
            use encrypted_types::Error;
            use encrypted_types::kek::local::LocalKek;
            use encrypted_types::store::KeyStore;

            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap());
            let conn = &mut $conn;
            let apply = |conn: &mut _, name: &str| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../migrations")
                    .join($backend)
                    .join(name)
                    .join("up.sql");
                SimpleConnection::batch_execute(conn, &std::fs::read_to_string(path).unwrap())
                    .unwrap();
            };
            let load_err = |conn: &mut _| store.load(conn).err();
            let status_err = |conn: &mut _| encrypted_types::jobs::status(conn).err();
            let missing = |migration: &'static str, table: &'static str| {
                Some(Error::MissingMigration { table, migration })
            };

            assert_eq!(
                load_err(conn),
                missing(
                    "2026-11-22-000000_encrypted_types_keys",
                    "encrypted_types_keys"
                )
            );
            apply(conn, "2026-11-22-000000_encrypted_types_keys");
            let e = load_err(conn);
            assert_eq!(
                e,
                missing(
                    "2026-12-02-000001_encrypted_types_key_hierarchy",
                    "encrypted_types_keys"
                )
            );
            assert!(e.unwrap().to_string().contains(
                "copy migrations/<backend>/2026-12-02-000001_encrypted_types_key_hierarchy"
            ));
            assert_eq!(
                status_err(conn),
                missing(
                    "2026-11-22-000002_encrypted_types_jobs",
                    "encrypted_types_jobs"
                )
            );
            apply(conn, "2026-11-22-000002_encrypted_types_jobs");
            assert_eq!(
                status_err(conn),
                missing(
                    "2026-12-02-000000_encrypted_types_job_units",
                    "encrypted_types_jobs"
                )
            );
            apply(conn, "2026-12-02-000000_encrypted_types_job_units");
            apply(conn, "2026-12-02-000001_encrypted_types_key_hierarchy");
            assert_eq!(
                load_err(conn),
                missing(
                    "2026-12-07-000000_encrypted_types_kek_check",
                    "encrypted_types_keys"
                )
            );
            apply(conn, "2026-12-07-000000_encrypted_types_kek_check");
            assert_eq!(
                load_err(conn),
                missing(
                    "2026-12-08-000000_encrypted_types_key_manifest",
                    "encrypted_types_key_manifest"
                )
            );
            apply(conn, "2026-12-08-000000_encrypted_types_key_manifest");
            assert_eq!(status_err(conn), None);
            store.create_tenant(conn, Some(&"t".into())).unwrap();
            assert_eq!(store.load(conn).unwrap().1.data_keys, 1);
        }
    };
}

missing_migration_test!(a_missing_migration_is_named_on_sqlite, "sqlite", {
    use diesel::Connection;
    diesel::SqliteConnection::establish(":memory:").unwrap()
});

missing_migration_test!(a_missing_migration_is_named_on_postgres, "postgres", {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut conn = diesel::PgConnection::establish(&encrypted_types_tests::pg_url()).unwrap();
    conn.batch_execute(
        "DROP SCHEMA IF EXISTS et_missing_migration CASCADE; \
             CREATE SCHEMA et_missing_migration; SET search_path TO et_missing_migration",
    )
    .unwrap();
    conn
});

missing_migration_test!(a_missing_migration_is_named_on_mysql, "mysql", {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let url = encrypted_types_tests::mysql_url();
    let mut admin = diesel::MysqlConnection::establish(&url).unwrap();
    admin
        .batch_execute(
            "DROP DATABASE IF EXISTS et_missing_migration; \
                 CREATE DATABASE et_missing_migration",
        )
        .unwrap();
    let (server, _) = url.rsplit_once('/').unwrap();
    diesel::MysqlConnection::establish(&format!("{server}/et_missing_migration")).unwrap()
});
