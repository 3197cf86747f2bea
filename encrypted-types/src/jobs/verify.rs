//! The read-only check an operator or an auditor runs: does every stored value of a model open,
//! under its row's tenant, bound to its row, as the application would read it?

use std::collections::BTreeMap;

use super::{
    JobDb, JobTable, RowKey, SkipReason, Table, count_not_null, foreign_tenant, inspect, scan, walk,
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
    /// The row's primary key, every part in full. Its `Display` prints integer and UUID parts
    /// and hides text and binary ones (kind and length).
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
    /// The table's schema, when its model names one.
    pub schema: Option<&'static str>,
    /// Stored values read (non-`NULL`), over every encrypted column.
    pub values: u64,
    /// Values opened and checked: all of them, or the sample.
    pub checked: u64,
    /// The findings, column by column: the values that do not open, then the required
    /// `NULL`s, then the shadowing legacy values, each in key order; the first
    /// [`VerifyReport::MAX_LISTED`].
    pub unopenable: Vec<Unopenable>,
    /// Every one of them, counted by reason.
    pub by_reason: BTreeMap<SkipReason, u64>,
}

impl VerifyReport {
    /// At most this many [`Unopenable`] entries are listed; [`VerifyReport::by_reason`]
    /// counts them all.
    pub const MAX_LISTED: usize = 10_000;

    /// Whether every checked value opened and no required value is missing.
    pub fn ok(&self) -> bool {
        self.by_reason.is_empty()
    }

    /// Values that do not open, over every reason.
    pub fn unopenable_total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Counts one, and lists it while the list is short (`key` is built only then).
    fn record(&mut self, column: &'static str, key: impl FnOnce() -> RowKey, reason: SkipReason) {
        *self.by_reason.entry(reason).or_default() += 1;
        if self.unopenable.len() < Self::MAX_LISTED {
            self.unopenable.push(Unopenable {
                column,
                key: key(),
                reason,
            });
        }
    }
}

sync_and_async! {
    /// Opens every stored value of every encrypted column of `model` (or, with `sample`, that
    /// many per column, spread evenly over the table) exactly as the application reads
    /// it: under the key its header names, which must belong to the row's tenant, bound to its
    /// row for a `bind_row` model, and decoding as the field's type. Reports each value that
    /// fails by row key, column and reason; nothing is written, and no plaintext is kept.
    ///
    /// A `NULL` where the field is not optional is reported too ([`SkipReason::NoValue`]).
    /// Values under a destroyed key (a shredded tenant, until
    /// [`purge_tenant`](super::purge_tenant) removes its rows) are reported as
    /// [`SkipReason::KeyDestroyed`]. Bytes in a sealed column that are no sealed value are
    /// [`SkipReason::Plaintext`] (plaintext written around the model; in a column migrated in
    /// place, the legacy values the backfill has not sealed yet:
    /// [`count_plaintext`](super::count_plaintext) follows that migration). While a column is
    /// migrated from a legacy column, a row whose legacy column holds a value beside a sealed
    /// one is [`SkipReason::LegacyShadows`]: the application reads the legacy value. Each run
    /// leaves one `verify` event (target `encrypted_types::audit`) with the counts.
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
        schema: model.schema,
        ..VerifyReport::default()
    };
    let mut checked = 0u64;
    for c in model.columns {
        // `Some(n)`: an accumulator picks exactly min(n, count) values, evenly spread.
        let (every, total) = match sample {
            None => (1, 1),
            Some(n) => (n, count_not_null(db, &t, c.column, None, None).await?),
        };
        let mut acc = 0u64;
        let mut seen = 0u64;
        scan(db, &t, c.column, None, None, None, |row, value| {
            seen += 1;
            acc = acc.saturating_add(every);
            if acc < total {
                return false;
            }
            acc -= total;
            checked += 1;
            if let Err(reason) = check(&keyring, &t, c, row, value) {
                report.record(c.column, || RowKey(row.key.clone()), reason);
            }
            false
        })
        .await?;
        report.values += seen;
        if !c.nullable {
            missing(db, &t, c, &mut report).await?;
        }
        if let Some(legacy) = c.legacy {
            // Every such row, not a sample: each one is a value the application reads
            // without opening it.
            let conds = [c.column, legacy.column]
                .map(|col| format!("{} IS NOT NULL", D::Backend::quote(col)));
            walk(db, &t, c.column, &[], None, &conds, None, None, |row| {
                report.record(c.column, || RowKey(row.key), SkipReason::LegacyShadows);
            })
            .await?;
        }
    }
    report.checked = checked;
    tracing::info!(
        target: "encrypted_types::audit",
        event = "verify",
        table = model.display_name(),
        values = report.values,
        checked = report.checked,
        unopenable = report.unopenable_total(),
    );
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
    // A value cut inside its header is reported as whatever fails below, not as plaintext.
    if format::classify(keyring, value) == format::Stored::Legacy
        && !matches!(format::Header::parse(value), Err(Error::Truncated { .. }))
    {
        return Err(SkipReason::Plaintext);
    }
    if foreign_tenant(keyring, t, value, row.t.as_deref()) {
        return Err(SkipReason::TenantMismatch);
    }
    // Without a tenant column the application accepts only keys of no tenant (its
    // `verify_tenant(None)`), which `foreign_tenant` leaves to the tenant column.
    if !t.has_tenant
        && let Ok(h) = format::Header::parse(value)
        && let Ok(key) = keyring.key(h.key_id)
        && key.tenant().is_some()
    {
        return Err(SkipReason::TenantMismatch);
    }
    if let Some(r) = t.unbound(value) {
        return Err(r);
    }
    let bind = t.binding(row)?;
    let (plain, _) = format::open_raw(keyring, &t.site(c), bind.as_ref(), value)
        .map_err(|e| SkipReason::of(&e))?;
    (c.validate)(&plain).map_err(|e| match e {
        Error::InvalidPlaintext { .. } => SkipReason::InvalidPlaintext,
        e => SkipReason::of(&e),
    })
}

/// Records the rows whose `c` is `NULL`, and whose legacy column (while `c` is migrated) is
/// too: rows the application cannot read when the field is not optional.
async fn missing<D>(
    db: &mut D,
    t: &Table,
    c: &ColumnInfo,
    report: &mut VerifyReport,
) -> Result<(), Error>
where
    D: JobDb,
{
    let null = |column: &str| format!("{} IS NULL", D::Backend::quote(column));
    let conds: Vec<String> = std::iter::once(c.column)
        .chain(c.legacy.map(|l| l.column))
        .map(null)
        .collect();
    walk(db, t, c.column, &[], None, &conds, None, None, |row| {
        report.record(c.column, || RowKey(row.key), SkipReason::NoValue);
    })
    .await
}
