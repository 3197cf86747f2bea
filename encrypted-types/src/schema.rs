//! The database's columns and indexes checked against the models: run [`check`] at startup
//! (or from an operator's `check` command) so a schema that would store ciphertext as text, or
//! lose a blind index, is refused before the first write.
//!
//! What it refuses, on SQLite, PostgreSQL and MySQL/MariaDB alike:
//!
//! - a table of a model that does not exist;
//! - an encrypted or blind-index column that is missing, or whose type does not keep bytes as
//!   they are (PostgreSQL `bytea`; MySQL `BINARY`, `VARBINARY`, `*BLOB`; SQLite a `BLOB`
//!   declared type). A `TEXT` column declared `Binary` in `table!` is the classic mistake: the
//!   database stores the sealed bytes as text, or converts them;
//! - a blind index without an index that leads with the tenant column and then the index column
//!   (the lookup `WHERE tenant = ? AND email_bidx = ?` scans the table otherwise), or, without
//!   tenants, one that leads with the index column;
//! - a `migrate_from` legacy column that is missing.

use crate::Error;
use crate::jobs::{JobTable, Query};
use crate::model::{ColumnInfo, ModelInfo, SqlKind};

/// One way the database differs from a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The model's table does not exist.
    #[error("table {table} does not exist")]
    NoTable {
        /// The table.
        table: String,
    },
    /// A column the model writes does not exist.
    #[error(
        "{table}.{column} does not exist: add it as a binary column (`{column} -> Binary` in table!)"
    )]
    NoColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A ciphertext or index column whose type does not store bytes as they are.
    #[error(
        "{table}.{column} is `{found}`, not a binary column: sealed values and indexes need bytea / VARBINARY or BLOB"
    )]
    NotBinary {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its type, as the database reports it.
        found: String,
    },
    /// A blind index without an index that leads with the tenant (then the index column).
    #[error(
        "{table}.{column}: no index on ({leading}); lookups scan the table. Add `CREATE INDEX ON {table} ({leading})`"
    )]
    NoIndex {
        /// The table.
        table: String,
        /// The blind-index column.
        column: String,
        /// The columns the index should start with.
        leading: String,
    },
}

crate::db::sync_and_async! {
    /// Compares the database's columns and indexes with `models`.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use encrypted_types::{Encrypted, EncryptedModel};
    /// use encrypted_types::schema::{Mismatch, check};
    ///
    /// diesel::table! { users (id) { id -> Integer, email -> Binary, email_bidx -> Binary } }
    /// #[derive(Encrypted)]
    /// #[encrypted(table = users)]
    /// struct User { id: i32, #[encrypted(blind_index)] email: String }
    ///
    /// let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, email_bidx BLOB)")
    ///     .execute(conn).unwrap();
    /// let found = check(conn, &[User::MODEL]).unwrap();
    /// assert!(matches!(&found[0], Mismatch::NotBinary { column, .. } if column == "email"));
    /// assert!(matches!(&found[1], Mismatch::NoIndex { column, .. } if column == "email_bidx"));
    /// ```
    ///
    /// # Errors
    /// [`Error::Store`] when the catalogue cannot be read.
    pub fn check / check_async(models: &[ModelInfo])
        -> Result<Vec<Mismatch>, Error> where Backend: JobTable => check_on
}

async fn check_on<D>(db: &mut D, models: &[ModelInfo]) -> Result<Vec<Mismatch>, Error>
where
    D: crate::db::Db<Backend: JobTable>,
{
    let mut out = Vec::new();
    for m in models {
        let table = m.display_name();
        let Some((columns, indexes)) = catalogue(db, m).await? else {
            out.push(Mismatch::NoTable { table });
            continue;
        };
        let binary = |column: &str, out: &mut Vec<Mismatch>| match columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(column))
        {
            None => out.push(Mismatch::NoColumn {
                table: table.clone(),
                column: column.to_owned(),
            }),
            Some(c) if !D::Backend::is_binary(&c.ty) => out.push(Mismatch::NotBinary {
                table: table.clone(),
                column: column.to_owned(),
                found: c.ty.clone(),
            }),
            Some(_) => {}
        };
        let indexed = |column: &'static str, out: &mut Vec<Mismatch>| {
            binary(column, out);
            let leading: Vec<&str> = m.tenant_column.into_iter().chain([column]).collect();
            if !leads(&indexes, &leading) {
                out.push(Mismatch::NoIndex {
                    table: table.clone(),
                    column: column.to_owned(),
                    leading: leading.join(", "),
                });
            }
        };
        for (column, ..) in compound_columns(m) {
            indexed(column, &mut out);
        }
        for c in m.columns {
            binary(c.column, &mut out);
            for i in c.indexes {
                indexed(i.index_column, &mut out);
            }
            if let Some(l) = c.legacy
                && !columns
                    .iter()
                    .any(|x| x.name.eq_ignore_ascii_case(l.column))
            {
                out.push(Mismatch::NoColumn {
                    table: table.clone(),
                    column: l.column.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Whether some index (rows of index name and column, in order) starts with `leading`.
fn leads(indexes: &[crate::jobs::CatalogRow], leading: &[&str]) -> bool {
    indexes.chunk_by(|a, b| a.name == b.name).any(|cols| {
        cols.len() >= leading.len()
            && cols
                .iter()
                .zip(leading)
                .all(|(c, l)| c.ty.eq_ignore_ascii_case(l))
    })
}

/// The SQL dialect [`expand`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite (3.35 or later for the `down` step's `DROP COLUMN`).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl Dialect {
    fn quote(self, name: &str) -> String {
        match self {
            Self::Mysql => format!("`{}`", name.replace('`', "``")),
            Self::Sqlite | Self::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// `m`'s table, in its schema when the model names one.
    fn table(self, m: &ModelInfo) -> String {
        match m.schema {
            Some(s) => format!("{}.{}", self.quote(s), self.quote(m.table)),
            None => self.quote(m.table),
        }
    }

    /// The index `{table}_{column}` of `m`'s table as `CREATE INDEX` (`create`) or
    /// `DROP INDEX` names it: SQLite puts the schema on the index, PostgreSQL creates it in
    /// the table's schema but drops it by its qualified name, MySQL names it per table.
    fn index(self, m: &ModelInfo, column: &str, create: bool) -> String {
        let name = self.quote(&format!("{}_{column}", m.table));
        match (self, m.schema) {
            (Self::Sqlite, Some(s)) => format!("{}.{name}", self.quote(s)),
            (Self::Postgres, Some(s)) if !create => format!("{}.{name}", self.quote(s)),
            _ => name,
        }
    }

    /// The table an index is created on: SQLite's takes no schema (the index's name has it).
    fn index_table(self, m: &ModelInfo) -> String {
        match self {
            Self::Sqlite => self.quote(m.table),
            _ => self.table(m),
        }
    }

    /// The type of a column that holds sealed values.
    fn sealed_type(self) -> &'static str {
        match self {
            Self::Sqlite => "BLOB",
            Self::Postgres => "BYTEA",
            Self::Mysql => "LONGBLOB",
        }
    }

    /// The type of a blind-index column of at most `bytes` bytes: MySQL indexes a
    /// `VARBINARY`, not a `BLOB`.
    fn index_type(self, bytes: u16) -> String {
        match self {
            Self::Mysql => format!("VARBINARY({bytes})"),
            other => other.sealed_type().to_owned(),
        }
    }
}

/// Statements to run in order to apply a change (`up`) and to undo it (`down`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// Applies the change.
    pub up: Vec<String>,
    /// Undoes it, in reverse order.
    pub down: Vec<String>,
}

/// The expand step of encrypting an existing table (KEYS.md, "A TEXT or VARCHAR column:
/// expand, backfill, contract"): `ALTER TABLE` statements that add each model's encrypted
/// columns and blind-index columns beside the columns already there, and an index leading with
/// the tenant column for each blind index, so [`check`] then finds nothing missing.
///
/// Every added column is nullable and has no default, so no backend rewrites the table to add
/// it (PostgreSQL's and MySQL's instant `ADD COLUMN`): rows have no sealed value until the
/// application writes them or [`crate::jobs::encrypt_column`] fills them from the legacy
/// column. A field that is neither `Option` nor `migrate_from` cannot read such a row; add it
/// with `migrate_from`, or fill it before the model reads the table. `down` drops what `up`
/// added. This is every column the models have, whatever the database holds: against a live
/// database use [`alter`], which adds only what is missing (and whose `down` can therefore
/// never drop a column that held data before).
///
/// ```
/// use encrypted_types::schema::{expand, Dialect};
/// use encrypted_types::EncryptedModel;
/// diesel::table! { users (id) { id -> Integer, org -> BigInt, email_plain -> Nullable<Text>,
///     email -> Nullable<Binary>, email_bidx -> Nullable<Binary> } }
///
/// #[derive(encrypted_types::Encrypted)]
/// #[encrypted(table = users, tenant = org, derive(Insertable))]
/// struct User {
///     id: i32,
///     org: i64,
///     #[encrypted(blind_index(normalize = email, bits = 32), migrate_from = email_plain)]
///     email: String,
/// }
///
/// let m = expand(&[User::MODEL], Dialect::Mysql);
/// assert_eq!(m.up, [
///     "ALTER TABLE `users` ADD COLUMN `email` LONGBLOB NULL",
///     "ALTER TABLE `users` ADD COLUMN `email_bidx` VARBINARY(4) NULL",
///     "CREATE INDEX `users_email_bidx` ON `users` (`org`, `email_bidx`)",
/// ]);
/// assert_eq!(m.down[0], "DROP INDEX `users_email_bidx` ON `users`");
/// ```
pub fn expand(models: &[ModelInfo], dialect: Dialect) -> Migration {
    let mut out = Migration::default();
    for m in models {
        plan(m, dialect, &|_| false, &mut out);
    }
    out.down.reverse();
    out
}

/// What a model's table may already have: a column, or an index leading with the tenant and a
/// blind-index column.
enum Have<'a> {
    Column(&'a str),
    Index(&'a str),
}

/// Appends to `out` the statements that add `m`'s encrypted and blind-index columns and its
/// blind-index indexes, leaving out what `have` says exists; `down` gets the inverse of each
/// statement added (in order: the caller reverses it).
fn plan(m: &ModelInfo, dialect: Dialect, have: &dyn Fn(Have<'_>) -> bool, out: &mut Migration) {
    let table = dialect.table(m);
    let add = |column: &str, ty: &str, out: &mut Migration| {
        if have(Have::Column(column)) {
            return;
        }
        let c = dialect.quote(column);
        out.up
            .push(format!("ALTER TABLE {table} ADD COLUMN {c} {ty} NULL"));
        out.down
            .push(format!("ALTER TABLE {table} DROP COLUMN {c}"));
    };
    let index = |column: &str, bytes: u16, out: &mut Migration| {
        add(column, &dialect.index_type(bytes), out);
        if have(Have::Index(column)) {
            return;
        }
        out.up.push(create_index(m, column, dialect));
        let name = dialect.index(m, column, false);
        out.down.push(match dialect {
            Dialect::Mysql => format!("DROP INDEX {name} ON {table}"),
            _ => format!("DROP INDEX {name}"),
        });
    };
    for c in m.columns {
        add(c.column, dialect.sealed_type(), out);
        for (column, bytes) in index_columns(c) {
            index(column, bytes, out);
        }
    }
    for (column, bytes, _) in compound_columns(m) {
        index(column, bytes, out);
    }
}

/// What [`alter`] found: the statements that add only what the database lacks, and what it
/// cannot fix by adding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Alter {
    /// `up` adds each missing column and index; `down` drops exactly those, nothing else.
    pub migration: Migration,
    /// Tables that do not exist ([`Mismatch::NoTable`]: create them with [`create`]) and
    /// columns that exist with a type that does not keep bytes ([`Mismatch::NotBinary`]):
    /// never altered, reported so that nothing is skipped silently.
    pub problems: Vec<Mismatch>,
}

crate::db::sync_and_async! {
    /// [`expand`] against the live database: `ALTER TABLE` statements for the encrypted and
    /// blind-index columns and indexes the models need and the database lacks, in the
    /// connection's dialect. Its `down` drops exactly what its `up` adds, so used as a down
    /// migration it never drops a column that held data before (the toolkit's
    /// `schema --alter`).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use encrypted_types::{Encrypted, EncryptedModel};
    /// use encrypted_types::schema::alter;
    ///
    /// diesel::table! { users (id) { id -> Integer, email -> Binary, email_bidx -> Nullable<Binary> } }
    /// #[derive(Encrypted)]
    /// #[encrypted(table = users)]
    /// struct User { id: i32, #[encrypted(blind_index(bits = 32))] email: String }
    ///
    /// let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    /// diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, email BLOB NOT NULL)")
    ///     .execute(conn).unwrap();
    /// let a = alter(conn, &[User::MODEL])?;
    /// assert_eq!(a.migration.up, [
    ///     r#"ALTER TABLE "users" ADD COLUMN "email_bidx" BLOB NULL"#,
    ///     r#"CREATE INDEX "users_email_bidx" ON "users" ("email_bidx")"#,
    /// ]);
    /// assert_eq!(a.migration.down, [
    ///     r#"DROP INDEX "users_email_bidx""#,
    ///     r#"ALTER TABLE "users" DROP COLUMN "email_bidx""#,
    /// ]);
    /// assert!(a.problems.is_empty());
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Store`] when the catalogue cannot be read.
    pub fn alter / alter_async(models: &[ModelInfo])
        -> Result<Alter, Error> where Backend: JobTable => alter_on
}

async fn alter_on<D>(db: &mut D, models: &[ModelInfo]) -> Result<Alter, Error>
where
    D: crate::db::Db<Backend: JobTable>,
{
    let dialect = match D::Backend::NAME {
        "sqlite" => Dialect::Sqlite,
        "postgres" => Dialect::Postgres,
        _ => Dialect::Mysql,
    };
    let mut out = Alter::default();
    for m in models {
        let Some((columns, indexes)) = catalogue(db, m).await? else {
            out.problems.push(Mismatch::NoTable {
                table: m.display_name(),
            });
            continue;
        };
        let column = |name: &str| columns.iter().find(|c| c.name.eq_ignore_ascii_case(name));
        let mut wanted: Vec<&str> = Vec::new();
        for c in m.columns {
            wanted.push(c.column);
            wanted.extend(index_columns(c).into_iter().map(|(n, _)| n));
        }
        wanted.extend(compound_columns(m).into_iter().map(|(n, ..)| n));
        for name in wanted {
            if let Some(c) = column(name)
                && !D::Backend::is_binary(&c.ty)
            {
                out.problems.push(Mismatch::NotBinary {
                    table: m.display_name(),
                    column: name.to_owned(),
                    found: c.ty.clone(),
                });
            }
        }
        let have = |h: Have<'_>| match h {
            Have::Column(name) => column(name).is_some(),
            Have::Index(name) => {
                let leading: Vec<&str> = m.tenant_column.into_iter().chain([name]).collect();
                leads(&indexes, &leading)
            }
        };
        plan(m, dialect, &have, &mut out.migration);
    }
    out.migration.down.reverse();
    Ok(out)
}

/// The columns (name, type) and indexes (index name, column, in order) of `m`'s table, or
/// `None` when it does not exist.
async fn catalogue<D>(
    db: &mut D,
    m: &ModelInfo,
) -> Result<Option<(Vec<crate::jobs::CatalogRow>, Vec<crate::jobs::CatalogRow>)>, Error>
where
    D: crate::db::Db<Backend: JobTable>,
{
    let query = |sql: &str| Query {
        sql: sql.to_owned(),
        params: crate::jobs::catalogue_params(m),
    };
    let columns = D::Backend::load_catalogue(db, &query(D::Backend::COLUMNS))
        .await
        .map_err(|e| Error::Store(format!("the catalogue of {}: {e}", m.display_name())))?;
    if columns.is_empty() {
        return Ok(None);
    }
    let indexes = D::Backend::load_catalogue(db, &query(D::Backend::INDEXES))
        .await
        .map_err(|e| Error::Store(format!("the indexes of {}: {e}", m.display_name())))?;
    Ok(Some((columns, indexes)))
}

/// The blind-index columns of `c` with their size in bytes: versions of one index share its
/// column, sized for the longest.
fn index_columns(c: &ColumnInfo) -> Vec<(&'static str, u16)> {
    let mut columns: Vec<(&'static str, u16)> = Vec::new();
    for i in c.indexes {
        let bytes = i.bits.div_ceil(8);
        match columns.iter_mut().find(|(name, _)| *name == i.index_column) {
            Some((_, b)) => *b = (*b).max(bytes),
            None => columns.push((i.index_column, bytes)),
        }
    }
    columns
}

/// The compound-index columns of `m`: name, size in bytes, and whether nullable (when one of
/// its fields is).
fn compound_columns(m: &ModelInfo) -> Vec<(&'static str, u16, bool)> {
    let mut out: Vec<(&'static str, u16, bool)> = Vec::new();
    for i in m.compound {
        let nullable = i.fields.iter().any(|f| {
            m.columns
                .iter()
                .any(|c| c.context == f.column && (c.nullable || c.legacy.is_some()))
        });
        let bytes = i.bits.div_ceil(8);
        match out.iter_mut().find(|(name, ..)| *name == i.index_column) {
            Some((_, b, n)) => {
                *b = (*b).max(bytes);
                *n |= nullable;
            }
            None => out.push((i.index_column, bytes, nullable)),
        }
    }
    out
}

/// The index a blind-index lookup uses: the tenant column, then the index column.
fn create_index(m: &ModelInfo, column: &str, dialect: Dialect) -> String {
    let leading: Vec<String> = m
        .tenant_column
        .into_iter()
        .chain([column])
        .map(|c| dialect.quote(c))
        .collect();
    format!(
        "CREATE INDEX {} ON {} ({})",
        dialect.index(m, column, true),
        dialect.index_table(m),
        leading.join(", ")
    )
}

/// Why [`create`] cannot write a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// A plain column whose SQL type in `table!` is not one [`SqlKind`] names, or one this
    /// backend does not have (`Uuid`, `Jsonb` and `Timestamptz` are PostgreSQL's).
    #[error(
        "{table}.{column}: `schema::create` cannot write its SQL type for this backend; write this table's migration by hand (`schema::expand` adds the encrypted columns to it)"
    )]
    UnknownType {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
}

impl Dialect {
    /// A plain column's type; `key` for a column in the primary key or an index, which MySQL
    /// cannot index as `TEXT` or `BLOB`.
    fn plain_type(self, kind: SqlKind, key: bool) -> Option<&'static str> {
        use Dialect::{Mysql, Postgres, Sqlite};
        Some(match (kind, self) {
            (SqlKind::Bool, _) => "BOOLEAN",
            (SqlKind::SmallInt, _) => "SMALLINT",
            (SqlKind::Integer, Mysql) => "INT",
            (SqlKind::Integer, _) => "INTEGER",
            (SqlKind::BigInt, _) => "BIGINT",
            (SqlKind::Float, Mysql) => "FLOAT",
            (SqlKind::Float, _) => "REAL",
            (SqlKind::Double, Postgres) => "DOUBLE PRECISION",
            (SqlKind::Double, _) => "DOUBLE",
            (SqlKind::Numeric, _) => "NUMERIC",
            (SqlKind::Text, Mysql) if key => "VARCHAR(255)",
            (SqlKind::Text, _) => "TEXT",
            (SqlKind::Binary, Mysql) if key => "VARBINARY(255)",
            (SqlKind::Binary, _) => self.sealed_type(),
            (SqlKind::Date, _) => "DATE",
            (SqlKind::Time, _) => "TIME",
            (SqlKind::Timestamp, Mysql) => "DATETIME(6)",
            (SqlKind::Timestamp, _) => "TIMESTAMP",
            (SqlKind::Timestamptz, Postgres) => "TIMESTAMPTZ",
            (SqlKind::Uuid, Postgres) => "UUID",
            (SqlKind::Jsonb, Postgres) => "JSONB",
            (SqlKind::Timestamptz | SqlKind::Uuid | SqlKind::Jsonb, Sqlite | Mysql) => {
                return None;
            }
        })
    }
}

/// The migration of new tables for `models`: `CREATE TABLE` with every column the models
/// read and write (plain columns with the types `table!` declares, ciphertext columns, blind
/// index columns, legacy columns of a `migrate_from`) and the primary key, then the
/// tenant-leading index of each blind index, so [`check`] finds nothing missing. `down` drops
/// the tables. Models of one table (a full model and its changeset) make one table with the
/// union of their columns.
///
/// # Errors
/// [`CreateError::UnknownType`] for a plain column whose type it cannot write.
///
/// ```
/// use encrypted_types::schema::{create, Dialect};
/// use encrypted_types::EncryptedModel;
/// diesel::table! { users (id) { id -> BigInt, org -> Text, email -> Binary, email_bidx -> Binary } }
///
/// #[derive(encrypted_types::Encrypted)]
/// #[encrypted(table = users, tenant = org)]
/// struct User {
///     id: i64,
///     org: String,
///     #[encrypted(blind_index(normalize = email, bits = 32))]
///     email: String,
/// }
///
/// let m = create(&[User::MODEL], Dialect::Mysql).unwrap();
/// assert_eq!(m.up, [
///     "CREATE TABLE `users` (\n    `id` BIGINT NOT NULL,\n    `org` VARCHAR(255) NOT NULL,\n    \
///      `email` LONGBLOB NOT NULL,\n    `email_bidx` VARBINARY(4) NOT NULL,\n    PRIMARY KEY (`id`)\n)",
///     "CREATE INDEX `users_email_bidx` ON `users` (`org`, `email_bidx`)",
/// ]);
/// assert_eq!(m.down, ["DROP TABLE `users`"]);
/// ```
pub fn create(models: &[ModelInfo], dialect: Dialect) -> Result<Migration, CreateError> {
    // Per table, in order of first appearance: its columns (name, SQL) and indexes.
    type Table<'m> = (&'m ModelInfo, Vec<(&'static str, String)>, Vec<String>);
    let mut tables: Vec<Table<'_>> = Vec::new();
    for m in models {
        let at = match tables
            .iter()
            .position(|(t, ..)| (t.schema, t.table) == (m.schema, m.table))
        {
            Some(i) => i,
            None => {
                tables.push((m, Vec::new(), Vec::new()));
                tables.len() - 1
            }
        };
        let Some((_, columns, indexes)) = tables.get_mut(at) else {
            continue;
        };
        let mut add = |name: &'static str, ty: &str, nullable: bool| {
            if !columns.iter().any(|(n, _)| *n == name) {
                let null = if nullable { "NULL" } else { "NOT NULL" };
                columns.push((name, format!("{} {ty} {null}", dialect.quote(name))));
            }
        };
        for p in m.plain {
            let key = m.primary_key.contains(&p.column) || m.tenant_column == Some(p.column);
            let unknown = || CreateError::UnknownType {
                table: m.table.to_owned(),
                column: p.column.to_owned(),
            };
            let (kind, nullable) = (p.sql_type)().ok_or_else(unknown)?;
            add(
                p.column,
                dialect.plain_type(kind, key).ok_or_else(unknown)?,
                nullable,
            );
        }
        for c in m.columns {
            add(
                c.column,
                dialect.sealed_type(),
                c.nullable || c.legacy.is_some(),
            );
            for (column, bytes) in index_columns(c) {
                add(
                    column,
                    &dialect.index_type(bytes),
                    c.nullable || c.legacy.is_some(),
                );
                let index = create_index(m, column, dialect);
                if !indexes.contains(&index) {
                    indexes.push(index);
                }
            }
            if let Some(l) = c.legacy {
                let ty = if l.text {
                    "TEXT"
                } else {
                    dialect.sealed_type()
                };
                add(l.column, ty, true);
            }
        }
        for (column, bytes, nullable) in compound_columns(m) {
            add(column, &dialect.index_type(bytes), nullable);
            let index = create_index(m, column, dialect);
            if !indexes.contains(&index) {
                indexes.push(index);
            }
        }
    }
    let mut out = Migration::default();
    for (m, columns, indexes) in tables {
        let table = dialect.table(m);
        let mut lines: Vec<String> = columns.into_iter().map(|(_, sql)| sql).collect();
        let pk: Vec<String> = m.primary_key.iter().map(|c| dialect.quote(c)).collect();
        lines.push(format!("PRIMARY KEY ({})", pk.join(", ")));
        out.up.push(format!(
            "CREATE TABLE {table} (\n    {}\n)",
            lines.join(",\n    ")
        ));
        out.up.extend(indexes);
        out.down.push(format!("DROP TABLE {table}"));
    }
    out.down.reverse();
    Ok(out)
}
