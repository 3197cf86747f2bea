//! `clinic`, the example application of encrypted-types: a patients register whose names,
//! emails, SSNs, dates of birth and notes are stored encrypted, found by email or SSN through
//! blind indexes, with one set of keys per clinic.
//!
//! `cargo run -p example-app -- demo` runs the whole tour on SQLite with no server and no
//! configuration; built with `--features postgres,mysql`, `--database-url postgres://...` or
//! `mysql://...` (or `DATABASE_URL`) uses a server instead.
#![forbid(unsafe_code)]

/// `println!` that stops quietly when stdout is closed (`clinic demo | head`) instead of
/// panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod commands;
mod db;
mod model;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A patients register with field-level encryption.
#[derive(Parser, Debug)]
#[command(name = "clinic", version, about)]
struct Cli {
    /// Database: `sqlite://FILE` (default `sqlite://clinic.db`), `postgres://...`, `mysql://...`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// The development KEK file, created on first use. Production deployments use a KMS or HSM.
    #[arg(long, default_value = "clinic.kek", global = true)]
    kek: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The tour: migrations, keys, sample patients, a blind-index lookup, and what the database
    /// really stores. Safe to run again.
    Demo,
    /// Adds a patient.
    Add {
        /// Clinic (tenant) id.
        #[arg(long)]
        clinic: i64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        ssn: String,
        /// Date of birth, YYYY-MM-DD.
        #[arg(long)]
        dob: chrono::NaiveDate,
        #[arg(long)]
        notes: Option<String>,
    },
    /// Finds patients of a clinic by email (case and surrounding spaces do not matter), or by
    /// the last four digits of the SSN and the date of birth.
    Find {
        #[arg(long)]
        clinic: i64,
        #[arg(long, required_unless_present = "ssn4", conflicts_with_all = ["ssn4", "dob"])]
        email: Option<String>,
        /// The last four digits of the SSN (or the whole SSN: only its last four count).
        #[arg(long, requires = "dob")]
        ssn4: Option<String>,
        /// Date of birth, YYYY-MM-DD, with `--ssn4`.
        #[arg(long, requires = "ssn4")]
        dob: Option<chrono::NaiveDate>,
    },
    /// Shows one patient, decrypted, beside the bytes the database holds.
    Show {
        #[arg(long)]
        id: i64,
    },
    /// Lists every patient, decrypted.
    List,
    /// The operator's toolkit of encrypted-types, for the patients model: `keys`, `jobs`,
    /// `inventory`, `verify`, `check`, `schema` (a clinic is a tenant: `keys create-tenant
    /// --tenant 3`).
    #[command(flatten)]
    Toolkit(encrypted_types::cli::Command),
    /// Rotation throughput beside a plain UPDATE of the same rows, in one run.
    BenchRotate {
        /// Rows in the table.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// The clinic benchmark: the same workload encrypted and in plaintext, in one run.
    Bench {
        /// Rows to insert.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Rows per insert transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Equality lookups by email.
        #[arg(long, default_value_t = 1_000)]
        lookups: usize,
        /// Repetitions of every phase, interleaved plaintext and encrypted; medians are shown.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The whole cause chain: Diesel's "Error deserializing field 'name'" says where,
            // the library's error under it says what.
            let mut msg = format!("clinic: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// Errors are reported as text: every layer's error already says what failed, and none holds
/// plaintext or key bytes.
type AppResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> AppResult<ExitCode> {
    let default_db = if matches!(
        cli.command,
        Command::Bench { .. } | Command::BenchRotate { .. }
    ) {
        "sqlite://clinic-bench.db"
    } else {
        "sqlite://clinic.db"
    };
    let url = cli
        .database_url
        .clone()
        .unwrap_or_else(|| default_db.to_owned());
    let mut db = db::Db::open(&url)?;
    if let Command::Toolkit(command) = &cli.command {
        return commands::toolkit(&mut db, &cli.kek, command);
    }
    match cli.command {
        Command::Toolkit(_) => Ok(()),
        Command::Demo => commands::demo(&mut db, &url, &cli.kek),
        Command::Add {
            clinic,
            name,
            email,
            ssn,
            dob,
            notes,
        } => commands::add(
            &mut db,
            &cli.kek,
            model::Patient {
                id: 0,
                clinic_id: clinic,
                name,
                email,
                ssn,
                date_of_birth: dob,
                notes,
            },
        ),
        Command::Find {
            clinic,
            email,
            ssn4,
            dob,
        } => {
            let by = match (email, ssn4, dob) {
                (Some(email), ..) => commands::By::Email(email),
                (None, Some(ssn4), Some(dob)) => commands::By::Ssn4Dob(ssn4, dob),
                _ => return Err("give --email, or --ssn4 and --dob".into()),
            };
            commands::find(&mut db, &cli.kek, clinic, &by)
        }
        Command::Show { id } => commands::show(&mut db, &cli.kek, id),
        Command::List => commands::list(&mut db, &cli.kek),
        Command::BenchRotate { rows, batch } => {
            bench::rotate(&mut db, &url, &cli.kek, rows, batch.max(1))
        }
        Command::Bench {
            rows,
            batch,
            lookups,
            reps,
        } => bench::run(&mut db, &url, &cli.kek, rows, batch.max(1), lookups, reps),
    }?;
    Ok(ExitCode::SUCCESS)
}
