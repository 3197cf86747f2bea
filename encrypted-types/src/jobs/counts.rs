//! The verification counts (plaintext left, values per key) and the index leakage report.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

sync_and_async! {
    /// The verification of a plaintext migration: how many values of `model`'s `column` are not
    /// known to be sealed: legacy plaintext by [`format::classify`] (the test the fallback read and
    /// [`encrypt_column`] use), values under a key the keyring does not hold, and values that look
    /// sealed but do not open. Stop the fallback when it is zero.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::Store`], [`Error::UnpageableKey`], [`Error::Job`].
    pub fn count_plaintext / count_plaintext_async(model: &ModelInfo, column: &str)
        -> Result<u64, Error> where Backend: JobTable => count_plaintext_on
}

pub(super) async fn count_plaintext_on<D>(
    db: &mut D,
    model: &ModelInfo,
    column: &str,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let keyring = Keyring::complete()?;
    let info = find_column(model, column)?;
    let t = inspect(db, model).await?;
    let legacy = match info.legacy {
        Some(l) => count_not_null(db, &t, l.column, None, None).await?,
        None => 0,
    };
    Ok(legacy + scan_legacy(db, &keyring, &t, info, None, None).await?)
}

sync_and_async! {
    /// The verification scan: for every data key of the installed keyring, how many values of
    /// each encrypted column of `model` it sealed, counted in SQL from the header bytes. After a
    /// finished rotation, retired keys count zero.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::Store`].
    pub fn key_counts / key_counts_async(model: &ModelInfo)
        -> Result<Vec<(&'static str, KeyId, u64)>, Error> where Backend: JobTable => key_counts_on
}

pub(super) async fn key_counts_on<D>(
    db: &mut D,
    model: &ModelInfo,
) -> Result<Vec<(&'static str, KeyId, u64)>, Error>
where
    D: JobDb,
{
    let keyring = Keyring::complete()?;
    let known: std::collections::HashSet<KeyId> = keyring.key_ids().into_iter().collect();
    // The inventory's grouped counts (one query per column, whatever the number of keys),
    // summed over tenants and suites, in the model's column order.
    let mut sums: BTreeMap<(usize, KeyId), u64> = BTreeMap::new();
    for e in inventory::inventory_on(db, std::slice::from_ref(model)).await? {
        if let Content::Sealed { key_id, .. } = e.content {
            let column = model.columns.iter().position(|c| c.column == e.column);
            if let Some(column) = column.filter(|_| known.contains(&key_id)) {
                *sums.entry((column, key_id)).or_default() += e.values;
            }
        }
    }
    Ok(sums
        .into_iter()
        .filter_map(|((i, id), n)| model.columns.get(i).map(|c| (c.column, id, n)))
        .collect())
}

/// Reports a committed batch: a structured `tracing` event for services, then the caller's
/// callback (a progress bar, a log line).
pub(super) fn report_batch(job: &str, on_batch: &mut dyn FnMut(&Progress), progress: Progress) {
    tracing::info!(
        target: "encrypted_types::jobs",
        event = "batch",
        job,
        column = progress.column,
        rows_done = progress.rows_done,
        conflicts = progress.conflicts,
    );
    on_batch(&progress);
}

/// What one blind index of a table reveals today, for one tenant: [`index_leakage`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexLeakage {
    /// The index column.
    pub index_column: &'static str,
    /// The tenant, as text (`None` for values without a tenant).
    pub tenant: Option<String>,
    /// Rows with a value.
    pub rows: u64,
    /// Distinct stored index values: what a database reader sees.
    pub distinct_index_values: u64,
    /// Distinct normalized values (counted through a keyed hash, never held as plaintext).
    pub distinct_values: u64,
    /// Rows that could not be opened (destroyed or unknown keys, failed authentication).
    pub unreadable: u64,
    /// [`crate::index::plan`] for these rows and values.
    pub plan: crate::index::IndexPlan,
    /// The planner's verdict on the configured bits; `LeaksMore` names the bits to use.
    pub verdict: crate::index::IndexVerdict,
}

sync_and_async! {
    /// Leakage of every blind index of `model` on the live data, per tenant: rows, distinct index
    /// values, distinct values, and [`crate::index::plan`]'s verdict on the configured bits (an
    /// index that `LeaksMore` says which `bits` would keep within the bound). A compound index
    /// counts distinct tuples of its fields (rows with a NULL field have no index and are not
    /// counted). Decrypts every value once; nothing is written.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::UnpageableKey`], [`Error::Job`].
    pub fn index_leakage / index_leakage_async(model: &ModelInfo)
        -> Result<Vec<IndexLeakage>, Error> where Backend: JobTable => index_leakage_on
}

pub(super) async fn index_leakage_on<D>(
    db: &mut D,
    model: &ModelInfo,
) -> Result<Vec<IndexLeakage>, Error>
where
    D: JobDb,
{
    use std::collections::{BTreeMap, HashSet};
    #[derive(Default)]
    struct Tally {
        rows: u64,
        stored: HashSet<Vec<u8>>,
        values: HashSet<Vec<u8>>,
        unreadable: u64,
    }
    let keyring = Keyring::complete()?;
    let t = inspect(db, model).await?;
    let mut out = Vec::new();
    let mut report =
        |index_column: &'static str, bits: u16, by_tenant: BTreeMap<Option<String>, Tally>| {
            for (tenant, tally) in by_tenant {
                let distinct = tally.values.len() as u64;
                let plan = crate::index::plan(tally.rows, distinct);
                out.push(IndexLeakage {
                    index_column,
                    tenant,
                    rows: tally.rows,
                    distinct_index_values: tally.stored.len() as u64,
                    distinct_values: distinct,
                    unreadable: tally.unreadable,
                    verdict: plan.check(bits),
                    plan,
                });
            }
        };
    for c in model.columns {
        for params in c.indexes {
            // Distinct values are counted by a full-length index (a keyed hash) of each.
            let full = IndexParams {
                bits: 256,
                ..*params
            };
            let mut by_tenant: BTreeMap<Option<String>, Tally> = BTreeMap::new();
            scan(
                db,
                &t,
                c.column,
                Some(params.index_column),
                None,
                None,
                |row, v| {
                    let tally = by_tenant.entry(row.t.clone()).or_default();
                    tally.rows += 1;
                    if let Some(i) = &row.i {
                        tally.stored.insert(i.clone());
                    }
                    let bind = t.binding(row).ok().flatten();
                    match fresh_index(&keyring, &t, c, &full, v, row.t.as_deref(), bind.as_ref()) {
                        Ok(h) => {
                            tally.values.insert(h);
                        }
                        Err(_) => tally.unreadable += 1,
                    }
                    false
                },
            )
            .await?;
            report(params.index_column, params.bits, by_tenant);
        }
    }
    // Compound indexes: distinct tuples, counted the same way; rows with a NULL field have no
    // index and are not counted.
    for pass in compound_passes(model, |_| true)? {
        let Op::Compound { params, .. } = pass.op else {
            continue;
        };
        let full = CompoundParams {
            bits: 256,
            ..*params
        };
        let mut by_tenant: BTreeMap<Option<String>, Tally> = BTreeMap::new();
        walk(
            db,
            &t,
            pass.column.column,
            &pass.more(),
            Some(params.index_column),
            &[],
            None,
            None,
            |mut row| {
                // The first field again, possibly legacy plaintext: wiped.
                drop(Zeroizing::new(row.v.take()));
                if row.more.iter().any(Option::is_none) {
                    return;
                }
                let tally = by_tenant.entry(row.t.clone()).or_default();
                tally.rows += 1;
                if let Some(i) = &row.i {
                    tally.stored.insert(i.clone());
                }
                let bind = t.binding(&row).ok().flatten();
                match fresh_compound(
                    &keyring,
                    &t,
                    &full,
                    &row.more,
                    row.t.as_deref(),
                    bind.as_ref(),
                ) {
                    Ok(Some(h)) => {
                        tally.values.insert(h);
                    }
                    _ => tally.unreadable += 1,
                }
            },
        )
        .await?;
        report(params.index_column, params.bits, by_tenant);
    }
    Ok(out)
}
