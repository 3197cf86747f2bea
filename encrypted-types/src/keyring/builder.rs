//! Building a keyring: its keys, primaries and blind-index roots, checked at `build`.

#[allow(clippy::wildcard_imports)] // the keyring's own types and imports
use super::*;

/// Collects keys, then checks them all at once in [`KeyringBuilder::build`].
///
/// Errors are reported by `build`, so a misconfigured keyring fails at startup, never on the
/// first query.
#[derive(Default)]
pub struct KeyringBuilder {
    // Key bytes boxed from here to the keyring: a growing Vec moves pointers, not keys, so no
    // copy is left in freed memory (tests/process/tests/freed_key_bytes.rs).
    pub(super) keys: Vec<(KeyId, Option<TenantId>, Box<KeyMaterial>)>,
    pub(super) destroyed: Vec<KeyId>,
    pub(super) primaries: Vec<(Option<TenantId>, KeyId)>,
    pub(super) blind_index: Vec<(Option<TenantId>, Box<KeyMaterial>)>,
    pub(super) retired_blind_index: Vec<(Option<TenantId>, Box<KeyMaterial>)>,
    pub(super) unavailable: Vec<(TenantId, String, Vec<KeyId>)>,
    pub(super) shredded: std::collections::HashSet<TenantId>,
    /// Keys and roots carried over from another keyring, sharing its keys' cached state.
    pub(super) keys_direct: Vec<DataKey>,
    pub(super) roots_direct: Vec<(Option<TenantId>, BlindIndexRootKey)>,
    pub(super) retired_roots_direct: Vec<(Option<TenantId>, BlindIndexRootKey)>,
    pub(super) scope: Option<std::collections::HashSet<TenantId>>,
    pub(super) loaded: u64,
    pub(super) seal_limit: Option<Arc<SealLimit>>,
}

impl fmt::Debug for KeyringBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringBuilder")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl KeyringBuilder {
    /// Adds a data key that opens values sealed with `id` (and seals, if made primary).
    pub fn data_key(self, id: u32, tenant: Option<TenantId>, material: KeyMaterial) -> Self {
        self.data_key_boxed(id, tenant, Box::new(material))
    }

    /// [`KeyringBuilder::data_key`] for bytes already on the heap, which stay there.
    pub(crate) fn data_key_boxed(
        mut self,
        id: u32,
        tenant: Option<TenantId>,
        material: Box<KeyMaterial>,
    ) -> Self {
        self.keys.push((KeyId::from(id), tenant, material));
        self
    }

    /// Records that key `id` was destroyed, so values under it fail with
    /// [`Error::KeyDestroyed`] rather than [`Error::UnknownKeyId`].
    pub fn destroyed_key(mut self, id: u32) -> Self {
        self.destroyed.push(KeyId::from(id));
        self
    }

    /// Records that `tenant`'s own KEK `kek_ref` could not unwrap its keys `ids`: its values,
    /// writes and lookups fail with [`Error::TenantUnavailable`] naming the tenant and the KEK.
    pub fn unavailable_tenant(mut self, tenant: TenantId, kek_ref: String, ids: Vec<u32>) -> Self {
        let ids = ids.into_iter().map(KeyId::from).collect();
        self.unavailable.push((tenant, kek_ref, ids));
        self
    }

    /// Records that every key of `tenant` is destroyed: its writes and lookups fail with
    /// [`Error::TenantShredded`].
    #[cfg(feature = "keystore")]
    pub(crate) fn shredded_tenant(mut self, tenant: TenantId) -> Self {
        self.shredded.insert(tenant);
        self
    }

    /// Makes key `id` the one that seals new values for `tenant`.
    pub fn primary(mut self, tenant: Option<TenantId>, id: u32) -> Self {
        self.primaries.push((tenant, KeyId::from(id)));
        self
    }

    /// Sets the blind-index root key of `tenant` (or the default one, for `None`).
    pub fn blind_index_root(self, tenant: Option<TenantId>, material: KeyMaterial) -> Self {
        self.blind_index_root_boxed(tenant, Box::new(material))
    }

    /// [`KeyringBuilder::blind_index_root`] for bytes already on the heap.
    pub(crate) fn blind_index_root_boxed(
        mut self,
        tenant: Option<TenantId>,
        material: Box<KeyMaterial>,
    ) -> Self {
        self.blind_index.push((tenant, material));
        self
    }

    /// During a blind-index root replacement: the retired root key of `tenant`, which indexes
    /// declared `previous(.., root = retired)` still derive from until the reindex job has
    /// moved every row (`docs/KEYS.md`, "Replacing a blind-index root key").
    pub fn retired_blind_index_root(self, tenant: Option<TenantId>, material: KeyMaterial) -> Self {
        self.retired_blind_index_root_boxed(tenant, Box::new(material))
    }

    /// [`KeyringBuilder::retired_blind_index_root`] for bytes already on the heap.
    pub(crate) fn retired_blind_index_root_boxed(
        mut self,
        tenant: Option<TenantId>,
        material: Box<KeyMaterial>,
    ) -> Self {
        self.retired_blind_index.push((tenant, material));
        self
    }

    /// Adds `ring`'s keys (but those in `skip`), primaries, roots and unavailable tenants of the
    /// tenants `take` accepts (`None`: the keys of no tenant), sharing their cached cipher
    /// state.
    #[cfg(feature = "keystore")]
    pub(super) fn carry(
        mut self,
        ring: &Keyring,
        take: impl Fn(Option<&TenantId>) -> bool,
        skip: &[KeyId],
    ) -> Self {
        for k in ring
            .keys
            .iter()
            .filter(|k| take(k.tenant.as_ref()) && !skip.contains(&k.id))
        {
            self.keys_direct.push(k.duplicate());
        }
        for (t, i) in &ring.primary_by_tenant {
            if take(Some(t))
                && let Some(k) = ring.keys.get(*i)
            {
                self.primaries.push((Some(t.clone()), k.id));
            }
        }
        for (t, k) in ring.blind_index.iter().filter(|(t, _)| take(t.as_ref())) {
            self.roots_direct.push((t.clone(), k.duplicate()));
        }
        for (t, k) in ring
            .retired_blind_index
            .iter()
            .filter(|(t, _)| take(t.as_ref()))
        {
            self.retired_roots_direct.push((t.clone(), k.duplicate()));
        }
        for (t, kek) in ring.unavailable.iter().filter(|(t, _)| take(Some(t))) {
            let ids = ring
                .unavailable_keys
                .iter()
                .filter(|(_, owner)| *owner == t)
                .map(|(id, _)| *id)
                .collect();
            self.unavailable.push((t.clone(), kek.clone(), ids));
        }
        self
    }

    /// Makes the keyring one of these tenants only (and the keys of no tenant).
    #[cfg(feature = "keystore")]
    pub(crate) fn loaded_for(mut self, tenants: std::collections::HashSet<TenantId>) -> Self {
        self.scope = Some(tenants);
        self
    }

    /// Gives the keyring a maximum age for sealing ([`crate::store::KeyStore::with_seal_max_age`]).
    #[cfg(feature = "keystore")]
    pub(crate) fn seal_limit(mut self, limit: Option<Arc<SealLimit>>) -> Self {
        self.seal_limit = limit;
        self
    }

    /// Records when the load behind this keyring began ([`next_load`]).
    #[cfg(feature = "keystore")]
    pub(crate) fn load_began(mut self, sequence: u64) -> Self {
        self.loaded = sequence;
        self
    }

    /// Checks and assembles the keyring. Key schedules are built on a key's first use
    /// (`format::cache`), not here.
    ///
    /// # Errors
    /// [`Error::InvalidKeyring`] for a duplicate key id, a destroyed id that is also present, a
    /// primary key that is missing or belongs to another tenant, a tenant with two primaries,
    /// or a tenant with two blind-index root keys.
    pub fn build(self) -> Result<Keyring, Error> {
        // `keys_direct` (a merge, sized exactly by `merged`) is kept as it is rather than moved
        // into a new Vec. A `DataKey` holds its key bytes behind pointers (boxed material, the
        // cache's slot), so a freed buffer of keys holds no key bytes either way.
        let mut keys: Vec<DataKey> = if self.keys.is_empty() {
            self.keys_direct
        } else {
            self.keys
                .into_iter()
                .map(|(id, tenant, material)| DataKey::new(id, tenant, &material))
                .chain(self.keys_direct)
                .collect()
        };
        keys.sort_unstable_by_key(DataKey::id);
        if keys.windows(2).any(|w| matches!(w, [a, b] if a.id == b.id)) {
            return Err(Error::InvalidKeyring("duplicate key id"));
        }
        let find = |id: &KeyId| keys.binary_search_by_key(id, DataKey::id).ok();
        if self.destroyed.iter().any(|id| find(id).is_some()) {
            return Err(Error::InvalidKeyring("a destroyed key id is also present"));
        }
        let mut primary_default = None;
        let mut primary_by_tenant = HashMap::new();
        for (tenant, id) in self.primaries {
            let index = find(&id).ok_or(Error::InvalidKeyring("primary key id not present"))?;
            if keys.get(index).map(|k| &k.tenant) != Some(&tenant) {
                return Err(Error::InvalidKeyring(
                    "primary key belongs to another tenant",
                ));
            }
            let duplicate = match tenant {
                None => primary_default.replace(index).is_some(),
                Some(t) => primary_by_tenant.insert(t, index).is_some(),
            };
            if duplicate {
                return Err(Error::InvalidKeyring("two primary keys for one tenant"));
            }
        }
        let roots = |list: Vec<(Option<TenantId>, Box<KeyMaterial>)>,
                     direct: Vec<(Option<TenantId>, BlindIndexRootKey)>,
                     why: &'static str| {
            let mut map = HashMap::with_capacity(list.len() + direct.len());
            let all = list
                .into_iter()
                .map(|(t, m)| (t.clone(), BlindIndexRootKey::new(t, m)))
                .chain(direct);
            for (tenant, root) in all {
                if map.insert(tenant, root).is_some() {
                    return Err(Error::InvalidKeyring(why));
                }
            }
            Ok(map)
        };
        let blind_index = roots(
            self.blind_index,
            self.roots_direct,
            "two blind-index root keys for one tenant",
        )?;
        let retired_blind_index = roots(
            self.retired_blind_index,
            self.retired_roots_direct,
            "two retired blind-index root keys for one tenant",
        )?;
        let mut unavailable = HashMap::new();
        let mut unavailable_keys = HashMap::new();
        for (tenant, kek, ids) in self.unavailable {
            for id in ids {
                if find(&id).is_some() || self.destroyed.contains(&id) {
                    return Err(Error::InvalidKeyring(
                        "an unavailable tenant's key id is also present",
                    ));
                }
                unavailable_keys.insert(id, tenant.clone());
            }
            unavailable.insert(tenant, kek);
        }
        Ok(Keyring {
            ids: keys.iter().map(|k| k.id.get()).collect(),
            keys,
            unavailable,
            unavailable_keys,
            shredded: self.shredded,
            destroyed: self.destroyed,
            primary_default,
            primary_by_tenant,
            blind_index,
            retired_blind_index,
            derived: RwLock::default(),
            scope: self.scope.map(Arc::new),
            loaded: self.loaded,
            seal_limit: self.seal_limit,
        })
    }
}
