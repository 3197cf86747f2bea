//! What is encrypted under which key, counted in SQL: the auditor's view of a set of models.

use super::{JobDb, JobTable, job_err};
use crate::Error;
use crate::db::{Query, sync_and_async};
use crate::format;
use crate::format::key::KeyId;
use crate::model::ModelInfo;
use crate::store::KeyTable;

/// What a group of stored values is, by its leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Content {
    /// Sealed values: a format version the library reads, a suite and a data key.
    Sealed {
        /// The suite byte (`docs/FORMAT.md` §2).
        suite: u8,
        /// The data key id in the header.
        key_id: KeyId,
    },
    /// Values of the model's legacy plaintext column (`migrate_from`) still waiting for
    /// [`super::encrypt_column`].
    LegacyPlaintext,
    /// Values in an encrypted column whose bytes are no sealed value of this library (plaintext
    /// written around the model, or corrupted).
    Unrecognized,
}

/// One line of [`inventory`]: how many values of one column, tenant and key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InventoryEntry {
    /// The table.
    pub table: &'static str,
    /// The table's schema, when its model names one.
    pub schema: Option<&'static str>,
    /// The encrypted column (legacy values are counted under the column they move into).
    pub column: &'static str,
    /// The rows' tenant, as text; `None` for a model without tenants or a `NULL` tenant.
    pub tenant: Option<String>,
    /// What the values are.
    pub content: Content,
    /// Non-`NULL` values.
    pub values: u64,
}

sync_and_async! {
    /// Counts the stored values of every encrypted column of `models` by tenant, suite and
    /// data key id, in SQL from the header bytes (one grouped query per column; no value is
    /// decrypted and no keyring is needed), with the values still in legacy plaintext
    /// columns. Sorted by table, column, tenant and content.
    ///
    /// A header is taken as it is stored: a value whose header names a key does not prove it
    /// opens under that key ([`super::verify`] does).
    ///
    /// # Errors
    /// [`Error::Job`] if a query fails.
    pub fn inventory / inventory_async(models: &[ModelInfo])
        -> Result<Vec<InventoryEntry>, Error> where Backend: JobTable => inventory_on
}

pub(super) async fn inventory_on<D>(
    db: &mut D,
    models: &[ModelInfo],
) -> Result<Vec<InventoryEntry>, Error>
where
    D: JobDb,
{
    let mut out = Vec::new();
    for m in models {
        let table = D::Backend::quote_table(m.schema, m.table);
        // The tenant's UTF-8 bytes: grouping on its text would merge tenants that MySQL's
        // default collation takes for equal ("Acme" and "acme").
        let tenant = m.tenant_column.map_or_else(
            || "NULL".to_owned(),
            |t| D::Backend::text_bytes(&D::Backend::as_text(&D::Backend::quote(t))),
        );
        for c in m.columns {
            let col = D::Backend::quote(c.column);
            let q = Query::sql(format!(
                "SELECT {tenant} AS t, {} AS h, COUNT(*) AS n FROM {table} \
                 WHERE {col} IS NOT NULL GROUP BY 1, 2",
                D::Backend::head(&col, format::KEY_ID_RANGE.end),
            ));
            for row in D::Backend::load_tallies(db, &q).await.map_err(job_err)? {
                out.push(InventoryEntry {
                    table: m.table,
                    schema: m.schema,
                    column: c.column,
                    tenant: tenant_text(row.t),
                    content: content_of(row.h.as_deref().unwrap_or_default()),
                    values: u64::try_from(row.n).unwrap_or(0),
                });
            }
            if let Some(legacy) = c.legacy {
                let q = Query::sql(format!(
                    "SELECT {tenant} AS t, NULL AS h, COUNT(*) AS n FROM {table} \
                     WHERE {} IS NOT NULL GROUP BY 1",
                    D::Backend::quote(legacy.column),
                ));
                for row in D::Backend::load_tallies(db, &q).await.map_err(job_err)? {
                    out.push(InventoryEntry {
                        table: m.table,
                        schema: m.schema,
                        column: c.column,
                        tenant: tenant_text(row.t),
                        content: Content::LegacyPlaintext,
                        values: u64::try_from(row.n).unwrap_or(0),
                    });
                }
            }
        }
    }
    // Two groups can map to one entry (two unrecognized prefixes): merge them.
    out.sort_by(|a, b| {
        (a.schema, a.table, a.column, &a.tenant, a.content)
            .cmp(&(b.schema, b.table, b.column, &b.tenant, b.content))
    });
    out.dedup_by(|next, kept| {
        let same = (
            next.schema,
            next.table,
            next.column,
            &next.tenant,
            next.content,
        ) == (
            kept.schema,
            kept.table,
            kept.column,
            &kept.tenant,
            kept.content,
        );
        if same {
            kept.values += next.values;
        }
        same
    });
    Ok(out)
}

/// A tenant as the database spelled it (not valid UTF-8 only if the database's text is not).
fn tenant_text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Reads the version, suite and key id of a stored value's first bytes.
fn content_of(head: &[u8]) -> Content {
    match head {
        [format::VERSION, suite, a, b, c, d] if format::is_suite(*suite) => Content::Sealed {
            suite: *suite,
            key_id: KeyId::from(u32::from_be_bytes([*a, *b, *c, *d])),
        },
        _ => Content::Unrecognized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_and_anything_else_is_unrecognized() {
        let sealed = [format::VERSION, format::SUITE, 0, 0, 1, 2];
        assert_eq!(
            content_of(&sealed),
            Content::Sealed {
                suite: format::SUITE,
                key_id: KeyId::from(258)
            }
        );
        assert_eq!(content_of(b"ann@x"), Content::Unrecognized);
        assert_eq!(
            content_of(&[format::VERSION, 0xee, 0, 0, 0, 1]),
            Content::Unrecognized
        );
        assert_eq!(content_of(&[]), Content::Unrecognized);
    }
}
