//! What one pass of a job does: rotate, reindex, encrypt or backfill one column.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

/// What one pass writes.
pub(super) enum Op<'a> {
    Rotate {
        retired: &'a [KeyId],
        /// Header prefixes of the suites to upgrade ([`format::older_suites`]).
        older: Vec<[u8; 2]>,
    },
    Reindex {
        params: &'static IndexParams,
    },
    /// Recompute a compound index from its fields (the pass's column is the first of them).
    Compound {
        params: &'static CompoundParams,
        /// The SQL columns of its fields, in order (the params name their context names).
        columns: Vec<&'static str>,
    },
    Encrypt,
    /// Seal the legacy column's values into the encrypted column, clearing the legacy one.
    Backfill {
        legacy: LegacyColumn,
    },
}

impl Op<'_> {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Rotate { .. } => "rotate",
            Self::Reindex { .. } | Self::Compound { .. } => "reindex",
            Self::Encrypt => "encrypt",
            Self::Backfill { .. } => "backfill",
        }
    }
}

impl Pass<'_> {
    /// The SQL expression of the value a batch reads and the compare-and-swap compares: the
    /// column's bytes, or the legacy column's (text as its UTF-8 bytes).
    pub(super) fn read_expr<B: JobTable>(&self) -> String {
        match &self.op {
            Op::Backfill { legacy } if legacy.text => B::text_bytes(&B::quote(legacy.column)),
            Op::Backfill { legacy } => B::quote(legacy.column),
            _ => B::quote(self.column.column),
        }
    }

    /// The condition of the rows a batch reads (besides its range).
    pub(super) fn todo_cond<B: JobTable>(&self) -> String {
        match &self.op {
            Op::Rotate { retired, older } => {
                rotate_cond::<B>(&B::quote(self.column.column), retired, older)
            }
            Op::Backfill { legacy } => format!("{} IS NOT NULL", B::quote(legacy.column)),
            // Every row: one with a NULL field must have a NULL index.
            Op::Compound { .. } => "1 = 1".to_owned(),
            _ => format!("{} IS NOT NULL", B::quote(self.column.column)),
        }
    }

    /// The columns read besides the value: a compound index's fields.
    pub(super) fn more(&self) -> Vec<&'static str> {
        match &self.op {
            Op::Compound { columns, .. } => columns.clone(),
            _ => Vec::new(),
        }
    }

    /// The index column a pass compares with what it computes.
    pub(super) fn index(&self) -> Option<&'static str> {
        match &self.op {
            Op::Reindex { params } => Some(params.index_column),
            Op::Compound { params, .. } => Some(params.index_column),
            _ => None,
        }
    }
}

/// SQL true for a value a rotation has to re-seal: sealed with a retired key, or in a suite
/// older than the one this build writes. Both read from the header bytes alone.
pub(super) fn rotate_cond<B: JobTable>(col: &str, retired: &[KeyId], older: &[[u8; 2]]) -> String {
    let mut conds = vec![B::suite_in(col, older)];
    if !retired.is_empty() {
        conds.push(B::key_id_in(col, retired));
    }
    format!("({})", conds.join(" OR "))
}

/// One column (or index) of one job.
pub(super) struct Pass<'a> {
    pub(super) column: &'static ColumnInfo,
    pub(super) op: Op<'a>,
    /// The column written: the value's, or the index's.
    pub(super) writes: &'static str,
    /// The identity recorded in the job table.
    pub(super) target: String,
}
