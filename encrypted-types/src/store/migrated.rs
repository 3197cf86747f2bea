//! Which of the library's own migrations a database lacks: asked only after a query on the key
//! or job table failed, so that the error names the migration to add instead of a column the
//! reader never created (an application that copied the first migrations and not a later one,
//! or applied them by hand).

use super::sql::KeyTable;
use crate::Error;
use crate::db::{Db, Query};

/// One migration of the library's tables and a query that fails exactly when it is missing.
pub(crate) struct Needed {
    table: &'static str,
    migration: &'static str,
    probe: &'static str,
}

/// The key table's migrations, oldest first.
pub(crate) const KEY_TABLE: &[Needed] = &[
    Needed {
        table: "encrypted_types_keys",
        migration: "2026-11-22-000000_encrypted_types_keys",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_keys",
    },
    Needed {
        table: "encrypted_types_keys",
        migration: "2026-12-02-000001_encrypted_types_key_hierarchy",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_keys WHERE generation IS NULL \
                AND check_value IS NULL AND mac_key_id IS NULL AND record_mac IS NULL",
    },
    Needed {
        table: "encrypted_types_keys",
        migration: "2026-12-07-000000_encrypted_types_kek_check",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_keys WHERE kek_check IS NULL",
    },
    Needed {
        table: "encrypted_types_key_manifest",
        migration: "2026-12-08-000000_encrypted_types_key_manifest",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_key_manifest WHERE mac IS NULL",
    },
];

/// The job table's migrations, oldest first.
pub(crate) const JOB_TABLE: &[Needed] = &[
    Needed {
        table: "encrypted_types_jobs",
        migration: "2026-11-22-000002_encrypted_types_jobs",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_jobs",
    },
    Needed {
        table: "encrypted_types_jobs",
        migration: "2026-12-02-000000_encrypted_types_job_units",
        probe: "SELECT COUNT(*) AS n FROM encrypted_types_jobs WHERE unit IS NULL \
                AND range_from IS NULL AND lease_owner IS NULL",
    },
];

/// `error` (a failed query on a library table) or, when the database answers a trivial query
/// and one of `needed` is not applied, [`Error::MissingMigration`] naming the first such.
/// Inside a transaction the failed query already aborted (PostgreSQL), even the trivial query
/// fails and `error` is returned unchanged: a guess would send the reader the wrong way.
pub(crate) async fn explain<D: Db<Backend: KeyTable>>(
    db: &mut D,
    needed: &[Needed],
    error: Error,
) -> Error {
    if D::Backend::count_q(db, &Query::sql("SELECT COUNT(*) AS n"))
        .await
        .is_err()
    {
        return error;
    }
    for n in needed {
        match D::Backend::count_q(db, &Query::sql(n.probe)).await {
            Ok(_) => {}
            // Only a table or column the database does not know is a missing migration; a
            // refused right, a lock or a timeout is reported as it is.
            Err(e) if undefined(&e.to_string()) => {
                return Error::MissingMigration {
                    table: n.table,
                    migration: n.migration,
                };
            }
            Err(_) => return error,
        }
    }
    error
}

/// Whether a database error says a table or column does not exist, as PostgreSQL, MySQL or
/// MariaDB and SQLite word it.
fn undefined(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ((m.contains("relation") || m.contains("column")) && m.contains("does not exist"))
        || m.contains("doesn't exist")
        || m.contains("unknown column")
        || m.contains("no such table")
        || m.contains("no such column")
}
