//! How a job runs and what it reports: its scope, options, progress and skip reasons.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

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

/// The name of [`JobOptions`] in 0.1, when only the rotation took options.
#[deprecated(since = "0.2.0", note = "renamed `JobOptions`: every job takes it")]
pub type RotateOptions = JobOptions;

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
#[non_exhaustive]
pub struct Progress {
    /// The column (or index column) being written.
    pub column: &'static str,
    /// Values written so far in this unit (over every run of the job).
    pub rows_done: u64,
    /// Compare-and-swap misses so far in this run (an application write won).
    pub conflicts: u64,
    /// The unit's checkpoint: the last key done.
    pub last_key: Option<RowKey>,
    /// Values written by this run so far, over every unit.
    pub written: u64,
    /// An estimate, made when this run began, of the values the job has to write over its
    /// whole scope: counted in SQL for a rotation (values on a retired key) and a backfill
    /// (legacy values), the values stored in the column for a reindex or an in-place
    /// encryption (an upper bound). `None` if it could not be counted. Workers sharing a job
    /// each see the whole job's estimate.
    pub estimated_total: Option<u64>,
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
    /// Sealed with no schema in a column whose model names one (and does not adopt such
    /// values), or with a schema in a column whose model names none ([`Error::SchemaMismatch`]).
    SchemaMismatch,
    /// A sealed value that authenticates but whose plaintext is not a valid encoding of the
    /// column's type ([`verify`]).
    InvalidPlaintext,
    /// `NULL` in a column whose field is not optional, with no legacy value either: the
    /// application cannot read the row ([`verify`]).
    NoValue,
    /// Bytes in the sealed column that are no sealed value of this library (by the test the
    /// backfill uses, [`crate::format::classify`]): plaintext written around the model (raw
    /// SQL, an old application version writing by the column's name), or foreign bytes.
    Plaintext,
    /// The legacy column (`migrate_from`) holds a value beside a sealed one, so the
    /// application reads the legacy value ([`verify`]). An old application version that still
    /// writes the legacy column leaves this; plaintext planted there by anyone who can write the
    /// table does too, and reads as genuine until [`super::encrypt_column`] seals it.
    LegacyShadows,
    /// Any other error of opening or sealing the value.
    Other,
}

impl SkipReason {
    /// What it means for the value, in a few words, for reports (never the value itself).
    ///
    /// ```
    /// use encrypted_types::jobs::SkipReason;
    /// assert_eq!(SkipReason::Plaintext.describe(), "not a sealed value: plaintext or foreign bytes");
    /// ```
    pub const fn describe(self) -> &'static str {
        match self {
            Self::KeyDestroyed => "sealed under a destroyed key",
            Self::UnknownKey => "sealed under a key the key table does not hold",
            Self::AuthenticationFailed => "does not authenticate (tampered or copied)",
            Self::InvalidLegacyValue => "legacy value not valid for the column's type",
            Self::NoTenantKey => "the row's tenant has no data key",
            Self::TenantMismatch => "sealed under another tenant's key",
            Self::RowBinding => {
                "not bound to this row (sealed before the model declared bind_row: \
                 `jobs rotate --bind-unbound` binds such values once; or copied from another row)"
            }
            Self::SchemaMismatch => {
                "sealed without the model's schema (declare adopt_schema for a rotation to \
                 re-seal such values; or copied from the table of the same name in another \
                 schema)"
            }
            Self::InvalidPlaintext => "opens, but is not valid for the column's type",
            Self::NoValue => "NULL in a required column",
            Self::Plaintext => "not a sealed value: plaintext or foreign bytes",
            Self::LegacyShadows => {
                "the legacy column holds a value beside the sealed one, and is what the \
                 application reads"
            }
            Self::Other => "does not open",
        }
    }

    pub(super) fn of(e: &Error) -> Self {
        match e {
            Error::KeyDestroyed(_) => Self::KeyDestroyed,
            Error::UnknownKeyId(_) => Self::UnknownKey,
            Error::AuthenticationFailed => Self::AuthenticationFailed,
            Error::InvalidPlaintext { .. } => Self::InvalidLegacyValue,
            // A shredded tenant's legacy plaintext is still readable where it lies: not
            // "destroyed" (`purge_tenant` deletes it).
            Error::NoPrimaryKey { .. }
            | Error::NoBlindIndexKey { .. }
            | Error::TenantShredded { .. } => Self::NoTenantKey,
            Error::TenantMismatch { .. } => Self::TenantMismatch,
            Error::RowBinding | Error::InvalidRowBinding => Self::RowBinding,
            Error::SchemaMismatch => Self::SchemaMismatch,
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

    /// Adds a later phase's report: finished when both are.
    pub(super) fn absorb(&mut self, later: JobReport) {
        self.written += later.written;
        self.conflicts += later.conflicts;
        self.batches += later.batches;
        for (r, n) in later.skipped {
            *self.skipped.entry(r).or_default() += n;
        }
        self.remaining += later.remaining;
        self.already_finished &= later.already_finished;
        self.finished &= later.finished;
    }
}
