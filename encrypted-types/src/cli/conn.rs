//! A connection chosen by URL, for [`super::run`]: one variant per backend compiled in.

use diesel::Connection as _;

use super::CliError;

/// A synchronous connection to one of the backends compiled in.
#[non_exhaustive]
pub enum AnyConnection {
    /// `sqlite://FILE` (feature `sqlite`).
    #[cfg(feature = "sqlite")]
    Sqlite(diesel::SqliteConnection),
    /// `postgres://...` (feature `postgres-connection`).
    #[cfg(feature = "postgres-connection")]
    Pg(diesel::PgConnection),
    /// `mysql://...` (feature `mysql-connection`).
    #[cfg(feature = "mysql-connection")]
    Mysql(diesel::MysqlConnection),
}

impl std::fmt::Debug for AnyConnection {
    // The URL (which may hold a password) is not kept; only the backend is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres-connection")]
            Self::Pg(_) => "postgres",
            #[cfg(feature = "mysql-connection")]
            Self::Mysql(_) => "mysql",
        };
        f.debug_tuple("AnyConnection").field(&name).finish()
    }
}

impl AnyConnection {
    /// Connects to `url`: `sqlite://FILE`, `postgres://` or `postgresql://`, `mysql://`.
    ///
    /// # Errors
    /// [`CliError::Connect`] for a scheme not compiled in or a failed connection (the message
    /// names the scheme, never the URL).
    pub fn establish(url: &str) -> Result<Self, CliError> {
        let scheme = url.split("://").next().unwrap_or_default();
        let failed = |e: diesel::ConnectionError| CliError::Connect(format!("{scheme}: {e}"));
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let path = url.get("sqlite://".len()..).unwrap_or_default();
                let mut conn = diesel::SqliteConnection::establish(path).map_err(failed)?;
                // Another process (the application, a second worker) makes this one wait
                // instead of failing at once.
                diesel::connection::SimpleConnection::batch_execute(
                    &mut conn,
                    "PRAGMA busy_timeout = 5000",
                )
                .map_err(|e| CliError::Connect(e.to_string()))?;
                Ok(Self::Sqlite(conn))
            }
            #[cfg(feature = "postgres-connection")]
            "postgres" | "postgresql" => Ok(Self::Pg(
                diesel::PgConnection::establish(url).map_err(failed)?,
            )),
            #[cfg(feature = "mysql-connection")]
            "mysql" => Ok(Self::Mysql(
                diesel::MysqlConnection::establish(url).map_err(failed)?,
            )),
            _ => Err(CliError::Connect(format!(
                "unsupported database URL scheme {scheme:?}: this build connects to {}",
                Self::SCHEMES.join(", ")
            ))),
        }
    }

    const SCHEMES: &[&str] = &[
        #[cfg(feature = "sqlite")]
        "sqlite://FILE",
        #[cfg(feature = "postgres-connection")]
        "postgres://",
        #[cfg(feature = "mysql-connection")]
        "mysql://",
    ];
}

/// Runs `$body` with `$conn` bound to the concrete connection (Diesel's queries are typed by
/// backend, so the body is compiled once per backend).
macro_rules! with_any {
    ($any:expr, $conn:ident => $body:expr) => {
        match $any {
            #[cfg(feature = "sqlite")]
            $crate::cli::AnyConnection::Sqlite(mut $conn) => $body,
            #[cfg(feature = "postgres-connection")]
            $crate::cli::AnyConnection::Pg(mut $conn) => $body,
            #[cfg(feature = "mysql-connection")]
            $crate::cli::AnyConnection::Mysql(mut $conn) => $body,
        }
    };
}
pub(crate) use with_any;
