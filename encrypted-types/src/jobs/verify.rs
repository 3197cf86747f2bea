//! The read-only check an operator or an auditor runs: does every stored value of a model open,
//! under its row's tenant, bound to its row, as the application would read it?

use super::{
    JobDb, JobTable, Query, RowKey, SkipReason, Table, foreign_tenant, inspect, job_err, scan,
};
use crate::Error;
use crate::db::sync_and_async;
use crate::format;
use crate::keyring::Keyring;
use crate::model::{ColumnInfo, ModelInfo};
use crate::store::KeyTable;

/// One stored value that does not open, as [`verify`] finds it: where it is and why, never
/// what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unopenable {
    /// The encrypted column.
    pub column: &'static str,
    /// The row's primary key. Its `Debug` prints integer keys and hides text and UUID keys.
    pub key: RowKey,
    /// Why it does not open.
    pub reason: SkipReason,
}

/// What [`verify`] found in one model's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The table.
    pub table: &'static str,
    /// Stored values read (non-`NULL`), over every encrypted column.
    pub values: u64,
    /// Values opened and checked: all of them, or the sample.
    pub checked: u64,
    /// The values among those checked that do not open, in column and key order.
    pub unopenable: Vec<Unopenable>,
}

impl VerifyReport {
    /// Whether every checked value opened.
    pub fn ok(&self) -> bool {
        self.unopenable.is_empty()
    }
}

sync_and_async! {
    /// Opens every stored value of every encrypted column of `model` (or, with `sample`, about
    /// that many per column, spread evenly over the table) exactly as the application reads
    /// it: under the key its header names, which must belong to the row's tenant, bound to its
    /// row for a `bind_row` model, and decoding as the field's type. Reports each value that
    /// fails by row key, column and reason; nothing is written, and no plaintext is kept.
    ///
    /// Values under a destroyed key (a shredded tenant) are reported as
    /// [`SkipReason::KeyDestroyed`]; legacy plaintext in a column being migrated, as whatever
    /// keeps it from opening (run [`count_plaintext`](super::count_plaintext) for a
    /// migration's progress).
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::PartialKeyring`], [`Error::UnpageableKey`],
    /// [`Error::Job`].
    pub fn verify / verify_async(model: &ModelInfo, sample: Option<u64>)
        -> Result<VerifyReport, Error> where Backend: JobTable => verify_on
}

async fn verify_on<D>(
    db: &mut D,
    model: &ModelInfo,
    sample: Option<u64>,
) -> Result<VerifyReport, Error>
where
    D: JobDb,
{
    let keyring = Keyring::complete()?;
    let t = inspect(db, model).await?;
    let mut report = VerifyReport {
        table: model.table,
        ..VerifyReport::default()
    };
    for c in model.columns {
        // Every `stride`-th value is opened: 1 without a sample.
        let stride = match sample {
            None => 1,
            Some(n) => count(db, &t, c.column).await?.div_ceil(n.max(1)).max(1),
        };
        let mut seen = 0u64;
        let mut failed = Vec::new();
        scan(db, &t, c.column, None, None, None, |row, value| {
            seen += 1;
            if !(seen - 1).is_multiple_of(stride) {
                return false;
            }
            report.checked += 1;
            if let Err(reason) = check(&keyring, &t, c, row, value) {
                failed.push(Unopenable {
                    column: c.column,
                    key: RowKey(row.key.clone()),
                    reason,
                });
            }
            false
        })
        .await?;
        report.values += seen;
        report.unopenable.extend(failed);
    }
    Ok(report)
}

/// The application's read of one value, without decoding into the field's Rust type: the
/// value's key belongs to the row's tenant, it is bound to the row if the model binds, it
/// authenticates, and its plaintext is a valid encoding of the column's type.
fn check(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    row: &super::Row,
    value: &[u8],
) -> Result<(), SkipReason> {
    if foreign_tenant(keyring, t, value, row.t.as_deref()) {
        return Err(SkipReason::TenantMismatch);
    }
    if let Some(r) = t.unbound(value) {
        return Err(r);
    }
    let bind = t.binding(row)?;
    let (plain, _) = format::open_raw(
        keyring,
        t.name,
        c.column,
        c.value_type,
        bind.as_ref(),
        value,
    )
    .map_err(|e| SkipReason::of(&e))?;
    (c.validate)(&plain).map_err(|e| SkipReason::of(&e))
}

/// Non-`NULL` values of `column`, counted in SQL.
async fn count<D>(db: &mut D, t: &Table, column: &str) -> Result<u64, Error>
where
    D: JobDb,
{
    let mut q = Query::new();
    q.sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {} IS NOT NULL",
        t.quoted,
        D::Backend::quote(column)
    );
    let n = D::Backend::count_q(db, &q).await.map_err(job_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
