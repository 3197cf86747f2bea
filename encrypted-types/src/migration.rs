//! Encrypting a column that held plaintext, without downtime: while a column is in
//! *plaintext fallback*, a stored value that is not a sealed value (its first bytes are not a
//! version 1 header) is read as the plaintext encoding of the field's type, and counted. The
//! backfill job (`jobs::encrypt_column`) seals those rows in checkpointed batches; once
//! `jobs::count_plaintext` reports zero, stop the fallback and reads are strict again.
//!
//! While the fallback is on, anyone who can write the column can plant a plaintext value that
//! reads as genuine: that is what "legacy plaintext is accepted" means. Keep the window short.
//! Plaintext that was overwritten or dropped survives in WAL, replicas and backups until they
//! age out (`docs/KEYS.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

struct Column {
    table: &'static str,
    column: &'static str,
    reads: AtomicU64,
}

static FALLBACK: std::sync::LazyLock<ArcSwap<Vec<Arc<Column>>>> =
    std::sync::LazyLock::new(|| ArcSwap::from_pointee(Vec::new()));

/// Starts reading legacy plaintext in `table.column` (see the module docs). For a model that
/// names its schema, `table` is `"schema.table"`: the fallback of one schema's table never
/// applies to the table of the same name in another.
///
/// ```
/// use encrypted_types::migration;
/// migration::allow_plaintext("patients", "notes");
/// assert_eq!(migration::plaintext_reads("patients", "notes"), Some(0));
/// migration::stop_plaintext("patients", "notes");
/// assert_eq!(migration::plaintext_reads("patients", "notes"), None);
/// ```
pub fn allow_plaintext(table: &'static str, column: &'static str) {
    FALLBACK.rcu(|cols| {
        let mut cols = (**cols).clone();
        if !cols.iter().any(|c| c.table == table && c.column == column) {
            cols.push(Arc::new(Column {
                table,
                column,
                reads: AtomicU64::new(0),
            }));
        }
        cols
    });
}

/// Stops the fallback: every value of `table.column` must be sealed again.
pub fn stop_plaintext(table: &'static str, column: &'static str) {
    FALLBACK.rcu(|cols| {
        cols.iter()
            .filter(|c| !(c.table == table && c.column == column))
            .cloned()
            .collect::<Vec<_>>()
    });
}

/// How many plaintext values were read in `table.column` since its fallback started, or
/// `None` if it is not in fallback.
pub fn plaintext_reads(table: &str, column: &str) -> Option<u64> {
    FALLBACK
        .load()
        .iter()
        .find(|c| c.table == table && c.column == column)
        .map(|c| c.reads.load(Ordering::Relaxed))
}

/// Whether `table.column` of `schema` is in fallback; counts the read if it is.
pub(crate) fn take_plaintext(schema: Option<&str>, table: &str, column: &str) -> bool {
    let cols = FALLBACK.load();
    // `schema.table` for a model that names its schema, compared without building it.
    let named = |c: &Column| match schema {
        None => c.table == table,
        Some(s) => {
            c.table
                .strip_prefix(s)
                .and_then(|rest| rest.strip_prefix('.'))
                == Some(table)
        }
    };
    match cols.iter().find(|c| named(c) && c.column == column) {
        Some(c) => {
            c.reads.fetch_add(1, Ordering::Relaxed);
            true
        }
        None => false,
    }
}
