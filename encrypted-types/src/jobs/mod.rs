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

mod inventory;
mod key;
mod name;
mod sql;
mod status;
mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::db::{Db, sync_and_async};

pub use crate::db::{Param, Query};
#[cfg(feature = "async")]
pub use inventory::inventory_async;
pub use inventory::{Content, InventoryEntry, inventory};
pub use key::{KeyColumn, KeyKind, KeyPart, RowKey};
pub use name::{Operation, default_job_name};
pub use sql::{CatalogRow, JobTable, Row, StatusRow, TallyRow, UnitRow};
use sql::{alias, bind_alias};
#[cfg(feature = "async")]
pub use status::status_async;
pub use status::{JobStatus, status};
#[cfg(feature = "async")]
pub use verify::verify_async;
pub use verify::{Unopenable, VerifyReport, verify};

/// A connection the jobs run on, sync or async.
trait JobDb: Db<Backend: JobTable> {}
impl<D: Db<Backend: JobTable>> JobDb for D {}

use crate::Error;
use crate::binding::{RowBinding, RowKind, RowPart};
use crate::format;
use crate::index::IndexParams;
use crate::key::KeyId;
use crate::keyring::Keyring;
use crate::model::{ColumnInfo, LegacyColumn, ModelInfo};
use crate::store::KeyTable;

/// Which rows a run of a job covers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// The whole table, as one unit per column.
    All,
    /// Rows with `from <= key < to` (either bound open): one worker's explicit share.
    Range {
        /// Inclusive lower bound; `None` from the first row.
        from: Option<RowKey>,
        /// Exclusive upper bound; `None` to the last row.
        to: Option<RowKey>,
    },
    /// The whole table split into this many key ranges, planned once by the first worker
    /// from the rows present then (later rows fall in the first or last range); every worker
    /// of the job claims ranges until none is left.
    Parts(u32),
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Rows per batch (one transaction each).
    pub batch: usize,
    /// The rows this run covers.
    pub scope: Scope,
    /// Stop after this many batches (time-slicing, tests); `None` runs to the end.
    pub max_batches: Option<u64>,
    /// How long a claimed unit stays this worker's without a committed batch. A worker that
    /// dies loses its units after this long.
    pub lease: Duration,
    /// This worker's name in the job table. Give a restarted worker the same name and it takes
    /// its units back at once; `None` picks a random name per run.
    pub worker: Option<String>,
    /// Fault injection for tests: runs after a batch is read and prepared, before it is
    /// written (where a concurrent writer can change the rows). Not for production use.
    #[doc(hidden)]
    pub before_write: Option<fn()>,
    /// For a `bind_row` model: bind the values that are bound to no row (written before the
    /// model declared `bind_row`) to the row they sit in. Off by default, so a routine
    /// rotation never binds a value a database writer planted: it skips unbound values
    /// (`SkipReason::RowBinding`) and does not finish. Turn it on once, when adopting
    /// `bind_row` (docs/KEYS.md, "Binding values to their row").
    pub bind_unbound: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            scope: Scope::All,
            max_batches: None,
            lease: Duration::from_secs(60),
            worker: None,
            before_write: None,
            bind_unbound: false,
        }
    }
}

/// Progress after each committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The column (or index column) being written.
    pub column: &'static str,
    /// Values written so far in this unit (over every run of the job).
    pub rows_done: u64,
    /// Compare-and-swap misses so far in this run (an application write won).
    pub conflicts: u64,
    /// The unit's checkpoint: the last key done.
    pub last_key: Option<RowKey>,
}

/// Why a job left a value as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// Sealed with a destroyed key (a shredded tenant): it can never be opened.
    KeyDestroyed,
    /// Sealed with a key the key table does not hold.
    UnknownKey,
    /// Does not authenticate (tampered, or copied from another column or tenant).
    AuthenticationFailed,
    /// A legacy value that is not a valid encoding of the column's type: sealing it would make
    /// every later read fail.
    InvalidLegacyValue,
    /// The row's tenant has no data key (never created, or shredded).
    NoTenantKey,
    /// Sealed under another tenant's key than its row's (copied across tenants).
    TenantMismatch,
    /// The row's identity (`bind_row`) could not be read or encoded, or a value bound to a
    /// row did not open with it.
    RowBinding,
    /// A sealed value that authenticates but whose plaintext is not a valid encoding of the
    /// column's type ([`verify`]).
    InvalidPlaintext,
    /// `NULL` in a column whose field is not optional, with no legacy value either: the
    /// application cannot read the row ([`verify`]).
    NoValue,
    /// Any other error of opening or sealing the value.
    Other,
}

impl SkipReason {
    fn of(e: &Error) -> Self {
        match e {
            Error::KeyDestroyed(_) => Self::KeyDestroyed,
            Error::UnknownKeyId(_) => Self::UnknownKey,
            Error::AuthenticationFailed => Self::AuthenticationFailed,
            Error::InvalidPlaintext { .. } => Self::InvalidLegacyValue,
            Error::NoPrimaryKey { .. } | Error::NoBlindIndexKey { .. } => Self::NoTenantKey,
            Error::TenantMismatch { .. } => Self::TenantMismatch,
            Error::RowBinding | Error::InvalidRowBinding => Self::RowBinding,
            _ => Self::Other,
        }
    }
}

/// What a run of a job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Values (or indexes) written in this run.
    pub written: u64,
    /// Compare-and-swap misses that a fresh read showed needed nothing more (an application
    /// write won).
    pub conflicts: u64,
    /// Batches committed.
    pub batches: u64,
    /// Values left as they were, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// What the closing count found still to do in this run's scope: values on a retired key
    /// (rotation), legacy values (encryption), rows that kept changing under a reindex.
    pub remaining: u64,
    /// Every unit of this run's scope was already done before it started.
    pub already_finished: bool,
    /// Every unit is done and the closing count found nothing left.
    pub finished: bool,
}

impl JobReport {
    /// Values skipped, over every reason.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// What one pass writes.
enum Op<'a> {
    Rotate {
        retired: &'a [KeyId],
        /// Header prefixes of the suites to upgrade ([`format::OLDER_SUITES`], or every unbound
        /// suite for a `bind_row` model).
        older: &'static [[u8; 2]],
    },
    Reindex {
        params: &'static IndexParams,
    },
    Encrypt,
    /// Seal the legacy column's values into the encrypted column, clearing the legacy one.
    Backfill {
        legacy: LegacyColumn,
    },
}

impl Op<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Rotate { .. } => "rotate",
            Self::Reindex { .. } => "reindex",
            Self::Encrypt => "encrypt",
            Self::Backfill { .. } => "backfill",
        }
    }
}

impl Pass<'_> {
    /// The SQL expression of the value a batch reads and the compare-and-swap compares: the
    /// column's bytes, or the legacy column's (text as its UTF-8 bytes).
    fn read_expr<B: JobTable>(&self) -> String {
        match &self.op {
            Op::Backfill { legacy } if legacy.text => B::text_bytes(&B::quote(legacy.column)),
            Op::Backfill { legacy } => B::quote(legacy.column),
            _ => B::quote(self.column.column),
        }
    }

    /// The condition of the rows a batch reads (besides its range).
    fn todo_cond<B: JobTable>(&self) -> String {
        match &self.op {
            Op::Rotate { retired, older } => {
                rotate_cond::<B>(&B::quote(self.column.column), retired, older)
            }
            Op::Backfill { legacy } => format!("{} IS NOT NULL", B::quote(legacy.column)),
            _ => format!("{} IS NOT NULL", B::quote(self.column.column)),
        }
    }
}

/// SQL true for a value a rotation has to re-seal: sealed with a retired key, or in a suite
/// older than the one this build writes. Both read from the header bytes alone.
fn rotate_cond<B: JobTable>(col: &str, retired: &[KeyId], older: &[[u8; 2]]) -> String {
    let mut conds = vec![B::suite_in(col, older)];
    if !retired.is_empty() {
        conds.push(B::key_id_in(col, retired));
    }
    format!("({})", conds.join(" OR "))
}

/// One column (or index) of one job.
struct Pass<'a> {
    column: &'static ColumnInfo,
    op: Op<'a>,
    /// The column written: the value's, or the index's.
    writes: &'static str,
    /// The identity recorded in the job table.
    target: String,
}

/// A table as the jobs see it.
struct Table {
    name: &'static str,
    quoted: String,
    key: Vec<KeyColumn>,
    qkey: Vec<String>,
    /// The tenant column as text, or `NULL`.
    tenant: String,
    /// Whether rows belong to tenants.
    has_tenant: bool,
    /// The `bind_row` columns, quoted, with the kind they are read as.
    bind: Vec<(String, KeyKind)>,
    /// [`JobOptions::bind_unbound`]: whether values bound to no row may be opened (to be
    /// bound); otherwise every value of a `bind_row` model must be bound to its row.
    bind_unbound: bool,
}

impl Table {
    /// Refuses a value bound to no row in a `bind_row` table, unless the job binds them.
    fn unbound(&self, value: &[u8]) -> Option<SkipReason> {
        let bound = value.get(1) == Some(&format::SUITE_AES256GCMSIV_ROW);
        (!self.bind.is_empty() && !self.bind_unbound && !bound).then_some(SkipReason::RowBinding)
    }

    /// The identity a row's values are bound to: `None` for a model without `bind_row`.
    fn binding(&self, row: &Row) -> Result<Option<RowBinding>, SkipReason> {
        if self.bind.is_empty() {
            return Ok(None);
        }
        // A NULL identity column reads as fewer parts: never bind to a partial identity.
        if row.bind.len() != self.bind.len() {
            return Err(SkipReason::RowBinding);
        }
        let parts: Vec<RowPart<'_>> = row
            .bind
            .iter()
            .map(|p| match p {
                KeyPart::Int(i) => RowPart::Int(*i),
                KeyPart::Text(t) => RowPart::Text(t),
                KeyPart::Bytes(b) => RowPart::Bytes(b),
                KeyPart::Uuid(u) => RowPart::Bytes(u),
            })
            .collect();
        RowBinding::new(&parts)
            .map(Some)
            .map_err(|_| SkipReason::RowBinding)
    }
}

/// Reads the table's primary key from the catalogue and refuses what cannot be paged.
async fn inspect<D>(db: &mut D, model: &ModelInfo) -> Result<Table, Error>
where
    D: JobDb,
{
    let refuse = |reason: String| Error::UnpageableKey {
        table: model.table.to_owned(),
        reason,
    };
    let q = Query {
        sql: D::Backend::catalogue().to_owned(),
        params: vec![Param::Text(model.table.to_owned())],
    };
    let cols = D::Backend::load_catalogue(db, &q).await.map_err(job_err)?;
    if cols.is_empty() {
        return Err(refuse(
            "it has no primary key (or does not exist); keyset pagination needs a unique, \
             non-null key"
                .into(),
        ));
    }
    if cols.len() > sql::MAX_KEY_PARTS {
        return Err(refuse(format!(
            "its primary key has {} columns, more than the {} the jobs page by",
            cols.len(),
            sql::MAX_KEY_PARTS
        )));
    }
    let mut key = Vec::new();
    for c in &cols {
        let kind = key::kind_of(D::Backend::NAME, &c.ty).ok_or_else(|| {
            refuse(format!(
                "primary-key column {} has type {}; the jobs page by integer, text, binary \
                 and uuid keys",
                c.name, c.ty
            ))
        })?;
        key.push(KeyColumn {
            name: c.name.clone(),
            kind,
        });
    }
    let mut declared: Vec<&str> = model.primary_key.to_vec();
    let mut actual: Vec<&str> = key.iter().map(|k| k.name.as_str()).collect();
    declared.sort_unstable();
    actual.sort_unstable();
    if declared != actual {
        return Err(refuse(format!(
            "the model declares primary key ({}) but the table's is ({}); set \
             #[encrypted(primary_key(...))] to the table's key",
            model.primary_key.join(", "),
            key.iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let qkey: Vec<String> = key.iter().map(|k| D::Backend::quote(&k.name)).collect();
    let quoted = D::Backend::quote(model.table);
    if D::Backend::NAME == "sqlite" {
        // SQLite orders values of different storage classes by class: a text key among
        // integers would sit outside the range a bound of the column's kind selects. NULL keys
        // (allowed in non-integer SQLite keys) would never be visited.
        for (k, q) in key.iter().zip(&qkey) {
            let class = match k.kind {
                KeyKind::Int => "integer",
                KeyKind::Text => "text",
                _ => "blob",
            };
            let n = D::Backend::count_q(
                db,
                &Query {
                    sql: format!(
                        "SELECT COUNT(*) AS n FROM {quoted} WHERE typeof({q}) <> '{class}'"
                    ),
                    params: Vec::new(),
                },
            )
            .await
            .map_err(job_err)?;
            if n > 0 {
                return Err(refuse(format!(
                    "primary-key column {} holds {n} values that are not {class} (NULL or \
                     another storage class)",
                    k.name
                )));
            }
        }
    }
    let tenant = model.tenant_column.map_or_else(
        || "NULL".to_owned(),
        |t| D::Backend::as_text(&D::Backend::quote(t)),
    );
    let bind = model
        .bind_row
        .iter()
        .map(|c| {
            let kind = match c.kind {
                RowKind::Int => KeyKind::Int,
                RowKind::Text => KeyKind::Text,
                // A Rust `Uuid` is a native `uuid` column on PostgreSQL, 16 bytes elsewhere.
                RowKind::Uuid if D::Backend::NAME == "postgres" => KeyKind::Uuid,
                _ => KeyKind::Bytes,
            };
            (D::Backend::quote(c.column), kind)
        })
        .collect();
    Ok(Table {
        name: model.table,
        quoted,
        key,
        qkey,
        tenant,
        has_tenant: model.tenant_column.is_some(),
        bind,
        bind_unbound: false,
    })
}

/// A database error of the jobs; a deadlock or serialization failure stays recognisable, so a
/// helper's error that passes through [`TxError::Lib`] is retried too.
fn job_err(e: diesel::result::Error) -> Error {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::SerializationFailure,
            _,
        ) => Error::Contended,
        e => Error::Job(e.to_string()),
    }
}

/// A placeholder for `part` compared with a key column of `kind`.
fn key_param<B: JobTable>(q: &mut Query, kind: KeyKind, part: &KeyPart) -> Result<String, Error> {
    let p = match (kind, part) {
        (KeyKind::Int, KeyPart::Int(v)) => Param::Int(*v),
        (KeyKind::Text, KeyPart::Text(s)) | (KeyKind::Uuid, KeyPart::Text(s)) => {
            Param::Text(s.clone())
        }
        (KeyKind::Bytes, KeyPart::Bytes(b)) => Param::Bytes(b.clone()),
        (KeyKind::Bytes, KeyPart::Uuid(u)) => Param::Bytes(u.to_vec()),
        (KeyKind::Uuid, KeyPart::Uuid(u)) => Param::Text(sql::uuid_text(u)),
        _ => {
            return Err(Error::Job(format!(
                "a key value of another type than its {kind:?} column"
            )));
        }
    };
    Ok(B::key_param(kind, q.bind::<B>(p)))
}

#[derive(Clone, Copy)]
enum Cmp {
    /// `key > bound`
    After,
    /// `key >= bound`
    From,
    /// `key < bound`
    Before,
}

/// The row-value comparison `key <cmp> bound`, spelled out so every backend runs it the same
/// way: `(a > ? OR (a = ? AND b > ?))`, with a leading `a >= ?` that lets the index seek.
fn compare<B: JobTable>(
    q: &mut Query,
    t: &Table,
    bound: &RowKey,
    cmp: Cmp,
) -> Result<String, Error> {
    if bound.0.len() != t.key.len() {
        return Err(Error::Job(format!(
            "a key tuple of {} values for a primary key of {} columns",
            bound.0.len(),
            t.key.len()
        )));
    }
    fn level<B: JobTable>(
        q: &mut Query,
        t: &Table,
        bound: &RowKey,
        cmp: Cmp,
        i: usize,
    ) -> Result<String, Error> {
        let (Some(col), Some(k), Some(part)) = (t.qkey.get(i), t.key.get(i), bound.0.get(i)) else {
            return Err(Error::Job("key tuple shorter than the key".into()));
        };
        let strict = if matches!(cmp, Cmp::Before) { "<" } else { ">" };
        if i + 1 == t.key.len() {
            let op = match cmp {
                Cmp::After => ">",
                Cmp::From => ">=",
                Cmp::Before => "<",
            };
            let ph = key_param::<B>(q, k.kind, part)?;
            return Ok(format!("{col} {op} {ph}"));
        }
        let a = key_param::<B>(q, k.kind, part)?;
        let b = key_param::<B>(q, k.kind, part)?;
        let rest = level::<B>(q, t, bound, cmp, i + 1)?;
        Ok(format!("({col} {strict} {a} OR ({col} = {b} AND {rest}))"))
    }
    if t.key.len() == 1 {
        return level::<B>(q, t, bound, cmp, 0);
    }
    let (Some(col), Some(k), Some(part)) = (t.qkey.first(), t.key.first(), bound.0.first()) else {
        return Err(Error::Job("empty key".into()));
    };
    let wide = if matches!(cmp, Cmp::Before) {
        "<="
    } else {
        ">="
    };
    let ph = key_param::<B>(q, k.kind, part)?;
    let rest = level::<B>(q, t, bound, cmp, 0)?;
    Ok(format!("{col} {wide} {ph} AND {rest}"))
}

/// `k1 = ? AND k2 = ? ...`
fn key_eq<B: JobTable>(q: &mut Query, t: &Table, key: &[KeyPart]) -> Result<String, Error> {
    if key.len() != t.key.len() {
        return Err(Error::Job(format!(
            "a row read with {} key values for a primary key of {} columns",
            key.len(),
            t.key.len()
        )));
    }
    let mut preds = Vec::new();
    for ((col, k), part) in t.qkey.iter().zip(&t.key).zip(key) {
        let ph = key_param::<B>(q, k.kind, part)?;
        preds.push(format!("{col} = {ph}"));
    }
    Ok(preds.join(" AND "))
}

fn key_selects<B: JobTable>(t: &Table) -> String {
    t.key
        .iter()
        .zip(&t.qkey)
        .enumerate()
        .map(|(n, (k, q))| format!("{} AS {}", B::key_select(k.kind, q), alias(n, k.kind)))
        .chain(t.bind.iter().enumerate().map(|(n, (q, kind))| {
            format!("{} AS {}", B::key_select(*kind, q), bind_alias(n, *kind))
        }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SELECT <key>, <v> AS v, i, t FROM table WHERE <conds> ORDER BY <key> [LIMIT n]`.
fn select<B: JobTable>(
    t: &Table,
    v: &str,
    index: Option<&str>,
    conds: &[String],
    q: &mut Query,
    limit: Option<usize>,
) {
    let i = index.map_or_else(|| "NULL".to_owned(), B::quote);
    let mut sql = format!(
        "SELECT {}, {v} AS v, {i} AS i, {} AS t FROM {}",
        key_selects::<B>(t),
        t.tenant,
        t.quoted
    );
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY ");
    sql.push_str(&t.qkey.join(", "));
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    q.sql = sql;
}

/// The range conditions of a unit, after its checkpoint.
fn range_conds<B: JobTable>(
    q: &mut Query,
    t: &Table,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
    after: Option<&RowKey>,
) -> Result<Vec<String>, Error> {
    let mut conds = Vec::new();
    match (after, from) {
        (Some(a), _) => conds.push(compare::<B>(q, t, a, Cmp::After)?),
        (None, Some(f)) => conds.push(compare::<B>(q, t, f, Cmp::From)?),
        (None, None) => {}
    }
    if let Some(to) = to {
        conds.push(compare::<B>(q, t, to, Cmp::Before)?);
    }
    Ok(conds)
}

/// A value ready to be written: the row's key, the bytes read (the compare-and-swap's
/// condition, wiped after use: legacy plaintext during an encryption) and the columns to set.
struct Write {
    key: Vec<KeyPart>,
    old: Zeroizing<Vec<u8>>,
    sets: Sets,
}

/// The columns a write sets: bytes, or `NULL` for `None`.
type Sets = Vec<(&'static str, Option<Vec<u8>>)>;

enum Outcome {
    Write(Sets),
    Nothing,
    Skip(SkipReason),
}

/// What `pass` would write for a row holding `value` (tenant text `tenant`, index `index`).
fn prepare(
    keyring: &Keyring,
    t: &Table,
    pass: &Pass<'_>,
    value: &[u8],
    index: Option<&[u8]>,
    tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Result<Outcome, Error> {
    let c = pass.column;
    match &pass.op {
        Op::Rotate { .. } => {
            if foreign_tenant(keyring, t, value, tenant) {
                return Ok(Outcome::Skip(SkipReason::TenantMismatch));
            }
            if let Some(r) = t.unbound(value) {
                return Ok(Outcome::Skip(r));
            }
            match format::reseal(keyring, t.name, c.column, c.value_type, bind, value) {
                Ok(Some(new)) => Ok(Outcome::Write(vec![(c.column, Some(new))])),
                Ok(None) => Ok(Outcome::Nothing),
                Err(e @ Error::NoKeyring) => Err(e),
                Err(e) => Ok(Outcome::Skip(SkipReason::of(&e))),
            }
        }
        Op::Reindex { params } => match fresh_index(keyring, t, c, params, value, tenant, bind) {
            Ok(new) if index == Some(new.as_slice()) => Ok(Outcome::Nothing),
            Ok(new) => Ok(Outcome::Write(vec![(params.index_column, Some(new))])),
            Err(r) => Ok(Outcome::Skip(r)),
        },
        Op::Encrypt | Op::Backfill { .. } => {
            if let Op::Backfill { legacy } = &pass.op {
                // Whatever the legacy column holds is plaintext; only its encoding is checked.
                if (c.validate)(value).is_err() {
                    return Ok(Outcome::Skip(SkipReason::InvalidLegacyValue));
                }
                let mut sets = seal_legacy(keyring, t, c, value, tenant, bind);
                if let Outcome::Write(sets) = &mut sets {
                    sets.push((legacy.column, None));
                }
                return Ok(sets);
            }
            match legacy_state(keyring, t, c, value, bind) {
                LegacyState::Done => Ok(Outcome::Nothing),
                LegacyState::Bad(r) => Ok(Outcome::Skip(r)),
                LegacyState::Todo => Ok(seal_legacy(keyring, t, c, value, tenant, bind)),
            }
        }
    }
}

/// A legacy value sealed under the row's tenant key, with its blind indexes.
fn seal_legacy(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    value: &[u8],
    tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Outcome {
    let tenant = tenant.map(crate::TenantId::from);
    let sealed = match format::seal_raw(
        keyring,
        t.name,
        c.column,
        c.value_type,
        tenant.as_ref(),
        bind,
        value,
    ) {
        Ok(s) => s,
        Err(e) => return Outcome::Skip(SkipReason::of(&e)),
    };
    let mut sets = vec![(c.column, Some(sealed))];
    for params in c.indexes {
        match params.compute_raw(keyring, tenant.as_ref(), c.value_type, value) {
            Ok(i) => sets.push((params.index_column, Some(i))),
            Err(e) => return Outcome::Skip(SkipReason::of(&e)),
        }
    }
    Outcome::Write(sets)
}

/// Whether a sealed value's key belongs to another tenant than its row: a ciphertext copied
/// across tenants, which a job must neither re-seal nor index under the row's name.
fn foreign_tenant(keyring: &Keyring, t: &Table, value: &[u8], row: Option<&str>) -> bool {
    if !t.has_tenant {
        return false;
    }
    let Ok(h) = format::Header::parse(value) else {
        return false;
    };
    let Ok(key) = keyring.key(h.key_id) else {
        return false;
    };
    key.tenant().map(crate::TenantId::as_str) != row
}

/// The index `params` gives the value sealed in `value`, or why it cannot be computed.
fn fresh_index(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    params: &IndexParams,
    value: &[u8],
    row_tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Result<Vec<u8>, SkipReason> {
    if foreign_tenant(keyring, t, value, row_tenant) {
        return Err(SkipReason::TenantMismatch);
    }
    if let Some(r) = t.unbound(value) {
        return Err(r);
    }
    let (plain, tenant) = format::open_raw(keyring, t.name, c.column, c.value_type, bind, value)
        .map_err(|e| SkipReason::of(&e))?;
    params
        .compute_raw(keyring, tenant.as_ref(), c.value_type, &plain)
        .map_err(|e| SkipReason::of(&e))
}

/// What an encryption pass makes of a stored value.
enum LegacyState {
    /// Sealed, and it opens (or its key was destroyed: sealed, and gone for good).
    Done,
    /// Legacy plaintext, a valid encoding of the field's type: to seal.
    Todo,
    /// Neither: reported, left as it is, and the column is not done.
    Bad(SkipReason),
}

fn legacy_state(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    value: &[u8],
    bind: Option<&RowBinding>,
) -> LegacyState {
    match format::classify(keyring, value) {
        // Opened, not assumed: a legacy value that happens to look sealed fails here and is
        // reported instead of passing for done.
        format::Stored::Sealed if t.unbound(value).is_some() => {
            LegacyState::Bad(SkipReason::RowBinding)
        }
        format::Stored::Sealed => {
            match format::open_raw(keyring, t.name, c.column, c.value_type, bind, value) {
                Ok(_) | Err(Error::KeyDestroyed(_)) => LegacyState::Done,
                Err(e) => LegacyState::Bad(SkipReason::of(&e)),
            }
        }
        format::Stored::Unknown => LegacyState::Bad(SkipReason::UnknownKey),
        // Decode-checked first: a value that is not a valid encoding of the column's type
        // would seal into something every later read fails on.
        _ if (c.validate)(value).is_err() => LegacyState::Bad(SkipReason::InvalidLegacyValue),
        _ => LegacyState::Todo,
    }
}

/// Errors inside a batch's transaction.
enum TxError {
    Lib(Error),
    /// Another worker holds the unit now: this batch is rolled back.
    LeaseLost,
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        Self::Lib(e)
    }
}

/// A unit of this run's scope: its name, its pass, and its key range.
type Planned = (String, usize, Option<RowKey>, Option<RowKey>);

/// A unit this worker holds.
struct Unit {
    name: String,
    pass: usize,
    from: Option<RowKey>,
    to: Option<RowKey>,
    last: Option<RowKey>,
    rows_done: i64,
}

const JOBS: &str = "encrypted_types_jobs";
/// Parts of one job at most: every claim binds the names of the run's units.
const MAX_PARTS: u32 = 1024;
const UNIT_COLS: &str = "unit, operation, target, range_from, range_to, last_key, state, rows_done";

fn decode_opt(s: Option<&str>) -> Result<Option<RowKey>, Error> {
    s.map(RowKey::decode).transpose()
}

/// One run of a job: plan or check its units, claim and process them until none is left,
/// then count what remains.
struct Run<'a> {
    job: &'a str,
    worker: String,
    options: &'a JobOptions,
    keyring: &'a Keyring,
    table: Table,
    passes: Vec<Pass<'a>>,
    /// This run's units, by name.
    units: Vec<String>,
    report: JobReport,
}

impl Run<'_> {
    fn lease_secs(&self) -> i64 {
        i64::try_from(self.options.lease.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    fn units_in<B: crate::db::Exec>(&self, q: &mut Query) -> String {
        let phs: Vec<String> = self
            .units
            .iter()
            .map(|u| q.bind::<B>(Param::Text(u.clone())))
            .collect();
        format!("unit IN ({})", phs.join(", "))
    }

    async fn list<D: JobDb>(&self, db: &mut D) -> Result<Vec<UnitRow>, Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        q.sql = format!("SELECT {UNIT_COLS} FROM {JOBS} WHERE job = {j}");
        D::Backend::load_units(db, &q).await.map_err(job_err)
    }

    /// The unit names of this run's scope for pass `p`, with their ranges.
    async fn wanted<D: JobDb>(
        &self,
        db: &mut D,
        existing: &[UnitRow],
    ) -> Result<Vec<Planned>, Error> {
        let mut out = Vec::new();
        match &self.options.scope {
            Scope::All => {
                for (p, pass) in self.passes.iter().enumerate() {
                    out.push((format!("{}#all", self.prefix(pass)), p, None, None));
                }
            }
            Scope::Range { from, to } => {
                let tag = range_tag(from.as_ref(), to.as_ref());
                for (p, pass) in self.passes.iter().enumerate() {
                    out.push((
                        format!("{}#r{tag}", self.prefix(pass)),
                        p,
                        from.clone(),
                        to.clone(),
                    ));
                }
            }
            Scope::Parts(n) => {
                // The first worker's plan stands: later workers take the parts it recorded.
                let planned: Vec<(usize, &UnitRow)> = existing
                    .iter()
                    .filter(|u| u.unit.contains("#p"))
                    .filter_map(|u| self.pass_of(&u.unit).map(|p| (p, u)))
                    .collect();
                if let Some(&(first, _)) = planned.first() {
                    // The recorded ranges, from one pass; a pass with no units yet (a column
                    // or index added under the same job name) gets the same ranges.
                    let mut ranges = Vec::new();
                    for (p, u) in &planned {
                        let (from, to) = (
                            decode_opt(u.range_from.as_deref())?,
                            decode_opt(u.range_to.as_deref())?,
                        );
                        if *p == first {
                            let part = u.unit.rsplit('#').next().unwrap_or("").to_owned();
                            ranges.push((part, from.clone(), to.clone()));
                        }
                        out.push((u.unit.clone(), *p, from, to));
                    }
                    for (p, pass) in self.passes.iter().enumerate() {
                        if planned.iter().any(|(q, _)| *q == p) {
                            continue;
                        }
                        for (part, from, to) in &ranges {
                            out.push((
                                format!("{}#{part}", self.prefix(pass)),
                                p,
                                from.clone(),
                                to.clone(),
                            ));
                        }
                    }
                    return Ok(out);
                }
                let bounds = self.boundaries(db, (*n).max(1)).await?;
                for (p, pass) in self.passes.iter().enumerate() {
                    let mut from: Option<RowKey> = None;
                    for (i, b) in bounds.iter().map(Some).chain([None]).enumerate() {
                        out.push((
                            format!("{}#p{i:04}", self.prefix(pass)),
                            p,
                            from.clone(),
                            b.cloned(),
                        ));
                        from = b.cloned();
                    }
                }
            }
        }
        Ok(out)
    }

    /// `n - 1` key tuples splitting the table's current rows into `n` ranges of about equal
    /// size (found with `OFFSET` once, when the job is planned).
    async fn boundaries<D: JobDb>(&self, db: &mut D, n: u32) -> Result<Vec<RowKey>, Error> {
        let t = &self.table;
        let total = D::Backend::count_q(
            db,
            &Query {
                sql: format!("SELECT COUNT(*) AS n FROM {}", t.quoted),
                params: Vec::new(),
            },
        )
        .await
        .map_err(job_err)?;
        let mut out: Vec<RowKey> = Vec::new();
        for i in 1..i64::from(n) {
            let offset = total.saturating_mul(i) / i64::from(n);
            let sql = format!(
                "SELECT {}, NULL AS v, NULL AS i, NULL AS t FROM {} ORDER BY {} LIMIT 1 OFFSET {offset}",
                key_selects::<D::Backend>(t),
                t.quoted,
                t.qkey.join(", ")
            );
            let rows = D::Backend::load_rows(
                db,
                &Query {
                    sql,
                    params: Vec::new(),
                },
            )
            .await
            .map_err(job_err)?;
            if let Some(r) = rows.into_iter().next() {
                let k = RowKey(r.key);
                if out.last() != Some(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// A unit's name before its range: `table.column`.
    fn prefix(&self, pass: &Pass<'_>) -> String {
        format!("{}.{}", self.table.name, pass.writes)
    }

    /// The pass of this run a unit belongs to, if any (other units of the same job name are
    /// other tables' or columns' work).
    fn pass_of(&self, unit: &str) -> Option<usize> {
        let prefix = unit.split('#').next().unwrap_or("");
        self.passes.iter().position(|p| self.prefix(p) == prefix)
    }

    fn our_pass(&self, unit: &str) -> Result<usize, Error> {
        self.pass_of(unit)
            .ok_or_else(|| Error::Job(format!("unit {unit} is not this run's")))
    }

    fn describe(&self) -> String {
        let targets: Vec<&str> = self.passes.iter().map(|p| p.target.as_str()).collect();
        targets.join("; ")
    }

    /// Checks the recorded identity of the job's units and records the missing ones of this
    /// run's scope; returns whether every one of them was already done.
    async fn plan<D: JobDb>(&mut self, db: &mut D) -> Result<bool, Error> {
        for attempt in 0..=RETRIES {
            let result = transaction(db, async |db| -> Result<bool, TxError> {
                // Write first: on SQLite this takes the write lock before the read below, so
                // two planners queue instead of deadlocking on a lock upgrade; elsewhere it
                // serializes planners of the same job.
                let mut w = Query::new();
                let j = w.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                w.sql = format!("UPDATE {JOBS} SET updated_at = updated_at WHERE job = {j}");
                db.exec(&w).await?;
                let existing = self.list(db).await?;
                let op = self.passes.first().map_or("", |p| p.op.name());
                for u in &existing {
                    if u.operation != op {
                        return Err(TxError::Lib(Error::JobMismatch {
                            job: self.job.to_owned(),
                            found: format!("{} of {}", u.operation, u.target),
                            wanted: format!("{op} of {}", self.describe()),
                        }));
                    }
                    let Some(pass) = self.pass_of(&u.unit).and_then(|p| self.passes.get(p)) else {
                        continue;
                    };
                    if u.target != pass.target {
                        return Err(TxError::Lib(Error::JobMismatch {
                            job: self.job.to_owned(),
                            found: u.target.clone(),
                            wanted: pass.target.clone(),
                        }));
                    }
                }
                let wanted = self.wanted(db, &existing).await?;
                let mut all_done = true;
                let mut names = Vec::new();
                for (name, p, from, to) in wanted {
                    names.push(name.clone());
                    if let Some(u) = existing.iter().find(|u| u.unit == name) {
                        all_done &= u.state == "done";
                        continue;
                    }
                    all_done = false;
                    let pass = self
                        .passes
                        .get(p)
                        .ok_or_else(|| Error::Job("pass".into()))?;
                    let mut q = Query::new();
                    let vals = [
                        q.bind::<D::Backend>(Param::Text(self.job.to_owned())),
                        q.bind::<D::Backend>(Param::Text(name.clone())),
                        q.bind::<D::Backend>(Param::Text(pass.op.name().to_owned())),
                        q.bind::<D::Backend>(Param::Text(pass.target.clone())),
                    ];
                    let mut bound = |k: &Option<RowKey>| match k {
                        Some(k) => q.bind::<D::Backend>(Param::Text(k.encode())),
                        None => "NULL".to_owned(),
                    };
                    let (f, t) = (bound(&from), bound(&to));
                    q.sql = format!(
                        "INSERT INTO {JOBS} (job, unit, operation, target, range_from, range_to, \
                         last_key, state, rows_done, lease_owner, lease_until, updated_at) \
                         VALUES ({}, {f}, {t}, NULL, 'pending', 0, NULL, NULL, {})",
                        vals.join(", "),
                        D::Backend::now()
                    );
                    db.exec(&q).await?;
                }
                self.units = names;
                Ok(all_done)
            })
            .await;
            match result {
                Ok(done) => return Ok(done),
                // Another worker planned the same units at the same moment: read its plan.
                Err(TxError::Db(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ))) if attempt < RETRIES => {}
                Err(e) if is_deadlock(&e) && attempt < RETRIES => backoff(db, attempt).await,
                Err(e) => return Err(tx_err(e)),
            }
        }
        Err(Error::Contended)
    }

    /// Claims a pending unit of this run whose lease is free, expired or already this worker's.
    async fn claim<D: JobDb>(&self, db: &mut D) -> Result<Option<Unit>, TxError> {
        let now = D::Backend::now();
        let lease = self.lease_secs();
        transaction(db, async |db| -> Result<Option<Unit>, TxError> {
            let mut q = Query::new();
            // `?` placeholders bind in the order they appear in the text.
            let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
            let ours = self.units_in::<D::Backend>(&mut q);
            let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
            let free = format!(
                "job = {j} AND {ours} AND state = 'pending' AND \
                 (lease_owner IS NULL OR lease_owner = {me} OR lease_until < {now})"
            );
            let name = if D::Backend::SKIP_LOCKED {
                q.sql = format!(
                    "SELECT {UNIT_COLS} FROM {JOBS} WHERE {free} ORDER BY unit LIMIT 1 \
                     FOR UPDATE SKIP LOCKED"
                );
                let Some(u) = D::Backend::load_units(db, &q).await?.into_iter().next() else {
                    return Ok(None);
                };
                let mut q = Query::new();
                let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let l = q.bind::<D::Backend>(Param::Int(lease));
                let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let un = q.bind::<D::Backend>(Param::Text(u.unit.clone()));
                q.sql = format!(
                    "UPDATE {JOBS} SET lease_owner = {me}, lease_until = {now} + {l} \
                     WHERE job = {j} AND unit = {un}"
                );
                db.exec(&q).await?;
                u.unit
            } else {
                // One writer at a time: a single UPDATE claims atomically.
                let mut u = Query::new();
                let me2 = u.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let l = u.bind::<D::Backend>(Param::Int(lease));
                let jj = u.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let sub_j = u.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let sub_ours = self.units_in::<D::Backend>(&mut u);
                let sub_me = u.bind::<D::Backend>(Param::Text(self.worker.clone()));
                u.sql = format!(
                    "UPDATE {JOBS} SET lease_owner = {me2}, lease_until = {now} + {l} \
                     WHERE job = {jj} AND unit = (SELECT unit FROM {JOBS} WHERE job = {sub_j} \
                     AND {sub_ours} AND state = 'pending' AND (lease_owner IS NULL OR \
                     lease_owner = {sub_me} OR lease_until < {now}) ORDER BY unit LIMIT 1)"
                );
                if db.exec(&u).await? == 0 {
                    return Ok(None);
                }
                let mut s = Query::new();
                let j = s.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let me = s.bind::<D::Backend>(Param::Text(self.worker.clone()));
                let ours = self.units_in::<D::Backend>(&mut s);
                s.sql = format!(
                    "SELECT {UNIT_COLS} FROM {JOBS} WHERE job = {j} AND lease_owner = {me} AND \
                     state = 'pending' AND {ours} ORDER BY unit LIMIT 1"
                );
                let Some(row) = D::Backend::load_units(db, &s).await?.into_iter().next() else {
                    return Ok(None);
                };
                row.unit
            };
            let rows = self.list(db).await?;
            let row = rows
                .into_iter()
                .find(|r| r.unit == name)
                .ok_or_else(|| Error::Job("claimed unit vanished".into()))?;
            Ok(Some(Unit {
                pass: self.our_pass(&row.unit)?,
                from: decode_opt(row.range_from.as_deref())?,
                to: decode_opt(row.range_to.as_deref())?,
                last: decode_opt(row.last_key.as_deref())?,
                rows_done: row.rows_done,
                name,
            }))
        })
        .await
    }

    /// [`Run::claim`], again after a deadlock (two claimers on InnoDB).
    async fn claim_retrying<D: JobDb>(&self, db: &mut D) -> Result<Option<Unit>, Error> {
        let mut attempt = 0;
        loop {
            match self.claim(db).await {
                Err(e) if is_deadlock(&e) && attempt < RETRIES => {
                    backoff(db, attempt).await;
                    attempt += 1;
                }
                other => return other.map_err(tx_err),
            }
        }
    }

    async fn pending<D: JobDb>(&self, db: &mut D) -> Result<i64, Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let ours = self.units_in::<D::Backend>(&mut q);
        q.sql = format!(
            "SELECT COUNT(*) AS n FROM {JOBS} WHERE job = {j} AND {ours} AND state = 'pending'"
        );
        D::Backend::count_q(db, &q).await.map_err(job_err)
    }

    /// Ends this worker's hold on a unit: done, or released for another worker.
    async fn release<D: JobDb>(&self, db: &mut D, unit: &str, done: bool) -> Result<(), Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let u = q.bind::<D::Backend>(Param::Text(unit.to_owned()));
        let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
        let state = if done { "state = 'done', " } else { "" };
        q.sql = format!(
            "UPDATE {JOBS} SET {state}lease_owner = NULL, lease_until = NULL, updated_at = {} \
             WHERE job = {j} AND unit = {u} AND lease_owner = {me}",
            D::Backend::now()
        );
        for attempt in 0..RETRIES {
            match transaction(db, async |db| Ok(db.exec(&q).await?)).await {
                Err(e) if is_deadlock(&e) => backoff(db, attempt).await,
                other => return other.map(|_| ()).map_err(tx_err),
            }
        }
        Err(Error::Contended)
    }

    /// Sets this run's done units back to pending, from their start.
    async fn reopen<D: JobDb>(&self, db: &mut D) -> Result<(), Error> {
        let mut q = Query::new();
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let ours = self.units_in::<D::Backend>(&mut q);
        q.sql = format!(
            "UPDATE {JOBS} SET state = 'pending', last_key = NULL, lease_owner = NULL, \
             lease_until = NULL, updated_at = {} WHERE job = {j} AND {ours} AND state = 'done'",
            D::Backend::now()
        );
        for attempt in 0..RETRIES {
            match transaction(db, async |db| Ok(db.exec(&q).await?)).await {
                Err(e) if is_deadlock(&e) => backoff(db, attempt).await,
                other => return other.map(|_| ()).map_err(tx_err),
            }
        }
        Err(Error::Contended)
    }

    /// Processes a claimed unit batch by batch. Returns `false` when `max_batches` stopped it
    /// (or its lease was lost).
    async fn work<D: JobDb, F: FnMut(&Progress)>(
        &mut self,
        db: &mut D,
        mut unit: Unit,
        on_batch: &mut F,
    ) -> Result<bool, Error> {
        let pass = self
            .passes
            .get(unit.pass)
            .ok_or_else(|| Error::Job("pass".into()))?;
        let t = &self.table;
        let index = match &pass.op {
            Op::Reindex { params } => Some(params.index_column),
            _ => None,
        };
        let mut deadlocks = 0u32;
        loop {
            if self
                .options
                .max_batches
                .is_some_and(|max| self.report.batches >= max)
            {
                self.release(db, &unit.name, false).await?;
                return Ok(false);
            }
            let mut q = Query::new();
            let mut conds = range_conds::<D::Backend>(
                &mut q,
                t,
                unit.from.as_ref(),
                unit.to.as_ref(),
                unit.last.as_ref(),
            )?;
            conds.push(pass.todo_cond::<D::Backend>());
            select::<D::Backend>(
                t,
                &pass.read_expr::<D::Backend>(),
                index,
                &conds,
                &mut q,
                Some(self.options.batch.max(1)),
            );
            let rows = D::Backend::load_rows(db, &q).await.map_err(job_err)?;
            let Some(last) = rows.last().map(|r| RowKey(r.key.clone())) else {
                self.release(db, &unit.name, true).await?;
                return Ok(true);
            };
            // Opening and sealing run outside the transaction: they are pure computation.
            let mut writes = Vec::new();
            let mut skips: BTreeMap<SkipReason, u64> = BTreeMap::new();
            for row in rows {
                let bind = match t.binding(&row) {
                    Ok(b) => b,
                    Err(r) => {
                        *skips.entry(r).or_default() += 1;
                        continue;
                    }
                };
                let old = Zeroizing::new(row.v.unwrap_or_default());
                match prepare(
                    self.keyring,
                    t,
                    pass,
                    &old,
                    row.i.as_deref(),
                    row.t.as_deref(),
                    bind.as_ref(),
                )? {
                    Outcome::Write(sets) => writes.push(Write {
                        key: row.key,
                        old,
                        sets,
                    }),
                    Outcome::Nothing => {}
                    Outcome::Skip(r) => *skips.entry(r).or_default() += 1,
                }
            }
            if let Some(hook) = self.options.before_write {
                hook();
            }
            let outcome = transaction(db, async |db| -> Result<(u64, u64), TxError> {
                self.fence(db, &unit.name).await?;
                let (mut ok, mut missed) = (0u64, 0u64);
                for w in &writes {
                    match self.cas_retrying(db, pass, w).await? {
                        Cas::Written => ok += 1,
                        Cas::Superseded => missed += 1,
                        // Left for the closing check, which counts it independently.
                        Cas::Unsettled => {}
                    }
                }
                let mut q = Query::new();
                let lk = q.bind::<D::Backend>(Param::Text(last.encode()));
                let n = q.bind::<D::Backend>(Param::Int(i64::try_from(ok).unwrap_or(i64::MAX)));
                let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
                let u = q.bind::<D::Backend>(Param::Text(unit.name.clone()));
                q.sql = format!(
                    "UPDATE {JOBS} SET last_key = {lk}, rows_done = rows_done + {n} \
                     WHERE job = {j} AND unit = {u}"
                );
                db.exec(&q).await?;
                Ok((ok, missed))
            })
            .await;
            drop(writes);
            let (ok, missed) = match outcome {
                Ok(v) => v,
                Err(TxError::LeaseLost) => return Ok(false),
                // A deadlock victim (InnoDB) was rolled back whole: read the batch again.
                Err(e) if is_deadlock(&e) && deadlocks < RETRIES => {
                    backoff(db, deadlocks).await;
                    deadlocks += 1;
                    continue;
                }
                Err(e) => return Err(tx_err(e)),
            };
            deadlocks = 0;
            // Counted once the batch is committed: a rolled-back batch is read again.
            for (r, n) in skips {
                *self.report.skipped.entry(r).or_default() += n;
            }
            unit.last = Some(last);
            unit.rows_done = unit
                .rows_done
                .saturating_add(i64::try_from(ok).unwrap_or(0));
            self.report.batches += 1;
            self.report.written += ok;
            self.report.conflicts += missed;
            report_batch(
                self.job,
                on_batch,
                Progress {
                    column: pass.writes,
                    rows_done: u64::try_from(unit.rows_done).unwrap_or(0),
                    conflicts: self.report.conflicts,
                    last_key: unit.last.clone(),
                },
            );
        }
    }

    /// Renews this worker's lease on `unit`, first thing in a batch's transaction (it locks
    /// the unit's row): a worker that lost the unit writes nothing.
    async fn fence<D: JobDb>(&self, db: &mut D, unit: &str) -> Result<(), TxError> {
        let mut q = Query::new();
        let l = q.bind::<D::Backend>(Param::Int(self.lease_secs()));
        let j = q.bind::<D::Backend>(Param::Text(self.job.to_owned()));
        let u = q.bind::<D::Backend>(Param::Text(unit.to_owned()));
        let me = q.bind::<D::Backend>(Param::Text(self.worker.clone()));
        let now = D::Backend::now();
        q.sql = format!(
            "UPDATE {JOBS} SET lease_until = {now} + {l}, updated_at = {now} \
             WHERE job = {j} AND unit = {u} AND lease_owner = {me} AND state = 'pending'"
        );
        if db.exec(&q).await? == 1 {
            Ok(())
        } else {
            Err(TxError::LeaseLost)
        }
    }

    /// Compare-and-swap of one value; on a miss, reads the row again and retries, so a value
    /// another job re-sealed meanwhile is still processed.
    async fn cas_retrying<D: JobDb>(
        &self,
        db: &mut D,
        pass: &Pass<'_>,
        w: &Write,
    ) -> Result<Cas, TxError> {
        let t = &self.table;
        let mut sets = w.sets.clone();
        let mut old: Zeroizing<Vec<u8>> = w.old.clone();
        for attempt in 0..4 {
            let mut q = Query::new();
            let assigns: Vec<String> = sets
                .iter()
                .map(|(c, v)| {
                    let ph = match v {
                        Some(v) => q.bind::<D::Backend>(Param::Bytes(v.clone())),
                        None => "NULL".to_owned(),
                    };
                    format!("{} = {ph}", D::Backend::quote(c))
                })
                .collect();
            let k = key_eq::<D::Backend>(&mut q, t, &w.key)?;
            let o = q.bind::<D::Backend>(Param::Bytes(old.to_vec()));
            q.sql = format!(
                "UPDATE {} SET {} WHERE {k} AND {} = {o}",
                t.quoted,
                assigns.join(", "),
                pass.read_expr::<D::Backend>()
            );
            let changed = db.exec(&q).await?;
            // The bound copy of the old value may be legacy plaintext.
            for p in &mut q.params {
                if let Param::Bytes(b) = p {
                    zeroize::Zeroize::zeroize(b);
                }
            }
            if changed > 0 {
                return Ok(Cas::Written);
            }
            if attempt == 3 {
                break;
            }
            let mut r = Query::new();
            let index = match &pass.op {
                Op::Reindex { params } => Some(params.index_column),
                _ => None,
            };
            let k = key_eq::<D::Backend>(&mut r, t, &w.key)?;
            select::<D::Backend>(
                t,
                &pass.read_expr::<D::Backend>(),
                index,
                &[k],
                &mut r,
                Some(1),
            );
            if D::Backend::SKIP_LOCKED {
                // A locking read sees the latest committed row, not the transaction's snapshot
                // (MySQL's REPEATABLE READ would return the bytes that just missed).
                r.sql.push_str(" FOR UPDATE");
            }
            let Some(row) = D::Backend::load_rows(db, &r).await?.into_iter().next() else {
                return Ok(Cas::Superseded); // deleted meanwhile
            };
            let Ok(bind) = t.binding(&row) else {
                return Ok(Cas::Superseded);
            };
            let Some(v) = row.v else {
                return Ok(Cas::Superseded);
            };
            old = Zeroizing::new(v);
            match prepare(
                self.keyring,
                t,
                pass,
                &old,
                row.i.as_deref(),
                row.t.as_deref(),
                bind.as_ref(),
            )? {
                Outcome::Write(s) => sets = s,
                Outcome::Nothing | Outcome::Skip(_) => return Ok(Cas::Superseded),
            }
        }
        Ok(Cas::Unsettled)
    }

    /// Values in this run's scope still to do, counted independently of the work: values on
    /// a retired key (in SQL, from the header bytes) or legacy values (by [`format::classify`]).
    async fn remaining<D: JobDb>(&self, db: &mut D) -> Result<u64, Error> {
        let t = &self.table;
        let (from, to) = match &self.options.scope {
            Scope::Range { from, to } => (from.clone(), to.clone()),
            _ => (None, None),
        };
        let mut total = 0u64;
        for pass in &self.passes {
            let col = D::Backend::quote(pass.column.column);
            match &pass.op {
                Op::Rotate { retired, older } => {
                    let mut q = Query::new();
                    let mut conds =
                        range_conds::<D::Backend>(&mut q, t, from.as_ref(), to.as_ref(), None)?;
                    conds.push(rotate_cond::<D::Backend>(&col, retired, older));
                    q.sql = format!(
                        "SELECT COUNT(*) AS n FROM {} WHERE {}",
                        t.quoted,
                        conds.join(" AND ")
                    );
                    let n = D::Backend::count_q(db, &q).await.map_err(job_err)?;
                    total += u64::try_from(n).unwrap_or(0);
                }
                Op::Backfill { legacy } => {
                    total +=
                        count_not_null(db, t, legacy.column, from.as_ref(), to.as_ref()).await?;
                }
                Op::Encrypt => {
                    total +=
                        scan_legacy(db, self.keyring, t, pass.column, from.as_ref(), to.as_ref())
                            .await?;
                }
                // Every index recomputed from its decrypted value and compared with the stored
                // one; rows that cannot be opened were reported as skipped.
                Op::Reindex { params } => {
                    total += scan(
                        db,
                        t,
                        pass.column.column,
                        Some(params.index_column),
                        from.as_ref(),
                        to.as_ref(),
                        |row, v| {
                            let Ok(bind) = t.binding(row) else {
                                return false;
                            };
                            fresh_index(
                                self.keyring,
                                t,
                                pass.column,
                                params,
                                v,
                                row.t.as_deref(),
                                bind.as_ref(),
                            )
                            .is_ok_and(|new| row.i.as_deref() != Some(new.as_slice()))
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(total)
    }

    async fn run<D: JobDb, F: FnMut(&Progress)>(
        mut self,
        db: &mut D,
        on_batch: &mut F,
    ) -> Result<JobReport, Error> {
        self.report.already_finished = self.plan(db).await?;
        let mut stopped = false;
        // A model with nothing for this job to do (a reindex of a model without indexes).
        while !self.units.is_empty() {
            if self
                .options
                .max_batches
                .is_some_and(|max| self.report.batches >= max)
            {
                stopped = true;
                break;
            }
            match self.claim_retrying(db).await? {
                Some(unit) => {
                    if !self.work(db, unit, on_batch).await?
                        && self
                            .options
                            .max_batches
                            .is_some_and(|max| self.report.batches >= max)
                    {
                        stopped = true;
                        break;
                    }
                }
                None => {
                    if self.pending(db).await? == 0 {
                        break;
                    }
                    // Every unit left is held by another live worker: wait for it to finish
                    // or for its lease to run out.
                    db.sleep(self.options.lease.min(Duration::from_millis(500)) / 2)
                        .await;
                }
            }
        }
        if stopped {
            self.report.finished = false;
            return Ok(self.report);
        }
        let remaining = self.remaining(db).await?;
        self.report.remaining += remaining;
        self.report.finished = self.report.remaining == 0;
        if remaining > 0 {
            // Every unit passed, yet values are left: written behind the units since (an
            // application still on the old keyring or the legacy column) or skipped. The next
            // run of this job walks the units again instead of calling itself finished.
            self.reopen(db).await?;
        }
        Ok(self.report)
    }
}

enum Cas {
    Written,
    /// A fresh read showed nothing left to do (an application write won).
    Superseded,
    /// The row kept changing under every retry.
    Unsettled,
}

/// Whether the database rolled the transaction back as a deadlock victim (InnoDB) or a
/// serialization failure: the whole transaction may run again.
fn is_deadlock(e: &TxError) -> bool {
    matches!(
        e,
        TxError::Db(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::SerializationFailure,
            _,
        )) | TxError::Lib(Error::Contended)
    )
}

/// Retries of one transaction the database rolled back; then [`Error::Contended`].
const RETRIES: u32 = 12;

/// A random pause before retry `attempt` (from 0): workers that collided do not collide again
/// in step. Grows from about 5 ms to at most about 1 s.
async fn backoff<D: JobDb>(db: &mut D, attempt: u32) {
    let mut r = [0u8; 2];
    let jitter = match getrandom::fill(&mut r) {
        Ok(()) => u64::from(u16::from_le_bytes(r)),
        Err(_) => 32_768,
    };
    let base = 5u64.saturating_mul(1 << attempt.min(8)).min(1_000);
    // base/2 .. base*3/2
    let ms = base / 2 + base * jitter / 65_536;
    db.sleep(Duration::from_millis(ms)).await;
}

/// A job transaction. On MySQL/MariaDB a top-level one runs at `READ COMMITTED`: InnoDB's
/// next-key (gap) locks of `REPEATABLE READ` are what makes workers on neighbouring ranges,
/// or planners inserting into an empty job, deadlock; every read of the jobs that decides a
/// write is a locking read or a compare-and-swap, so the snapshot level adds nothing. Inside
/// a caller's transaction the caller's level stands.
async fn transaction<D: JobDb, T>(
    db: &mut D,
    f: impl AsyncFnOnce(&mut D) -> Result<T, TxError>,
) -> Result<T, TxError> {
    if let Some(sql) = D::Backend::BEFORE_TRANSACTION
        && db.depth()? == 0
    {
        db.exec(&Query::sql(sql)).await?;
    }
    crate::db::transaction(db, TxError::Db, f).await
}

fn tx_err(e: TxError) -> Error {
    match e {
        TxError::Lib(e) => e,
        TxError::LeaseLost => Error::Job("lease lost".into()),
        TxError::Db(e) => job_err(e),
    }
}

/// A short stable tag of a range, for unit names.
fn range_tag(from: Option<&RowKey>, to: Option<&RowKey>) -> String {
    use sha2::Digest;
    let text = format!(
        "{}..{}",
        from.map(RowKey::encode).unwrap_or_default(),
        to.map(RowKey::encode).unwrap_or_default()
    );
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn worker_name(options: &JobOptions) -> Result<String, Error> {
    if let Some(w) = &options.worker {
        // The job table's lease_owner column holds 100 bytes.
        if w.is_empty() || w.len() > 100 {
            return Err(Error::Job("a worker name is 1 to 100 bytes".into()));
        }
        return Ok(w.clone());
    }
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|_| Error::Rng)?;
    let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("pid{}-{tag}", std::process::id()))
}

async fn start<'a, D>(
    db: &mut D,
    model: &ModelInfo,
    job: &'a str,
    options: &'a JobOptions,
    keyring: &'a Keyring,
    passes: Vec<Pass<'a>>,
) -> Result<Run<'a>, Error>
where
    D: JobDb,
{
    if job.is_empty() || job.len() > 150 {
        return Err(Error::Job("a job name is 1 to 150 bytes".into()));
    }
    if let Scope::Parts(n) = options.scope
        && !(1..=MAX_PARTS).contains(&n)
    {
        return Err(Error::Job(format!(
            "Scope::Parts takes 1 to {MAX_PARTS} parts"
        )));
    }
    Ok(Run {
        job,
        worker: worker_name(options)?,
        options,
        keyring,
        table: Table {
            bind_unbound: options.bind_unbound,
            ..inspect(db, model).await?
        },
        passes,
        units: Vec::new(),
        report: JobReport::default(),
    })
}

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
                older: if !model.bind_row.is_empty() && options.bind_unbound {
                    format::OLDER_SUITES_BOUND
                } else {
                    format::OLDER_SUITES
                },
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
    start(db, model, job, options, &keyring, passes)
        .await?
        .run(db, on_batch)
        .await
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
    start(db, model, job, options, &keyring, passes)
        .await?
        .run(db, on_batch)
        .await
}

sync_and_async! {
    /// After [`crate::store::KeyStore::shred_tenant`]: deletes the rows of `model` that belong to
    /// `tenant`, `batch` rows per transaction, and returns how many it deleted. What shredding
    /// made unreadable then leaves the table too, so a listing no longer meets it (read with
    /// [`crate::Fallible`] meanwhile), and no ciphertext of the tenant stays in live rows. Copies in
    /// backups, the WAL or binlog and replicas age out as `docs/KEYS.md` says.
    ///
    /// Refused while the installed keyring still holds a live key for `tenant`: this deletes
    /// readable data only by mistake. Run it after every process has reloaded its keyring.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use encrypted_types::{Encrypted, EncryptedModel, Error, KeyMaterial, Keyring, TenantId};
    /// use encrypted_types::jobs::purge_tenant;
    ///
    /// diesel::table! { notes (id) { id -> Integer, clinic -> BigInt, body -> Binary } }
    /// #[derive(Encrypted)]
    /// #[encrypted(table = notes, tenant = clinic)]
    /// struct Note { id: i32, clinic: i64, #[encrypted] body: String }
    ///
    /// let db = &mut SqliteConnection::establish(":memory:").unwrap();
    /// diesel::sql_query("CREATE TABLE notes (id INTEGER PRIMARY KEY, clinic BIGINT NOT NULL, body BLOB NOT NULL)")
    ///     .execute(db).unwrap();
    /// // Tenant 7 is live, tenant 8 was shredded (its key destroyed).
    /// Keyring::builder()
    ///     .data_key(1, Some("7".into()), KeyMaterial::generate()?)
    ///     .primary(Some("7".into()), 1)
    ///     .destroyed_key(2)
    ///     .build()?
    ///     .install();
    /// diesel::insert_into(notes::table).values(&Note { id: 1, clinic: 7, body: "kept".into() }).execute(db).unwrap();
    /// diesel::sql_query("INSERT INTO notes VALUES (2, 8, x'01010000000200')").execute(db).unwrap();
    ///
    /// assert!(purge_tenant(db, &Note::MODEL, &TenantId::from("7"), 100).is_err());
    /// assert_eq!(purge_tenant(db, &Note::MODEL, &TenantId::from("8"), 100)?, 1);
    /// assert_eq!(notes::table.count().get_result::<i64>(db).unwrap(), 1);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NoKeyring`]; [`Error::Store`] for a live tenant or a model without a tenant
    /// column; [`Error::UnpageableKey`], [`Error::Job`].
    pub fn purge_tenant / purge_tenant_async(model: &ModelInfo, tenant: &crate::TenantId, batch: usize)
        -> Result<u64, Error> where Backend: JobTable => purge_tenant_on
}

async fn purge_tenant_on<D>(
    db: &mut D,
    model: &ModelInfo,
    tenant: &crate::TenantId,
    batch: usize,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let keyring = Keyring::complete()?;
    if keyring.primary_key(Some(tenant)).is_ok() {
        return Err(Error::Store(format!(
            "tenant {tenant} still has a live key: shred it (and reload every keyring) before purging its rows"
        )));
    }
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
        let n = transaction(db, async |db| Ok(db.exec(&d).await?))
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

fn find_column(model: &ModelInfo, column: &str) -> Result<&'static ColumnInfo, Error> {
    model
        .columns
        .iter()
        .find(|c| c.column == column)
        .ok_or_else(|| {
            Error::Store(format!(
                "{}.{column} is not an encrypted column",
                model.table
            ))
        })
}

/// Counts the rows of `column` with `from <= key < to` (non-NULL values) for which `hit` holds,
/// in keyset pages: the closing checks, independent of the work they check.
async fn scan<D>(
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
    walk(db, t, column, index, &not_null, from, to, |mut row| {
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
/// (and `index`), 2,000 rows a page in key order.
#[allow(clippy::too_many_arguments)] // the one keyset walk behind every read-only check
async fn walk<D>(
    db: &mut D,
    t: &Table,
    column: &str,
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
async fn scan_legacy<D>(
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
async fn count_not_null<D>(
    db: &mut D,
    t: &Table,
    column: &str,
    from: Option<&RowKey>,
    to: Option<&RowKey>,
) -> Result<u64, Error>
where
    D: JobDb,
{
    let mut q = Query::new();
    let mut conds = range_conds::<D::Backend>(&mut q, t, from, to, None)?;
    conds.push(format!("{} IS NOT NULL", D::Backend::quote(column)));
    q.sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {}",
        t.quoted,
        conds.join(" AND ")
    );
    let n = D::Backend::count_q(db, &q).await.map_err(job_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

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

async fn count_plaintext_on<D>(db: &mut D, model: &ModelInfo, column: &str) -> Result<u64, Error>
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

async fn key_counts_on<D>(
    db: &mut D,
    model: &ModelInfo,
) -> Result<Vec<(&'static str, KeyId, u64)>, Error>
where
    D: JobDb,
{
    let keyring = Keyring::complete()?;
    let mut out = Vec::new();
    for column in model.columns {
        let one = ModelInfo {
            columns: std::slice::from_ref(column),
            ..*model
        };
        for id in keyring.key_ids() {
            let n = crate::store::count_rows_with_keys_on(db, &[one], &[id]).await?;
            if n > 0 {
                out.push((column.column, id, n));
            }
        }
    }
    Ok(out)
}

/// Reports a committed batch: a structured `tracing` event for services, then the caller's
/// callback (a progress bar, a log line).
fn report_batch(job: &str, on_batch: &mut dyn FnMut(&Progress), progress: Progress) {
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
    /// index that `LeaksMore` says which `bits` would keep within the bound). Decrypts every value
    /// once; nothing is written.
    ///
    /// # Errors
    /// [`Error::NoKeyring`], [`Error::UnpageableKey`], [`Error::Job`].
    pub fn index_leakage / index_leakage_async(model: &ModelInfo)
        -> Result<Vec<IndexLeakage>, Error> where Backend: JobTable => index_leakage_on
}

async fn index_leakage_on<D>(db: &mut D, model: &ModelInfo) -> Result<Vec<IndexLeakage>, Error>
where
    D: JobDb,
{
    use std::collections::{BTreeMap, HashSet};
    let keyring = Keyring::complete()?;
    let t = inspect(db, model).await?;
    let mut out = Vec::new();
    for c in model.columns {
        for params in c.indexes {
            // Distinct values are counted by a full-length index (a keyed hash) of each.
            let full = IndexParams {
                bits: 256,
                ..*params
            };
            #[derive(Default)]
            struct Tally {
                rows: u64,
                stored: HashSet<Vec<u8>>,
                values: HashSet<Vec<u8>>,
                unreadable: u64,
            }
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
            for (tenant, tally) in by_tenant {
                let distinct = tally.values.len() as u64;
                let plan = crate::index::plan(tally.rows, distinct);
                out.push(IndexLeakage {
                    index_column: params.index_column,
                    tenant,
                    rows: tally.rows,
                    distinct_index_values: tally.stored.len() as u64,
                    distinct_values: distinct,
                    unreadable: tally.unreadable,
                    verdict: plan.check(params.bits),
                    plan,
                });
            }
        }
    }
    Ok(out)
}
