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
        // Without `://` (a libpq key=value string, a typo) nothing of it is repeated: it may
        // hold a password.
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let failed = |e: diesel::ConnectionError| {
            CliError::Connect(format!("{scheme}: {}", redact_in(&e.to_string(), url)))
        };
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
            _ if Self::SCHEMES.is_empty() => Err(CliError::Connect(
                "this build connects to no database: enable the sqlite, postgres-connection or \
                 mysql-connection feature"
                    .into(),
            )),
            _ => Err(CliError::Connect(format!(
                "unsupported database URL{}: this build connects to {}",
                if scheme.is_empty() {
                    String::new()
                } else {
                    format!(" scheme {scheme:?}")
                },
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

/// `url` with its password replaced by `***`, for logs and output:
/// `postgres://app:s3cret@db/clinic` becomes `postgres://app:***@db/clinic`. A string without
/// `://` (a libpq `key=value` list) is replaced whole.
///
/// ```
/// use encrypted_types::cli::redact_url;
/// assert_eq!(redact_url("mysql://root:pw@127.0.0.1/test"), "mysql://root:***@127.0.0.1/test");
/// assert_eq!(redact_url("sqlite://clinic.db"), "sqlite://clinic.db");
/// assert_eq!(redact_url("host=db password=pw"), "<connection string>");
/// assert_eq!(redact_url("postgres://a:p@w@db/x?sslmode=require"), "postgres://a:***@db/x?sslmode=require");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<connection string>".into();
    };
    match user_info(rest) {
        Some((user, Some(_), host_and_tail)) => format!("{scheme}://{user}:***@{host_and_tail}"),
        _ => url.to_owned(),
    }
}

/// `user`, `password` and what follows the `@` of a URL's part after `://`, if it has user
/// info. The authority ends at the first `/`, `?` or `#`; its user info at the last `@` in it.
fn user_info(rest: &str) -> Option<(&str, Option<&str>, &str)> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest.get(..end)?.rfind('@')?;
    let (info, host) = (rest.get(..at)?, rest.get(at + 1..)?);
    Some(match info.split_once(':') {
        Some((user, password)) => (user, Some(password), host),
        None => (info, None, host),
    })
}

/// `message` with every copy of `url`, and of its password, replaced: a driver's error may
/// quote either.
fn redact_in(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| user_info(rest))
        .and_then(|(_, p, _)| p);
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        out = out.replace(p, "***");
    }
    out
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
