//! Background jobs over encrypted columns. So far: re-sealing rows after a data-key rotation.
//!
//! [`rotate_data_keys`] finds the rows of one encrypted column whose header names a retired key
//! (by the key-id bytes, in SQL: nothing is decrypted to find them), walks them in primary-key
//! order (keyset pagination, never `OFFSET`), re-seals each value under its tenant's primary key
//! and writes it back with a compare-and-swap (`WHERE pk = ? AND col = <old bytes>`), so an
//! application write that lands in between is never overwritten. Each batch commits together
//! with its checkpoint in `encrypted_types_jobs`, so a killed job resumes after its last
//! committed batch. Work can be split across workers by primary-key range.

use diesel::connection::LoadConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary};

use crate::Error;
use crate::format;
use crate::key::KeyId;
use crate::keyring::Keyring;
use crate::model::ModelInfo;
use crate::store::KeyTable;

diesel::table! {
    /// Checkpoints of the jobs (`migrations/<backend>/..._encrypted_types_jobs`).
    encrypted_types_jobs (job) {
        /// The job's name: model, column, primary-key range, worker.
        job -> Text,
        /// Rows with a primary key up to here are done.
        last_pk -> BigInt,
        /// Rows re-sealed so far.
        rows_done -> BigInt,
        /// Unix seconds.
        updated_at -> BigInt,
    }
}

use encrypted_types_jobs as jobs;

/// How to run [`rotate_data_keys`].
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Rows per batch (one transaction each).
    pub batch: usize,
    /// Only rows with `from <= pk < to`: one worker's share.
    pub range: (i64, i64),
    /// Stop after this many batches (time-slicing, tests); `None` runs to the end.
    pub max_batches: Option<u64>,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            range: (i64::MIN, i64::MAX),
            max_batches: None,
        }
    }
}

/// Progress after each committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The column being re-sealed.
    pub column: &'static str,
    /// Values re-sealed so far in this column (over every run of the job).
    pub rows_done: u64,
    /// Values an application changed between our read and our write: left as they are.
    pub conflicts: u64,
    /// The checkpoint.
    pub last_pk: i64,
}

/// What [`rotate_data_keys`] did in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotateReport {
    /// Values re-sealed in this run.
    pub resealed: u64,
    /// Compare-and-swap misses (concurrent writes), left untouched.
    pub conflicts: u64,
    /// Batches committed.
    pub batches: u64,
    /// Whether every column reached the end of the range.
    pub finished: bool,
}

/// A row read by [`reindex`]: primary key, sealed value, stored index.
#[derive(QueryableByName, Debug)]
#[doc(hidden)]
pub struct PkValueIndex {
    #[diesel(sql_type = BigInt)]
    pub(crate) pk: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<Binary>)]
    pub(crate) v: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Binary>)]
    pub(crate) i: Option<Vec<u8>>,
}

/// A row read by [`encrypt_column`]: primary key, stored bytes, the row's tenant as text.
#[derive(QueryableByName, Debug)]
#[doc(hidden)]
pub struct PkLegacy {
    #[diesel(sql_type = BigInt)]
    pk: i64,
    #[diesel(sql_type = Binary)]
    v: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    t: Option<String>,
}

/// The SQL the jobs need, per backend.
pub trait JobTable: KeyTable {
    /// `$n` or `?`.
    #[doc(hidden)]
    fn placeholder(n: usize) -> String;
    /// `CAST(expr AS BIGINT)` in the backend's words.
    #[doc(hidden)]
    fn as_bigint(expr: &str) -> String;
    /// Runs a batch select: `(pk, value)` rows.
    #[doc(hidden)]
    fn select_batch<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        sql: String,
        after: i64,
        before: i64,
    ) -> QueryResult<Vec<(i64, Vec<u8>)>>;
    /// Runs a select of `(pk, value, index)` rows.
    #[doc(hidden)]
    fn select_indexed<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        sql: String,
        after: i64,
        before: i64,
    ) -> QueryResult<Vec<PkValueIndex>>;
    /// SQL true when `col` does not start like a version 1 sealed value.
    #[doc(hidden)]
    fn not_sealed(col: &str) -> String;
    /// `CAST(expr AS <text>)`.
    #[doc(hidden)]
    fn as_text(expr: &str) -> String;
    /// Runs a select of `(pk, value, tenant)` rows.
    #[doc(hidden)]
    fn select_legacy<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        sql: String,
        after: i64,
        before: i64,
    ) -> QueryResult<Vec<PkLegacy>>;
    /// Runs `UPDATE ... SET a = ?, b = ? ... WHERE pk = ? AND col = ?` with `values` bound in
    /// order; returns rows changed.
    #[doc(hidden)]
    fn cas_many<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        sql: String,
        values: &[Vec<u8>],
        pk: i64,
        old: &[u8],
    ) -> QueryResult<usize>;
    /// Runs a compare-and-swap update; returns rows changed.
    #[doc(hidden)]
    fn cas<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        sql: String,
        new: &[u8],
        pk: i64,
        old: &[u8],
    ) -> QueryResult<usize>;
    /// Reads a checkpoint.
    #[doc(hidden)]
    fn checkpoint<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        job: &str,
    ) -> QueryResult<Option<(i64, i64)>>;
    /// Writes a checkpoint.
    #[doc(hidden)]
    fn save_checkpoint<C: LoadConnection<Backend = Self>>(
        conn: &mut C,
        job: &str,
        last_pk: i64,
        rows_done: i64,
    ) -> QueryResult<()>;
}

#[derive(QueryableByName)]
struct PkValue {
    #[diesel(sql_type = BigInt)]
    pk: i64,
    #[diesel(sql_type = Binary)]
    v: Vec<u8>,
}

macro_rules! job_table {
    ($db:ty, placeholder = $ph:expr, bigint = $cast:literal, text = $text:literal, not_sealed = $ns:expr) => {
        impl JobTable for $db {
            fn not_sealed(col: &str) -> String {
                let f: fn(&str) -> String = $ns;
                f(col)
            }

            fn as_text(expr: &str) -> String {
                format!("CAST({expr} AS {})", $text)
            }

            fn select_legacy<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                sql: String,
                after: i64,
                before: i64,
            ) -> QueryResult<Vec<PkLegacy>> {
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(after)
                    .bind::<BigInt, _>(before)
                    .load(conn)
            }

            fn cas_many<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                sql: String,
                values: &[Vec<u8>],
                pk: i64,
                old: &[u8],
            ) -> QueryResult<usize> {
                let mut q = diesel::sql_query(sql).into_boxed();
                for v in values {
                    q = q.bind::<Binary, _>(v.clone());
                }
                q.bind::<BigInt, _>(pk)
                    .bind::<Binary, _>(old.to_vec())
                    .execute(conn)
            }

            fn placeholder(n: usize) -> String {
                let f: fn(usize) -> String = $ph;
                f(n)
            }

            fn as_bigint(expr: &str) -> String {
                format!("CAST({expr} AS {})", $cast)
            }

            fn select_batch<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                sql: String,
                after: i64,
                before: i64,
            ) -> QueryResult<Vec<(i64, Vec<u8>)>> {
                let rows: Vec<PkValue> = diesel::sql_query(sql)
                    .bind::<BigInt, _>(after)
                    .bind::<BigInt, _>(before)
                    .load(conn)?;
                Ok(rows.into_iter().map(|r| (r.pk, r.v)).collect())
            }

            fn select_indexed<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                sql: String,
                after: i64,
                before: i64,
            ) -> QueryResult<Vec<PkValueIndex>> {
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(after)
                    .bind::<BigInt, _>(before)
                    .load(conn)
            }

            fn cas<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                sql: String,
                new: &[u8],
                pk: i64,
                old: &[u8],
            ) -> QueryResult<usize> {
                diesel::sql_query(sql)
                    .bind::<Binary, _>(new)
                    .bind::<BigInt, _>(pk)
                    .bind::<Binary, _>(old)
                    .execute(conn)
            }

            fn checkpoint<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                job: &str,
            ) -> QueryResult<Option<(i64, i64)>> {
                jobs::table
                    .find(job)
                    .select((jobs::last_pk, jobs::rows_done))
                    .first(conn)
                    .optional()
            }

            fn save_checkpoint<C: LoadConnection<Backend = Self>>(
                conn: &mut C,
                job: &str,
                last_pk: i64,
                rows_done: i64,
            ) -> QueryResult<()> {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let n = diesel::update(jobs::table.find(job))
                    .set((
                        jobs::last_pk.eq(last_pk),
                        jobs::rows_done.eq(rows_done),
                        jobs::updated_at.eq(at),
                    ))
                    .execute(conn)?;
                if n == 0 {
                    diesel::insert_into(jobs::table)
                        .values((
                            jobs::job.eq(job),
                            jobs::last_pk.eq(last_pk),
                            jobs::rows_done.eq(rows_done),
                            jobs::updated_at.eq(at),
                        ))
                        .execute(conn)?;
                }
                Ok(())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
job_table!(
    diesel::sqlite::Sqlite,
    placeholder = |_| "?".to_owned(),
    bigint = "BIGINT",
    text = "TEXT",
    not_sealed = |c| format!("substr({c}, 1, 2) <> X'0101'")
);
#[cfg(feature = "postgres")]
job_table!(
    diesel::pg::Pg,
    placeholder = |n| format!("${n}"),
    bigint = "BIGINT",
    text = "TEXT",
    not_sealed = |c| format!("substring({c} from 1 for 2) <> '\\x0101'::bytea")
);
#[cfg(feature = "mysql")]
job_table!(
    diesel::mysql::Mysql,
    placeholder = |_| "?".to_owned(),
    bigint = "SIGNED",
    text = "CHAR",
    not_sealed = |c| format!("SUBSTRING({c}, 1, 2) <> X'0101'")
);

/// Re-seals every value of `model` that is sealed with a retired key of the installed keyring
/// (after `KeyStore::rotate_data_key` and a reload), column by column, in batches. Resumes from
/// the checkpoints of a previous run with the same `job` name and range.
///
/// `on_batch` is called after each committed batch: a progress bar, a log line, an event.
///
/// # Errors
/// [`Error::NoKeyring`], [`Error::Store`], and the errors of opening a stored value (a row that
/// does not authenticate stops the job, untouched, so it can be looked at).
pub fn rotate_data_keys<C>(
    conn: &mut C,
    model: &ModelInfo,
    job: &str,
    options: &RotateOptions,
    mut on_batch: impl FnMut(&Progress),
) -> Result<RotateReport, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    type B<C> = <C as Connection>::Backend;
    let keyring = Keyring::current().ok_or(Error::NoKeyring)?;
    let retired = keyring.retired_key_ids();
    let mut report = RotateReport {
        finished: true,
        ..RotateReport::default()
    };
    if retired.is_empty() {
        return Ok(report);
    }
    let pk = primary_key(model)?;
    let (table, pkq) = (B::<C>::quote(model.table), B::<C>::quote(pk));
    for column in model.columns {
        let col = B::<C>::quote(column.column);
        let select = format!(
            "SELECT {} AS pk, {col} AS v FROM {table} WHERE {pkq} > {} AND {pkq} < {} AND {} ORDER BY {pkq} LIMIT {}",
            B::<C>::as_bigint(&pkq),
            B::<C>::placeholder(1),
            B::<C>::placeholder(2),
            B::<C>::key_id_in(&col, &retired),
            options.batch.max(1),
        );
        let cas = format!(
            "UPDATE {table} SET {col} = {} WHERE {pkq} = {} AND {col} = {}",
            B::<C>::placeholder(1),
            B::<C>::placeholder(2),
            B::<C>::placeholder(3),
        );
        let pass = Pass {
            job,
            target: column.column,
            model,
            options,
        };
        let finished = run_pass(
            conn,
            &pass,
            &mut report,
            &mut on_batch,
            |conn, after, before| {
                let rows = B::<C>::select_batch(conn, select.clone(), after, before)?;
                let Some(&(last, _)) = rows.last() else {
                    return Ok(None);
                };
                // Re-seal outside the transaction: it is pure computation.
                let mut updates = Vec::with_capacity(rows.len());
                for (id, old) in rows {
                    if let Some(new) = format::reseal(
                        &keyring,
                        model.table,
                        column.column,
                        column.value_type,
                        &old,
                    )? {
                        updates.push((id, old, new));
                    }
                }
                Ok(Some((last, updates)))
            },
            |conn, (id, old, new)| B::<C>::cas(conn, cas.clone(), new, *id, old),
        )?;
        if !finished {
            report.finished = false;
            break;
        }
    }
    Ok(report)
}

fn primary_key(model: &ModelInfo) -> Result<&'static str, Error> {
    model
        .primary_key
        .first()
        .copied()
        .ok_or_else(|| Error::Store(format!("model {} has no primary key", model.table)))
}

/// One pass of a job over one column: what it is named after in the checkpoint table.
struct Pass<'a> {
    job: &'a str,
    /// The column (or index column) the pass writes.
    target: &'static str,
    model: &'a ModelInfo,
    options: &'a RotateOptions,
}

/// The loop every job shares: resume from the checkpoint, fetch and prepare a batch after it
/// (`next`, outside any transaction), then in one transaction apply each compare-and-swap
/// update (`apply`: rows changed, 0 when an application write won) and save the checkpoint;
/// report the batch. Returns whether the range was finished (`false` when `max_batches` stopped
/// it).
fn run_pass<C, U>(
    conn: &mut C,
    pass: &Pass<'_>,
    report: &mut RotateReport,
    on_batch: &mut impl FnMut(&Progress),
    mut next: impl FnMut(&mut C, i64, i64) -> Result<Option<(i64, Vec<U>)>, Error>,
    mut apply: impl FnMut(&mut C, &U) -> QueryResult<usize>,
) -> Result<bool, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    type B<C> = <C as Connection>::Backend;
    let (from, to) = pass.options.range;
    let name = format!(
        "{}:{}.{}:{from}..{to}",
        pass.job, pass.model.table, pass.target
    );
    let (mut last_pk, mut rows_done) =
        B::<C>::checkpoint(conn, &name)?.unwrap_or((from.saturating_sub(1), 0));
    let mut batches = 0u64;
    loop {
        if pass.options.max_batches.is_some_and(|max| batches >= max) {
            return Ok(false);
        }
        let Some((batch_last, updates)) = next(conn, last_pk, to)? else {
            return Ok(true);
        };
        let (done, missed) = conn.transaction(|conn| -> Result<(u64, u64), Error> {
            let (mut ok, mut missed) = (0u64, 0u64);
            for u in &updates {
                match apply(conn, u)? {
                    0 => missed += 1,
                    _ => ok += 1,
                }
            }
            let total = rows_done.saturating_add(i64::try_from(ok).unwrap_or(i64::MAX));
            B::<C>::save_checkpoint(conn, &name, batch_last, total)?;
            Ok((ok, missed))
        })?;
        // Whatever the updates held (old ciphertext, legacy plaintext) goes before the next batch.
        drop(updates);
        last_pk = batch_last;
        rows_done = rows_done.saturating_add(i64::try_from(done).unwrap_or(i64::MAX));
        batches += 1;
        report.batches += 1;
        report.resealed += done;
        report.conflicts += missed;
        report_batch(
            pass.job,
            on_batch,
            Progress {
                column: pass.target,
                rows_done: u64::try_from(rows_done).unwrap_or(0),
                conflicts: report.conflicts,
                last_pk,
            },
        );
    }
}

/// The verification scan: for every data key of the installed keyring (and every destroyed key
/// it knows of), how many values of each encrypted column of `model` it sealed, counted in SQL
/// from the header bytes. After a finished rotation, retired keys count zero.
///
/// # Errors
/// [`Error::NoKeyring`], [`Error::Store`].
pub fn key_counts<C>(
    conn: &mut C,
    model: &ModelInfo,
) -> Result<Vec<(&'static str, KeyId, u64)>, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let keyring = Keyring::current().ok_or(Error::NoKeyring)?;
    let mut out = Vec::new();
    for column in model.columns {
        let one = ModelInfo {
            columns: std::slice::from_ref(column),
            ..*model
        };
        for id in keyring.key_ids() {
            let n = crate::store::count_rows_with_keys(conn, &[one], &[id])?;
            if n > 0 {
                out.push((column.column, id, n));
            }
        }
    }
    Ok(out)
}

/// Recomputes every blind index of `model` with its current parameters (after a new index
/// version, or a change of normalizers), in checkpointed batches by primary key. Each index is
/// written with a compare-and-swap on the value it was computed from (`WHERE pk = ? AND col =
/// <the sealed value read>`), so an application write of the field, which writes its own index,
/// always wins. While it runs, declare `blind_index(version = N, previous = N - 1)` so lookups
/// match both versions; remove `previous` once it has finished.
///
/// # Errors
/// As [`rotate_data_keys`].
pub fn reindex<C>(
    conn: &mut C,
    model: &ModelInfo,
    job: &str,
    options: &RotateOptions,
    mut on_batch: impl FnMut(&Progress),
) -> Result<RotateReport, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    type B<C> = <C as Connection>::Backend;
    let keyring = Keyring::current().ok_or(Error::NoKeyring)?;
    let pk = primary_key(model)?;
    let mut report = RotateReport {
        finished: true,
        ..RotateReport::default()
    };
    let (table, pkq) = (B::<C>::quote(model.table), B::<C>::quote(pk));
    for column in model.columns {
        for params in column.indexes {
            let (col, idx) = (
                B::<C>::quote(column.column),
                B::<C>::quote(params.index_column),
            );
            let select = format!(
                "SELECT {} AS pk, {col} AS v, {idx} AS i FROM {table} WHERE {pkq} > {} AND {pkq} < {} ORDER BY {pkq} LIMIT {}",
                B::<C>::as_bigint(&pkq),
                B::<C>::placeholder(1),
                B::<C>::placeholder(2),
                options.batch.max(1),
            );
            let cas = format!(
                "UPDATE {table} SET {idx} = {} WHERE {pkq} = {} AND {col} = {}",
                B::<C>::placeholder(1),
                B::<C>::placeholder(2),
                B::<C>::placeholder(3),
            );
            let pass = Pass {
                job,
                target: params.index_column,
                model,
                options,
            };
            let finished = run_pass(
                conn,
                &pass,
                &mut report,
                &mut on_batch,
                |conn, after, before| {
                    let rows = B::<C>::select_indexed(conn, select.clone(), after, before)?;
                    let Some(last) = rows.last().map(|r| r.pk) else {
                        return Ok(None);
                    };
                    let mut updates = Vec::new();
                    for row in rows {
                        let Some(value) = row.v else { continue };
                        let (plain, tenant) = format::open_raw(
                            &keyring,
                            model.table,
                            column.column,
                            column.value_type,
                            &value,
                        )?;
                        let index = params.compute_raw(
                            &keyring,
                            tenant.as_ref(),
                            column.value_type,
                            &plain,
                        )?;
                        if row.i.as_deref() != Some(index.as_slice()) {
                            updates.push((row.pk, value, index));
                        }
                    }
                    Ok(Some((last, updates)))
                },
                |conn, (id, value, index)| B::<C>::cas(conn, cas.clone(), index, *id, value),
            )?;
            if !finished {
                report.finished = false;
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// The backfill of a column that held plaintext (see [`crate::migration`]): seals every value of
/// `model`'s `column` that is not yet a sealed value, with the row's tenant key, writes its
/// blind indexes with it, in checkpointed compare-and-swap batches by primary key. An
/// application write that lands in between (and seals the value itself) wins.
///
/// # Errors
/// [`Error::Store`] for an unknown column; [`Error::InvalidPlaintext`] for a legacy string that
/// is not UTF-8 (the job stops there, row untouched); as [`rotate_data_keys`] otherwise.
pub fn encrypt_column<C>(
    conn: &mut C,
    model: &ModelInfo,
    column: &str,
    job: &str,
    options: &RotateOptions,
    mut on_batch: impl FnMut(&Progress),
) -> Result<RotateReport, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    type B<C> = <C as Connection>::Backend;
    let keyring = Keyring::current().ok_or(Error::NoKeyring)?;
    let info = model
        .columns
        .iter()
        .find(|c| c.column == column)
        .ok_or_else(|| {
            Error::Store(format!(
                "{}.{column} is not an encrypted column",
                model.table
            ))
        })?;
    let pk = primary_key(model)?;
    let (table, pkq, col) = (
        B::<C>::quote(model.table),
        B::<C>::quote(pk),
        B::<C>::quote(info.column),
    );
    let tenant = model
        .tenant_column
        .map_or_else(|| "NULL".to_owned(), |t| B::<C>::as_text(&B::<C>::quote(t)));
    let select = format!(
        "SELECT {} AS pk, {col} AS v, {tenant} AS t FROM {table} WHERE {pkq} > {} AND {pkq} < {} \
         AND {col} IS NOT NULL AND {} ORDER BY {pkq} LIMIT {}",
        B::<C>::as_bigint(&pkq),
        B::<C>::placeholder(1),
        B::<C>::placeholder(2),
        B::<C>::not_sealed(&col),
        options.batch.max(1),
    );
    let mut sets = vec![format!("{col} = {}", B::<C>::placeholder(1))];
    for (i, params) in info.indexes.iter().enumerate() {
        sets.push(format!(
            "{} = {}",
            B::<C>::quote(params.index_column),
            B::<C>::placeholder(i + 2)
        ));
    }
    let n = sets.len();
    let cas = format!(
        "UPDATE {table} SET {} WHERE {pkq} = {} AND {col} = {}",
        sets.join(", "),
        B::<C>::placeholder(n + 1),
        B::<C>::placeholder(n + 2),
    );
    let mut report = RotateReport {
        finished: true,
        ..RotateReport::default()
    };
    let pass = Pass {
        job,
        target: info.column,
        model,
        options,
    };
    report.finished = run_pass(
        conn,
        &pass,
        &mut report,
        &mut on_batch,
        |conn, after, before| {
            let rows = B::<C>::select_legacy(conn, select.clone(), after, before)?;
            let Some(last) = rows.last().map(|r| r.pk) else {
                return Ok(None);
            };
            let mut updates = Vec::with_capacity(rows.len());
            for row in rows {
                // Legacy plaintext: wiped when the batch is done with it.
                let plain = zeroize::Zeroizing::new(row.v);
                let tenant = row.t.map(crate::TenantId::from);
                if info.value_type == "string" && std::str::from_utf8(&plain).is_err() {
                    return Err(Error::InvalidPlaintext {
                        type_name: "string",
                    });
                }
                let mut values = vec![format::seal_raw(
                    &keyring,
                    model.table,
                    info.column,
                    info.value_type,
                    tenant.as_ref(),
                    &plain,
                )?];
                for params in info.indexes {
                    values.push(params.compute_raw(
                        &keyring,
                        tenant.as_ref(),
                        info.value_type,
                        &plain,
                    )?);
                }
                updates.push((row.pk, plain, values));
            }
            Ok(Some((last, updates)))
        },
        |conn, (id, old, values)| B::<C>::cas_many(conn, cas.clone(), values, *id, old),
    )?;
    Ok(report)
}

/// The verification of a plaintext migration: how many values of `model`'s `column` are still
/// not sealed (counted in SQL). Stop the fallback when it is zero.
///
/// # Errors
/// [`Error::Store`].
pub fn count_plaintext<C>(conn: &mut C, model: &ModelInfo, column: &str) -> Result<u64, Error>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    type B<C> = <C as Connection>::Backend;
    let col = B::<C>::quote(column);
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {col} IS NOT NULL AND {}",
        B::<C>::quote(model.table),
        B::<C>::not_sealed(&col)
    );
    let n = B::<C>::count(conn, sql)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Reports a committed batch: a structured `tracing` event for services, then the caller's
/// callback (a progress bar, a log line).
fn report_batch<F: FnMut(&Progress)>(job: &str, on_batch: &mut F, progress: Progress) {
    tracing::info!(
        target: "encrypted_types::jobs",
        event = "batch",
        job,
        column = progress.column,
        rows_done = progress.rows_done,
        conflicts = progress.conflicts,
        last_pk = progress.last_pk,
    );
    on_batch(&progress);
}
