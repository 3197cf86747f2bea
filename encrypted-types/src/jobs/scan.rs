//! Reading a table in key order: the keyset walk behind the jobs' scans and counts.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

/// The encrypted column of `model` whose SQL column is `column`.
pub(super) fn find_column(model: &ModelInfo, column: &str) -> Result<&'static ColumnInfo, Error> {
    find(
        model,
        |c| c.column == column,
        || format!("{}.{column} is not an encrypted column", model.table),
    )
}

/// The encrypted column whose values are sealed under context name `context` (a compound
/// index names its fields so).
pub(super) fn find_context(model: &ModelInfo, context: &str) -> Result<&'static ColumnInfo, Error> {
    find(
        model,
        |c| c.context == context,
        || {
            format!(
                "{}: no encrypted column has the context name {context}",
                model.table
            )
        },
    )
}

fn find(
    model: &ModelInfo,
    is: impl Fn(&ColumnInfo) -> bool,
    missing: impl FnOnce() -> String,
) -> Result<&'static ColumnInfo, Error> {
    model
        .columns
        .iter()
        .find(|c| is(c))
        .ok_or_else(|| Error::Store(missing()))
}

/// Counts the rows of `column` with `from <= key < to` (non-NULL values) for which `hit` holds,
/// in keyset pages: the closing checks, independent of the work they check.
pub(super) async fn scan<D>(
    db: &mut D,
    t: &Table,
    column: &str,
    index: Option<&str>,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
    mut hit: impl FnMut(&Row, &[u8]) -> bool,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let mut n = 0u64;
    let not_null = [format!("{} IS NOT NULL", D::Backend::quote(column))];
    walk(db, t, column, &[], index, &not_null, from, to, |mut row| {
        // Possibly legacy plaintext: wiped once looked at.
        let v = Zeroizing::new(row.v.take().unwrap_or_default());
        if hit(&row, &v) {
            n += 1;
        }
    })
    .await?;
    Ok(n)
}

/// Hands `each` every row of `t` with `from <= key < to` that meets `conds`, reading `column`
/// (and `more`, `index`), 2,000 rows a page in key order.
#[allow(clippy::too_many_arguments)] // the one keyset walk behind every read-only check
pub(super) async fn walk<D>(
    db: &mut D,
    t: &Table,
    column: &str,
    more: &[&str],
    index: Option<&str>,
    conds: &[String],
    from: Option<&RowKey>,
    to: Option<&RowKey>,
    mut each: impl FnMut(Row),
) -> Result<(), Error>
where
    D: JobDb,
{
    let mut after: Option<RowKey> = None;
    loop {
        let mut q = Query::new();
        let mut all = range_conds::<D::Backend>(&mut q, t, from, to, after.as_ref())?;
        all.extend_from_slice(conds);
        select::<D::Backend>(
            t,
            &D::Backend::quote(column),
            more,
            index,
            &all,
            &mut q,
            Some(2000),
        );
        let rows = D::Backend::load_rows(db, &q).await.map_err(job_err)?;
        let Some(last) = rows.last().map(|r| RowKey(r.key.clone())) else {
            return Ok(());
        };
        rows.into_iter().for_each(&mut each);
        after = Some(last);
    }
}

/// Values of `c` not known to be sealed: legacy plaintext, values under a key this keyring
/// does not hold, and values that look sealed but do not open.
pub(super) async fn scan_legacy<D>(
    db: &mut D,
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
) -> Result<u64, Error>
where
    D: JobDb,
{
    scan(db, t, c.column, None, from, to, |row, v| {
        // A row whose identity cannot be read is not done: `binding` fails, `None` is passed
        // and a bound value then fails to open.
        let bind = t.binding(row).ok().flatten();
        !matches!(
            legacy_state(keyring, t, c, v, bind.as_ref()),
            LegacyState::Done
        )
    })
    .await
}

/// Rows of `t` with `from <= key < to` whose `column` holds a value (a legacy column still
/// to migrate, or a column [`verify`] samples), counted in SQL.
pub(super) async fn count_not_null<D>(
    db: &mut D,
    t: &Table,
    column: &str,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let cond = format!("{} IS NOT NULL", D::Backend::quote(column));
    count_where(db, t, from, to, cond).await
}

/// Rows of `t` in `from..to` for which `cond` (SQL, no parameters) holds, counted in SQL.
pub(super) async fn count_where<D>(
    db: &mut D,
    t: &Table,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
    cond: String,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let mut q = Query::new();
    let mut conds = range_conds::<D::Backend>(&mut q, t, from, to, None)?;
    conds.push(cond);
    q.sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {}",
        t.quoted,
        conds.join(" AND ")
    );
    let n = D::Backend::count_q(db, &q).await.map_err(job_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
