//! The SQL the jobs need, per backend: dynamic binds, rows keyed by any primary-key tuple, the
//! catalogue query that finds a table's primary key, the clock and the locking clause used by
//! the leases.

use diesel::deserialize::{self, FromSql, QueryableByName};
use diesel::row::NamedRow;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};

use super::key::KeyKind;
use crate::KeyPart;
use crate::store::KeyTable;

use std::future::Future;

use crate::db::{Db, Query};

/// How many primary-key columns the jobs page by, at most.
pub(crate) const MAX_KEY_PARTS: usize = 8;

/// Column aliases of key part `n`, one per kind: the row reader finds each part by the alias
/// the query gave it.
pub(crate) const KEY_ALIASES: [[&str; 4]; MAX_KEY_PARTS] = [
    ["k0_i", "k0_t", "k0_b", "k0_u"],
    ["k1_i", "k1_t", "k1_b", "k1_u"],
    ["k2_i", "k2_t", "k2_b", "k2_u"],
    ["k3_i", "k3_t", "k3_b", "k3_u"],
    ["k4_i", "k4_t", "k4_b", "k4_u"],
    ["k5_i", "k5_t", "k5_b", "k5_u"],
    ["k6_i", "k6_t", "k6_b", "k6_u"],
    ["k7_i", "k7_t", "k7_b", "k7_u"],
];

pub(crate) fn alias(n: usize, kind: KeyKind) -> &'static str {
    KEY_ALIASES
        .get(n)
        .and_then(|a| a.get(kind_index(kind)))
        .copied()
        .unwrap_or("k_overflow")
}

/// The aliases of a compound index's fields in a job's query, one per field.
pub(crate) const MORE_ALIASES: [&str; crate::index::MAX_FIELDS] =
    ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"];

/// Column aliases of `bind_row` part `n`, one per kind, as for the key.
pub(crate) const BIND_ALIASES: [[&str; 4]; crate::MAX_ROW_PARTS] = [
    ["r0_i", "r0_t", "r0_b", "r0_u"],
    ["r1_i", "r1_t", "r1_b", "r1_u"],
    ["r2_i", "r2_t", "r2_b", "r2_u"],
    ["r3_i", "r3_t", "r3_b", "r3_u"],
];

pub(crate) fn bind_alias(n: usize, kind: KeyKind) -> &'static str {
    BIND_ALIASES
        .get(n)
        .and_then(|a| a.get(kind_index(kind)))
        .copied()
        .unwrap_or("r_overflow")
}

fn kind_index(kind: KeyKind) -> usize {
    match kind {
        KeyKind::Int => 0,
        KeyKind::Text => 1,
        KeyKind::Bytes => 2,
        KeyKind::Uuid => 3,
    }
}

/// A row read by a job: its primary-key tuple, its `bind_row` identity, the stored value
/// (`v`), a stored index (`i`) and the row's tenant as text (`t`).
#[doc(hidden)]
pub struct Row {
    pub(crate) key: Vec<KeyPart>,
    pub(crate) bind: Vec<KeyPart>,
    pub(crate) v: Option<Vec<u8>>,
    /// The fields of a compound index, when the query read them (`w0`, `w1`, ...): wiped on
    /// drop, as a field may still hold legacy plaintext.
    pub(crate) more: Vec<Option<zeroize::Zeroizing<Vec<u8>>>>,
    pub(crate) i: Option<Vec<u8>>,
    pub(crate) t: Option<String>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn uuid_from_text(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The canonical text of a UUID, as PostgreSQL prints it.
pub(crate) fn uuid_text(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The parts a query named with `aliases`: each part by its kind; the first position with no
/// alias (or a NULL) ends the tuple.
fn parts<'a, DB>(
    row: &impl NamedRow<'a, DB>,
    aliases: &[[&str; 4]],
) -> deserialize::Result<Vec<KeyPart>>
where
    DB: diesel::backend::Backend,
    i64: FromSql<BigInt, DB>,
    String: FromSql<Text, DB>,
    Vec<u8>: FromSql<Binary, DB>,
{
    let mut out = Vec::new();
    for [i, t, b, u] in aliases {
        if let Ok(v) = NamedRow::get::<BigInt, i64>(row, i) {
            out.push(KeyPart::Int(v));
        } else if let Ok(v) = NamedRow::get::<Text, String>(row, t) {
            out.push(KeyPart::Text(v));
        } else if let Ok(v) = NamedRow::get::<Binary, Vec<u8>>(row, b) {
            out.push(KeyPart::Bytes(v));
        } else if let Ok(v) = NamedRow::get::<Text, String>(row, u) {
            out.push(KeyPart::Uuid(
                uuid_from_text(&v).ok_or("a uuid key column did not read as a UUID")?,
            ));
        } else {
            break;
        }
    }
    Ok(out)
}

impl<DB> QueryableByName<DB> for Row
where
    DB: diesel::backend::Backend,
    i64: FromSql<BigInt, DB>,
    String: FromSql<Text, DB>,
    Vec<u8>: FromSql<Binary, DB>,
{
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            key: parts(row, &KEY_ALIASES)?,
            bind: parts(row, &BIND_ALIASES)?,
            v: NamedRow::get::<Nullable<Binary>, Option<Vec<u8>>>(row, "v")?,
            // Present up to the query's number of fields: a missing alias ends the list.
            more: MORE_ALIASES
                .iter()
                .map_while(|a| NamedRow::get::<Nullable<Binary>, Option<Vec<u8>>>(row, a).ok())
                .map(|v| v.map(zeroize::Zeroizing::new))
                .collect(),
            i: NamedRow::get::<Nullable<Binary>, Option<Vec<u8>>>(row, "i")?,
            t: NamedRow::get::<Nullable<Text>, Option<String>>(row, "t")?,
        })
    }
}

/// One row of the job table.
#[doc(hidden)]
#[derive(diesel::QueryableByName, Clone)]
pub struct UnitRow {
    #[diesel(sql_type = Text)]
    pub(crate) unit: String,
    #[diesel(sql_type = Text)]
    pub(crate) operation: String,
    #[diesel(sql_type = Text)]
    pub(crate) target: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) range_from: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) range_to: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) last_key: Option<String>,
    #[diesel(sql_type = Text)]
    pub(crate) state: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) rows_done: i64,
}

// Range bounds and checkpoints are key values (maybe an email): not printed.
impl std::fmt::Debug for UnitRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitRow")
            .field("unit", &self.unit)
            .field("operation", &self.operation)
            .field("state", &self.state)
            .field("rows_done", &self.rows_done)
            .finish_non_exhaustive()
    }
}

/// A primary-key column as the catalogue describes it.
#[doc(hidden)]
#[derive(diesel::QueryableByName, Debug)]
pub struct CatalogRow {
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
    #[diesel(sql_type = Text)]
    pub(crate) ty: String,
}

/// A group of stored values: tenant, leading header bytes, count ([`super::inventory`]).
#[doc(hidden)]
#[derive(diesel::QueryableByName, Debug)]
pub struct TallyRow {
    #[diesel(sql_type = Nullable<Binary>)]
    pub(crate) t: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub(crate) h: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// One unit of the job table as [`super::status`] reads it (no key values).
#[doc(hidden)]
#[derive(diesel::QueryableByName, Debug)]
pub struct StatusRow {
    #[diesel(sql_type = Text)]
    pub(crate) job: String,
    #[diesel(sql_type = Text)]
    pub(crate) operation: String,
    #[diesel(sql_type = Text)]
    pub(crate) state: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) rows_done: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub(crate) lease_until: Option<i64>,
    #[diesel(sql_type = BigInt)]
    pub(crate) updated_at: i64,
    #[diesel(sql_type = BigInt)]
    pub(crate) db_now: i64,
}

/// The SQL the jobs need, per backend.
pub trait JobTable: KeyTable {
    /// `sqlite`, `postgres` or `mysql`: how the catalogue spells types.
    #[doc(hidden)]
    const NAME: &'static str;
    /// Whether claims lock with `FOR UPDATE SKIP LOCKED` (SQLite has one writer at a time).
    #[doc(hidden)]
    const SKIP_LOCKED: bool;
    /// A statement run before a job's own (top-level) transaction.
    #[doc(hidden)]
    const BEFORE_TRANSACTION: Option<&'static str>;
    /// The select expression of a key column of `kind`, read back as its alias's type.
    #[doc(hidden)]
    fn key_select(kind: KeyKind, col: &str) -> String;
    /// A placeholder as compared with a key column of `kind`.
    #[doc(hidden)]
    fn key_param(kind: KeyKind, ph: String) -> String;
    /// `CAST(expr AS <text>)`.
    #[doc(hidden)]
    fn as_text(expr: &str) -> String;
    /// The UTF-8 bytes of the text `expr`: compared byte for byte, so no collation (MySQL's
    /// case-insensitive, pad-space defaults) takes two different values for equal.
    #[doc(hidden)]
    fn text_bytes(expr: &str) -> String;
    /// The first `len` bytes of the binary `expr`.
    #[doc(hidden)]
    fn head(expr: &str, len: usize) -> String;
    /// The database's clock in unix seconds: leases do not depend on the workers' clocks.
    #[doc(hidden)]
    fn now() -> &'static str;
    /// The primary-key columns of the table named by parameter 1 in the schema named by
    /// parameter 2 (the connection's own for an empty text), in key order.
    #[doc(hidden)]
    fn catalogue() -> &'static str;
    /// Every column of the table named by parameters 1 and 2 as for [`JobTable::catalogue`]
    /// (`name`, `ty`: its type as declared).
    #[doc(hidden)]
    const COLUMNS: &'static str;
    /// Every index of the table named by parameters 1 and 2 as rows (`name`: the index, `ty`:
    /// one column), ordered by index and position in it.
    #[doc(hidden)]
    const INDEXES: &'static str;
    /// Whether a column declared `ty` (as [`JobTable::COLUMNS`] reports it) stores bytes as
    /// they are.
    #[doc(hidden)]
    fn is_binary(ty: &str) -> bool;
    /// Loads job rows.
    #[doc(hidden)]
    fn load_rows<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = diesel::QueryResult<Vec<Row>>> + Send;
    /// Loads units of the job table.
    #[doc(hidden)]
    fn load_units<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = diesel::QueryResult<Vec<UnitRow>>> + Send;
    /// Loads catalogue rows.
    #[doc(hidden)]
    fn load_catalogue<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = diesel::QueryResult<Vec<CatalogRow>>> + Send;
    /// Loads grouped counts.
    #[doc(hidden)]
    fn load_tallies<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = diesel::QueryResult<Vec<TallyRow>>> + Send;
    /// Loads the job table's units for a status report.
    #[doc(hidden)]
    fn load_status<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = diesel::QueryResult<Vec<StatusRow>>> + Send;
}

macro_rules! job_table {
    ($db:ty, name = $name:literal, skip_locked = $skip:literal,
     before_transaction = $before:expr,
     key_select = $ks:expr, key_param = $kp:expr, text = $text:literal, text_bytes = $tb:expr,
     head = $head:expr, now = $now:literal,
     catalogue = $cat:literal, columns = $cols:literal, indexes = $idx:literal,
     is_binary = $bin:expr) => {
        impl JobTable for $db {
            const NAME: &'static str = $name;
            const SKIP_LOCKED: bool = $skip;
            const BEFORE_TRANSACTION: Option<&'static str> = $before;

            fn key_select(kind: KeyKind, col: &str) -> String {
                let f: fn(KeyKind, &str) -> String = $ks;
                f(kind, col)
            }

            fn key_param(kind: KeyKind, ph: String) -> String {
                let f: fn(KeyKind, String) -> String = $kp;
                f(kind, ph)
            }

            fn text_bytes(expr: &str) -> String {
                let f: fn(&str) -> String = $tb;
                f(expr)
            }

            fn as_text(expr: &str) -> String {
                format!("CAST({expr} AS {})", $text)
            }

            fn head(expr: &str, len: usize) -> String {
                let f: fn(&str, usize) -> String = $head;
                f(expr, len)
            }

            fn now() -> &'static str {
                $now
            }

            fn catalogue() -> &'static str {
                $cat
            }

            const COLUMNS: &'static str = $cols;
            const INDEXES: &'static str = $idx;

            fn is_binary(ty: &str) -> bool {
                let f: fn(&str) -> bool = $bin;
                f(&ty.to_ascii_lowercase())
            }

            fn load_rows<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = diesel::QueryResult<Vec<Row>>> + Send {
                db.load::<Row>(q)
            }

            fn load_units<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = diesel::QueryResult<Vec<UnitRow>>> + Send {
                db.load::<UnitRow>(q)
            }

            fn load_catalogue<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = diesel::QueryResult<Vec<CatalogRow>>> + Send {
                db.load::<CatalogRow>(q)
            }

            fn load_tallies<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = diesel::QueryResult<Vec<TallyRow>>> + Send {
                db.load::<TallyRow>(q)
            }

            fn load_status<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = diesel::QueryResult<Vec<StatusRow>>> + Send {
                db.load::<StatusRow>(q)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
job_table!(
    diesel::sqlite::Sqlite,
    name = "sqlite",
    skip_locked = false,
    before_transaction = None,
    key_select = |_, c| c.to_owned(),
    key_param = |_, ph| ph,
    text = "TEXT",
    text_bytes = |e| format!("CAST({e} AS BLOB)"),
    // A text value (legacy plaintext in a TEXT column) is cut as bytes, not characters.
    head = |e, n| format!("substr(CAST({e} AS BLOB), 1, {n})"),
    now = "CAST(strftime('%s', 'now') AS INTEGER)",
    // A NULL schema (an attached database's name) searches as an unqualified name does.
    catalogue = "SELECT name, type AS ty FROM pragma_table_info(?1, NULLIF(?2, '')) \
                 WHERE pk > 0 ORDER BY pk",
    columns = "SELECT name, type AS ty FROM pragma_table_info(?1, NULLIF(?2, ''))",
    indexes = "SELECT il.name AS name, ii.name AS ty FROM pragma_index_list(?1, NULLIF(?2, '')) AS il, \
               pragma_index_info(il.name, NULLIF(?2, '')) AS ii ORDER BY il.name, ii.seqno",
    // SQLite's affinity rules: a declared type with INT, CHAR/CLOB/TEXT or REAL/FLOA/DOUB in it
    // converts what it stores; BLOB (or no type) keeps bytes as they are.
    is_binary = |t| t.is_empty() || t.contains("blob")
);
#[cfg(feature = "postgres")]
job_table!(
    diesel::pg::Pg,
    name = "postgres",
    skip_locked = true,
    before_transaction = None,
    key_select = |k, c| match k {
        KeyKind::Int => format!("CAST({c} AS BIGINT)"),
        KeyKind::Uuid => format!("CAST({c} AS TEXT)"),
        _ => c.to_owned(),
    },
    key_param = |k, ph| match k {
        KeyKind::Uuid => format!("CAST({ph} AS uuid)"),
        _ => ph,
    },
    text = "TEXT",
    text_bytes = |e| format!("convert_to({e}, 'UTF8')"),
    head = |e, n| format!("substring({e} from 1 for {n})"),
    now = "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
    catalogue = "SELECT CAST(a.attname AS TEXT) AS name, format_type(a.atttypid, a.atttypmod) AS ty \
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass(CASE WHEN $2 = '' THEN quote_ident($1) \
                 ELSE quote_ident($2) || '.' || quote_ident($1) END) AND i.indisprimary \
                 ORDER BY array_position(CAST(i.indkey AS int2[]), a.attnum)",
    columns = "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS ty \
               FROM information_schema.columns \
               WHERE table_schema = COALESCE(NULLIF($2, ''), current_schema()) AND table_name = $1",
    indexes = "SELECT CAST(c.relname AS TEXT) AS name, CAST(a.attname AS TEXT) AS ty \
               FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid \
               CROSS JOIN LATERAL unnest(CAST(x.indkey AS int2[])) WITH ORDINALITY AS k(attnum, n) \
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
               WHERE x.indrelid = to_regclass(CASE WHEN $2 = '' THEN quote_ident($1) \
               ELSE quote_ident($2) || '.' || quote_ident($1) END) ORDER BY c.relname, k.n",
    is_binary = |t| t == "bytea"
);
#[cfg(feature = "mysql")]
job_table!(
    diesel::mysql::Mysql,
    name = "mysql",
    skip_locked = true,
    // The next transaction only; see `jobs::transaction`.
    before_transaction = Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
    key_select = |k, c| match k {
        KeyKind::Int => format!("CAST({c} AS SIGNED)"),
        _ => c.to_owned(),
    },
    key_param = |_, ph| ph,
    text = "CHAR",
    text_bytes = |e| format!("CAST(CONVERT({e} USING utf8mb4) AS BINARY)"),
    head = |e, n| format!("SUBSTRING(CAST({e} AS BINARY), 1, {n})"),
    now = "UNIX_TIMESTAMP()",
    catalogue = "SELECT CAST(k.COLUMN_NAME AS CHAR) AS name, CAST(c.COLUMN_TYPE AS CHAR) AS ty \
                 FROM information_schema.KEY_COLUMN_USAGE k JOIN information_schema.COLUMNS c \
                 ON c.TABLE_SCHEMA = k.TABLE_SCHEMA AND c.TABLE_NAME = k.TABLE_NAME AND c.COLUMN_NAME = k.COLUMN_NAME \
                 WHERE k.TABLE_NAME = ? AND k.TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) \
                 AND k.CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY k.ORDINAL_POSITION",
    columns = "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS ty \
               FROM information_schema.COLUMNS \
               WHERE TABLE_NAME = ? AND TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE())",
    indexes = "SELECT CAST(INDEX_NAME AS CHAR) AS name, CAST(COLUMN_NAME AS CHAR) AS ty \
               FROM information_schema.STATISTICS \
               WHERE TABLE_NAME = ? AND TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) \
               ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    is_binary = |t| matches!(
        t,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
    )
);
