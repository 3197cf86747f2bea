//! The read-only commands: `inventory`, `verify`, `check` and `schema`.

use std::collections::HashMap;

use diesel::connection::LoadConnection;
use serde_json::json;

use super::{CliError, Outcome, out};
use crate::jobs::{self, Content, JobTable, RowKey};
use crate::kek::KekProvider;
use crate::model::ModelInfo;
use crate::schema::Dialect;
use crate::store::{KeyPolicy, KeyState, KeyStore, PolicyBreach, list_keys, reused_wrap_nonces};

/// `verify`
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct VerifyArgs {
    /// Open about this many values per column, spread over the table, instead of all.
    #[arg(long)]
    pub sample: Option<u64>,
    /// Print text and binary row keys in full (they may be natural keys holding personal
    /// data, so the text output shows their kind and length only; integer and UUID keys, and
    /// the JSON output's `row`, are always in full).
    #[arg(long)]
    pub show_keys: bool,
    /// Output as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `check`
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct CheckArgs {
    /// The oldest an active data key may be: `90d`, `365d`, `12h`.
    #[arg(long, value_parser = out::parse_duration)]
    pub max_key_age: std::time::Duration,
    /// How long a retired data key may still seal stored values.
    #[arg(long, value_parser = out::parse_duration, default_value = "7d")]
    pub retired_grace: std::time::Duration,
    /// Output as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A backend's SQL dialect, as `schema --backend` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum SchemaBackend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

/// `schema`: the migration SQL of new tables for the models, or (`--alter`) the columns to add
/// to tables that exist.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct SchemaArgs {
    /// The dialect; default: the backend of `--database-url` (no connection is made).
    #[arg(long, value_enum)]
    pub backend: Option<SchemaBackend>,
    /// `ALTER TABLE` statements that add the encrypted and index columns and indexes that the
    /// live database lacks (the expand step of encrypting a plaintext column, or a new index),
    /// instead of `CREATE TABLE`. Connects to `--database-url`; a column that exists with a
    /// type that does not keep bytes, or a missing table, is reported on stderr and exits 4.
    #[arg(long)]
    pub alter: bool,
    /// Print the `down` migration instead of `up` (with `--alter`: it drops exactly what `up`
    /// adds).
    #[arg(long)]
    pub down: bool,
    /// Compare the live tables with the models instead (drift: missing tables, columns and
    /// tenant-leading indexes, columns that do not keep bytes): prints each finding, exits 4 if
    /// any. Connects to `--database-url`; prints no SQL.
    #[arg(long, conflicts_with_all = ["alter", "down", "backend"])]
    pub check: bool,
    /// Output as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn inventory<C>(
    conn: &mut C,
    models: &[ModelInfo],
    json: bool,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let entries = jobs::inventory(conn, models)?;
    let states: HashMap<_, _> = list_keys(conn)?
        .into_iter()
        .map(|k| (k.key_id, k.state))
        .collect();
    let describe = |c: Content| match c {
        Content::Sealed { suite, key_id } => (
            Some(key_id.get()),
            Some(suite),
            states
                .get(&key_id)
                .map_or("not in key table", |s| s.as_str()),
        ),
        Content::LegacyPlaintext => (None, None, "legacy plaintext"),
        _ => (None, None, "unrecognized"),
    };
    if json {
        let rows: Vec<_> = entries
            .iter()
            .map(|e| {
                let (key, suite, what) = describe(e.content);
                json!({
                    "table": e.table, "schema": e.schema, "column": e.column, "tenant": e.tenant,
                    "key_id": key, "suite": suite, "content": what, "values": e.values,
                })
            })
            .collect();
        out::json(&json!({ "inventory": rows }))?;
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let (key, suite, what) = describe(e.content);
            vec![
                e.schema
                    .map_or_else(|| e.table.to_owned(), |s| format!("{s}.{}", e.table)),
                e.column.to_owned(),
                e.tenant.clone().unwrap_or_else(|| "-".into()),
                key.map_or_else(|| "-".into(), |k| k.to_string()),
                suite.map_or_else(|| "-".into(), |s| s.to_string()),
                what.to_owned(),
                e.values.to_string(),
            ]
        })
        .collect();
    out::table(
        &[
            "table",
            "column",
            "tenant",
            ">key id",
            ">suite",
            "key state",
            ">values",
        ],
        &rows,
    )?;
    Ok(Outcome::Done)
}

/// A row key as people read it: integers as they are; text, bytes and UUIDs hidden (they may
/// be an email or a patient number), as their `Debug` does.
/// A row key in the text output: [`RowKey`]'s rule, or in full when asked.
fn shown(key: &RowKey, full: bool) -> String {
    if full {
        key.full().to_string()
    } else {
        key.to_string()
    }
}

pub(super) fn verify<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    args: &VerifyArgs,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    store.load_and_install(conn)?;
    let mut ok = true;
    let mut reports = Vec::new();
    for m in models {
        let r = jobs::verify(conn, m, args.sample)?;
        ok &= r.ok();
        if args.json {
            let bad: Vec<_> = r
                .unopenable
                .iter()
                .map(|u| json!({"row": u.key.full().to_string(), "column": u.column, "reason": format!("{:?}", u.reason)}))
                .collect();
            reports.push(json!({
                "table": r.table, "schema": r.schema, "values": r.values, "checked": r.checked,
                "unopenable": r.unopenable_total(), "listed": bad,
            }));
        } else {
            let table = m.display_name();
            for u in &r.unopenable {
                out::line(&format!(
                    "{table} row {}, column {}: {} ({:?})",
                    shown(&u.key, args.show_keys),
                    u.column,
                    u.reason.describe(),
                    u.reason
                ))?;
            }
            out::line(&format!(
                "{table}: {} values stored, {} opened and checked, {} do not open",
                r.values,
                r.checked,
                r.unopenable_total()
            ))?;
        }
    }
    if args.json {
        out::json(&json!({ "verify": reports, "ok": ok }))?;
    }
    Ok(if ok { Outcome::Done } else { Outcome::Findings })
}

pub(super) fn check<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    args: &CheckArgs,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    let mut problems: Vec<serde_json::Value> = Vec::new();
    let mut lines = Vec::new();
    // Unwrapping every key is the reachability test of every KEK (and the key table's MACs).
    match store.load(conn) {
        Ok((_, report)) => {
            for (tenant, kek) in &report.unavailable {
                lines.push(format!(
                    "tenant {tenant}: its KEK {kek} does not unwrap its keys"
                ));
                problems.push(json!({"problem": "tenant_kek_unavailable", "tenant": tenant.to_string(), "kek_ref": kek}));
            }
        }
        Err(e) => {
            lines.push(format!("the keys do not load: {e}"));
            problems.push(json!({"problem": "keys_do_not_load", "error": e.to_string()}));
        }
    }
    // Key ages from authenticated records only: one UPDATE of a timestamp must not silence
    // the alarm. A table whose records do not authenticate was reported above.
    let (keys, verified) = match store.verified_keys(conn) {
        Ok(keys) => (keys, true),
        Err(e) => {
            lines.push(format!(
                "key ages are read without authentication: the records do not verify ({e})"
            ));
            problems.push(json!({"problem": "records_unverified", "error": e.to_string()}));
            (list_keys(conn)?, false)
        }
    };
    // Counted only on records that verified: unverified ones were reported just above.
    let unauthenticated = keys.iter().filter(|k| !k.timestamps_authenticated).count();
    if verified && unauthenticated > 0 {
        lines.push(format!(
            "{unauthenticated} key record(s) do not authenticate their timestamps (written before \
             0.2, or not authenticated at all): their ages are not to be trusted; `keys rewrap` \
             re-authenticates every record"
        ));
        problems.push(json!({"problem": "timestamps_unauthenticated", "records": unauthenticated}));
    }
    for reused in reused_wrap_nonces(conn)? {
        let ids: Vec<u32> = reused.key_ids.iter().map(|k| k.get()).collect();
        lines.push(format!(
            "keys {ids:?} were wrapped under {} with one nonce (a fork or a restored snapshot, before 0.2): `keys rewrap` to a new KEK, then rotate these keys and re-seal (docs/KEYS.md)",
            reused.kek_ref
        ));
        problems.push(
            json!({"problem": "wrap_nonce_reused", "kek_ref": reused.kek_ref, "key_ids": ids}),
        );
    }
    let values = super::keys::values_per_key(conn, models)?;
    let policy = KeyPolicy {
        max_age: args.max_key_age,
        retired_grace: args.retired_grace,
    };
    for breach in policy.check(&keys, &values, out::now()) {
        match breach {
            PolicyBreach::TooOld {
                key_id,
                tenant,
                age,
            } => {
                lines.push(format!(
                    "data key {key_id} (tenant {}) is {} old, over the {} policy: `keys rotate` then `jobs rotate`",
                    tenant.as_deref().unwrap_or("-"),
                    out::age(age.as_secs()),
                    out::age(args.max_key_age.as_secs())
                ));
                problems.push(json!({"problem": "key_too_old", "key_id": key_id.get(), "tenant": tenant, "age_secs": age.as_secs()}));
            }
            PolicyBreach::RetiredInUse {
                key_id,
                tenant,
                retired_for,
                values,
            } => {
                lines.push(format!(
                    "data key {key_id} (tenant {}) was retired {} ago and still seals {values} values: run `jobs rotate`",
                    tenant.as_deref().unwrap_or("-"),
                    out::age(retired_for.as_secs())
                ));
                problems.push(json!({"problem": "retired_key_in_use", "key_id": key_id.get(), "tenant": tenant, "retired_secs": retired_for.as_secs(), "values": values}));
            }
        }
    }
    let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
    if args.json {
        out::json(
            &json!({ "ok": problems.is_empty(), "active_keys": active, "problems": problems }),
        )?;
    } else if lines.is_empty() {
        out::line(&format!(
            "ok: {active} active keys, all within the policy, all load"
        ))?;
    } else {
        for l in &lines {
            out::line(l)?;
        }
    }
    Ok(if problems.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

pub(super) fn schema(
    models: &[ModelInfo],
    args: &SchemaArgs,
    connected: Option<&str>,
) -> Result<Outcome, CliError> {
    let dialect = match (args.backend, connected) {
        (Some(SchemaBackend::Sqlite), _) | (None, Some("sqlite")) => Dialect::Sqlite,
        (Some(SchemaBackend::Postgres), _) | (None, Some("postgres" | "postgresql")) => {
            Dialect::Postgres
        }
        (Some(SchemaBackend::Mysql), _) | (None, Some("mysql")) => Dialect::Mysql,
        _ => {
            return Err(CliError::Usage(
                "--backend sqlite|postgres|mysql is required (or a --database-url to take it from)"
                    .into(),
            ));
        }
    };
    let m = crate::schema::create(models, dialect)?;
    print_migration(&m, args)?;
    Ok(Outcome::Done)
}

/// `schema --alter`: what the connected database lacks, and what it has wrong.
pub(super) fn schema_alter<C>(
    conn: &mut C,
    models: &[ModelInfo],
    args: &SchemaArgs,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let a = crate::schema::alter(conn, models)?;
    print_migration(&a.migration, args)?;
    for p in &a.problems {
        let _ =
            std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("not altered: {p}\n"));
    }
    Ok(if a.problems.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

pub(super) fn schema_check<C>(
    conn: &mut C,
    models: &[ModelInfo],
    args: &SchemaArgs,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let found = crate::schema::check(conn, models)?;
    if args.json {
        let found: Vec<String> = found.iter().map(ToString::to_string).collect();
        out::json(&json!({ "mismatches": found, "ok": found.is_empty() }))?;
    } else if found.is_empty() {
        out::line(&format!(
            "{} table(s): every encrypted and index column and index is in place",
            models.len()
        ))?;
    } else {
        for m in &found {
            out::line(&m.to_string())?;
        }
    }
    Ok(if found.is_empty() {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

/// The arguments of `index-leakage`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct LeakageArgs {
    /// Output as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn index_leakage<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    args: &LeakageArgs,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    use crate::index::IndexVerdict;
    store.load_and_install(conn)?;
    let mut findings = 0usize;
    let mut rows = Vec::new();
    let mut listed = Vec::new();
    for m in models {
        for l in jobs::index_leakage(conn, m)? {
            let advice = match l.verdict {
                IndexVerdict::Ok => "ok".to_owned(),
                IndexVerdict::LeaksMore { bits, max_bits } => format!(
                    "leaks more: {bits} bits tell values apart; use bits = {} (at most {max_bits}) \
                     through a new index version, `version`/`previous` (docs/KEYS.md)",
                    l.plan.recommended_bits
                ),
                IndexVerdict::TooManyCandidates { bits, min_bits } => format!(
                    "too many candidates: {bits} bits; use at least {min_bits} through a new \
                     index version"
                ),
            };
            if l.verdict != IndexVerdict::Ok {
                findings += 1;
            }
            let tenant = l.tenant.clone().unwrap_or_else(|| "-".into());
            listed.push(json!({
                "table": m.table, "index": l.index_column, "tenant": l.tenant,
                "rows": l.rows, "distinct_values": l.distinct_values,
                "distinct_index_values": l.distinct_index_values, "unreadable": l.unreadable,
                "recommended_bits": l.plan.recommended_bits,
                "verdict": format!("{:?}", l.verdict),
            }));
            rows.push(vec![
                m.table.to_owned(),
                l.index_column.to_owned(),
                tenant,
                l.rows.to_string(),
                l.distinct_values.to_string(),
                l.unreadable.to_string(),
                advice,
            ]);
        }
    }
    if args.json {
        out::json(&json!({ "indexes": listed, "ok": findings == 0 }))?;
    } else {
        out::table(
            &[
                "table",
                "index",
                "tenant",
                "rows",
                "distinct",
                "unreadable",
                "verdict",
            ],
            &rows,
        )?;
    }
    Ok(if findings == 0 {
        Outcome::Done
    } else {
        Outcome::Findings
    })
}

fn print_migration(m: &crate::schema::Migration, args: &SchemaArgs) -> Result<(), CliError> {
    if args.json {
        out::json(&json!({ "up": m.up, "down": m.down }))?;
    } else {
        for s in if args.down { &m.down } else { &m.up } {
            out::line(&format!("{s};"))?;
        }
    }
    Ok(())
}
