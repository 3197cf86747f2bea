//! The three backends behind one enum, chosen by URL; a macro runs the same code on each.

use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;

// The app's own table; the key table comes from the library (`KeyStore::run_migrations`).
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// A connection to one of the three backends (PostgreSQL and MySQL with the app's features of
/// those names).
pub(crate) enum Db {
    Sqlite(SqliteConnection),
    #[cfg(feature = "postgres")]
    Pg(PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(MysqlConnection),
}

/// Runs `$body` with `$conn` bound to the concrete connection, once per backend: Diesel's
/// queries are typed by backend, so the body is compiled three times.
macro_rules! with_conn {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($conn) => $body,
            #[cfg(feature = "postgres")]
            $crate::db::Db::Pg($conn) => $body,
            #[cfg(feature = "mysql")]
            $crate::db::Db::Mysql($conn) => $body,
        }
    };
}
pub(crate) use with_conn;

impl Db {
    /// Connects and applies pending migrations (the key table and `patients`).
    pub(crate) fn open(url: &str) -> crate::AppResult<Self> {
        // The toolkit's connection: it waits on SQLite locks, and its errors never repeat a
        // password from the URL.
        use encrypted_types::cli::AnyConnection;
        let mut db = match AnyConnection::establish(url)? {
            AnyConnection::Sqlite(c) => Db::Sqlite(c),
            #[cfg(feature = "postgres")]
            AnyConnection::Pg(c) => Db::Pg(c),
            #[cfg(feature = "mysql")]
            AnyConnection::Mysql(c) => Db::Mysql(c),
            #[allow(unreachable_patterns)] // reachable when the library has more backends on
            _ => return Err("a backend this app was not built for".into()),
        };
        with_conn!(&mut db, c => KeyStore::<LocalKek>::run_migrations(c))?;
        match &mut db {
            Db::Sqlite(c) => c.run_pending_migrations(SQLITE).map(drop),
            #[cfg(feature = "postgres")]
            Db::Pg(c) => c.run_pending_migrations(POSTGRES).map(drop),
            #[cfg(feature = "mysql")]
            Db::Mysql(c) => c.run_pending_migrations(MYSQL).map(drop),
        }
        .map_err(|e| format!("migrations failed: {e}"))?;
        Ok(db)
    }

    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            Db::Pg(_) => "PostgreSQL",
            #[cfg(feature = "mysql")]
            Db::Mysql(_) => "MySQL/MariaDB",
        }
    }
}
