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
use crate::format::key::{DataKey, KeyId, KeyMaterial};
use crate::format::{self, Context};
use crate::kek::{KekProvider, Purpose};
use crate::keyring::Keyring;
use crate::model::ModelInfo;
use crate::tenant::TenantId;

mod lifecycle;
mod list;
mod load;
mod manifest;
pub(crate) mod migrated;
pub(crate) mod record;
mod rewrap;
mod sql;
mod wrap;

#[allow(clippy::wildcard_imports)] // the key table's statements, as if in this module
use sql::*;
pub use sql::{Generation, KeyTable};

pub use list::{
    AdoptionGroup, KeyInfo, KeyPolicy, PolicyBreach, ReusedWrapNonce, adoption_review,
    is_legacy_table, list_keys, reused_wrap_nonces,
};
#[cfg(feature = "async")]
pub use list::{list_keys_async, reused_wrap_nonces_async};
pub use manifest::ManifestStatus;
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
        /// The check value of the KEK that wrapped a record directly (`docs/KEYTABLE.md`):
        /// compared after a failed unwrap, to report a wrong KEK as such. Not under the MAC.
        kek_check -> Nullable<Binary>,
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
    /// The check value of the KEK that wrapped it, for a record wrapped directly by a KEK whose
    /// provider gives one ([`crate::kek::KekProvider::kek_check`]); `None` otherwise, and for
    /// records written before 0.2.
    pub kek_check: Option<Vec<u8>>,
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
    /// Calls made to KEK providers: one per wrapping key (the deployment's, and one per tenant
    /// with its own KEK), plus one per key written before the table had a wrapping key (until
    /// [`KeyStore::rewrap`] moves them under one). A tenant KEK not asked (still busy with a
    /// call an earlier load gave up on, or the deadline passed first) is not counted.
    pub kek_calls: usize,
    /// Tenants whose own KEK could not unwrap their keys, with that KEK's reference: their
    /// values fail with [`Error::TenantUnavailable`]; every other tenant loaded.
    pub unavailable: Vec<(TenantId, String)>,
    /// Records not yet authenticated (a table from before the key hierarchy, until its first
    /// key-store write or [`KeyStore::rewrap`]).
    pub unauthenticated: usize,
    /// The key table's deployment epoch (`docs/KEYTABLE.md` §6), which every rotation,
    /// destroy, shred, root replacement and rewrap raises: pin it from outside the database
    /// with [`KeyStore::with_min_epoch`]. `None` for a table without a manifest.
    pub manifest_epoch: Option<u64>,
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
    tenant_keks: Vec<(TenantId, Arc<dyn KekProvider>)>,
    /// Per tenant KEK (same order): whether a call a load gave up on is still waiting on it,
    /// so a hung provider holds one thread, not one more per load.
    tenant_busy: Vec<Arc<std::sync::atomic::AtomicBool>>,
    /// [`KeyStore::with_tenant_kek_deadline`].
    tenant_kek_deadline: std::time::Duration,
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
    /// [`KeyStore::with_seal_max_age`].
    seal_max_age: Option<std::time::Duration>,
    /// [`KeyStore::with_destroy_grace`]: how long after its retirement a key may be destroyed.
    destroy_grace: std::time::Duration,
    /// The key table's generation as read at the start of this store's last load.
    loaded_generation: Mutex<Option<Generation>>,
    /// [`KeyStore::with_min_epoch`].
    min_epoch: Option<u64>,
    /// The highest deployment epoch this store loaded or wrote: a lower one later is a
    /// rolled-back table.
    seen_epoch: std::sync::atomic::AtomicU64,
    /// [`KeyStore::allow_unmanifested_table`].
    unmanifested_allowed: bool,
}

/// How long after its retirement a key may be destroyed, by default: a process that polls the
/// key table ([`KeyStore::refresh`]) has long reloaded by then. With
/// [`KeyStore::with_seal_max_age`] the grace period is that age plus [`DESTROY_MARGIN`].
pub const DEFAULT_DESTROY_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How long a load waits for tenants' own KEKs, by default
/// ([`KeyStore::with_tenant_kek_deadline`]): far above a KMS's usual answer (tens of
/// milliseconds), short enough that a tenant whose KMS hangs does not hold up every process's
/// start.
pub const DEFAULT_TENANT_KEK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`KeyStore::with_seal_max_age`] adds to the sealing age for the destroy grace period:
/// clock skew between hosts and a seal that began just before the limit.
pub const DESTROY_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// What a cached wrapping key was unwrapped from: key id, tenant, KEK reference, wrapped bytes.
type WrapperKey = (KeyId, Option<String>, String, Vec<u8>, bool);

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
            tenant_busy: Vec::new(),
            tenant_kek_deadline: DEFAULT_TENANT_KEK_DEADLINE,
            wrappers: Mutex::default(),
            seen: Mutex::default(),
            authenticated: std::sync::atomic::AtomicBool::new(false),
            legacy_allowed: false,
            calls: std::sync::atomic::AtomicUsize::new(0),
            seal_max_age: None,
            destroy_grace: DEFAULT_DESTROY_GRACE,
            loaded_generation: Mutex::new(None),
            min_epoch: None,
            seen_epoch: std::sync::atomic::AtomicU64::new(0),
            unmanifested_allowed: false,
        }
    }

    /// Keyrings this store loads refuse to seal ([`Error::StaleKeyring`]) once `max_age` has
    /// passed since their load began, unless [`KeyStore::refresh`] found the key table unchanged
    /// meanwhile (or reloaded it). Opening is never refused. Destroying a key through this
    /// store then waits `max_age` plus [`DESTROY_MARGIN`] after its retirement (instead of
    /// [`DEFAULT_DESTROY_GRACE`]): by then no process still seals with it.
    ///
    /// Give every writing process the same setting, and poll well within it (every few
    /// seconds to minutes). Without it, keyrings seal for as long as they are installed, and a
    /// process that never reloads can seal under a key destroyed after the grace period.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?)
    ///     .with_seal_max_age(Duration::from_secs(15 * 60));
    /// # drop(store);
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_seal_max_age(mut self, max_age: std::time::Duration) -> Self {
        self.seal_max_age = Some(max_age);
        self.destroy_grace = max_age.saturating_add(DESTROY_MARGIN);
        self
    }

    /// Sets how long after its retirement [`KeyStore::destroy_key`] may destroy a key
    /// ([`Error::DestroyTooSoon`] before). `Duration::ZERO` turns the wait off: for tests, and
    /// for deployments that know every process has reloaded (after a restart of all of them).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?)
    ///     .with_destroy_grace(Duration::from_secs(3600));
    /// # drop(store);
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_destroy_grace(mut self, grace: std::time::Duration) -> Self {
        self.destroy_grace = grace;
        self
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
        self.tenant_keks.push((tenant.into(), Arc::new(kek)));
        self.tenant_busy.push(Arc::default());
        self
    }

    /// How long a load waits for tenants' own KEKs ([`DEFAULT_TENANT_KEK_DEADLINE`] unless
    /// set). A load asks them all at once (up to 16 calls in flight) and waits at most this
    /// long in all: a tenant whose KEK has not answered by then is unavailable until the next
    /// load (its late answer is discarded), like a tenant whose KEK refused, and every other
    /// tenant loads. The deployment's own KEK is not bounded by it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::KeyStore;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = KeyStore::new(LocalKek::create(dir.path().join("ours.kek"))?)
    ///     .with_tenant_kek("clinic-b", LocalKek::create(dir.path().join("b.kek"))?)
    ///     .with_tenant_kek_deadline(Duration::from_secs(2));
    /// # drop(store);
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    #[must_use]
    pub fn with_tenant_kek_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.tenant_kek_deadline = deadline;
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

    /// Tenant `tenant`'s own KEK named `kek_ref`, shared, for a call on another thread, with
    /// its in-flight flag.
    fn tenant_kek(
        &self,
        tenant: &str,
        kek_ref: &str,
    ) -> Option<(Arc<dyn KekProvider>, Arc<std::sync::atomic::AtomicBool>)> {
        let i = self
            .tenant_keks
            .iter()
            .position(|(owner, k)| owner.as_str() == tenant && k.kek_ref() == kek_ref)?;
        let (_, kek) = self.tenant_keks.get(i)?;
        Some((Arc::clone(kek), Arc::clone(self.tenant_busy.get(i)?)))
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

    async fn generation_on<D: KeyDb>(&self, db: &mut D) -> Result<Generation, Error> {
        generation(db).await
    }

    sync_and_async! {
        /// The poll a process runs every few seconds to minutes: reads the key table's
        /// [`Generation`]; unchanged since this store's last load, the installed keyring is
        /// confirmed current (its sealing age, [`KeyStore::with_seal_max_age`], starts again)
        /// and `false` is returned; changed (or nothing installed), the keyring is reloaded and
        /// installed (the same tenants, for a keyring of some tenants) and `true` is returned.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = tempfile::tempdir().unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?)
        ///     .with_seal_max_age(Duration::from_secs(600));
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// store.load_and_install(conn)?;
        /// assert!(!store.refresh(conn)?, "nothing changed");
        /// store.rotate_data_key(conn, Some(&"clinic-a".into()))?;
        /// assert!(store.refresh(conn)?, "reloaded");
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// As [`KeyStore::load`]; the installed keyring is left unchanged on error.
        pub fn refresh / refresh_async(&self)
            -> Result<bool, Error> where Backend: KeyTable => self.refresh_on
    }

    async fn refresh_on<D: KeyDb>(&self, db: &mut D) -> Result<bool, Error> {
        let began = std::time::Instant::now();
        let now = generation(db).await?;
        let last = *self
            .loaded_generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = Keyring::current();
        if let Some(k) = &current
            && last.as_ref() == Some(&now)
        {
            k.confirm_current(began);
            return Ok(false);
        }
        match current.as_ref().and_then(|k| k.served()) {
            Some(tenants) => self.load_scoped(db, Some(&tenants)).await?.0.install(),
            None => self.load_on(db).await?.0.install(),
        }
        Ok(true)
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
            D::Backend::quote_table(m.schema, m.table),
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
    let key = DataKey::transient(id, tenant.cloned(), material);
    let ctx = Context::new("encrypted_types", "self_test", tenant, "bytes");
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
