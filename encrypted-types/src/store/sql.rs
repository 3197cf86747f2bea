//! The key table's SQL, written once for the three backends: the per-backend parts
//! ([`KeyTable`]) and the statements every key-store operation runs.

#[allow(clippy::wildcard_imports)]
// one module in several files: the store's imports and types
use super::*;

/// What the key table needs of a backend: SQL that finds key ids in sealed headers, quoting,
/// and the typed rows of the key-table queries. Implemented for Diesel's SQLite, PostgreSQL
/// and MySQL backends, with their features; callers use [`KeyStore`].
pub trait KeyTable: Exec {
    /// SQL that is true when the key id in the header of sealed column `column` is one of
    /// `ids`: header bytes 3 to 6 (1-based), compared with big-endian literals.
    fn key_id_in(column: &str, ids: &[KeyId]) -> String;
    /// SQL that is true when the first two header bytes (version and suite) of sealed column
    /// `column` are one of `prefixes`: what a rotation finds to upgrade to the current suite.
    fn suite_in(column: &str, prefixes: &[[u8; 2]]) -> String;
    /// Quotes an identifier.
    fn quote(ident: &str) -> String;
    /// The table `table` of `schema` (none: the connection's own), quoted for SQL.
    fn quote_table(schema: Option<&str>, table: &str) -> String {
        match schema {
            Some(s) => format!("{}.{}", Self::quote(s), Self::quote(table)),
            None => Self::quote(table),
        }
    }
    /// The clause that makes a `SELECT` hold a shared row lock until the transaction ends
    /// (empty on SQLite, whose writers are serialized anyway).
    #[doc(hidden)]
    const SHARE_LOCK: &'static str;
    /// The clause that makes a `SELECT` hold an exclusive row lock until the transaction ends
    /// (empty on SQLite).
    #[doc(hidden)]
    const UPDATE_LOCK: &'static str;
    /// Loads key records.
    #[doc(hidden)]
    fn load_records<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<KeyRecord>>> + Send;
    /// Loads key ids.
    #[doc(hidden)]
    fn load_ids<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<i64>>> + Send;
    /// Runs `SELECT COUNT(*) AS n ...`.
    #[doc(hidden)]
    fn count_q<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Loads manifest rows.
    #[doc(hidden)]
    fn load_manifest<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<manifest::ManifestRow>>> + Send;
    /// Runs the [`Generation`] query.
    #[doc(hidden)]
    fn load_generation<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<Generation>>> + Send;
}

#[derive(QueryableByName)]
pub(super) struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) n: i64,
}

#[derive(QueryableByName)]
pub(super) struct IdRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) key_id: i64,
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

macro_rules! key_table {
    ($db:ty, header_in = $header_in:expr, quote = $quote:literal, share_lock = $lock:literal, update_lock = $ulock:literal) => {
        impl KeyTable for $db {
            const SHARE_LOCK: &'static str = $lock;
            const UPDATE_LOCK: &'static str = $ulock;

            fn key_id_in(column: &str, ids: &[KeyId]) -> String {
                // `header_in(column, first byte (1-based), length, hex literals)`.
                let f: fn(&str, usize, usize, &[String]) -> String = $header_in;
                let list: Vec<String> = ids.iter().map(|id| hex(&id.get().to_be_bytes())).collect();
                f(column, 3, 4, &list)
            }

            fn suite_in(column: &str, prefixes: &[[u8; 2]]) -> String {
                let f: fn(&str, usize, usize, &[String]) -> String = $header_in;
                let list: Vec<String> = prefixes.iter().map(|p| hex(p)).collect();
                f(column, 1, 2, &list)
            }

            fn quote(ident: &str) -> String {
                let q = $quote;
                format!("{q}{}{q}", ident.replace(q, &format!("{q}{q}")))
            }

            fn load_records<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = QueryResult<Vec<KeyRecord>>> + Send {
                db.load::<KeyRecord>(q)
            }

            fn load_ids<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = QueryResult<Vec<i64>>> + Send {
                let rows = db.load::<IdRow>(q);
                async move { Ok(rows.await?.into_iter().map(|r| r.key_id).collect()) }
            }

            fn count_q<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = QueryResult<i64>> + Send {
                // Only the load's future is held: it is `Send` whatever `D` is.
                let rows = db.load::<Count>(q);
                async move { Ok(rows.await?.into_iter().next().map_or(0, |r| r.n)) }
            }

            fn load_manifest<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = QueryResult<Vec<super::manifest::ManifestRow>>> + Send {
                db.load::<super::manifest::ManifestRow>(q)
            }

            fn load_generation<D: Db<Backend = Self>>(
                db: &mut D,
                q: &Query,
            ) -> impl Future<Output = QueryResult<Vec<Generation>>> + Send {
                db.load::<Generation>(q)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
key_table!(
    diesel::sqlite::Sqlite,
    header_in = |c, from, len, hexes| {
        let lits: Vec<String> = hexes.iter().map(|h| format!("X'{h}'")).collect();
        format!("substr({c}, {from}, {len}) IN ({})", lits.join(", "))
    },
    quote = "\"",
    share_lock = "",
    update_lock = ""
);

#[cfg(feature = "postgres")]
key_table!(
    diesel::pg::Pg,
    header_in = |c, from, len, hexes| {
        let lits: Vec<String> = hexes
            .iter()
            .map(|h| format!("decode('{h}', 'hex')"))
            .collect();
        format!(
            "substring({c} from {from} for {len}) IN ({})",
            lits.join(", ")
        )
    },
    quote = "\"",
    share_lock = " FOR SHARE",
    update_lock = " FOR UPDATE"
);

#[cfg(feature = "mysql")]
key_table!(
    diesel::mysql::Mysql,
    header_in = |c, from, len, hexes| {
        let lits: Vec<String> = hexes.iter().map(|h| format!("X'{h}'")).collect();
        format!("SUBSTRING({c}, {from}, {len}) IN ({})", lits.join(", "))
    },
    quote = "`",
    share_lock = " LOCK IN SHARE MODE",
    update_lock = " FOR UPDATE"
);

/// A connection the key store runs on, sync or async.
pub(super) trait KeyDb: Db<Backend: KeyTable> {}
impl<D: Db<Backend: KeyTable>> KeyDb for D {}

// The key-table statements, written once in SQL every backend runs; only placeholders differ.
pub(super) const KEYS: &str = "encrypted_types_keys";
pub(super) const RECORD_COLS: &str = "key_id, tenant, purpose, state, wrapped_key, kek_ref, created_at, \
     state_changed_at, generation, check_value, mac_key_id, record_mac, kek_check";

pub(super) fn tenant_is<B: Exec>(q: &mut Query, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("tenant = {}", q.bind::<B>(Param::Text(t.to_owned()))),
        None => "tenant IS NULL".to_owned(),
    }
}

/// Live (not destroyed) data and blind-index keys of a tenant.
pub(super) async fn live_keys<D: KeyDb>(db: &mut D, tenant: Option<&str>) -> QueryResult<Vec<i64>> {
    let mut q = Query::new();
    let t = tenant_is::<D::Backend>(&mut q, tenant);
    q.sql = format!(
        "SELECT key_id FROM {KEYS} WHERE state <> 'destroyed' AND purpose <> 'wrapping' AND {t}"
    );
    D::Backend::load_ids(db, &q).await
}

pub(super) async fn id_taken<D: KeyDb>(db: &mut D, id: i64) -> QueryResult<bool> {
    let mut q = Query::new();
    let p = q.bind::<D::Backend>(Param::Int(id));
    q.sql = format!("SELECT COUNT(*) AS n FROM {KEYS} WHERE key_id = {p}");
    Ok(D::Backend::count_q(db, &q).await? > 0)
}

pub(super) async fn insert_key<D: KeyDb>(db: &mut D, r: &KeyRecord) -> QueryResult<()> {
    let mut q = Query::new();
    let vals = [
        q.bind::<D::Backend>(Param::Int(r.key_id)),
        q.bind::<D::Backend>(Param::OptText(r.tenant.clone())),
        q.bind::<D::Backend>(Param::Text(r.purpose.clone())),
        q.bind::<D::Backend>(Param::Text(r.state.clone())),
        q.bind::<D::Backend>(Param::OptBytes(r.wrapped_key.clone())),
        q.bind::<D::Backend>(Param::Text(r.kek_ref.clone())),
        q.bind::<D::Backend>(Param::Int(r.created_at)),
        q.bind::<D::Backend>(Param::Int(r.state_changed_at)),
        q.bind::<D::Backend>(Param::Int(r.generation)),
        q.bind::<D::Backend>(Param::OptBytes(r.check_value.clone())),
        q.bind::<D::Backend>(Param::OptInt(r.mac_key_id)),
        q.bind::<D::Backend>(Param::OptBytes(r.record_mac.clone())),
        q.bind::<D::Backend>(Param::OptBytes(r.kek_check.clone())),
    ];
    q.sql = format!(
        "INSERT INTO {KEYS} ({RECORD_COLS}) VALUES ({})",
        vals.join(", ")
    );
    db.exec(&q).await.map(|_| ())
}

/// Every record, by key id. Sorted here, not in SQL: key ids are random, so an `ORDER BY`
/// walks the primary-key index and seeks the table once per row (measured at 100,000 tenants
/// on SQLite: a third of the load), where a plain scan reads it in storage order.
pub(super) async fn all_keys<D: KeyDb>(db: &mut D) -> QueryResult<Vec<KeyRecord>> {
    let q = Query::sql(format!("SELECT {RECORD_COLS} FROM {KEYS}"));
    let mut rows = D::Backend::load_records(db, &q).await?;
    rows.sort_unstable_by_key(|r| r.key_id);
    Ok(rows)
}

/// The records of no tenant and of `tenants`, by key id: a few hundred tenants per query, so
/// no backend's limit on bound parameters is reached.
pub(super) async fn scoped_keys<D: KeyDb>(
    db: &mut D,
    tenants: &[TenantId],
) -> QueryResult<Vec<KeyRecord>> {
    // Up to 500 tenants: one statement, one consistent read. More: one per 500 (a change in
    // between fails the load's checks, never passes them).
    let mut rows = Vec::new();
    let mut chunks = tenants.chunks(500);
    let mut first = true;
    while first || chunks.len() > 0 {
        let chunk = chunks.next().unwrap_or_default();
        let mut q = Query::new();
        let list: Vec<String> = chunk
            .iter()
            .map(|t| q.bind::<D::Backend>(Param::Text(t.as_str().to_owned())))
            .collect();
        let mut cond = Vec::new();
        if first {
            cond.push("tenant IS NULL".to_owned());
        }
        if !list.is_empty() {
            cond.push(format!("tenant IN ({})", list.join(", ")));
        }
        q.sql = format!(
            "SELECT {RECORD_COLS} FROM {KEYS} WHERE {}",
            cond.join(" OR ")
        );
        rows.extend(D::Backend::load_records(db, &q).await?);
        first = false;
    }
    rows.sort_unstable_by_key(|r| r.key_id);
    rows.dedup_by_key(|r| r.key_id);
    Ok(rows)
}

/// The records of `tenant` (all of them, or those of `purpose` in `state`).
pub(super) async fn tenant_keys<D: KeyDb>(
    db: &mut D,
    tenant: Option<&str>,
    purpose: Option<Purpose>,
    state: Option<KeyState>,
) -> QueryResult<Vec<KeyRecord>> {
    let mut q = Query::new();
    let mut cond = vec![tenant_is::<D::Backend>(&mut q, tenant)];
    if let Some(p) = purpose {
        cond.push(format!(
            "purpose = {}",
            q.bind::<D::Backend>(Param::Text(p.as_str().to_owned()))
        ));
    }
    if let Some(st) = state {
        cond.push(format!(
            "state = {}",
            q.bind::<D::Backend>(Param::Text(st.as_str().to_owned()))
        ));
    }
    q.sql = format!(
        "SELECT {RECORD_COLS} FROM {KEYS} WHERE {} ORDER BY key_id",
        cond.join(" AND ")
    );
    D::Backend::load_records(db, &q).await
}

pub(super) async fn key_by_id<D: KeyDb>(db: &mut D, id: i64) -> QueryResult<Option<KeyRecord>> {
    let mut q = Query::new();
    let k = q.bind::<D::Backend>(Param::Int(id));
    q.sql = format!("SELECT {RECORD_COLS} FROM {KEYS} WHERE key_id = {k}");
    Ok(D::Backend::load_records(db, &q).await?.into_iter().next())
}

/// The highest generation of `tenant`'s keys of `purpose` (0 for none).
pub(super) async fn max_generation<D: KeyDb>(
    db: &mut D,
    tenant: Option<&str>,
    purpose: Purpose,
) -> QueryResult<i64> {
    let mut q = Query::new();
    let p = q.bind::<D::Backend>(Param::Text(purpose.as_str().to_owned()));
    let t = tenant_is::<D::Backend>(&mut q, tenant);
    q.sql =
        format!("SELECT COALESCE(MAX(generation), 0) AS n FROM {KEYS} WHERE purpose = {p} AND {t}");
    D::Backend::count_q(db, &q).await
}

/// Writes `new` over `old` if the row is still as `old` was read (compare-and-swap on its
/// state, wrapped bytes and MAC); returns rows changed.
pub(super) async fn update_record<D: KeyDb>(
    db: &mut D,
    new: &KeyRecord,
    old: &KeyRecord,
) -> QueryResult<usize> {
    let mut q = Query::new();
    let sets = [
        ("state", Param::Text(new.state.clone())),
        ("wrapped_key", Param::OptBytes(new.wrapped_key.clone())),
        ("kek_ref", Param::Text(new.kek_ref.clone())),
        ("generation", Param::Int(new.generation)),
        ("check_value", Param::OptBytes(new.check_value.clone())),
        ("mac_key_id", Param::OptInt(new.mac_key_id)),
        ("record_mac", Param::OptBytes(new.record_mac.clone())),
        ("kek_check", Param::OptBytes(new.kek_check.clone())),
        ("state_changed_at", Param::Int(new.state_changed_at)),
    ]
    .into_iter()
    .map(|(c, v)| format!("{c} = {}", q.bind::<D::Backend>(v)))
    .collect::<Vec<_>>()
    .join(", ");
    let k = q.bind::<D::Backend>(Param::Int(old.key_id));
    let st = q.bind::<D::Backend>(Param::Text(old.state.clone()));
    let kek = q.bind::<D::Backend>(Param::Text(old.kek_ref.clone()));
    let mut cond = format!("key_id = {k} AND state = {st} AND kek_ref = {kek}");
    for (col, v) in [
        ("wrapped_key", &old.wrapped_key),
        ("record_mac", &old.record_mac),
    ] {
        match v {
            None => cond.push_str(&format!(" AND {col} IS NULL")),
            Some(b) => {
                let b = q.bind::<D::Backend>(Param::Bytes(b.clone()));
                cond.push_str(&format!(" AND {col} = {b}"));
            }
        }
    }
    q.sql = format!("UPDATE {KEYS} SET {sets} WHERE {cond}");
    db.exec(&q).await
}

/// A summary of the key table that every key-store operation changes: poll it to learn
/// that another process created, rotated, destroyed or shredded keys
/// ([`KeyStore::generation`]).
///
/// Every operation only ever adds keys or moves a key forward (active, retired, destroyed),
/// so each one raises the number of keys or of destroyed keys: two generations are equal
/// only if no operation ran in between. Compare them with `==`; nothing else is meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Generation {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    key_count: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    retired_count: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    destroyed_count: i64,
}

pub(super) async fn generation<D: KeyDb>(db: &mut D) -> Result<Generation, Error> {
    let q = Query::sql(format!(
        "SELECT COUNT(*) AS key_count, \
         COUNT(CASE WHEN state = 'retired' THEN 1 END) AS retired_count, \
         COUNT(CASE WHEN state = 'destroyed' THEN 1 END) AS destroyed_count FROM {KEYS}"
    ));
    let rows = match D::Backend::load_generation(db, &q).await {
        Ok(rows) => rows,
        Err(e) => {
            return Err(migrated::explain(db, migrated::KEY_TABLE, store_err(e)).await);
        }
    };
    rows.into_iter()
        .next()
        .ok_or_else(|| Error::Store("the key table returned no generation".into()))
}

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn store_err(e: impl fmt::Display) -> Error {
    Error::Store(e.to_string())
}
