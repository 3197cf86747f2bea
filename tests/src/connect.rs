//! Connections to the three backends, sync and async, with the test schema in place.

use std::sync::Once;

use diesel::prelude::*;
use diesel_async::AsyncConnection;

use crate::{ddl, install_keyring, mysql_url, pg_url, unreachable};

fn create_schema(conn: &mut impl diesel::connection::SimpleConnection, blob: &str) {
    let backend = match blob {
        "BYTEA" => "postgres",
        "LONGBLOB" => "mysql",
        _ => "sqlite",
    };
    for stmt in ddl(blob)
        .into_iter()
        .chain(crate::real_schema::ddl(backend))
    {
        conn.batch_execute(&stmt).expect("test DDL");
    }
}

/// A fresh in-memory SQLite database with the test schema.
pub fn sqlite() -> SqliteConnection {
    install_keyring();
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    create_schema(&mut conn, "BLOB");
    conn
}

fn pg_raw() -> PgConnection {
    let url = pg_url();
    PgConnection::establish(&url).unwrap_or_else(|e| unreachable("PostgreSQL", &url, &e))
}

fn mysql_raw() -> MysqlConnection {
    let url = mysql_url();
    MysqlConnection::establish(&url).unwrap_or_else(|e| unreachable("MySQL/MariaDB", &url, &e))
}

fn pg_schema() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| create_schema(&mut pg_raw(), "BYTEA"));
}

fn mysql_schema() {
    static ONCE: Once = Once::new();
    // LONGBLOB: a plain BLOB holds only 64 KiB, and the tests store 1 MiB values.
    ONCE.call_once(|| create_schema(&mut mysql_raw(), "LONGBLOB"));
}

/// A PostgreSQL connection inside a transaction that is rolled back when it drops.
pub fn pg() -> PgConnection {
    install_keyring();
    pg_schema();
    let mut conn = pg_raw();
    conn.begin_test_transaction()
        .expect("begin test transaction");
    conn
}

/// A MySQL/MariaDB connection inside a transaction that is rolled back when it drops.
pub fn mysql() -> MysqlConnection {
    install_keyring();
    mysql_schema();
    let mut conn = mysql_raw();
    conn.begin_test_transaction()
        .expect("begin test transaction");
    conn
}

/// diesel-async over SQLite: the sync connection in a `SyncConnectionWrapper`.
pub async fn async_sqlite()
-> diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection> {
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper::new(sqlite())
}

/// diesel-async's native PostgreSQL connection, in a test transaction.
pub async fn async_pg() -> diesel_async::AsyncPgConnection {
    install_keyring();
    pg_schema();
    let url = pg_url();
    let mut conn = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| unreachable("PostgreSQL", &url, &e));
    conn.begin_test_transaction()
        .await
        .expect("begin test transaction");
    conn
}

/// diesel-async's native MySQL connection, in a test transaction.
pub async fn async_mysql() -> diesel_async::AsyncMysqlConnection {
    install_keyring();
    mysql_schema();
    let url = mysql_url();
    let mut conn = diesel_async::AsyncMysqlConnection::establish(&url)
        .await
        .unwrap_or_else(|e| unreachable("MySQL/MariaDB", &url, &e));
    conn.begin_test_transaction()
        .await
        .expect("begin test transaction");
    conn
}

/// The three backends' connections with the key table migrated, for the key-store tests:
/// SQLite in memory, PostgreSQL and MySQL inside a rolled-back transaction.
pub mod keystore {
    use super::*;
    use encrypted_types::kek::local::LocalKek;
    use encrypted_types::store::KeyStore;

    pub fn sqlite() -> SqliteConnection {
        let mut conn = super::sqlite();
        KeyStore::<LocalKek>::run_migrations(&mut conn).expect("key table migration");
        conn
    }

    fn pg_key_table() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            KeyStore::<LocalKek>::run_migrations(&mut pg_raw()).expect("key table migration")
        });
    }

    fn mysql_key_table() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            KeyStore::<LocalKek>::run_migrations(&mut mysql_raw()).expect("key table migration")
        });
    }

    pub fn pg() -> PgConnection {
        pg_key_table();
        let mut conn = super::pg();
        empty_key_table(&mut conn);
        conn
    }

    pub fn mysql() -> MysqlConnection {
        mysql_key_table();
        let mut conn = super::mysql();
        empty_key_table(&mut conn);
        conn
    }

    /// [`super::async_pg`] with the key table migrated and empty.
    pub async fn async_pg() -> diesel_async::AsyncPgConnection {
        pg_key_table();
        let mut conn = super::async_pg().await;
        empty_key_table_async(&mut conn).await;
        conn
    }

    /// [`super::async_mysql`] with the key table migrated and empty.
    pub async fn async_mysql() -> diesel_async::AsyncMysqlConnection {
        mysql_key_table();
        let mut conn = super::async_mysql().await;
        empty_key_table_async(&mut conn).await;
        conn
    }

    /// [`super::async_sqlite`] with the key table migrated.
    pub async fn async_sqlite()
    -> diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection> {
        diesel_async::sync_connection_wrapper::SyncConnectionWrapper::new(sqlite())
    }

    async fn empty_key_table_async(conn: &mut impl diesel_async::SimpleAsyncConnection) {
        conn.batch_execute(
            "DELETE FROM encrypted_types_keys; DELETE FROM encrypted_types_key_manifest",
        )
        .await
        .expect("empty the key table");
    }

    /// The key table may hold committed keys of other users of the database (the example
    /// app, say): each test starts from an empty table inside its rolled-back transaction.
    /// Callers serialize, since the delete locks every row.
    fn empty_key_table(conn: &mut impl diesel::connection::SimpleConnection) {
        conn.batch_execute(
            "DELETE FROM encrypted_types_keys; DELETE FROM encrypted_types_key_manifest",
        )
        .expect("empty the key table");
    }
}
