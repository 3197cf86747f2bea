//! Background jobs over encrypted columns: re-sealing after a data-key rotation
//! ([`rotate_data_keys`]), recomputing blind indexes ([`reindex`]) and sealing a column that
//! held plaintext ([`encrypt_column`]).
//!
//! Every job works the same way, on any table Diesel supports:
//!
//! - **Any primary key.** The job reads the table's primary key from the database's catalogue
//!   (integer, text, binary, PostgreSQL `uuid`, any number of columns) and walks rows in key
//!   order with keyset pagination over the whole tuple (`a > ? OR (a = ? AND b > ?)`, written
//!   the same way for the three backends), never `OFFSET`. A table it cannot page correctly (no
//!   primary key, a float or decimal key, a key other than the model's, an SQLite key column
//!   holding mixed storage classes) is refused with [`Error::UnpageableKey`] before any write.
//! - **Compare-and-swap writes.** Each value is written back with `WHERE <key> AND col = <the
//!   bytes read>`, so an application write that lands in between wins. A miss is retried from
//!   a fresh read, so a value re-sealed by another job is still processed.
//! - **Units, checkpoints, leases.** A job is a set of units in `encrypted_types_jobs`: one
//!   column (or index) over one key range. Each batch commits together with its unit's
//!   checkpoint (the last key tuple, in [`RowKey::encode`]'s form) and renews the unit's lease,
//!   so a killed worker loses at most one uncommitted batch and another worker (or the same one
//!   restarted) takes the unit over. [`Scope::Parts`] splits a job into ranges that any number
//!   of worker processes claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL/MariaDB); the
//!   database is the coordinator.
//! - **A job's identity.** The job table records each unit's operation and target (the key
//!   set a rotation moves away from, the index version a reindex writes). Resuming a name for
//!   another operation or target is [`Error::JobMismatch`]; a job that had already finished says
//!   so in [`JobReport::already_finished`].
//! - **Finished means verified.** [`JobReport::finished`] is true only when every unit is done
//!   *and* an independent count finds nothing left: no value on a retired key (counted in SQL
//!   from the header bytes), no legacy plaintext ([`count_plaintext`]). Rows a job cannot
//!   process (a destroyed key, a value that does not authenticate, a legacy value that is not
//!   a valid encoding) are skipped and counted by reason in [`JobReport::skipped`], never
//!   written.
//! - **Sync or async.** With the `async` feature each job has an `_async` twin taking a
//!   diesel-async connection (`rotate_data_keys_async`, ...): the same implementation, awaited.

mod counts;
mod inventory;
mod key;
mod name;
mod options;
mod pass;
mod run;
mod scan;
mod sql;
mod status;
mod table;
mod unit;
mod verify;
mod write;

pub use counts::*;
pub use options::*;
#[allow(clippy::wildcard_imports)] // the engine's parts, as if in one module
use {pass::*, run::*, scan::*, table::*, unit::*, write::*};

use std::collections::BTreeMap;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::db::{Db, sync_and_async};

pub use crate::db::{Param, Query};
pub use crate::row_key::{FullKey, KeyPart, RowKey};
#[cfg(feature = "async")]
pub use inventory::inventory_async;
pub use inventory::{Content, InventoryEntry, inventory};
pub use key::{KeyColumn, KeyKind};
pub use name::{Operation, default_job_name};
pub use sql::{CatalogRow, JobTable, Row, StatusRow, TallyRow, UnitRow};
use sql::{alias, bind_alias};
#[cfg(feature = "async")]
pub use status::status_async;
pub use status::{JobStatus, status};
pub(crate) use table::catalogue_params;
#[cfg(feature = "async")]
pub use verify::verify_async;
pub use verify::{Unopenable, VerifyReport, verify};

/// A connection the jobs run on, sync or async.
trait JobDb: Db<Backend: JobTable> {}
impl<D: Db<Backend: JobTable>> JobDb for D {}

use crate::Error;
use crate::binding::{RowBinding, RowKind, RowPart};
use crate::format;
use crate::format::key::KeyId;
use crate::index::{CompoundParams, IndexParams};
use crate::keyring::Keyring;
use crate::model::{ColumnInfo, LegacyColumn, ModelInfo};
use crate::store::KeyTable;

sync_and_async! {
    /// Re-seals every value of `model` sealed with a retired key of the installed keyring (after
    /// `KeyStore::rotate_data_key` and a reload), or sealed in a suite older than the one this
    /// build writes (suite 1, AES-256-GCM), under its tenant's primary key in the current suite,
    /// column by column, in checkpointed compare-and-swap batches (see the [module docs](self)).
    ///
    /// The job's target is the set of retired keys and the suite: after another rotation, start
    /// a new job name.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::UnpageableKey`], [`Error::JobMismatch`], [`Error::Job`].
    pub fn rotate_data_keys / rotate_data_keys_async(model: &ModelInfo, job: &str, options: &JobOptions; on_batch)
        -> Result<JobReport, Error> where Backend: JobTable => rotate_data_keys_on
}

/// The suites a rotation of `c` looks for ([`format::older_suites`]); while the model only
/// prepares to adopt its schema, none that has the schema: such a value is not moved back.
fn older(model: &ModelInfo, c: &ColumnInfo, options: &JobOptions) -> Vec<[u8; 2]> {
    let sealing = model.site(c).sealing_schema();
    let preparing = model.schema.is_some() && sealing.is_none();
    format::older_suites(
        !model.bind_row.is_empty(),
        sealing.is_some(),
        options.bind_unbound,
    )
    .into_iter()
    .filter(|p| !(preparing && p.get(1).is_some_and(|&s| format::has_schema(s))))
    .collect()
}

async fn rotate_data_keys_on<D, F>(
    db: &mut D,
    model: &ModelInfo,
    job: &str,
    options: &JobOptions,
    on_batch: &mut F,
) -> Result<JobReport, Error>
where
    D: JobDb,
    F: FnMut(&Progress),
{
    let keyring = Keyring::complete()?;
    let mut retired = keyring.retired_key_ids();
    retired.sort();
    // Even with no retired key, values of an older suite are upgraded.
    let passes = model
        .columns
        .iter()
        .map(|c| Pass {
            column: c,
            op: Op::Rotate {
                retired: &retired,
                // Unbound values are looked for only when the job may bind them; otherwise a
                // retired key finds them, and they are skipped and reported.
                older: older(model, c, options),
            },
            writes: c.column,
            target: name::rotate_target(model, c, &retired),
        })
        .collect();
    start(db, model, job, options, &keyring, passes)
        .await?
        .run(db, on_batch)
        .await
}

sync_and_async! {
    /// Recomputes every blind index of `model` with its current parameters (after a new index
    /// version, or a change of normalizers or bits). Each index is written with a compare-and-swap
    /// on the value it was computed from, so an application write of the field, which writes its
    /// own index, always wins; a value re-sealed meanwhile by a rotation is read again. Rows that
    /// cannot be opened (a shredded tenant, a destroyed key) are skipped and counted.
    ///
    /// While it runs, declare `blind_index(version = N, previous = N - 1)` so lookups match both
    /// versions; remove `previous` once it has finished.
    ///
    /// # Errors
    /// As [`rotate_data_keys`].
    pub fn reindex / reindex_async(model: &ModelInfo, job: &str, options: &JobOptions; on_batch)
        -> Result<JobReport, Error> where Backend: JobTable => reindex_on
}

async fn reindex_on<D, F>(
    db: &mut D,
    model: &ModelInfo,
    job: &str,
    options: &JobOptions,
    on_batch: &mut F,
) -> Result<JobReport, Error>
where
    D: JobDb,
    F: FnMut(&Progress),
{
    let keyring = Keyring::complete()?;
    let mut passes = Vec::new();
    for c in model.columns {
        for params in c.indexes {
            passes.push(Pass {
                column: c,
                op: Op::Reindex { params },
                writes: params.index_column,
                target: name::reindex_target(model, c, params),
            });
        }
    }
    passes.extend(compound_passes(model, |_| true)?);
    start(db, model, job, options, &keyring, passes)
        .await?
        .run(db, on_batch)
        .await
}

/// The passes that recompute `model`'s compound indexes for which `wanted` holds. Refused
/// before any write when an index names a column the model does not encrypt.
fn compound_passes(
    model: &ModelInfo,
    wanted: impl Fn(&CompoundParams) -> bool,
) -> Result<Vec<Pass<'static>>, Error> {
    let mut passes = Vec::new();
    for params in model.compound.iter().filter(|p| wanted(p)) {
        if params.fields.is_empty() || params.fields.len() > crate::index::MAX_FIELDS {
            return Err(Error::InvalidIndex("a compound index has 1 to 8 fields"));
        }
        let mut first = None;
        let mut columns = Vec::with_capacity(params.fields.len());
        for f in params.fields {
            let c = find_context(model, f.column)?;
            first.get_or_insert(c);
            columns.push(c.column);
        }
        if let Some(column) = first {
            passes.push(Pass {
                column,
                op: Op::Compound { params, columns },
                writes: params.index_column,
                target: name::compound_target(model, params),
            });
        }
    }
    Ok(passes)
}

sync_and_async! {
    /// The backfill of a column that held plaintext (see [`crate::migration`]): seals every legacy
    /// value of `model`'s `column` (by [`format::classify`], the same test the fallback read
    /// uses) with the row's tenant key and writes its blind indexes with it, in checkpointed
    /// compare-and-swap batches. Legacy values are decode-checked first; an invalid one is skipped
    /// and reported, never sealed. An application write that lands in between wins.
    ///
    /// # Errors
    /// [`Error::Store`] for a column that is not encrypted; as [`rotate_data_keys`] otherwise.
    pub fn encrypt_column / encrypt_column_async(model: &ModelInfo, column: &str, job: &str, options: &JobOptions; on_batch)
        -> Result<JobReport, Error> where Backend: JobTable => encrypt_column_on
}

async fn encrypt_column_on<D, F>(
    db: &mut D,
    model: &ModelInfo,
    column: &str,
    job: &str,
    options: &JobOptions,
    on_batch: &mut F,
) -> Result<JobReport, Error>
where
    D: JobDb,
    F: FnMut(&Progress),
{
    let keyring = Keyring::complete()?;
    let info = find_column(model, column)?;
    // The compound indexes over this column need it sealed first: they are recomputed once
    // it is, by a second job (`<job>+indexes:<column>`), and the report covers both.
    let compound = compound_passes(model, |p| p.fields.iter().any(|f| f.column == info.context))?;
    // Named after the job and the column, so one job name used for several columns gets an
    // index phase per column; refused before any write if that name is too long.
    let index_job = format!("{job}+indexes:{column}");
    if !compound.is_empty() && index_job.len() > 150 {
        return Err(Error::Job(format!(
            "the index phase of this job would be named `{index_job}`, over 150 bytes: choose a shorter job name"
        )));
    }
    let passes = vec![match info.legacy {
        Some(legacy) => Pass {
            column: info,
            op: Op::Backfill { legacy },
            writes: info.column,
            target: name::encrypt_target(model, info),
        },
        None => Pass {
            column: info,
            op: Op::Encrypt,
            writes: info.column,
            target: name::encrypt_target(model, info),
        },
    }];
    let mut report = start(db, model, job, options, &keyring, passes)
        .await?
        .run(db, on_batch)
        .await?;
    if compound.is_empty() || !report.finished {
        return Ok(report);
    }
    let left = JobOptions {
        max_batches: options
            .max_batches
            .map(|m| m.saturating_sub(report.batches)),
        ..options.clone()
    };
    let indexes = start(db, model, &index_job, &left, &keyring, compound)
        .await?
        .run(db, on_batch)
        .await?;
    report.absorb(indexes);
    Ok(report)
}

/// After [`crate::store::KeyStore::shred_tenant`]: deletes the rows of `model` that belong to
/// `tenant`, `batch` rows per transaction, and returns how many it deleted. What shredding
/// made unreadable then leaves the table too, so a listing no longer meets it (read with
/// [`crate::Fallible`] meanwhile), and no ciphertext of the tenant stays in live rows. Copies in
/// backups, the WAL or binlog and replicas age out as `docs/KEYS.md` says.
///
/// It deletes only on positive, authenticated evidence, read afresh from the key table through
/// `store` before the first batch and again inside each batch's transaction: the tenant has
/// records, every one authenticates under a deployment wrapping key, and every one is
/// destroyed. A tenant whose own KEK is down or not configured here, one not loaded in this
/// process, one re-created after its shred, and a name the key table does not know are all
/// refused with [`Error::NotShredded`], and nothing is deleted. The check needs the deployment
/// KEK only, never the tenant's.
///
/// ```
/// use diesel::prelude::*;
/// use encrypted_types::{Encrypted, EncryptedModel, Error, TenantId};
/// use encrypted_types::jobs::purge_tenant;
/// use encrypted_types::kek::local::LocalKek;
/// use encrypted_types::store::KeyStore;
///
/// diesel::table! { notes (id) { id -> Integer, clinic -> BigInt, body -> Binary } }
/// #[derive(Encrypted)]
/// #[encrypted(table = notes, tenant = clinic)]
/// struct Note { id: i32, clinic: i64, #[encrypted] body: String }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let db = &mut SqliteConnection::establish(":memory:").unwrap();
/// KeyStore::<LocalKek>::run_migrations(db)?;
/// diesel::sql_query("CREATE TABLE notes (id INTEGER PRIMARY KEY, clinic BIGINT NOT NULL, body BLOB NOT NULL)")
///     .execute(db).unwrap();
/// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
/// store.create_tenant(db, Some(&"7".into()))?;
/// store.create_tenant(db, Some(&"8".into()))?;
/// store.load_and_install(db)?;
/// for (id, clinic) in [(1, 7), (2, 8)] {
///     diesel::insert_into(notes::table).values(&Note { id, clinic, body: "note".into() }).execute(db).unwrap();
/// }
/// store.shred_tenant(db, &"8".into(), &[Note::MODEL])?;
///
/// // Tenant 7 is live, tenant 9 has no keys at all: both refused.
/// assert!(matches!(purge_tenant(db, &store, &Note::MODEL, &TenantId::from("7"), 100), Err(Error::NotShredded { .. })));
/// assert!(matches!(purge_tenant(db, &store, &Note::MODEL, &TenantId::from("9"), 100), Err(Error::NotShredded { .. })));
/// assert_eq!(purge_tenant(db, &store, &Note::MODEL, &TenantId::from("8"), 100)?, 1);
/// assert_eq!(notes::table.count().get_result::<i64>(db).unwrap(), 1);
/// # Ok::<(), Error>(())
/// ```
///
/// # Errors
/// [`Error::NotShredded`]; [`Error::KeyRecord`] when a record of the tenant does not
/// authenticate; [`Error::Store`] for a model without a tenant column or a key-table failure;
/// provider errors of the deployment KEK; [`Error::UnpageableKey`], [`Error::Job`].
pub fn purge_tenant<C, P>(
    conn: &mut C,
    store: &crate::store::KeyStore<P>,
    model: &ModelInfo,
    tenant: &crate::TenantId,
    batch: usize,
) -> Result<u64, Error>
where
    C: diesel::connection::LoadConnection,
    C::Backend: JobTable,
    P: crate::kek::KekProvider,
{
    crate::db::block_on(purge_tenant_on(
        &mut crate::db::Blocking(conn),
        store,
        model,
        tenant,
        batch,
    ))
}

/// As [`purge_tenant`], on a diesel-async connection.
///
/// # Errors
/// As [`purge_tenant`].
#[cfg(feature = "async")]
pub async fn purge_tenant_async<C, P>(
    conn: &mut C,
    store: &crate::store::KeyStore<P>,
    model: &ModelInfo,
    tenant: &crate::TenantId,
    batch: usize,
) -> Result<u64, Error>
where
    C: diesel_async::AsyncConnection,
    C::Backend: JobTable,
    P: crate::kek::KekProvider,
{
    purge_tenant_on(
        &mut crate::db::NonBlocking(conn),
        store,
        model,
        tenant,
        batch,
    )
    .await
}

async fn purge_tenant_on<D, P>(
    db: &mut D,
    store: &crate::store::KeyStore<P>,
    model: &ModelInfo,
    tenant: &crate::TenantId,
    batch: usize,
) -> Result<u64, Error>
where
    D: JobDb,
    P: crate::kek::KekProvider,
{
    store.verify_shredded_on(db, tenant).await?;
    let t = inspect(db, model).await?;
    if !t.has_tenant {
        return Err(Error::Store(format!(
            "{} has no tenant column",
            model.table
        )));
    }
    let (mut deleted, mut stuck) = (0u64, 0u32);
    loop {
        let mut q = Query::new();
        let ph = q.bind::<D::Backend>(Param::Text(tenant.as_str().to_owned()));
        select::<D::Backend>(
            &t,
            "NULL",
            &[],
            None,
            &[format!("{} = {ph}", t.tenant)],
            &mut q,
            Some(batch.max(1)),
        );
        let rows = D::Backend::load_rows(db, &q).await.map_err(job_err)?;
        if rows.is_empty() {
            return Ok(deleted);
        }
        let mut d = Query::new();
        let mut preds = Vec::new();
        for r in &rows {
            preds.push(format!("({})", key_eq::<D::Backend>(&mut d, &t, &r.key)?));
        }
        let tp = d.bind::<D::Backend>(Param::Text(tenant.as_str().to_owned()));
        // The tenant is checked again: a row moved to another tenant meanwhile stays.
        d.sql = format!(
            "DELETE FROM {} WHERE ({}) AND {} = {tp}",
            t.quoted,
            preds.join(" OR "),
            t.tenant
        );
        // The evidence is read again in the transaction that deletes: a tenant re-created (or a
        // record rolled back) since the last batch stops the purge before its rows go.
        let n = transaction(db, async |db| {
            store
                .verify_shredded_on(db, tenant)
                .await
                .map_err(TxError::Lib)?;
            Ok(db.exec(&d).await?)
        })
        .await
        .map_err(tx_err)?;
        deleted += u64::try_from(n).unwrap_or(0);
        // A batch whose every row changed tenant in between deletes nothing; the next one
        // reads afresh. Rows that keep doing so stop the purge with an error, never a count
        // that looks complete.
        stuck = if n == 0 { stuck + 1 } else { 0 };
        if stuck > 3 {
            return Err(Error::Job(format!(
                "rows of tenant {tenant} in {} keep changing under the purge",
                model.table
            )));
        }
    }
}
