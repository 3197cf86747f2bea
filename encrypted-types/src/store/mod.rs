//! The key table: wrapped data keys and blind-index root keys, per tenant, with their state.
//!
//! [`KeyStore`] creates keys (wrapping them with a [`KekProvider`]), loads the table into a
//! [`Keyring`] (unwrapping each key once and self-testing it), and crypto-shreds tenants. The
//! table is created by the migration shipped in `migrations/<backend>/` (also embedded, see
//! [`KeyStore::run_migrations`]). Works on any sync Diesel connection of the three backends,
//! and on diesel-async through `AsyncConnectionWrapper`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::prelude::*;

use crate::db::{Db, Exec, Param, Query, sync_and_async};

use crate::Error;
use crate::format::{self, Context};
use crate::kek::{KekProvider, Purpose};
use crate::key::{DataKey, KeyId, KeyMaterial};
use crate::keyring::Keyring;
use crate::model::ModelInfo;
use crate::tenant::TenantId;

mod list;
mod load;
pub(crate) mod record;
mod rewrap;
mod wrap;

#[cfg(feature = "async")]
pub use list::list_keys_async;
pub use list::{KeyInfo, KeyPolicy, PolicyBreach, list_keys};
use record::Wrapper;
pub use rewrap::{RewrapOptions, RewrapReport};

diesel::table! {
    /// The key table (`migrations/<backend>/..._encrypted_types_keys`).
    encrypted_types_keys (key_id) {
        /// The key id written in sealed headers (a u32).
        key_id -> BigInt,
        /// The tenant, NULL for keys of no tenant.
        tenant -> Nullable<Text>,
        /// `data` or `blind_index`.
        purpose -> Text,
        /// `active` (seals new values), `retired` (opens only) or `destroyed`.
        state -> Text,
        /// The key wrapped by the KEK; NULL once destroyed.
        wrapped_key -> Nullable<Binary>,
        /// Which KEK wrapped it.
        kek_ref -> Text,
        /// Unix seconds.
        created_at -> BigInt,
        /// Unix seconds of the last state change.
        state_changed_at -> BigInt,
        /// Per tenant and purpose 1, 2, ...: the active key's is the highest (0: not authenticated).
        generation -> BigInt,
        /// The key's check value (`docs/KEYTABLE.md`), verified on every unwrap.
        check_value -> Nullable<Binary>,
        /// The deployment wrapping key whose MAC key authenticated the record.
        mac_key_id -> Nullable<BigInt>,
        /// HMAC-SHA256 over the record's fields.
        record_mac -> Nullable<Binary>,
    }
}

/// A key's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Seals new values (one data key per tenant) and opens old ones.
    Active,
    /// Opens values only; kept until no row references it.
    Retired,
    /// Gone: its wrapped bytes were erased, and values sealed with it can never be opened.
    Destroyed,
}

impl KeyState {
    /// The name stored in the key table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Destroyed => "destroyed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "retired" => Some(Self::Retired),
            "destroyed" => Some(Self::Destroyed),
            _ => None,
        }
    }
}

/// One row of the key table.
#[derive(Debug, Clone, Queryable, QueryableByName, Insertable, Selectable)]
#[diesel(table_name = encrypted_types_keys)]
pub struct KeyRecord {
    /// Key id (u32, stored as BIGINT).
    pub key_id: i64,
    /// Tenant.
    pub tenant: Option<String>,
    /// Purpose.
    pub purpose: String,
    /// State.
    pub state: String,
    /// Wrapped key bytes.
    pub wrapped_key: Option<Vec<u8>>,
    /// KEK reference.
    pub kek_ref: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub state_changed_at: i64,
    /// Generation within the tenant and purpose.
    pub generation: i64,
    /// Check value of the key.
    pub check_value: Option<Vec<u8>>,
    /// Id of the wrapping key whose MAC key authenticated the record.
    pub mac_key_id: Option<i64>,
    /// The record's MAC.
    pub record_mac: Option<Vec<u8>>,
}

/// The newest generation of data, blind-index and wrapping keys per tenant, and for keys of no
/// tenant.
type Seen = (HashMap<String, [i64; 3]>, [i64; 3]);

/// The keys made for a new tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantKeys {
    /// Its data key.
    pub data: KeyId,
    /// Its blind-index root key.
    pub blind_index: KeyId,
}

/// What [`KeyStore::load`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Data keys unwrapped and self-tested.
    pub data_keys: usize,
    /// Blind-index root keys unwrapped.
    pub blind_index_keys: usize,
    /// Destroyed keys recorded, so their values fail with [`Error::KeyDestroyed`].
    pub destroyed: usize,
    /// Calls to KEK providers: one per wrapping key (the deployment's, and one per tenant with
    /// its own KEK), plus one per key written before the table had a wrapping key (until
    /// [`KeyStore::rewrap`] moves them under one).
    pub kek_calls: usize,
    /// Tenants whose own KEK could not unwrap their keys, with that KEK's reference: their
    /// values fail with [`Error::TenantUnavailable`]; every other tenant loaded.
    pub unavailable: Vec<(TenantId, String)>,
    /// Records not yet authenticated (a table from before the key hierarchy, until its first
    /// key-store write or [`KeyStore::rewrap`]).
    pub unauthenticated: usize,
}

/// What [`KeyStore::shred_tenant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReport {
    /// The keys destroyed.
    pub keys: Vec<KeyId>,
    /// Rows (across the models passed in) holding at least one value sealed with a destroyed
    /// key: they can never be read again.
    pub rows_unreadable: u64,
}

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
    /// The clause that makes a `SELECT` hold a shared row lock until the transaction ends
    /// (empty on SQLite, whose writers are serialized anyway).
    #[doc(hidden)]
    const SHARE_LOCK: &'static str;
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
    /// Runs the [`Generation`] query.
    #[doc(hidden)]
    fn load_generation<D: Db<Backend = Self>>(
        db: &mut D,
        q: &Query,
    ) -> impl Future<Output = QueryResult<Vec<Generation>>> + Send;
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    key_id: i64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

macro_rules! key_table {
    ($db:ty, header_in = $header_in:expr, quote = $quote:literal, share_lock = $lock:literal) => {
        impl KeyTable for $db {
            const SHARE_LOCK: &'static str = $lock;

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
    share_lock = ""
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
    share_lock = " FOR SHARE"
);

#[cfg(feature = "mysql")]
key_table!(
    diesel::mysql::Mysql,
    header_in = |c, from, len, hexes| {
        let lits: Vec<String> = hexes.iter().map(|h| format!("X'{h}'")).collect();
        format!("SUBSTRING({c}, {from}, {len}) IN ({})", lits.join(", "))
    },
    quote = "`",
    share_lock = " LOCK IN SHARE MODE"
);

/// A connection the key store runs on, sync or async.
trait KeyDb: Db<Backend: KeyTable> {}
impl<D: Db<Backend: KeyTable>> KeyDb for D {}

// The key-table statements, written once in SQL every backend runs; only placeholders differ.
const KEYS: &str = "encrypted_types_keys";
const RECORD_COLS: &str = "key_id, tenant, purpose, state, wrapped_key, kek_ref, created_at, \
     state_changed_at, generation, check_value, mac_key_id, record_mac";

fn tenant_is<B: Exec>(q: &mut Query, tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("tenant = {}", q.bind::<B>(Param::Text(t.to_owned()))),
        None => "tenant IS NULL".to_owned(),
    }
}

/// Live (not destroyed) data and blind-index keys of a tenant.
async fn live_keys<D: KeyDb>(db: &mut D, tenant: Option<&str>) -> QueryResult<Vec<i64>> {
    let mut q = Query::new();
    let t = tenant_is::<D::Backend>(&mut q, tenant);
    q.sql = format!(
        "SELECT key_id FROM {KEYS} WHERE state <> 'destroyed' AND purpose <> 'wrapping' AND {t}"
    );
    D::Backend::load_ids(db, &q).await
}

async fn id_taken<D: KeyDb>(db: &mut D, id: i64) -> QueryResult<bool> {
    let mut q = Query::new();
    let p = q.bind::<D::Backend>(Param::Int(id));
    q.sql = format!("SELECT COUNT(*) AS n FROM {KEYS} WHERE key_id = {p}");
    Ok(D::Backend::count_q(db, &q).await? > 0)
}

async fn insert_key<D: KeyDb>(db: &mut D, r: &KeyRecord) -> QueryResult<()> {
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
async fn all_keys<D: KeyDb>(db: &mut D) -> QueryResult<Vec<KeyRecord>> {
    let q = Query::sql(format!("SELECT {RECORD_COLS} FROM {KEYS}"));
    let mut rows = D::Backend::load_records(db, &q).await?;
    rows.sort_unstable_by_key(|r| r.key_id);
    Ok(rows)
}

/// The records of no tenant and of `tenants`, by key id: a few hundred tenants per query, so
/// no backend's limit on bound parameters is reached.
async fn scoped_keys<D: KeyDb>(db: &mut D, tenants: &[TenantId]) -> QueryResult<Vec<KeyRecord>> {
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
async fn tenant_keys<D: KeyDb>(
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

async fn key_by_id<D: KeyDb>(db: &mut D, id: i64) -> QueryResult<Option<KeyRecord>> {
    let mut q = Query::new();
    let k = q.bind::<D::Backend>(Param::Int(id));
    q.sql = format!("SELECT {RECORD_COLS} FROM {KEYS} WHERE key_id = {k}");
    Ok(D::Backend::load_records(db, &q).await?.into_iter().next())
}

/// The highest generation of `tenant`'s keys of `purpose` (0 for none).
async fn max_generation<D: KeyDb>(
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
async fn update_record<D: KeyDb>(
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

async fn generation<D: KeyDb>(db: &mut D) -> Result<Generation, Error> {
    let q = Query::sql(format!(
        "SELECT COUNT(*) AS key_count, \
         COUNT(CASE WHEN state = 'retired' THEN 1 END) AS retired_count, \
         COUNT(CASE WHEN state = 'destroyed' THEN 1 END) AS destroyed_count FROM {KEYS}"
    ));
    D::Backend::load_generation(db, &q)
        .await
        .map_err(store_err)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Store("the key table returned no generation".into()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn store_err(e: impl fmt::Display) -> Error {
    Error::Store(e.to_string())
}

/// Creates, loads and destroys keys in the key table, wrapping them with one KEK provider.
///
/// ```
/// use diesel::prelude::*;
/// use encrypted_types::kek::local::LocalKek;
/// use encrypted_types::store::KeyStore;
///
/// let dir = std::env::temp_dir().join(format!("et-store-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let db = &mut SqliteConnection::establish(":memory:").unwrap();
/// KeyStore::<LocalKek>::run_migrations(db)?;
///
/// let store = KeyStore::new(LocalKek::create(dir.join("dev.kek"))?);
/// store.create_tenant(db, Some(&"clinic-a".into()))?;
/// let (keyring, report) = store.load(db)?;
/// assert_eq!(report.data_keys, 1);
/// assert!(keyring.primary_key(Some(&"clinic-a".into())).is_ok());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), encrypted_types::Error>(())
/// ```
pub struct KeyStore<P> {
    provider: P,
    /// Deployment KEKs that only unwrap: the old KEK while a rewrap runs.
    others: Vec<Box<dyn KekProvider>>,
    /// Tenants' own KEKs, each usable for its tenant's wrapping key only: a tenant's KEK can
    /// never vouch for the deployment's wrapping key or another tenant's.
    tenant_keks: Vec<(TenantId, Box<dyn KekProvider>)>,
    /// Wrapping keys unwrapped so far: a KEK call once per wrapping key and load. Keyed by
    /// everything the unwrap depended on, so a record changed in the table is never answered
    /// from the cache.
    wrappers: Mutex<HashMap<WrapperKey, Arc<Wrapper>>>,
    /// The highest generation seen per tenant and purpose at a load: a later load showing an
    /// older active key (a rolled-back table) is refused.
    /// Indexed by tenant (`None` for the keys of no tenant), then data, blind index, wrapping.
    seen: Mutex<Seen>,
    /// Set once this process has loaded an authenticated table: a later load of the same table
    /// without its wrapping keys (a downgrade to unauthenticated records) is refused.
    authenticated: std::sync::atomic::AtomicBool,
    /// Whether a table from before the key hierarchy (unauthenticated records) may be loaded.
    legacy_allowed: bool,
    /// KEK calls made through this store, for the jobs' reports.
    calls: std::sync::atomic::AtomicUsize,
}

/// What a cached wrapping key was unwrapped from: key id, tenant, KEK reference, wrapped bytes.
type WrapperKey = (KeyId, Option<String>, String, Vec<u8>);

impl<P: fmt::Debug> fmt::Debug for KeyStore<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("provider", &self.provider)
            .field("others", &self.others)
            .field("tenant_keks", &self.tenant_keks)
            .finish_non_exhaustive()
    }
}

impl<P: KekProvider> KeyStore<P> {
    /// A store whose new keys are wrapped by `provider`.
    pub fn new(provider: P) -> Self {
        Self {
            provider,
            others: Vec::new(),
            tenant_keks: Vec::new(),
            wrappers: Mutex::default(),
            seen: Mutex::default(),
            authenticated: std::sync::atomic::AtomicBool::new(false),
            legacy_allowed: false,
            calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Also unwraps deployment keys wrapped by `kek`, without wrapping anything new under it:
    /// the old KEK while [`KeyStore::rewrap`] moves the table to `provider`. Keys are matched
    /// to KEKs by [`KekProvider::kek_ref`]. A tenant's own KEK goes in
    /// [`KeyStore::with_tenant_kek`] instead.
    ///
    /// ```
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = std::env::temp_dir().join(format!("et-with-kek-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let new = LocalKek::create(dir.join("new.kek"))?;
    /// let old = LocalKek::create(dir.join("old.kek"))?;
    /// let store = KeyStore::new(new).with_kek(old);
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_kek(mut self, kek: impl KekProvider + 'static) -> Self {
        self.others.push(Box::new(kek));
        self
    }

    /// Adds `tenant`'s own KEK (bring your own key, [`KeyStore::create_tenant_with_kek`]). It
    /// unwraps that tenant's wrapping key and nothing else: a tenant holding its KEK cannot
    /// forge the deployment's wrapping key or another tenant's.
    ///
    /// ```
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = std::env::temp_dir().join(format!("et-tenant-kek-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let ours = LocalKek::create(dir.join("ours.kek"))?;
    /// let theirs = LocalKek::create(dir.join("clinic-b.kek"))?; // in production: their KMS key
    /// let store = KeyStore::new(ours).with_tenant_kek("clinic-b", theirs);
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_tenant_kek(
        mut self,
        tenant: impl Into<TenantId>,
        kek: impl KekProvider + 'static,
    ) -> Self {
        self.tenant_keks.push((tenant.into(), Box::new(kek)));
        self
    }

    /// Loads a key table from before the key hierarchy, whose records are not authenticated
    /// (every key wrapped by the KEK itself, one KEK call per key), for the upgrade window:
    /// until [`KeyStore::rewrap`] has moved it under a wrapping key. Without it such a table is
    /// refused, since a database writer could strip a table back to that form. A process that
    /// has loaded the table authenticated refuses it stripped even with this set.
    ///
    /// ```
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = std::env::temp_dir().join(format!("et-legacy-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let upgrading = KeyStore::new(LocalKek::create(dir.join("kek"))?).allow_legacy_table();
    /// # drop(upgrading);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn allow_legacy_table(mut self) -> Self {
        self.legacy_allowed = true;
        self
    }

    /// The KEK named `kek_ref` that may unwrap a record of `tenant`'s own wrapping key (`Some`)
    /// or of the deployment (`None`), if this store has it.
    fn kek(&self, tenant: Option<&str>, kek_ref: &str) -> Option<&dyn KekProvider> {
        // A KEK in both roles is never a deployment KEK (and `roles_checked` refuses the store).
        if tenant.is_none() && self.tenant_keks.iter().any(|(_, k)| k.kek_ref() == kek_ref) {
            return None;
        }
        match tenant {
            None if self.provider.kek_ref() == kek_ref => Some(&self.provider),
            None => self
                .others
                .iter()
                .find(|k| k.kek_ref() == kek_ref)
                .map(|k| &**k as &dyn KekProvider),
            Some(t) => self
                .tenant_keks
                .iter()
                .find(|(owner, k)| owner.as_str() == t && k.kek_ref() == kek_ref)
                .map(|(_, k)| &**k as &dyn KekProvider),
        }
    }

    /// Refuses a store that gives one KEK both to a tenant and to the deployment.
    fn roles_checked(&self) -> Result<(), Error> {
        let deployment =
            |r: &str| self.provider.kek_ref() == r || self.others.iter().any(|k| k.kek_ref() == r);
        match self
            .tenant_keks
            .iter()
            .find(|(_, k)| deployment(&k.kek_ref()))
        {
            Some((t, k)) => Err(Error::KekRoles {
                kek: k.kek_ref(),
                tenant: t.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    sync_and_async! {
        /// The key table's [`Generation`]: one aggregate query, cheap enough to poll every few
        /// seconds. When it differs from the one seen at the last load, another process changed
        /// keys: reload ([`KeyStore::load_and_install`]). A rotation is safe to pick up late (the
        /// old key still opens); a shredded tenant's keys stay usable in a process until it
        /// reloads, so poll often where erasure must take effect fast.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = std::env::temp_dir().join(format!("et-gen-doc-{}", std::process::id()));
        /// # std::fs::create_dir_all(&dir).unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.join("dev.kek"))?);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// let seen = store.generation(conn)?;
        /// store.load_and_install(conn)?;
        ///
        /// // Elsewhere, another process rotates the clinic's data key ...
        /// store.rotate_data_key(conn, Some(&"clinic-a".into()))?;
        ///
        /// // ... and this one notices on its next poll.
        /// if store.generation(conn)? != seen {
        ///     store.load_and_install(conn)?;
        /// }
        /// # std::fs::remove_dir_all(&dir).unwrap();
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::Store`].
        pub fn generation / generation_async(&self)
            -> Result<Generation, Error> where Backend: KeyTable => self.generation_on
    }

    /// Creates the key table (the embedded copy of `migrations/<backend>/`), if not yet done.
    ///
    /// # Errors
    /// [`Error::Store`].
    #[cfg(feature = "migrations")]
    pub fn run_migrations<C>(conn: &mut C) -> Result<(), Error>
    where
        C: Connection + diesel_migrations::MigrationHarness<<C as Connection>::Backend>,
        C::Backend: Migrations,
    {
        conn.run_pending_migrations(<C::Backend as Migrations>::MIGRATIONS)
            .map_err(store_err)?;
        Ok(())
    }

    sync_and_async! {
        /// Creates a tenant's keys (or, for `None`, the keys of values without a tenant): an
        /// active data key and an active blind-index root key, each fresh from the OS, wrapped and
        /// stored.
        ///
        /// # Errors
        /// [`Error::Store`] (for instance if the tenant already has keys), provider errors.
        pub fn create_tenant / create_tenant_async(&self, tenant: Option<&TenantId>)
            -> Result<TenantKeys, Error> where Backend: KeyTable => self.create_tenant_on
    }

    async fn generation_on<D: KeyDb>(&self, db: &mut D) -> Result<Generation, Error> {
        generation(db).await
    }

    async fn create_tenant_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<TenantKeys, Error> {
        // One transaction: both keys or neither. The unique index on active keys makes a
        // concurrent creator of the same tenant fail instead of adding a second primary.
        crate::db::transaction(db, store_err, async |db| {
            let existing = live_keys(db, tenant.map(TenantId::as_str))
                .await
                .map_err(store_err)?;
            if !existing.is_empty() {
                return Err(Error::Store(format!(
                    "tenant {} already has keys",
                    crate::tenant::describe(tenant)
                )));
            }
            let data = self.create_key(db, tenant, Purpose::Data).await?;
            let blind_index = self.create_key(db, tenant, Purpose::BlindIndex).await?;
            Ok(TenantKeys { data, blind_index })
        })
        .await
    }

    sync_and_async! {
        /// Creates a tenant whose keys are wrapped by its own KEK (bring your own key): a
        /// wrapping key for the tenant, wrapped by the KEK named `kek_ref` (added to this store
        /// for this tenant with [`KeyStore::with_tenant_kek`]), then the tenant's data key and blind-index root key,
        /// wrapped by it. Disabling that KEK makes exactly this tenant unavailable at the next
        /// load ([`Error::TenantUnavailable`]); re-enabling it restores the tenant at the load
        /// after that.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::{KekProvider, local::LocalKek};
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = std::env::temp_dir().join(format!("et-byok-doc-{}", std::process::id()));
        /// # std::fs::create_dir_all(&dir).unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let theirs = LocalKek::create(dir.join("clinic-b.kek"))?; // in production: their KMS key
        /// let kek_ref = theirs.kek_ref();
        /// let store = KeyStore::new(LocalKek::create(dir.join("ours.kek"))?)
        ///     .with_tenant_kek("clinic-b", theirs);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// store.create_tenant_with_kek(conn, &"clinic-b".into(), &kek_ref)?;
        /// let report = store.load_and_install(conn)?;
        /// assert_eq!(report.kek_calls, 2, "one per wrapping key, not one per key");
        /// # std::fs::remove_dir_all(&dir).unwrap();
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::Store`] if the tenant already has keys or this store has no KEK `kek_ref`;
        /// provider errors.
        pub fn create_tenant_with_kek / create_tenant_with_kek_async(&self, tenant: &TenantId, kek_ref: &str)
            -> Result<TenantKeys, Error> where Backend: KeyTable => self.create_tenant_with_kek_on
    }

    async fn create_tenant_with_kek_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: &TenantId,
        kek_ref: &str,
    ) -> Result<TenantKeys, Error> {
        let kek = self.kek(Some(tenant.as_str()), kek_ref).ok_or_else(|| {
            Error::Store(format!(
                "no KEK {kek_ref} for tenant {tenant} in this key store: add it with KeyStore::with_tenant_kek"
            ))
        })?;
        if self.kek(None, kek_ref).is_some() {
            return Err(Error::Store(format!(
                "KEK {kek_ref} is one of the deployment's: a tenant's own KEK must be its own"
            )));
        }
        crate::db::transaction(db, store_err, async |db| {
            let existing = tenant_keys(db, Some(tenant.as_str()), None, None)
                .await
                .map_err(store_err)?;
            if existing
                .iter()
                .any(|r| r.state != KeyState::Destroyed.as_str())
            {
                return Err(Error::Store(format!("tenant {tenant} already has keys")));
            }
            let mac = self.mac_wrapper(db).await?;
            self.create_wrapping(db, Some(tenant), kek, Some(&mac))
                .await?;
            let data = self.create_key(db, Some(tenant), Purpose::Data).await?;
            let blind_index = self
                .create_key(db, Some(tenant), Purpose::BlindIndex)
                .await?;
            Ok(TenantKeys { data, blind_index })
        })
        .await
    }

    /// Retires `tenant`'s active keys of `purpose`; returns how many.
    async fn retire<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> Result<usize, Error> {
        let mac = self.mac_wrapper(db).await?;
        let active = tenant_keys(db, tenant, Some(purpose), Some(KeyState::Active))
            .await
            .map_err(store_err)?;
        for old in &active {
            if !self.set_state(db, old, KeyState::Retired, &mac).await? {
                return Err(Error::Store(
                    "the key changed while it was being retired; run again".into(),
                ));
            }
        }
        Ok(active.len())
    }

    sync_and_async! {
        /// Adds a new active data key for `tenant` and retires the previous one: new writes use the
        /// new key at once (after the keyring is reloaded), old values still open. The rotation job
        /// re-seals old rows.
        ///
        /// # Errors
        /// [`Error::Store`], provider errors.
        pub fn rotate_data_key / rotate_data_key_async(&self, tenant: Option<&TenantId>)
            -> Result<KeyId, Error> where Backend: KeyTable => self.rotate_data_key_on
    }

    async fn rotate_data_key_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<KeyId, Error> {
        // Retire and create in one transaction: a failed wrap leaves the old key active.
        crate::db::transaction(db, store_err, async |db| {
            let retired = self
                .retire(db, tenant.map(TenantId::as_str), Purpose::Data)
                .await?;
            // A tenant without an active data key was never created (or was shredded): a lone
            // data key would make a half-tenant that every later `load` refuses.
            if retired == 0 {
                return Err(Error::NoPrimaryKey {
                    tenant: crate::tenant::describe(tenant),
                });
            }
            self.create_key(db, tenant, Purpose::Data).await
        })
        .await
    }

    sync_and_async! {
        /// Replaces `tenant`'s blind-index root key, after a compromise: the active root is retired
        /// and a new one created, in one transaction. Every blind index of the tenant must then be
        /// recomputed under the new root; until it is, lookups find old rows through
        /// `previous(.., root = retired)` (`docs/KEYS.md`, "Replacing a blind-index root key").
        /// Then destroy the retired root with [`KeyStore::destroy_key`].
        ///
        /// Returns the new root's id and the retired one's.
        ///
        /// # Errors
        /// [`Error::NoBlindIndexKey`] for a tenant without one; [`Error::Store`] while an earlier
        /// replacement of the tenant's root is not finished (its retired root not destroyed).
        pub fn replace_blind_index_root / replace_blind_index_root_async(&self, tenant: Option<&TenantId>)
            -> Result<(KeyId, KeyId), Error> where Backend: KeyTable => self.replace_blind_index_root_on
    }

    async fn replace_blind_index_root_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<(KeyId, KeyId), Error> {
        crate::db::transaction(db, store_err, async |db| {
            let t = tenant.map(TenantId::as_str);
            let mine: Vec<KeyRecord> = all_keys(db).await
                .map_err(store_err)?
                .into_iter()
                .filter(|r| r.tenant.as_deref() == t && r.purpose == Purpose::BlindIndex.as_str())
                .collect();
            if mine.iter().any(|r| r.state == KeyState::Retired.as_str()) {
                return Err(Error::Store(format!(
                    "the blind-index root of {} is already being replaced: reindex, then destroy the retired root first",
                    crate::tenant::describe(tenant)
                )));
            }
            let old = mine
                .iter()
                .find(|r| r.state == KeyState::Active.as_str())
                .and_then(|r| u32::try_from(r.key_id).ok())
                .map(KeyId::from)
                .ok_or_else(|| Error::NoBlindIndexKey {
                    tenant: crate::tenant::describe(tenant),
                })?;
            self.retire(db, t, Purpose::BlindIndex).await?;
            let new = self.create_key(db, tenant, Purpose::BlindIndex).await?;
            Ok((new, old))
        }).await
    }

    sync_and_async! {
        /// Reads the whole key table, unwraps every active and retired key once, self-tests each
        /// data key with a canary seal and open, and builds the keyring. Destroyed keys are recorded
        /// so their values fail with [`Error::KeyDestroyed`].
        ///
        /// Any unusable key fails the whole load with an error naming its key id, so a bad key is
        /// found at startup, never on first use.
        ///
        /// # Errors
        /// [`Error::KeyUnwrap`], [`Error::SelfTest`], [`Error::KeyRecord`], [`Error::Store`],
        /// provider errors.
        pub fn load / load_async(&self)
            -> Result<(Keyring, LoadReport), Error> where Backend: KeyTable => self.load_on
    }

    sync_and_async! {
        /// [`KeyStore::load`], then installs the keyring process-wide. Call it at startup and
        /// whenever keys change (a refresh); readers switch atomically.
        ///
        /// # Errors
        /// As [`KeyStore::load`]; the installed keyring is left unchanged on error.
        pub fn load_and_install / load_and_install_async(&self)
            -> Result<LoadReport, Error> where Backend: KeyTable => self.load_and_install_on
    }

    async fn load_and_install_on<D: KeyDb>(&self, db: &mut D) -> Result<LoadReport, Error> {
        let (keyring, report) = self.load_on(db).await?;
        keyring.install();
        Ok(report)
    }

    async fn load_on<D: KeyDb>(&self, db: &mut D) -> Result<(Keyring, LoadReport), Error> {
        self.load_scoped(db, None).await
    }

    sync_and_async! {
        /// [`KeyStore::load`] for `tenants` only (and the keys of no tenant): what a process that
        /// serves some of 100,000 tenants loads at startup, in time that grows with the tenants
        /// it serves, not with the table. The same checks run on every record it reads (MACs,
        /// generations, check values, completeness), and a tenant's own KEK is asked only for
        /// its tenant. Values, writes and lookups of any other tenant fail with
        /// [`Error::TenantNotLoaded`] or [`Error::KeyNotLoaded`] until
        /// [`KeyStore::ensure_loaded`] adds it; jobs refuse such a keyring
        /// ([`Error::PartialKeyring`]).
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # use encrypted_types::{Error, TenantId};
        /// # let dir = std::env::temp_dir().join(format!("et-scoped-doc-{}", std::process::id()));
        /// # std::fs::create_dir_all(&dir).unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.join("dev.kek"))?);
        /// let (a, b) = (TenantId::from("clinic-a"), TenantId::from("clinic-b"));
        /// store.create_tenant(conn, Some(&a))?;
        /// store.create_tenant(conn, Some(&b))?;
        ///
        /// let (keyring, report) = store.load_tenants(conn, &[a.clone()])?;
        /// assert_eq!(report.data_keys, 1);
        /// assert!(keyring.primary_key(Some(&a)).is_ok());
        /// assert!(matches!(keyring.primary_key(Some(&b)), Err(Error::TenantNotLoaded { .. })));
        /// # std::fs::remove_dir_all(&dir).unwrap();
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// As [`KeyStore::load`].
        pub fn load_tenants / load_tenants_async(&self, tenants: &[TenantId])
            -> Result<(Keyring, LoadReport), Error> where Backend: KeyTable => self.load_tenants_on
    }

    async fn load_tenants_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenants: &[TenantId],
    ) -> Result<(Keyring, LoadReport), Error> {
        self.load_scoped(db, Some(tenants)).await
    }

    sync_and_async! {
        /// Makes sure the installed keyring holds `tenants`' keys: loads the missing ones (as
        /// [`KeyStore::load_tenants`], one query, KMS calls only for tenants with their own KEK)
        /// and installs the keyring with them added. Call it outside the query, where the tenant
        /// is known (a request's middleware, a worker picking up a tenant's job): `ToSql` and
        /// `FromSql` never call a KEK. Nothing happens for tenants already loaded (a tenant whose
        /// own KEK failed is asked again), or when the installed keyring is complete
        /// ([`KeyStore::load_and_install`] refreshes that one); with no keyring installed, it
        /// installs one of `tenants`. Returns how many tenants it loaded.
        ///
        /// A loaded tenant stays loaded (no eviction); a process that must see another
        /// process's rotations or shredding polls [`KeyStore::generation`] and reloads its
        /// tenants with [`KeyStore::load_tenants`].
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # use encrypted_types::{Keyring, TenantId};
        /// # let dir = std::env::temp_dir().join(format!("et-ensure-doc-{}", std::process::id()));
        /// # std::fs::create_dir_all(&dir).unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.join("dev.kek"))?);
        /// let (a, b) = (TenantId::from("clinic-a"), TenantId::from("clinic-b"));
        /// store.create_tenant(conn, Some(&a))?;
        /// store.create_tenant(conn, Some(&b))?;
        /// store.load_tenants(conn, &[a.clone()])?.0.install();
        ///
        /// assert_eq!(store.ensure_loaded(conn, &[a.clone(), b.clone()])?, 1);
        /// assert!(Keyring::current().unwrap().has_tenant(&b));
        /// assert_eq!(store.ensure_loaded(conn, &[b])?, 0);
        /// # std::fs::remove_dir_all(&dir).unwrap();
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// As [`KeyStore::load`]; the installed keyring is left unchanged on error.
        pub fn ensure_loaded / ensure_loaded_async(&self, tenants: &[TenantId])
            -> Result<usize, Error> where Backend: KeyTable => self.ensure_loaded_on
    }

    async fn ensure_loaded_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenants: &[TenantId],
    ) -> Result<usize, Error> {
        let current = Keyring::current();
        // A complete keyring is refreshed by a reload, not tenant by tenant.
        if current.as_ref().is_some_and(|k| k.is_complete()) {
            return Ok(0);
        }
        // An unavailable tenant is asked again: its KMS may be back.
        let mut missing: Vec<TenantId> = tenants
            .iter()
            .filter(|t| current.as_ref().is_none_or(|k| !k.serves(t)))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(0);
        }
        let (more, _) = self.load_scoped(db, Some(&missing)).await?;
        Keyring::install_merged(more)?;
        Ok(missing.len())
    }

    sync_and_async! {
        /// Destroys one retired key (its wrapped bytes erased). For a data key it refuses while
        /// any row of `models` still holds a value sealed with it: run the rotation job first. A
        /// retired blind-index root ([`KeyStore::replace_blind_index_root`]) leaves no trace in the
        /// index bytes, so nothing here can count what still depends on it: destroy it only after
        /// the reindex job reported `finished`; lookups of an index not yet recomputed then find
        /// nothing (they never find a wrong row: every match is re-checked).
        ///
        /// # Errors
        /// [`Error::KeyRecord`] if rows still reference the key or it is the tenant's active key;
        /// [`Error::Store`].
        pub fn destroy_key / destroy_key_async(&self, key_id: KeyId, models: &[ModelInfo])
            -> Result<(), Error> where Backend: KeyTable => self.destroy_key_on
    }

    async fn destroy_key_on<D: KeyDb>(
        &self,
        db: &mut D,
        key_id: KeyId,
        models: &[ModelInfo],
    ) -> Result<(), Error> {
        if count_rows_with_keys_on(db, models, &[key_id]).await? > 0 {
            return Err(Error::KeyRecord {
                key_id,
                reason: "rows still hold values sealed with it",
            });
        }
        let not_retired = Error::KeyRecord {
            key_id,
            reason: "not a retired key",
        };
        let destroyed = crate::db::transaction(db, store_err, async |db| {
            let mac = self.mac_wrapper(db).await?;
            let old = key_by_id(db, i64::from(key_id.get()))
                .await
                .map_err(store_err)?
                .filter(|r| {
                    r.state == KeyState::Retired.as_str() && r.purpose != Purpose::Wrapping.as_str()
                });
            match old {
                Some(old) => self.set_state(db, &old, KeyState::Destroyed, &mac).await,
                None => Ok(false),
            }
        })
        .await?;
        if !destroyed {
            return Err(not_retired);
        }
        tracing::warn!(target: "encrypted_types::audit", event = "key_destroyed", key_id = key_id.get());
        Ok(())
    }

    sync_and_async! {
        /// Crypto-shreds a tenant: marks all its keys destroyed and erases their wrapped bytes, in
        /// one transaction, then counts the rows of `models` that hold values sealed with them.
        /// Reload the keyring afterwards (every process: [`KeyStore::load_and_install`]); no other
        /// tenant is touched.
        ///
        /// Erasing the wrapped bytes does not reach copies in backups, WAL or replicas: those stay
        /// decryptable by anyone who also holds the KEK until they age out, or until a per-tenant
        /// KEK is deleted in the KMS (see `docs/KEYS.md`).
        ///
        /// # Errors
        /// [`Error::Store`].
        pub fn shred_tenant / shred_tenant_async(&self, tenant: &TenantId, models: &[ModelInfo])
            -> Result<ShredReport, Error> where Backend: KeyTable => self.shred_tenant_on
    }

    async fn shred_tenant_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: &TenantId,
        models: &[ModelInfo],
    ) -> Result<ShredReport, Error> {
        // Count first: the rows sealed with the tenant's keys are the same before and after, and a
        // failed count must not leave keys destroyed with no report.
        let live: Vec<KeyId> = live_keys(db, Some(tenant.as_str()))
            .await
            .map_err(store_err)?
            .iter()
            .filter_map(|id| u32::try_from(*id).ok())
            .map(KeyId::from)
            .collect();
        let rows_unreadable = count_rows_with_keys_on(db, models, &live).await?;
        let ids = crate::db::transaction(db, store_err, async |db| {
            let mac = self.mac_wrapper(db).await?;
            let mut ids = Vec::new();
            for old in tenant_keys(db, Some(tenant.as_str()), None, None)
                .await
                .map_err(store_err)?
            {
                if old.state != KeyState::Destroyed.as_str() {
                    if !self.set_state(db, &old, KeyState::Destroyed, &mac).await? {
                        return Err(Error::Store(
                            "the tenant's keys changed while it was being shredded; run again"
                                .into(),
                        ));
                    }
                    ids.push(old.key_id);
                    if old.purpose == Purpose::Wrapping.as_str() {
                        self.forget_wrapping(wrap::key_id_of(&old)?);
                    }
                }
            }
            Ok(ids)
        })
        .await?;
        let key_ids: Vec<KeyId> = ids
            .iter()
            .filter_map(|id| u32::try_from(*id).ok())
            .map(KeyId::from)
            .collect();
        // This process stops using the keys at once; other processes on their next reload.
        if let Some(current) = Keyring::current() {
            current.without_tenant(tenant, &key_ids).install();
        }
        tracing::warn!(
            target: "encrypted_types::audit",
            event = "tenant_shredded",
            tenant = %tenant,
            keys = ?key_ids.iter().map(|k| k.get()).collect::<Vec<_>>(),
            rows_unreadable,
        );
        Ok(ShredReport {
            keys: key_ids,
            rows_unreadable,
        })
    }
}

sync_and_async! {
    /// Rows of `models` holding a value sealed with one of `ids`, found by the header bytes in SQL.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn count_rows_with_keys / count_rows_with_keys_async(models: &[ModelInfo], ids: &[KeyId])
        -> Result<u64, Error> where Backend: KeyTable => count_rows_with_keys_on
}

pub(crate) async fn count_rows_with_keys_on<D>(
    db: &mut D,
    models: &[ModelInfo],
    ids: &[KeyId],
) -> Result<u64, Error>
where
    D: Db<Backend: KeyTable>,
{
    if ids.is_empty() {
        return Ok(0);
    }
    let mut total = 0u64;
    for m in models {
        let preds: Vec<String> = m
            .columns
            .iter()
            .map(|c| D::Backend::key_id_in(&D::Backend::quote(c.column), ids))
            .collect();
        if preds.is_empty() {
            continue;
        }
        let q = Query::sql(format!(
            "SELECT COUNT(*) AS n FROM {} WHERE {}",
            D::Backend::quote(m.table),
            preds.join(" OR ")
        ));
        let n = D::Backend::count_q(db, &q).await.map_err(store_err)?;
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

/// Seals and opens a canary under a freshly unwrapped key: a key that unwrapped to the wrong
/// bytes, or a broken cipher, fails here at startup rather than on the first real value.
fn self_test(id: KeyId, tenant: Option<&TenantId>, material: &KeyMaterial) -> Result<(), Error> {
    let key = DataKey::new(id, tenant.cloned(), material);
    let ctx = Context {
        table: "encrypted_types",
        column: "self_test",
        tenant,
        value_type: "bytes",
    };
    let canary = b"encrypted-types self-test".to_vec();
    let fail = |_| Error::SelfTest { key_id: id };
    let sealed = format::seal(&key, &ctx, &canary).map_err(fail)?;
    let opened: Vec<u8> = format::open(&key, &ctx, sealed).map_err(fail)?;
    if opened == canary {
        Ok(())
    } else {
        Err(Error::SelfTest { key_id: id })
    }
}

/// The embedded key-table migrations of each backend.
#[cfg(feature = "migrations")]
pub trait Migrations {
    /// The migrations.
    const MIGRATIONS: diesel_migrations::EmbeddedMigrations;
}

#[cfg(all(feature = "migrations", feature = "sqlite"))]
impl Migrations for diesel::sqlite::Sqlite {
    const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
        diesel_migrations::embed_migrations!("migrations/sqlite");
}

#[cfg(all(feature = "migrations", feature = "postgres"))]
impl Migrations for diesel::pg::Pg {
    const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
        diesel_migrations::embed_migrations!("migrations/postgres");
}

#[cfg(all(feature = "migrations", feature = "mysql"))]
impl Migrations for diesel::mysql::Mysql {
    const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
        diesel_migrations::embed_migrations!("migrations/mysql");
}
