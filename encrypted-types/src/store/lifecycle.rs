//! A key's life cycle: creating a tenant's keys, rotating them, destroying one, shredding a
//! tenant.

#[allow(clippy::wildcard_imports)]
// one module in several files: the store's imports and types
use super::*;
use manifest::Mode;

impl<P: KekProvider> KeyStore<P> {
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

    pub(super) async fn create_tenant_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<TenantKeys, Error> {
        // One transaction: both keys or neither. The unique index on active keys makes a
        // concurrent creator of the same tenant fail instead of adding a second primary.
        crate::db::transaction(db, store_err, async |db| {
            let change = self
                .manifest_begin(db, &[tenant.map(TenantId::as_str)], Mode::Create)
                .await?;
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
            let mac = self.mac_wrapper(db).await?;
            self.manifest_commit(db, change, &mac).await?;
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
        /// [`Error::SharedTenantKek`] if `kek_ref` is already another tenant's own KEK;
        /// provider errors.
        pub fn create_tenant_with_kek / create_tenant_with_kek_async(&self, tenant: &TenantId, kek_ref: &str)
            -> Result<TenantKeys, Error> where Backend: KeyTable => self.create_tenant_with_kek_on
    }

    pub(super) async fn create_tenant_with_kek_on<D: KeyDb>(
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
            let change = self
                .manifest_begin(db, &[Some(tenant.as_str())], Mode::Create)
                .await?;
            let existing = tenant_keys(db, Some(tenant.as_str()), None, None)
                .await
                .map_err(store_err)?;
            if existing
                .iter()
                .any(|r| r.state != KeyState::Destroyed.as_str())
            {
                return Err(Error::Store(format!("tenant {tenant} already has keys")));
            }
            self.tenant_keks_apart(db, Some((tenant, kek_ref))).await?;
            let mac = self.mac_wrapper(db).await?;
            self.create_wrapping(db, Some(tenant), kek, Some(&mac))
                .await?;
            let data = self.create_key(db, Some(tenant), Purpose::Data).await?;
            let blind_index = self
                .create_key(db, Some(tenant), Purpose::BlindIndex)
                .await?;
            self.manifest_commit(db, change, &mac).await?;
            Ok(TenantKeys { data, blind_index })
        })
        .await
    }

    /// Retires `tenant`'s active keys of `purpose`; returns how many.
    pub(super) async fn retire<D: KeyDb>(
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

    pub(super) async fn rotate_data_key_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<KeyId, Error> {
        // Retire and create in one transaction: a failed wrap leaves the old key active.
        crate::db::transaction(db, store_err, async |db| {
            let change = self
                .manifest_begin(db, &[tenant.map(TenantId::as_str)], Mode::Change)
                .await?;
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
            let id = self.create_key(db, tenant, Purpose::Data).await?;
            let mac = self.mac_wrapper(db).await?;
            self.manifest_commit(db, change, &mac).await?;
            Ok(id)
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

    pub(super) async fn replace_blind_index_root_on<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
    ) -> Result<(KeyId, KeyId), Error> {
        crate::db::transaction(db, store_err, async |db| {
            let t = tenant.map(TenantId::as_str);
            let change = self.manifest_begin(db, &[t], Mode::Change).await?;
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
            let mac = self.mac_wrapper(db).await?;
            self.manifest_commit(db, change, &mac).await?;
            Ok((new, old))
        }).await
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
        /// [`Error::NotDestroyable`] if rows still reference the key or it is not a retired data
        /// or blind-index key; [`Error::DestroyTooSoon`] within the grace period;
        /// [`Error::KeyRecord`] if its record does not authenticate; [`Error::Store`].
        pub fn destroy_key / destroy_key_async(&self, key_id: KeyId, models: &[ModelInfo])
            -> Result<(), Error> where Backend: KeyTable => self.destroy_key_on
    }

    pub(super) async fn destroy_key_on<D: KeyDb>(
        &self,
        db: &mut D,
        key_id: KeyId,
        models: &[ModelInfo],
    ) -> Result<(), Error> {
        let refuse = |reason| Error::NotDestroyable { key_id, reason };
        if count_rows_with_keys_on(db, models, &[key_id]).await? > 0 {
            return Err(refuse(
                "rows still hold values sealed with it: re-seal them first (`jobs rotate`)",
            ));
        }
        crate::db::transaction(db, store_err, async |db| {
            let old = key_by_id(db, i64::from(key_id.get()))
                .await
                .map_err(store_err)?
                .ok_or_else(|| refuse("the key table has no such key"))?;
            if old.purpose == Purpose::Wrapping.as_str() {
                return Err(refuse(
                    "it is a wrapping key: `rewrap` retires and destroys wrapping keys",
                ));
            }
            // The manifest's lock first, as every key-store write takes it.
            let change = self
                .manifest_begin(db, &[old.tenant.as_deref()], Mode::Change)
                .await?;
            let mac = self.mac_wrapper(db).await?;
            if old.state == KeyState::Destroyed.as_str() {
                return Err(refuse("it is destroyed already"));
            }
            if old.state != KeyState::Retired.as_str() {
                return Err(refuse(
                    "it is active: rotate first (`keys rotate`), re-seal (`jobs rotate`), then \
                     destroy the retired key",
                ));
            }
            // The retirement time decides, so it must be the one a key-store write recorded
            // (version 2 MACs cover it), not one a database writer set back.
            self.verified_by(db, &old).await?;
            if !record::timestamps_authenticated(&old) {
                return Err(refuse(
                    "its record is from before 0.2 and does not authenticate its retirement \
                     time: run `keys rewrap` (which dates the retirement no earlier than then), \
                     then destroy it after the grace period",
                ));
            }
            // Writers seal from the keyring in memory and never read the retired record, so no
            // lock closes the race with a process that has not reloaded: time does.
            let retired_secs =
                u64::try_from(now().saturating_sub(old.state_changed_at)).unwrap_or(0);
            if retired_secs < self.destroy_grace.as_secs() {
                return Err(Error::DestroyTooSoon {
                    key_id,
                    retired_secs,
                    grace_secs: self.destroy_grace.as_secs(),
                });
            }
            if !self.set_state(db, &old, KeyState::Destroyed, &mac).await? {
                return Err(refuse("another process changed it meanwhile: run again"));
            }
            self.manifest_commit(db, change, &mac).await?;
            Ok(())
        })
        .await?;
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

    pub(super) async fn shred_tenant_on<D: KeyDb>(
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
            let change = self
                .manifest_begin(db, &[Some(tenant.as_str())], Mode::Change)
                .await?;
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
            self.manifest_commit(db, change, &mac).await?;
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
    /// Positive evidence that `tenant` is shredded, read afresh from the key table (never from
    /// an installed keyring, which may be partial, stale, or missing a tenant whose KEK is
    /// down): the tenant has at least one record, every record authenticates under a
    /// deployment wrapping key, and every one is destroyed. What deletes a tenant's rows acts
    /// only on this. Needs the deployment KEK, never the tenant's own.
    pub(crate) async fn verify_shredded_on<D: Db<Backend: KeyTable>>(
        &self,
        db: &mut D,
        tenant: &TenantId,
    ) -> Result<(), Error> {
        let not = |reason| Error::NotShredded {
            tenant: tenant.to_string(),
            reason,
        };
        let records = tenant_keys(db, Some(tenant.as_str()), None, None)
            .await
            .map_err(store_err)?;
        if records.is_empty() {
            return Err(not("the key table has no keys for it"));
        }
        for r in &records {
            // A destroyed state that does not authenticate is a database writer's edit.
            self.verified_by(db, r).await?;
            if KeyState::parse(&r.state) != Some(KeyState::Destroyed) || r.wrapped_key.is_some() {
                return Err(not("it still has live keys"));
            }
        }
        // And they are all of its records: a tenant re-created after a shred keeps its old,
        // destroyed records, and deleting its new ones must not make it look shredded.
        self.manifest_confirms(db, tenant.as_str(), &records).await
    }
}
