//! The keyring: every data key by id, the primary key per tenant, and the blind-index root keys.
//!
//! One keyring is installed process-wide. `ToSql`/`FromSql` read it through `arc_swap`, which is
//! lock-free for readers; [`Keyring::install`] swaps in a new one atomically, so a rotated key
//! takes effect without a restart while queries in flight finish on the keyring they started
//! with. Nothing here ever calls a KMS: keys arrive already unwrapped, as [`KeyMaterial`].

mod builder;

pub use builder::KeyringBuilder;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use arc_swap::ArcSwapOption;

use crate::Error;
use crate::format::key::{BlindIndexRootKey, DataKey, KeyId, KeyMaterial};
use crate::index::{IndexMac, IndexParams, derive_mac};
use crate::tenant::{TenantId, describe};

static INSTALLED: ArcSwapOption<Keyring> = ArcSwapOption::const_empty();

/// The installed keyring as read once for a whole row by the derive's generated code.
#[doc(hidden)]
pub struct RowKeys(arc_swap::Guard<Option<Arc<Keyring>>>);

impl RowKeys {
    /// Reads the installed keyring.
    pub fn load() -> Self {
        Keyring::for_row()
    }

    /// The keyring, or [`Error::NoKeyring`].
    ///
    /// # Errors
    /// [`Error::NoKeyring`] when none is installed.
    pub fn get(&self) -> Result<&Keyring, Error> {
        self.0.as_deref().ok_or(Error::NoKeyring)
    }
}

impl fmt::Debug for RowKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowKeys").finish_non_exhaustive()
    }
}

/// The set of keys the process can use. Not `Clone`: share it through [`Keyring::current`].
///
/// ```
/// use encrypted_types::{KeyMaterial, Keyring, TenantId};
///
/// let keyring = Keyring::builder()
///     .data_key(1, None, KeyMaterial::generate()?)
///     .data_key(2, Some("clinic-a".into()), KeyMaterial::generate()?)
///     .primary(None, 1)
///     .primary(Some("clinic-a".into()), 2)
///     .build()?;
/// assert_eq!(keyring.primary_key(Some(&TenantId::from("clinic-a")))?.id().get(), 2);
/// keyring.install();
/// assert!(Keyring::current().is_some());
/// # Ok::<(), encrypted_types::Error>(())
/// ```
pub struct Keyring {
    /// Sorted by id.
    keys: Vec<DataKey>,
    /// The ids of `keys`, in the same order: the read path's binary search walks 4-byte
    /// entries rather than whole keys, so it stays in cache at 200,000 keys.
    ids: Vec<u32>,
    destroyed: Vec<KeyId>,
    /// Indexes into `keys`.
    primary_default: Option<usize>,
    primary_by_tenant: HashMap<TenantId, usize>,
    blind_index: HashMap<Option<TenantId>, BlindIndexRootKey>,
    /// During a root replacement: the root key being replaced, per tenant.
    retired_blind_index: HashMap<Option<TenantId>, BlindIndexRootKey>,
    /// Tenants whose own KEK did not unwrap their keys, with that KEK's reference.
    unavailable: HashMap<TenantId, String>,
    /// The key ids of those tenants, so their values fail naming the tenant.
    unavailable_keys: HashMap<KeyId, TenantId>,
    /// Tenants whose every key is destroyed (crypto-shredded): their writes and lookups say so.
    shredded: std::collections::HashSet<TenantId>,
    /// Blind-index keys derived so far: HKDF runs once per index and tenant, not per value.
    /// Boxed, so the map's growth moves pointers, not keyed HMAC states.
    derived: RwLock<HashMap<DerivedId, Box<IndexMac>>>,
    /// `Some`: loaded for these tenants only (and the keys of no tenant); any other tenant's
    /// value or write fails with [`Error::TenantNotLoaded`] or [`Error::KeyNotLoaded`].
    scope: Option<Arc<std::collections::HashSet<TenantId>>>,
    /// When its load began (a process-wide sequence): a merge takes the keys of no tenant, and
    /// of tenants both keyrings hold, from the later load.
    // Only the key store merges keyrings.
    #[cfg_attr(not(feature = "keystore"), allow(dead_code))]
    loaded: u64,
    /// `Some`: sealing is refused once the keyring is older than its limit without a reload or
    /// a confirmation that the key table has not changed.
    seal_limit: Option<Arc<SealLimit>>,
}

/// How long a keyring may seal after its load began or was last confirmed current
/// ([`crate::store::KeyStore::with_seal_max_age`]): a process that stopped polling the key
/// table cannot keep sealing under a key another process has retired and may destroy.
#[derive(Debug)]
pub(crate) struct SealLimit {
    max_age: std::time::Duration,
    /// When the load began (before its first query).
    base: std::time::Instant,
    /// Milliseconds after `base` of the last confirmation that the table had not changed.
    confirmed_ms: std::sync::atomic::AtomicU64,
}

impl SealLimit {
    #[cfg(feature = "keystore")]
    pub(crate) fn new(max_age: std::time::Duration, base: std::time::Instant) -> Self {
        Self {
            max_age,
            base,
            confirmed_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn ms_since_base(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn check(&self) -> Result<(), Error> {
        let now = self.ms_since_base(std::time::Instant::now());
        let age = now.saturating_sub(self.confirmed_ms.load(std::sync::atomic::Ordering::Relaxed));
        let max = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        if age > max {
            return Err(Error::StaleKeyring {
                age_secs: age / 1000,
                max_secs: self.max_age.as_secs(),
            });
        }
        Ok(())
    }

    /// Records that the key table was seen unchanged by a poll that began at `at`.
    #[cfg(feature = "keystore")]
    fn confirm(&self, at: std::time::Instant) {
        self.confirmed_ms
            .fetch_max(self.ms_since_base(at), std::sync::atomic::Ordering::Relaxed);
    }
}

/// The process-wide load sequence behind `Keyring::loaded`.
// Only the key store loads keyrings.
#[cfg_attr(not(feature = "keystore"), allow(dead_code))]
static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The next load's sequence number: read when a load begins, before its first query.
#[cfg(feature = "keystore")]
pub(crate) fn next_load() -> u64 {
    LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A derived blind-index key's identity: tenant, root, and everything its `info` binds.
type DerivedId = (Option<TenantId>, crate::index::IndexRoot, Derived);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Derived {
    /// Table, column, value type, version, bits, normalizers.
    Single(
        &'static str,
        &'static str,
        &'static str,
        u32,
        u16,
        &'static [crate::index::Normalizer],
    ),
    /// Table, index name, version, bits, fields.
    Compound(
        &'static str,
        &'static str,
        u32,
        u16,
        &'static [crate::index::CompoundField],
    ),
}

impl Keyring {
    /// Starts an empty keyring.
    pub fn builder() -> KeyringBuilder {
        KeyringBuilder::default()
    }

    /// Makes this keyring the one every `Encrypted` value uses, replacing any previous one.
    /// Readers never block; queries already running keep the keyring they loaded.
    pub fn install(self) {
        INSTALLED.store(Some(Arc::new(self)));
    }

    /// Installs `more` merged into the installed keyring of some tenants (or alone, if none
    /// is installed); a complete installed keyring is kept. Retried if another thread installs
    /// in between, so no thread's tenants are lost.
    #[cfg(feature = "keystore")]
    pub(crate) fn install_merged(more: Keyring) -> Result<(), Error> {
        let more = Arc::new(more);
        let mut failed = None;
        INSTALLED.rcu(|current| {
            // Run again if another thread installed in between: only the last run counts.
            failed = None;
            match current {
                None => Some(Arc::clone(&more)),
                Some(k) if k.is_complete() => Some(Arc::clone(k)),
                Some(k) => match k.merged(&more) {
                    Ok(m) => Some(Arc::new(m)),
                    Err(e) => {
                        failed = Some(e);
                        Some(Arc::clone(k))
                    }
                },
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// Removes the installed keyring; sealing and opening then fail with [`Error::NoKeyring`].
    pub fn uninstall() {
        INSTALLED.store(None);
    }

    /// The installed keyring, if any.
    pub fn current() -> Option<Arc<Keyring>> {
        INSTALLED.load_full()
    }

    /// The installed keyring for the fields of one row: one read of the process-wide pointer
    /// instead of one per field.
    pub(crate) fn for_row() -> RowKeys {
        RowKeys(INSTALLED.load())
    }

    /// The installed keyring, which must hold every tenant's keys: what a job walks a whole
    /// table with.
    // Only the jobs (a `keystore` module) need the whole keyring.
    #[cfg_attr(not(feature = "keystore"), allow(dead_code))]
    pub(crate) fn complete() -> Result<Arc<Keyring>, Error> {
        let k = Self::current().ok_or(Error::NoKeyring)?;
        if k.is_complete() {
            Ok(k)
        } else {
            Err(Error::PartialKeyring)
        }
    }

    /// Runs `f` with the installed keyring without touching its reference count (the hot path).
    pub(crate) fn with_current<R>(
        f: impl FnOnce(&Keyring) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let guard = INSTALLED.load();
        let keyring = guard.as_deref().ok_or(Error::NoKeyring)?;
        f(keyring)
    }

    /// The key that seals new values for `tenant`.
    ///
    /// # Errors
    /// [`Error::NoPrimaryKey`] if the tenant has none.
    pub fn primary_key(&self, tenant: Option<&TenantId>) -> Result<&DataKey, Error> {
        if let Some(limit) = &self.seal_limit {
            limit.check()?;
        }
        let index = match tenant {
            None => self.primary_default,
            Some(t) => self.primary_by_tenant.get(t).copied(),
        };
        index.and_then(|i| self.keys.get(i)).ok_or_else(|| {
            match tenant.and_then(|t| self.missing_tenant_error(t)) {
                Some(e) => e,
                None => Error::NoPrimaryKey {
                    tenant: describe(tenant),
                },
            }
        })
    }

    /// Why `tenant` has no key here, where the keyring knows: its own KEK failed, it is
    /// crypto-shredded, or it is not among the tenants this keyring was loaded for.
    fn missing_tenant_error(&self, tenant: &TenantId) -> Option<Error> {
        self.unavailable_error(tenant)
            .or_else(|| {
                self.shredded
                    .contains(tenant)
                    .then(|| Error::TenantShredded {
                        tenant: describe(Some(tenant)),
                    })
            })
            .or_else(|| self.not_loaded(tenant))
    }

    /// [`Error::TenantNotLoaded`] if this keyring holds some tenants only, and not `tenant`.
    fn not_loaded(&self, tenant: &TenantId) -> Option<Error> {
        self.scope
            .as_ref()
            .filter(|s| !s.contains(tenant))
            .map(|_| Error::TenantNotLoaded {
                tenant: describe(Some(tenant)),
            })
    }

    /// Whether this keyring holds every tenant's keys (loaded with
    /// [`KeyStore::load`](crate::store::KeyStore::load)) rather than some tenants' only
    /// ([`KeyStore::load_tenants`](crate::store::KeyStore::load_tenants)).
    pub fn is_complete(&self) -> bool {
        self.scope.is_none()
    }

    /// Whether `tenant`'s keys are in this keyring (always, for a complete one).
    pub fn has_tenant(&self, tenant: &TenantId) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(tenant))
    }

    /// Whether `tenant` is in this keyring and usable: loaded, and its own KEK answered.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.has_tenant(tenant) && !self.unavailable.contains_key(tenant)
    }

    /// [`Error::TenantUnavailable`] if `tenant`'s own KEK failed at the last load.
    fn unavailable_error(&self, tenant: &TenantId) -> Option<Error> {
        self.unavailable
            .get(tenant)
            .map(|kek| Error::TenantUnavailable {
                tenant: describe(Some(tenant)),
                kek: kek.clone(),
            })
    }

    /// The tenants whose own KEK did not unwrap their keys at the last load, with that KEK.
    pub fn unavailable_tenants(&self) -> impl Iterator<Item = (&TenantId, &str)> {
        self.unavailable.iter().map(|(t, k)| (t, k.as_str()))
    }

    /// The key with this id, for opening.
    ///
    /// # Errors
    /// [`Error::KeyDestroyed`] for a key marked destroyed, [`Error::UnknownKeyId`] otherwise.
    pub fn key(&self, id: KeyId) -> Result<&DataKey, Error> {
        match self.ids.binary_search(&id.get()) {
            Ok(i) => self.keys.get(i).ok_or(Error::UnknownKeyId(id)),
            Err(_) if self.destroyed.contains(&id) => Err(Error::KeyDestroyed(id)),
            Err(_) => Err(self
                .unavailable_keys
                .get(&id)
                .and_then(|t| self.unavailable_error(t))
                .unwrap_or(if self.scope.is_some() {
                    Error::KeyNotLoaded(id)
                } else {
                    Error::UnknownKeyId(id)
                })),
        }
    }

    /// Whether the key table holds (or held, and destroyed) a data key with this id: what
    /// tells a sealed value from legacy plaintext ([`crate::format::classify`]).
    /// (A value under a key it does not hold, of another tenant of a keyring of some tenants
    /// too, is classified unknown and fails; see [`crate::format::classify`].)
    pub fn knows(&self, id: KeyId) -> bool {
        self.ids.binary_search(&id.get()).is_ok()
            || self.destroyed.contains(&id)
            || self.unavailable_keys.contains_key(&id)
    }

    /// Whether `key` is the primary key of its tenant (the one new values are sealed with).
    pub fn is_primary(&self, key: &DataKey) -> bool {
        self.primary_key(key.tenant()).is_ok_and(|p| p.id == key.id)
    }

    /// The data keys that open values but no longer seal new ones: what a rotation job moves
    /// rows away from.
    pub fn retired_key_ids(&self) -> Vec<KeyId> {
        self.keys
            .iter()
            .filter(|k| !self.is_primary(k))
            .map(DataKey::id)
            .collect()
    }

    /// Every data key id in the keyring, in ascending order.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(DataKey::id).collect()
    }

    /// The blind-index root key of `tenant`, if the keyring has one.
    pub fn blind_index_root(&self, tenant: Option<&TenantId>) -> Option<&BlindIndexRootKey> {
        self.blind_index.get(&tenant.cloned())
    }

    /// The root key an index of `root` derives from for `tenant`: the active one, or, for
    /// [`IndexRoot::Retired`](crate::index::IndexRoot::Retired), the one being replaced where
    /// the tenant has one (a tenant whose root was never replaced wrote its old version under
    /// its active root).
    pub fn index_root(
        &self,
        tenant: Option<&TenantId>,
        root: crate::index::IndexRoot,
    ) -> Option<&BlindIndexRootKey> {
        let key = tenant.cloned();
        match root {
            crate::index::IndexRoot::Retired => self
                .retired_blind_index
                .get(&key)
                .or_else(|| self.blind_index.get(&key)),
            crate::index::IndexRoot::Current => self.blind_index.get(&key),
        }
    }

    /// A copy of this keyring without `tenant`'s keys, with `destroyed` recorded as destroyed:
    /// what a process installs right after crypto-shredding the tenant.
    #[cfg(feature = "keystore")]
    pub(crate) fn without_tenant(&self, tenant: &TenantId, destroyed: &[KeyId]) -> Keyring {
        // Sized once (a `DataKey` holds its key bytes behind pointers: no copies either way).
        let mut keys: Vec<DataKey> = Vec::with_capacity(self.keys.len());
        keys.extend(
            self.keys
                .iter()
                .filter(|k| k.tenant.as_ref() != Some(tenant))
                .map(DataKey::duplicate),
        );
        let index_of = |old: usize| {
            self.keys
                .get(old)
                .and_then(|k| keys.binary_search_by_key(&k.id, DataKey::id).ok())
        };
        let mut gone = self.destroyed.clone();
        for id in destroyed {
            if !gone.contains(id) {
                gone.push(*id);
            }
        }
        let derived = self
            .derived
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(id, _)| id.0.as_ref() != Some(tenant))
            .map(|(id, mac)| (id.clone(), mac.clone()))
            .collect();
        Keyring {
            primary_default: self.primary_default.and_then(index_of),
            primary_by_tenant: self
                .primary_by_tenant
                .iter()
                .filter(|(t, _)| *t != tenant)
                .filter_map(|(t, i)| index_of(*i).map(|j| (t.clone(), j)))
                .collect(),
            blind_index: self
                .blind_index
                .iter()
                .filter(|(t, _)| t.as_ref() != Some(tenant))
                .map(|(t, k)| (t.clone(), k.duplicate()))
                .collect(),
            retired_blind_index: self
                .retired_blind_index
                .iter()
                .filter(|(t, _)| t.as_ref() != Some(tenant))
                .map(|(t, k)| (t.clone(), k.duplicate()))
                .collect(),
            unavailable: self
                .unavailable
                .iter()
                .filter(|(t, _)| *t != tenant)
                .map(|(t, k)| (t.clone(), k.clone()))
                .collect(),
            unavailable_keys: self
                .unavailable_keys
                .iter()
                .filter(|(_, t)| *t != tenant)
                .map(|(id, t)| (*id, t.clone()))
                .collect(),
            shredded: {
                let mut shredded = self.shredded.clone();
                shredded.insert(tenant.clone());
                shredded
            },
            ids: keys.iter().map(|k| k.id.get()).collect(),
            keys,
            destroyed: gone,
            derived: RwLock::new(derived),
            scope: self.scope.clone(),
            loaded: self.loaded,
            seal_limit: self.seal_limit.clone(),
        }
    }

    /// Records that a poll which began at `at` found the key table unchanged since this
    /// keyring's load: its sealing age starts again from `at`.
    #[cfg(feature = "keystore")]
    pub(crate) fn confirm_current(&self, at: std::time::Instant) {
        if let Some(limit) = &self.seal_limit {
            limit.confirm(at);
        }
    }

    /// The tenants this keyring was loaded for, if it holds some tenants only.
    #[cfg(feature = "keystore")]
    pub(crate) fn served(&self) -> Option<Vec<TenantId>> {
        self.scope.as_ref().map(|s| s.iter().cloned().collect())
    }

    /// This keyring with `more`'s tenants added: what [`KeyStore::ensure_loaded`] installs.
    /// Both must be keyrings of some tenants. The keys of no tenant, and tenants both hold,
    /// come from the one whose load began later, so a slow load never installs an older view.
    ///
    /// [`KeyStore::ensure_loaded`]: crate::store::KeyStore::ensure_loaded
    #[cfg(feature = "keystore")]
    pub(crate) fn merged(&self, more: &Keyring) -> Result<Keyring, Error> {
        let (older, newer) = if more.loaded >= self.loaded {
            (self, more)
        } else {
            (more, self)
        };
        let (Some(old_scope), Some(new_scope)) = (&older.scope, &newer.scope) else {
            return Err(Error::InvalidKeyring("only keyrings of some tenants merge"));
        };
        // From the older: its tenants the newer does not hold; from the newer: everything.
        let keep = |t: Option<&TenantId>| {
            t.is_some_and(|t| old_scope.contains(t) && !new_scope.contains(t))
        };
        let mut builder = Keyring::builder();
        // Exact, once (a `DataKey` holds its key bytes behind pointers: no copies either way).
        builder
            .keys_direct
            .reserve_exact(older.keys.len() + newer.keys.len());
        let mut destroyed = older.destroyed.clone();
        destroyed.extend(
            newer
                .destroyed
                .iter()
                .filter(|id| !older.destroyed.contains(id)),
        );
        // A key destroyed since `self` was loaded is not carried over (skipped here, not
        // removed after).
        let builder = builder.carry(older, keep, &destroyed);
        let mut builder = builder.carry(newer, |_| true, &destroyed);
        if let Some(k) = newer.primary_default.and_then(|i| newer.keys.get(i)) {
            builder.primaries.push((None, k.id));
        }
        builder.destroyed = destroyed;
        // Shredding is final: a tenant shredded in either load stays shredded.
        builder.shredded = older.shredded.union(&newer.shredded).cloned().collect();
        let mut scope: std::collections::HashSet<TenantId> = (**old_scope).clone();
        scope.extend(new_scope.iter().cloned());
        builder.scope = Some(scope);
        builder.loaded = newer.loaded;
        // The newer load's limit: the older part's keys were current at that load too, or the
        // generation it read would have changed.
        builder.seal_limit = newer.seal_limit.clone();
        builder.build()
    }

    /// The keyed HMAC of one blind index for one tenant, derived on first use and cached.
    fn derived_index_mac(
        &self,
        params: &IndexParams,
        tenant: Option<&TenantId>,
        value_type: &'static str,
    ) -> Result<IndexMac, Error> {
        let id = Derived::Single(
            params.table,
            params.column,
            value_type,
            params.version,
            params.bits,
            params.normalize,
        );
        self.derived_mac((tenant.cloned(), params.root, id), || {
            params.key_info(tenant, value_type)
        })
    }

    /// The keyed HMAC of one compound index for one tenant, derived on first use and cached.
    fn derived_compound_mac(
        &self,
        params: &crate::index::CompoundParams,
        tenant: Option<&TenantId>,
    ) -> Result<IndexMac, Error> {
        let id = Derived::Compound(
            params.table,
            params.name,
            params.version,
            params.bits,
            params.fields,
        );
        self.derived_mac((tenant.cloned(), params.root, id), || {
            params.key_info(tenant)
        })
    }

    fn derived_mac(
        &self,
        id: DerivedId,
        info: impl FnOnce() -> Result<Vec<u8>, Error>,
    ) -> Result<IndexMac, Error> {
        if let Some(mac) = self
            .derived
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(IndexMac::clone(mac));
        }
        let tenant = id.0.as_ref();
        let root = self.index_root(tenant, id.1).ok_or_else(|| {
            match tenant.and_then(|t| self.missing_tenant_error(t)) {
                Some(e) => e,
                None => Error::NoBlindIndexKey {
                    tenant: describe(tenant),
                },
            }
        })?;
        let mac = derive_mac(root.material.expose(), &info()?)?;
        self.derived
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Box::new(mac.clone()));
        Ok(mac)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .field("destroyed", &self.destroyed)
            .field("primary_default", &self.primary_default)
            .field("primary_by_tenant", &self.primary_by_tenant)
            .field(
                "blind_index_tenants",
                &self.blind_index.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(all(test, feature = "keystore"))]
mod tests {
    // Tests: a failed expectation panics with the value that failed.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A keyring of `tenants` loaded at `sequence`: key `default` of no tenant and, per tenant,
    /// key `id`, each primary.
    fn partial(sequence: u64, default: u32, tenants: &[(&str, u32)]) -> Keyring {
        let mut b = Keyring::builder()
            .data_key(default, None, KeyMaterial::generate().unwrap())
            .primary(None, default);
        for (t, id) in tenants {
            b = b
                .data_key(*id, Some((*t).into()), KeyMaterial::generate().unwrap())
                .primary(Some((*t).into()), *id);
        }
        b.loaded_for(tenants.iter().map(|(t, _)| (*t).into()).collect())
            .load_began(sequence)
            .build()
            .unwrap()
    }

    #[test]
    fn a_merge_takes_shared_keys_from_the_later_load_in_either_order() {
        // The older load saw default key 1 and tenant a on key 10; the newer one, after
        // rotations, default key 2 and tenant a on key 11.
        let older = partial(1, 1, &[("a", 10), ("b", 20)]);
        let newer = partial(2, 2, &[("a", 11), ("c", 30)]);
        for merged in [older.merged(&newer).unwrap(), newer.merged(&older).unwrap()] {
            assert_eq!(merged.primary_key(None).unwrap().id(), KeyId::from(2));
            assert_eq!(
                merged.primary_key(Some(&"a".into())).unwrap().id(),
                KeyId::from(11)
            );
            assert_eq!(
                merged.primary_key(Some(&"b".into())).unwrap().id(),
                KeyId::from(20)
            );
            assert_eq!(
                merged.primary_key(Some(&"c".into())).unwrap().id(),
                KeyId::from(30)
            );
            assert_eq!(
                merged.key(KeyId::from(1)).err(),
                Some(Error::KeyNotLoaded(1.into()))
            );
            assert!(matches!(
                merged.primary_key(Some(&"d".into())),
                Err(Error::TenantNotLoaded { .. })
            ));
            assert!(!merged.is_complete() && merged.has_tenant(&"b".into()));
        }
    }
}

impl crate::format::KeySet for Keyring {
    fn key(&self, id: KeyId) -> Result<&DataKey, Error> {
        Keyring::key(self, id)
    }

    fn primary_key(&self, tenant: Option<&TenantId>) -> Result<&DataKey, Error> {
        Keyring::primary_key(self, tenant)
    }

    fn is_primary(&self, key: &DataKey) -> bool {
        Keyring::is_primary(self, key)
    }

    fn knows(&self, id: KeyId) -> bool {
        Keyring::knows(self, id)
    }
}

impl crate::index::IndexKeys for Keyring {
    fn index_mac(
        &self,
        params: &IndexParams,
        tenant: Option<&TenantId>,
        value_type: &'static str,
    ) -> Result<IndexMac, Error> {
        self.derived_index_mac(params, tenant, value_type)
    }

    fn compound_mac(
        &self,
        params: &crate::index::CompoundParams,
        tenant: Option<&TenantId>,
    ) -> Result<IndexMac, Error> {
        self.derived_compound_mac(params, tenant)
    }
}

// Here rather than in `index`, which names keys only through `IndexKeys`: the installed
// keyring is this module's.
impl<T: crate::Plaintext, S: crate::index::IndexSpec> crate::index::BlindIndex<T, S> {
    /// Computes the index bytes under the installed keyring.
    ///
    /// # Errors
    /// See [`IndexParams::compute`]; [`Error::NoKeyring`] without a keyring.
    pub fn compute(&self) -> Result<Vec<u8>, Error> {
        Keyring::with_current(|k| S::PARAMS.compute(k, self.tenant.as_ref(), &self.value))
    }
}

impl<S: crate::index::CompoundSpec> crate::index::CompoundIndex<S> {
    /// Computes the index bytes under the installed keyring.
    ///
    /// # Errors
    /// See [`crate::index::CompoundIndex::compute_with`]; [`Error::NoKeyring`] without a
    /// keyring.
    pub fn compute(&self) -> Result<Vec<u8>, Error> {
        Keyring::with_current(|k| self.compute_with(k))
    }
}
