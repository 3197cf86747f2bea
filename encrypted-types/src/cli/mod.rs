//! The operator's toolkit, embeddable in an application's own binary (feature `cli`): keys,
//! jobs, inventory, verify, the key-age check and the schema, for the application's models and
//! KEK provider.
//!
//! A binary of a few lines mounts all of it ([`run`]: `--database-url` or `DATABASE_URL` picks
//! the backend; `sqlite://FILE` with the `sqlite` feature, `postgres://` with
//! `postgres-connection`, `mysql://` with `mysql-connection`):
//!
//! ```no_run
//! use encrypted_types::store::KeyStore;
//! # diesel::table! { users (id) { id -> Integer, email -> Binary } }
//! # #[derive(encrypted_types::Encrypted)]
//! # #[encrypted(table = users)]
//! # struct User { id: i32, #[encrypted] email: String }
//! use encrypted_types::EncryptedModel;
//!
//! fn main() -> std::process::ExitCode {
//!     // Called after the arguments parse (`--help` opens nothing); only `keys init` may
//!     // create the KEK file, every other command opens it or fails naming it.
//!     encrypted_types::cli::run(&[User::MODEL], |start| {
//!         Ok(KeyStore::new(start.local_kek("app.kek")?))
//!     })
//! }
//! ```
//!
//! An application with commands of its own flattens [`Command`] into its `clap` enum
//! (`#[command(flatten)] Toolkit(encrypted_types::cli::Command)`) and calls [`execute`] with
//! its connection, as the example app `clinic` does.
//!
//! | command | does |
//! |---|---|
//! | `keys init` | creates the key table and the keys of values without a tenant |
//! | `keys create-tenant --tenant T` | a tenant's data and blind-index keys |
//! | `keys list` | every key: id, tenant, purpose, state, age, KEK reference, values sealed with it; never key bytes |
//! | `keys rotate [--tenant T]...` | new active data keys (all tenants by default); the old ones are retired |
//! | `keys rotate --blind-index --tenant T \| --all-tenants` | replaces blind-index roots after a compromise (asks, or `--yes`); tenants mid-replacement are reported and left |
//! | `keys rewrap` | re-wraps every key under this store's KEK (a KEK rotation) |
//! | `keys destroy --key-id N` | destroys a retired key no value names (asks, or `--yes`) |
//! | `keys shred-tenant --tenant T` | crypto-shreds a tenant (asks, or `--yes`) |
//! | `keys manifest [--rebuild]` | compares the key table's manifest with its records; `--rebuild` accepts the records as they are (asks, or `--yes`): the upgrade step from 0.2 |
//! | `jobs rotate \| reindex \| encrypt-column` | resumable jobs: live progress at a terminal, one JSON line per batch otherwise |
//! | `jobs status` | units done, leased and pending per job |
//! | `inventory` | values per table, column, tenant, key and suite, counted in SQL |
//! | `verify [--sample N]` | opens every value; names the ones that do not open |
//! | `check --max-key-age 90d` | old active keys, retired keys still in use, keys that do not load |
//! | `schema --check` | drift between the live tables and the models: missing tables, columns, indexes, columns that do not keep bytes (exit 4 if any) |
//! | `index-leakage` | per blind index and tenant, on the live rows: whether its bits stay within the leakage bound, and the bits to use (exit 4 if not) |
//! | `schema [--backend B] [--alter] [--down]` | `CREATE TABLE` migrations for the models, or (`--alter`, connected) the `ALTER TABLE` statements for what the live tables lack; its `--down` drops only that |
//!
//! Every key command prints the key table's epoch it leaves; `--min-epoch` (or
//! `ENCRYPTED_TYPES_MIN_EPOCH`) refuses a key table older than the epoch given.
//!
//! Every command takes `--json`. Exit codes ([`Outcome::code`], [`CliError::exit_code`]):
//! 0 done, 1 failed (a database or KEK error, a refused or unconfirmed step), 2 invalid
//! arguments, 3 a job that is not finished (`--max-batches` reached, values it had to skip:
//! `verify` names them), 4 findings (`verify`, `check`).

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use diesel::connection::LoadConnection;

use crate::jobs::JobTable;
use crate::kek::KekProvider;
use crate::model::ModelInfo;
use crate::store::{KeyStore, Migrations};

mod conn;
mod jobs;
mod keys;
mod out;
mod report;

pub use conn::AnyConnection;
pub use conn::redact_url;
pub use jobs::{JobArgs, JobsCommand};
pub use keys::KeysCommand;
pub use report::{CheckArgs, LeakageArgs, SchemaArgs, SchemaBackend, VerifyArgs};

/// The toolkit's commands, for an application's own `clap` parser.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Create, list, rotate, re-wrap, destroy and shred keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run and watch the re-sealing jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Values per table, column, tenant, key and suite, counted in SQL.
    Inventory {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Opens every stored value (or a sample) and names each one that does not open by table,
    /// row key, column and reason (never its content). Exits 4 if any.
    Verify(VerifyArgs),
    /// For cron and alerting: exits 4 listing active data keys older than the policy, retired
    /// keys still sealing values past a grace period, and keys that do not load (an
    /// unreachable KEK provider, a tampered key table).
    Check(CheckArgs),
    /// The migration SQL of the models' tables (`CREATE TABLE` with every column and the
    /// tenant-leading indexes), with `--alter` the columns and indexes the live tables lack, or
    /// with `--check` the drift between the live tables and the models (exits 4 if any).
    Schema(SchemaArgs),
    /// For each blind index and tenant, on the live rows: rows, distinct values and whether the
    /// configured bits stay within the leakage bound, with the bits to use if not. Decrypts
    /// every indexed value once; writes nothing. Exits 4 if an index needs re-sizing.
    IndexLeakage(LeakageArgs),
}

/// How a command ended, beside errors ([`Outcome::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: exit 0.
    Done,
    /// A job that is not finished: stopped by `--max-batches` (run it again), or values it had
    /// to leave (`verify` names them): exit 3.
    Incomplete,
    /// `verify` or `check` found something: exit 4.
    Findings,
}

impl CliError {
    /// The process exit code: 2 for arguments that do not fit the models or the database
    /// (as `clap` exits for arguments that do not parse), 1 for everything else.
    ///
    /// ```
    /// use encrypted_types::cli::CliError;
    /// assert_eq!(CliError::Usage("no such column".into()).exit_code(), 2);
    /// ```
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl Outcome {
    /// The process exit code.
    ///
    /// ```
    /// use encrypted_types::cli::Outcome;
    /// assert_eq!(Outcome::Findings.code(), 4);
    /// ```
    pub const fn code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Incomplete => 3,
            Self::Findings => 4,
        }
    }
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The library refused or failed.
    #[error(transparent)]
    Library(#[from] crate::Error),
    /// A destructive command was not confirmed.
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    /// Arguments that parse but do not fit the models or the database.
    #[error("{0}")]
    Usage(String),
    /// `schema` cannot write a table.
    #[error(transparent)]
    Schema(#[from] crate::schema::CreateError),
    /// Writing the output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be reached.
    #[error("database: {0}")]
    Connect(String),
}

/// The command line of [`run`].
#[derive(Debug, clap::Parser)]
#[command(version, about = "Keys, jobs and audits of encrypted-types models")]
struct Cli {
    /// Database URL: `sqlite://FILE`, `postgres://...` or `mysql://...`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// The lowest key-table epoch to accept (`docs/KEYS.md`, "Pinning the key table's
    /// epoch"): a copy of the key table older than this is refused. Keep it outside the
    /// database; every key command prints the epoch it leaves.
    #[arg(long, env = "ENCRYPTED_TYPES_MIN_EPOCH", global = true)]
    min_epoch: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

/// What the command line asked for, given to [`run`]'s key-store factory once the arguments
/// have parsed (so `--help` and a mistyped command open no KEK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Startup {
    init: bool,
}

impl Startup {
    /// A startup for `keys init` (`init = true`) or any other command: for tests of a factory.
    ///
    /// ```
    /// assert!(encrypted_types::cli::Startup::new(true).creates_keys());
    /// ```
    pub const fn new(init: bool) -> Self {
        Self { init }
    }

    /// True for `keys init` on an empty key table, the one case that may create a KEK; every
    /// other command, and `keys init` on a table that holds keys, must only open one (a KEK
    /// created in place of a lost one unwraps nothing, and hides the loss).
    ///
    /// ```
    /// assert!(!encrypted_types::cli::Startup::new(false).creates_keys());
    /// ```
    pub const fn creates_keys(self) -> bool {
        self.init
    }

    /// The local KEK file at `path`: opened, or under `keys init` created when missing. Any
    /// other command with a missing file fails with [`crate::Error::KekFile`] naming it, and
    /// creates nothing.
    ///
    /// ```
    /// use encrypted_types::cli::Startup;
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.kek");
    /// assert!(Startup::new(false).local_kek(&path).is_err());
    /// assert!(!path.exists());
    /// Startup::new(true).local_kek(&path)?; // keys init
    /// Startup::new(false).local_kek(&path)?;
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`crate::kek::local::LocalKek::open`] and [`crate::kek::local::LocalKek::create`].
    #[cfg(feature = "local-kek")]
    pub fn local_kek(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<crate::kek::local::LocalKek, crate::Error> {
        use crate::kek::local::LocalKek;
        if self.init && !path.as_ref().exists() {
            LocalKek::create(path)
        } else {
            LocalKek::open(path)
        }
    }
}

/// Parses the process's arguments and runs one command against `--database-url` with
/// `models` and the key store `open` returns; returns the exit code ([`Outcome::code`]; on
/// errors, which are printed to stderr with their causes, [`CliError::exit_code`]).
///
/// `open` is called after the arguments parse, only for a command that needs keys (not for
/// `--help`, nor for `schema`), with a [`Startup`] that says whether the command is `keys
/// init`: the only command that may create a KEK ([`Startup::local_kek`] does this for a local
/// file). Only `keys init` creates the key table: the other commands run with the rights they
/// need (`inventory`, `verify`, `check`, `jobs status` and `keys list` only read).
pub fn run<P, F>(models: &[ModelInfo], open: F) -> ExitCode
where
    P: KekProvider,
    F: FnOnce(Startup) -> Result<KeyStore<P>, crate::Error>,
{
    use clap::Parser as _;
    let cli = Cli::parse();
    let result = (|| {
        if let Command::Schema(args) = &cli.command
            && !args.alter
            && !args.check
        {
            // `CREATE TABLE` depends on the backend, not on a live database: no connection.
            let scheme = cli
                .database_url
                .as_deref()
                .and_then(|u| u.split_once("://"));
            return report::schema(models, args, scheme.map(|(s, _)| s));
        }
        let url = cli
            .database_url
            .as_deref()
            .ok_or_else(|| CliError::Usage("--database-url or DATABASE_URL is required".into()))?;
        let init = matches!(cli.command, Command::Keys(KeysCommand::Init { .. }));
        conn::with_any!(AnyConnection::establish(url)?, conn => {
            if let Command::Schema(args) = &cli.command {
                return if args.check {
                    report::schema_check(&mut conn, models, args)
                } else {
                    report::schema_alter(&mut conn, models, args)
                };
            }
            // `keys init` may create a KEK only for an empty key table: a table that holds keys
            // was wrapped by a KEK a new one cannot replace, so a missing file is an error
            // there, as for every other command.
            // Read only for `keys init`: every other command would read the whole table for
            // nothing.
            let init = init && crate::store::list_keys(&mut conn).map_or(true, |k| k.is_empty());
            let store = open(Startup { init })?;
            let store = match cli.min_epoch {
                Some(epoch) => store.with_min_epoch(epoch),
                None => store,
            };
            execute(&mut conn, &store, models, &cli.command)
        })
    })();
    match result {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            fail(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `error` and its causes to stderr as one line and returns exit code 1.
pub fn fail(error: &dyn std::error::Error) -> ExitCode {
    let mut msg = format!("error: {error}");
    let mut cause = error.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
    ExitCode::FAILURE
}

/// Runs one command on `conn` with the application's `models` and key store, printing to
/// stdout. `keys init` creates the key table ([`KeyStore::run_migrations`]); the other
/// commands expect it.
///
/// # Errors
/// [`CliError`]: the library's errors, an unconfirmed destructive command, arguments that do
/// not fit the models.
pub fn execute<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    command: &Command,
) -> Result<Outcome, CliError>
where
    C: LoadConnection + diesel_migrations::MigrationHarness<C::Backend>,
    C::Backend: JobTable + Migrations,
    P: KekProvider,
{
    match command {
        Command::Keys(cmd @ KeysCommand::Init { .. }) => {
            KeyStore::<P>::run_migrations(conn)?;
            keys::execute(conn, store, models, cmd)
        }
        Command::Keys(cmd) => keys::execute(conn, store, models, cmd),
        Command::Jobs(cmd) => jobs::execute(conn, store, models, cmd),
        Command::Inventory { json } => report::inventory(conn, models, *json),
        Command::Verify(args) => report::verify(conn, store, models, args),
        Command::Check(args) => report::check(conn, store, models, args),
        Command::Schema(args) if args.check => report::schema_check(conn, models, args),
        Command::Schema(args) if args.alter => report::schema_alter(conn, models, args),
        Command::IndexLeakage(args) => report::index_leakage(conn, store, models, args),
        Command::Schema(args) => report::schema(models, args, Some(<C::Backend as JobTable>::NAME)),
    }
}

/// Asks for `expected` at a terminal before a destructive step; without a terminal only
/// `yes` (`--yes`) goes on.
fn confirm(what: &str, expected: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed(format!(
            "{what}: pass --yes to run it without a terminal"
        )));
    }
    let mut err = std::io::stderr();
    write!(
        err,
        "{what}. This cannot be undone. Type {expected} to go on: "
    )?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() == expected {
        Ok(())
    } else {
        Err(CliError::NotConfirmed(what.to_owned()))
    }
}
