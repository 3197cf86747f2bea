//! `jobs ...`: the resumable re-sealing jobs, with their progress, and the job table's status.

use std::io::IsTerminal;

use diesel::connection::LoadConnection;
use serde_json::json;

use super::{CliError, Outcome, out};
use crate::jobs::{self, JobOptions, JobReport, JobTable, Operation, Progress, Scope};
use crate::kek::KekProvider;
use crate::model::ModelInfo;
use crate::store::KeyStore;

/// `jobs ...`
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum JobsCommand {
    /// Re-seals every value on a retired data key (or an older suite) under its tenant's active
    /// key, model by model.
    Rotate(JobArgs),
    /// Recomputes every blind index with the current keys and parameters.
    Reindex(JobArgs),
    /// Seals the plaintext of an encrypted column: values of its legacy column
    /// (`migrate_from`), or plaintext stored in the column itself.
    EncryptColumn {
        /// The encrypted column (`table.column` when two models have one of that name).
        #[arg(long)]
        column: String,
        /// How the job runs.
        #[command(flatten)]
        job: JobArgs,
    },
    /// Every job of the job table: units done, held by a worker, pending.
    Status {
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How a job runs.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct JobArgs {
    /// The job's name: run again with the same name to resume. Default: the operation, the
    /// table and a digest of the job's target (as `jobs::default_job_name` makes it), so a rerun
    /// after an interruption resumes and a run after the next key rotation starts afresh.
    #[arg(long)]
    pub job: Option<String>,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Split each table into this many key ranges that several workers (processes running the
    /// same command) claim.
    #[arg(long)]
    pub parts: Option<u32>,
    /// Stop after this many batches (time-slicing); the job resumes on the next run.
    #[arg(long)]
    pub max_batches: Option<u64>,
    /// Also bind to their row the values of a `bind_row` model written before it declared
    /// `bind_row` (once, when adopting it).
    #[arg(long)]
    pub bind_unbound: bool,
    /// Each job's report as a JSON line (the batch lines are JSON without a terminal anyway).
    #[arg(long)]
    pub json: bool,
}

pub(super) fn execute<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    cmd: &JobsCommand,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    let (op, args, column) = match cmd {
        JobsCommand::Status { json } => return status(conn, *json),
        JobsCommand::Rotate(a) => ("rotate", a, None),
        JobsCommand::Reindex(a) => ("reindex", a, None),
        JobsCommand::EncryptColumn { column, job } => ("encrypt", job, Some(column.as_str())),
    };
    // Every model and column is resolved before the first write: a typo refuses the whole run.
    let work: Vec<(ModelInfo, Option<&'static str>)> = match column {
        None => models.iter().map(|m| (*m, None)).collect(),
        Some(name) => vec![find_column(models, name)?],
    };
    store.load_and_install(conn)?;
    let options = JobOptions {
        batch: args.batch.max(1),
        scope: args.parts.map_or(Scope::All, |n| Scope::Parts(n.max(1))),
        max_batches: args.max_batches,
        bind_unbound: args.bind_unbound,
        ..JobOptions::default()
    };
    let mut done = true;
    for (model, col) in work {
        let table = model.display_name();
        let name = match (&args.job, col) {
            (Some(j), _) if models.len() == 1 || col.is_some() => j.clone(),
            (Some(j), _) => format!("{j}-{table}"),
            (None, Some(c)) => jobs::default_job_name(&model, Operation::Encrypt { column: c })?,
            (None, None) if op == "reindex" => jobs::default_job_name(&model, Operation::Reindex)?,
            (None, None) => jobs::default_job_name(&model, Operation::Rotate)?,
        };
        let mut progress = Bar::new(&name, &table);
        let report = match (op, col) {
            ("rotate", _) => {
                jobs::rotate_data_keys(conn, &model, &name, &options, |p| progress.batch(p))
            }
            ("reindex", _) => jobs::reindex(conn, &model, &name, &options, |p| progress.batch(p)),
            (_, Some(c)) => {
                jobs::encrypt_column(conn, &model, c, &name, &options, |p| progress.batch(p))
            }
            (_, None) => return Err(CliError::Usage("encrypt-column needs --column".into())),
        };
        progress.finish();
        let report = report?;
        // Values it had to leave (a destroyed key, a value that does not open) are work left
        // too: `verify` names them.
        done &= report.finished && report.skipped_total() == 0;
        // One report per job as it ends, so the ones done are reported even if a later one
        // fails.
        if args.json {
            out::json(&report_json(&name, &table, &report))?;
        } else {
            out::line(&summary(&name, &report))?;
        }
    }
    Ok(if done {
        Outcome::Done
    } else {
        Outcome::Incomplete
    })
}

fn find_column(
    models: &[ModelInfo],
    name: &str,
) -> Result<(ModelInfo, Option<&'static str>), CliError> {
    // `table.column`, or `schema.table.column` for a model that names its schema.
    let (table, column) = match name.rsplit_once('.') {
        Some((t, c)) => (Some(t), c),
        None => (None, name),
    };
    let found: Vec<(ModelInfo, &'static str)> = models
        .iter()
        .filter(|m| table.is_none_or(|t| t == m.table || t == m.display_name()))
        .flat_map(|m| {
            m.columns
                .iter()
                .filter(|c| c.column == column)
                .map(|c| (*m, c.column))
        })
        .collect();
    match found.as_slice() {
        [(m, c)] => Ok((*m, Some(*c))),
        [] => Err(CliError::Usage(format!(
            "{name} is not an encrypted column; those are: {}",
            models
                .iter()
                .flat_map(|m| m.columns.iter().map(|c| format!(
                    "{}.{}",
                    m.display_name(),
                    c.column
                )))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Err(CliError::Usage(format!(
            "{name} names a column of several tables: write table.column"
        ))),
    }
}

fn summary(name: &str, r: &JobReport) -> String {
    let mut s = format!(
        "{name}: wrote {} values in {} batches ({} changed by the application meanwhile)",
        r.written, r.batches, r.conflicts
    );
    if r.skipped_total() > 0 {
        s.push_str(&format!("; skipped {} {:?}", r.skipped_total(), r.skipped));
    }
    if r.already_finished {
        s.push_str("; already finished before this run");
    }
    s.push_str(&format!("; {} left; finished: {}", r.remaining, r.finished));
    s
}

fn report_json(name: &str, table: &str, r: &JobReport) -> serde_json::Value {
    let skipped: serde_json::Map<String, serde_json::Value> = r
        .skipped
        .iter()
        .map(|(k, v)| (format!("{k:?}"), json!(v)))
        .collect();
    json!({
        "event": "report",
        "job": name,
        "table": table,
        "written": r.written,
        "batches": r.batches,
        "conflicts": r.conflicts,
        "skipped": skipped,
        "remaining": r.remaining,
        "already_finished": r.already_finished,
        "finished": r.finished,
    })
}

/// A live progress line at a terminal (job, column, values written of the estimated total);
/// without one, one JSON line per committed batch.
struct Bar<'a> {
    job: &'a str,
    table: &'a str,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a> Bar<'a> {
    fn new(job: &'a str, table: &'a str) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stdout(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_message(format!("{job}: starting"));
            bar
        });
        Self { job, table, bar }
    }

    fn batch(&mut self, p: &Progress) {
        match &self.bar {
            Some(bar) => {
                let of = p
                    .estimated_total
                    .map(|t| format!(" of about {t}"))
                    .unwrap_or_default();
                bar.set_message(format!(
                    "{}: {}.{}: {}{of} values written",
                    self.job, self.table, p.column, p.written
                ));
                bar.tick();
            }
            None => {
                // Progress is best effort: a closed stdout does not stop the job.
                let _ = out::json(&json!({
                    "event": "batch",
                    "job": self.job,
                    "table": self.table,
                    "column": p.column,
                    "rows_done": p.rows_done,
                    "conflicts": p.conflicts,
                    "written": p.written,
                    "estimated_total": p.estimated_total,
                }));
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn status<C>(conn: &mut C, json: bool) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let all = jobs::status(conn)?;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|j| {
                json!({
                    "job": j.job, "operation": j.operation, "units": j.units, "done": j.done,
                    "leased": j.leased, "rows_done": j.rows_done, "updated_at": j.updated_at,
                    "complete": j.complete(),
                })
            })
            .collect();
        out::json(&json!({ "jobs": rows }))?;
        return Ok(Outcome::Done);
    }
    let now = out::now();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|j| {
            vec![
                j.job.clone(),
                j.operation.clone(),
                format!("{}/{}", j.done, j.units),
                j.leased.to_string(),
                j.rows_done.to_string(),
                format!(
                    "{} ago",
                    out::age(u64::try_from(now.saturating_sub(j.updated_at)).unwrap_or(0))
                ),
            ]
        })
        .collect();
    out::table(
        &[
            "job",
            "operation",
            ">units done",
            ">leased",
            ">values",
            "updated",
        ],
        &rows,
    )?;
    Ok(Outcome::Done)
}
