//! Primary keys as the jobs page by them: the kinds of key column, read from the database's
//! own catalogue. The key values are [`crate::RowKey`].

/// How a primary-key column is read, compared and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// Signed integers up to 64 bits.
    Int,
    /// Text, compared in the column's collation.
    Text,
    /// Bytes, compared bytewise.
    Bytes,
    /// PostgreSQL `uuid`.
    Uuid,
}

/// One column of a table's primary key, as the database declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column name.
    pub name: String,
    /// How it is paged.
    pub kind: KeyKind,
}

/// Maps a column type as the catalogue spells it to a kind, or `None` when the jobs cannot
/// page by it (floats, decimals, dates, `BIGINT UNSIGNED` past `i64::MAX`, unknown types).
pub(crate) fn kind_of(backend: &str, declared: &str) -> Option<KeyKind> {
    let t = declared.to_ascii_lowercase();
    let t = t.trim();
    match backend {
        "postgres" => match t {
            "smallint" | "integer" | "bigint" => Some(KeyKind::Int),
            "text" | "name" => Some(KeyKind::Text),
            "bytea" => Some(KeyKind::Bytes),
            "uuid" => Some(KeyKind::Uuid),
            // `character(n)` is left out: it reads back padded, and PostgreSQL compares it
            // with text after trimming, so a compare-and-swap by key would never match.
            _ if t.starts_with("character varying") => Some(KeyKind::Text),
            _ => None,
        },
        "mysql" => {
            let base = t.split(['(', ' ']).next().unwrap_or("");
            match base {
                "bigint" if t.contains("unsigned") => None,
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
                    Some(KeyKind::Int)
                }
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                    Some(KeyKind::Text)
                }
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    Some(KeyKind::Bytes)
                }
                _ => None,
            }
        }
        // SQLite's affinity rules (https://sqlite.org/datatype3.html §3.1), in their order.
        _ => {
            if t.contains("int") {
                Some(KeyKind::Int)
            } else if t.contains("char") || t.contains("clob") || t.contains("text") {
                Some(KeyKind::Text)
            } else if t.contains("blob") || t.is_empty() {
                Some(KeyKind::Bytes)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_each_catalogue() {
        assert_eq!(kind_of("postgres", "uuid"), Some(KeyKind::Uuid));
        assert_eq!(
            kind_of("postgres", "character varying(40)"),
            Some(KeyKind::Text)
        );
        assert_eq!(kind_of("postgres", "numeric(10,0)"), None);
        assert_eq!(kind_of("postgres", "character(8)"), None);
        assert_eq!(kind_of("mysql", "bigint(20) unsigned"), None);
        assert_eq!(kind_of("mysql", "int(10) unsigned"), Some(KeyKind::Int));
        assert_eq!(kind_of("mysql", "binary(16)"), Some(KeyKind::Bytes));
        assert_eq!(kind_of("sqlite", "VARCHAR(10)"), Some(KeyKind::Text));
        assert_eq!(kind_of("sqlite", "REAL"), None);
    }
}
