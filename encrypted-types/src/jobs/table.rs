//! A table as the jobs see it: its key read from the catalogue, and the keyset SQL that pages it.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

/// A table as the jobs see it.
pub(super) struct Table {
    pub(super) name: &'static str,
    /// The model's schema, and whether it adopts values sealed without it.
    pub(super) schema: Option<&'static str>,
    pub(super) adoption: format::Adoption,
    pub(super) quoted: String,
    pub(super) key: Vec<KeyColumn>,
    pub(super) qkey: Vec<String>,
    /// The tenant column as text, or `NULL`.
    pub(super) tenant: String,
    /// Whether rows belong to tenants.
    pub(super) has_tenant: bool,
    /// The `bind_row` columns, quoted, with the kind they are read as.
    pub(super) bind: Vec<(String, KeyKind)>,
    /// [`JobOptions::bind_unbound`]: whether values bound to no row may be opened (to be
    /// bound); otherwise every value of a `bind_row` model must be bound to its row.
    pub(super) bind_unbound: bool,
}

impl Table {
    /// Where the values of `c` live, as their context names it.
    pub(super) const fn site(&self, c: &ColumnInfo) -> format::Site<'static> {
        self.site_of(c.context, c.value_type)
    }

    /// Where the values of the column of context name `column` (type tag `value_type`) live.
    pub(super) const fn site_of(
        &self,
        column: &'static str,
        value_type: &'static str,
    ) -> format::Site<'static> {
        format::Site::new(self.name, column, value_type).in_schema(self.schema, self.adoption)
    }

    /// Refuses a value bound to no row in a `bind_row` table, unless the job binds them.
    pub(super) fn unbound(&self, value: &[u8]) -> Option<SkipReason> {
        let bound = value.get(1).is_some_and(|&s| format::is_bound(s));
        (!self.bind.is_empty() && !self.bind_unbound && !bound).then_some(SkipReason::RowBinding)
    }

    /// The identity a row's values are bound to: `None` for a model without `bind_row`.
    pub(super) fn binding(&self, row: &Row) -> Result<Option<RowBinding>, SkipReason> {
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
pub(super) async fn inspect<D>(db: &mut D, model: &ModelInfo) -> Result<Table, Error>
where
    D: JobDb,
{
    let refuse = |reason: String| Error::UnpageableKey {
        table: model.display_name(),
        reason,
    };
    let q = Query {
        sql: D::Backend::catalogue().to_owned(),
        params: catalogue_params(model),
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
    let quoted = D::Backend::quote_table(model.schema, model.table);
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
        schema: model.schema,
        adoption: model.schema_adoption,
        quoted,
        key,
        qkey,
        tenant,
        has_tenant: model.tenant_column.is_some(),
        bind,
        bind_unbound: false,
    })
}

/// The parameters of the catalogue queries ([`JobTable::catalogue`]): the table, and its
/// schema (empty for the connection's own).
pub(crate) fn catalogue_params(model: &ModelInfo) -> Vec<Param> {
    vec![
        Param::Text(model.table.to_owned()),
        Param::Text(model.schema.unwrap_or_default().to_owned()),
    ]
}

/// A database error of the jobs; a deadlock or serialization failure stays recognisable, so a
/// helper's error that passes through [`TxError::Lib`] is retried too.
pub(super) fn job_err(e: diesel::result::Error) -> Error {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::SerializationFailure,
            _,
        ) => Error::Contended,
        e => Error::Job(e.to_string()),
    }
}

/// A placeholder for `part` compared with a key column of `kind`.
pub(super) fn key_param<B: JobTable>(
    q: &mut Query,
    kind: KeyKind,
    part: &KeyPart,
) -> Result<String, Error> {
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
pub(super) enum Cmp {
    /// `key > bound`
    After,
    /// `key >= bound`
    From,
    /// `key < bound`
    Before,
}

/// The row-value comparison `key <cmp> bound`, spelled out so every backend runs it the same
/// way: `(a > ? OR (a = ? AND b > ?))`, with a leading `a >= ?` that lets the index seek.
pub(super) fn compare<B: JobTable>(
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
    pub(super) fn level<B: JobTable>(
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
pub(super) fn key_eq<B: JobTable>(
    q: &mut Query,
    t: &Table,
    key: &[KeyPart],
) -> Result<String, Error> {
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

pub(super) fn key_selects<B: JobTable>(t: &Table) -> String {
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
#[allow(clippy::too_many_arguments)] // the one SELECT every job and check reads rows with
pub(super) fn select<B: JobTable>(
    t: &Table,
    v: &str,
    more: &[&str],
    index: Option<&str>,
    conds: &[String],
    q: &mut Query,
    limit: Option<usize>,
) {
    let i = index.map_or_else(|| "NULL".to_owned(), B::quote);
    let more: String = more
        .iter()
        .zip(sql::MORE_ALIASES)
        .map(|(c, a)| format!(", {} AS {a}", B::quote(c)))
        .collect();
    let mut sql = format!(
        "SELECT {}, {v} AS v{more}, {i} AS i, {} AS t FROM {}",
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
pub(super) fn range_conds<B: JobTable>(
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
