//! The key hierarchy's writes: wrapping keys, new keys wrapped under them, and state changes,
//! each record authenticated by the deployment's active wrapping key (ADR 0003).

use std::sync::{Arc, PoisonError};

use super::record::{Wrapper, check_matches, check_value};
use super::{
    KeyDb, KeyRecord, KeyState, id_taken, insert_key, key_by_id, max_generation, now, store_err,
    tenant_keys, update_record,
};
use crate::Error;
use crate::format::key::{KeyId, KeyMaterial};
use crate::kek::{KekProvider, Purpose, WrapContext};
use crate::store::KeyStore;
use crate::tenant::TenantId;

/// The prefix of `kek_ref` for a key wrapped by a wrapping key of the table: `key:<id>`.
pub(crate) const WRAPPED_BY: &str = "key:";

pub(crate) const NOT_AUTHENTIC: &str = "its record does not authenticate (altered, moved to another tenant or purpose, or rolled back)";

/// The record's key id as a [`KeyId`].
pub(crate) fn key_id_of(r: &KeyRecord) -> Result<KeyId, Error> {
    u32::try_from(r.key_id)
        .map(KeyId::from)
        .map_err(|_| Error::KeyRecord {
            key_id: KeyId::from(0),
            reason: "key id out of range",
        })
}

/// The wrapping key id of a `key:<id>` reference.
pub(crate) fn wrapped_by(kek_ref: &str) -> Option<KeyId> {
    kek_ref
        .strip_prefix(WRAPPED_BY)
        .and_then(|n| n.parse::<u32>().ok())
        .map(KeyId::from)
}

/// Why a wrapping key cannot be unwrapped when its KEK is not in the store.
pub(crate) const NO_KEK: &str = "wrapped by a KEK this process has no provider for (add it with KeyStore::with_kek, or KeyStore::with_tenant_kek for a tenant's own)";

/// Whether `r` carries anything only the key hierarchy writes: such a record in a table
/// without a deployment wrapping key means the wrapping keys were removed (a downgrade), not
/// that the table predates them.
pub(crate) fn has_hierarchy_traces(r: &KeyRecord) -> bool {
    r.purpose == Purpose::Wrapping.as_str()
        || r.generation != 0
        || r.check_value.is_some()
        || r.mac_key_id.is_some()
        || r.record_mac.is_some()
        || r.kek_ref.starts_with(WRAPPED_BY)
}

fn cache_key(id: KeyId, r: &KeyRecord) -> super::WrapperKey {
    (
        id,
        r.tenant.clone(),
        r.kek_ref.clone(),
        r.wrapped_key.clone().unwrap_or_default(),
        // Upgraded to a version 2 MAC, the key accepts only version 2 records from then on.
        super::record::timestamps_authenticated(r),
    )
}

/// The active wrapping key record of `tenant` (`None`: the deployment's), read under a shared
/// row lock: a rewrap cannot retire it while a key is being wrapped under it.
async fn active_wrapping<D: KeyDb>(
    db: &mut D,
    tenant: Option<&str>,
) -> Result<Option<KeyRecord>, Error> {
    let mut q = crate::db::Query::new();
    let t = super::tenant_is::<D::Backend>(&mut q, tenant);
    q.sql = format!(
        "SELECT {} FROM {} WHERE purpose = 'wrapping' AND state = 'active' AND {t} ORDER BY key_id{}",
        super::RECORD_COLS,
        super::KEYS,
        <D::Backend as super::KeyTable>::SHARE_LOCK,
    );
    Ok(<D::Backend as super::KeyTable>::load_records(db, &q)
        .await
        .map_err(store_err)?
        .into_iter()
        .next())
}

/// Unwraps `wrapped` through `kek`. When that fails as [`Error::KeyUnwrap`] and the record
/// holds a KEK check value that differs from the KEK's own, the KEK is the wrong one
/// ([`Error::WrongKek`]); a matching or absent check value leaves [`Error::KeyUnwrap`]
/// (altered bytes, or a record from before check values). Compared only after a failure, so an
/// edited check value can change an error's name and nothing else.
pub(super) fn unwrap_by_kek(
    kek: &dyn KekProvider,
    ctx: &WrapContext<'_>,
    wrapped: &[u8],
    stored_check: Option<&[u8]>,
) -> Result<KeyMaterial, Error> {
    match kek.unwrap(ctx, wrapped) {
        Err(Error::KeyUnwrap { key_id }) => Err(match (stored_check, kek.kek_check()) {
            (Some(stored), Ok(Some(own))) if stored != own.as_slice() => Error::WrongKek {
                kek_ref: kek.kek_ref(),
            },
            _ => Error::KeyUnwrap { key_id },
        }),
        other => other,
    }
}

impl<P: KekProvider> KeyStore<P> {
    /// Unwraps wrapping key `r` through its KEK (one provider call), checks its check value and
    /// caches it. Only a deployment KEK unwraps the deployment's wrapping key, and only a
    /// tenant's own KEK that tenant's. `calls` counts provider calls.
    pub(super) fn unwrap_wrapping(
        &self,
        r: &KeyRecord,
        calls: &mut usize,
    ) -> Result<Arc<Wrapper>, Error> {
        let id = key_id_of(r)?;
        let bad = |reason| Error::KeyRecord { key_id: id, reason };
        if r.purpose != Purpose::Wrapping.as_str() || r.state == KeyState::Destroyed.as_str() {
            return Err(bad("not a live wrapping key"));
        }
        let kek = self
            .kek(r.tenant.as_deref(), &r.kek_ref)
            .ok_or_else(|| bad(NO_KEK))?;
        let wrapped = r
            .wrapped_key
            .as_deref()
            .ok_or_else(|| bad("no wrapped key bytes"))?;
        let tenant = r.tenant.as_deref().map(TenantId::from);
        let ctx = WrapContext {
            tenant: tenant.as_ref(),
            purpose: Purpose::Wrapping,
            key_id: id,
        };
        *calls += 1;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let material = unwrap_by_kek(kek, &ctx, wrapped, r.kek_check.as_deref())?;
        self.wrapping_from(r, &material)
    }

    /// Wrapping key `r` from its unwrapped bytes: checks its check value and caches it.
    pub(super) fn wrapping_from(
        &self,
        r: &KeyRecord,
        material: &KeyMaterial,
    ) -> Result<Arc<Wrapper>, Error> {
        let id = key_id_of(r)?;
        let check = r.check_value.as_deref().ok_or(Error::KeyRecord {
            key_id: id,
            reason: "no check value",
        })?;
        if !check_matches(material, check) {
            return Err(Error::KeyCheck { key_id: id });
        }
        let w = Arc::new(Wrapper::new(id, material)?.for_record(r));
        self.wrappers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key(id, r), Arc::clone(&w));
        Ok(w)
    }

    /// Wrapping key `r`, from the cache or unwrapped now.
    pub(crate) fn wrapping(&self, r: &KeyRecord) -> Result<Arc<Wrapper>, Error> {
        let id = key_id_of(r)?;
        let cached = self
            .wrappers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key(id, r))
            .cloned();
        match cached {
            Some(w) => Ok(w),
            None => self.unwrap_wrapping(r, &mut 0),
        }
    }

    pub(crate) fn forget_wrapping(&self, id: KeyId) {
        self.wrappers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| k.0 != id);
    }

    /// The deployment wrapping key that authenticated `r`, with `r` checked against it.
    pub(super) async fn verified_by<D: KeyDb>(
        &self,
        db: &mut D,
        r: &KeyRecord,
    ) -> Result<Arc<Wrapper>, Error> {
        let id = key_id_of(r)?;
        let not_authentic = || Error::KeyRecord {
            key_id: id,
            reason: NOT_AUTHENTIC,
        };
        let mac_id = r.mac_key_id.ok_or_else(not_authentic)?;
        let mac_row = if mac_id == r.key_id {
            r.clone()
        } else {
            key_by_id(db, mac_id)
                .await
                .map_err(store_err)?
                .ok_or_else(not_authentic)?
        };
        self.verified_with(r, &mac_row)
    }

    /// `r` checked against `mac_row`, the record of the deployment wrapping key it names
    /// (`r` itself for a wrapping key's own record).
    pub(super) fn verified_with(
        &self,
        r: &KeyRecord,
        mac_row: &KeyRecord,
    ) -> Result<Arc<Wrapper>, Error> {
        let not_authentic = || Error::KeyRecord {
            key_id: KeyId::from(u32::try_from(r.key_id).unwrap_or(0)),
            reason: NOT_AUTHENTIC,
        };
        if r.mac_key_id != Some(mac_row.key_id)
            || mac_row.purpose != Purpose::Wrapping.as_str()
            || mac_row.tenant.is_some()
            || mac_row.state == KeyState::Destroyed.as_str()
        {
            return Err(not_authentic());
        }
        let w = self.wrapping(mac_row)?;
        if !w.verifies(mac_row) || !w.verifies(r) {
            return Err(not_authentic());
        }
        Ok(w)
    }

    /// The deployment's active wrapping key, which wraps keys of tenants without their own KEK
    /// and authenticates every record. An empty table gets one now, wrapped by this store's
    /// provider. A table with records but no active wrapping key is refused: one from before
    /// the hierarchy is moved under a wrapping key only by the explicit [`KeyStore::rewrap`]
    /// (`adopt`), never as a side effect of a write, which would authenticate whatever state a
    /// database writer left.
    pub(super) async fn mac_wrapper<D: KeyDb>(&self, db: &mut D) -> Result<Arc<Wrapper>, Error> {
        self.mac_wrapper_or(db, false).await
    }

    /// [`KeyStore::mac_wrapper`], adopting a table from before the hierarchy when `adopt`.
    pub(super) async fn mac_wrapper_or<D: KeyDb>(
        &self,
        db: &mut D,
        adopt: bool,
    ) -> Result<Arc<Wrapper>, Error> {
        if let Some(r) = active_wrapping(db, None).await? {
            return self.verified_by(db, &r).await;
        }
        let any = crate::db::Query::sql(format!(
            "SELECT key_id FROM {} ORDER BY key_id LIMIT 1",
            super::KEYS
        ));
        let first = <D::Backend as super::KeyTable>::load_ids(db, &any)
            .await
            .map_err(store_err)?;
        if !adopt && let Some(id) = first.first() {
            return Err(Error::KeyRecord {
                key_id: KeyId::from(u32::try_from(*id).unwrap_or(0)),
                reason: "the key table has records but no active deployment wrapping key: a table from before the key hierarchy is moved under one by KeyStore::rewrap",
            });
        }
        let w = self.create_wrapping(db, None, &self.provider, None).await?;
        self.adopt(db, &w).await?;
        Ok(w)
    }

    /// Authenticates the records written before the table had a wrapping key: each gets a
    /// generation (in creation order, its active key last) and a MAC. Refuses a table where
    /// some records are already authenticated: their wrapping key is missing.
    async fn adopt<D: KeyDb>(&self, db: &mut D, mac: &Wrapper) -> Result<(), Error> {
        let mut rows = super::all_keys(db).await.map_err(store_err)?;
        rows.retain(|r| r.key_id != i64::from(mac.id.get()));
        if let Some(r) = rows.iter().find(|r| has_hierarchy_traces(r)) {
            return Err(Error::KeyRecord {
                key_id: key_id_of(r)?,
                reason: "written under a wrapping key, but the table has no active deployment wrapping key (removed, or switched by another rewrap just now: run again)",
            });
        }
        let rank = |r: &KeyRecord| (r.state == KeyState::Active.as_str(), r.created_at, r.key_id);
        rows.sort_by(|a, b| {
            (&a.tenant, &a.purpose, rank(a)).cmp(&(&b.tenant, &b.purpose, rank(b)))
        });
        let mut generation = 0;
        let mut group: Option<(Option<String>, String)> = None;
        for old in &rows {
            let this = (old.tenant.clone(), old.purpose.clone());
            if group.as_ref() != Some(&this) {
                group = Some(this);
                generation = 0;
            }
            generation += 1;
            let mut new = old.clone();
            new.generation = generation;
            mac.authenticate(&mut new);
            if update_record(db, &new, old).await.map_err(store_err)? != 1 {
                return Err(Error::Store(
                    "the key table changed while its records were being authenticated; run again"
                        .into(),
                ));
            }
        }
        if !rows.is_empty() {
            tracing::info!(target: "encrypted_types::audit", event = "key_table_adopted", records = rows.len());
        }
        Ok(())
    }

    /// The tenant's own active wrapping key (bring your own KEK), if it has one. A tenant whose
    /// own wrapping key is missing, not active or moved away is refused, never moved under the
    /// deployment's: its keys must stay where only its KEK opens them. Every record consulted
    /// is authenticated first, so a changed state, tenant or purpose cannot steer the choice.
    async fn tenant_wrapper<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: &TenantId,
    ) -> Result<Option<Arc<Wrapper>>, Error> {
        if let Some(r) = active_wrapping(db, Some(tenant.as_str())).await? {
            self.verified_by(db, &r).await?;
            return self.wrapping(&r).map(Some);
        }
        let missing = |key_id| Error::KeyRecord {
            key_id,
            reason: "its tenant's own wrapping key is missing, not active or moved",
        };
        let records = tenant_keys(db, Some(tenant.as_str()), None, None)
            .await
            .map_err(store_err)?;
        for r in &records {
            self.verified_by(db, r).await?;
            if r.state == KeyState::Destroyed.as_str() {
                continue;
            }
            if r.purpose == Purpose::Wrapping.as_str() {
                return Err(missing(key_id_of(r)?));
            }
            if let Some(w) = wrapped_by(&r.kek_ref) {
                let w = key_by_id(db, i64::from(w.get()))
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| missing(w))?;
                self.verified_by(db, &w).await?;
                if w.tenant.is_some() || w.purpose != Purpose::Wrapping.as_str() {
                    return Err(missing(key_id_of(r)?));
                }
            }
        }
        Ok(None)
    }

    /// A key id no record uses. Random ids need no coordination between processes.
    async fn free_id<D: KeyDb>(&self, db: &mut D) -> Result<KeyId, Error> {
        for _ in 0..8 {
            let mut raw = [0u8; 4];
            getrandom::fill(&mut raw).map_err(|_| Error::Rng)?;
            let id = KeyId::from(u32::from_be_bytes(raw) & 0x7FFF_FFFF | 1);
            if !id_taken(db, i64::from(id.get())).await.map_err(store_err)? {
                return Ok(id);
            }
        }
        Err(Error::Store("could not find a free key id".into()))
    }

    /// Creates a wrapping key under `kek`: the deployment's (`tenant` None, authenticated by
    /// itself) or a tenant's own (authenticated by `mac`).
    pub(super) async fn create_wrapping<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
        kek: &dyn KekProvider,
        mac: Option<&Wrapper>,
    ) -> Result<Arc<Wrapper>, Error> {
        let id = self.free_id(db).await?;
        let ctx = WrapContext {
            tenant,
            purpose: Purpose::Wrapping,
            key_id: id,
        };
        let (material, wrapped) = kek.generate_wrapped(&ctx)?;
        // Never store a key that does not come back: unwrap it once now.
        if kek.unwrap(&ctx, &wrapped)?.expose() != material.expose() {
            return Err(Error::KeyUnwrap { key_id: id });
        }
        let t = tenant.map(TenantId::as_str);
        let generation = max_generation(db, t, Purpose::Wrapping)
            .await
            .map_err(store_err)?
            + 1;
        let mut record = new_record(id, tenant, Purpose::Wrapping, generation, &material);
        record.wrapped_key = Some(wrapped);
        record.kek_ref = kek.kek_ref();
        // Advisory (it only names the error of a later failed unwrap): a provider that cannot
        // give one now does not stop the key's creation.
        record.kek_check = kek.kek_check().unwrap_or_else(|e| {
            tracing::warn!(target: "encrypted_types::audit", event = "kek_check_unavailable", kek = %record.kek_ref, error = %e);
            None
        });
        match mac {
            Some(m) => m.authenticate(&mut record),
            None => Wrapper::new(id, &material)?.authenticate(&mut record),
        }
        // A new wrapping key's own record is version 2: it authenticates version 2 only.
        let w = Arc::new(Wrapper::new(id, &material)?.for_record(&record));
        insert_key(db, &record).await.map_err(store_err)?;
        self.wrappers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cache_key(id, &record), Arc::clone(&w));
        tracing::info!(
            target: "encrypted_types::audit",
            event = "key_created",
            key_id = id.get(),
            tenant = %crate::tenant::describe(tenant),
            purpose = Purpose::Wrapping.as_str(),
            kek = %record.kek_ref,
        );
        Ok(w)
    }

    /// Creates a fresh active key of `purpose` for `tenant`, wrapped by the tenant's own
    /// wrapping key if it has one and by the deployment's otherwise: no KEK call once the
    /// wrapping key is unwrapped.
    pub(super) async fn create_key<D: KeyDb>(
        &self,
        db: &mut D,
        tenant: Option<&TenantId>,
        purpose: Purpose,
    ) -> Result<KeyId, Error> {
        let mac = self.mac_wrapper(db).await?;
        let wrapper = match tenant {
            Some(t) => self.tenant_wrapper(db, t).await?,
            None => None,
        }
        .unwrap_or_else(|| Arc::clone(&mac));
        let id = self.free_id(db).await?;
        let ctx = WrapContext {
            tenant,
            purpose,
            key_id: id,
        };
        let material = KeyMaterial::generate()?;
        let generation = max_generation(db, tenant.map(TenantId::as_str), purpose)
            .await
            .map_err(store_err)?
            + 1;
        let mut record = new_record(id, tenant, purpose, generation, &material);
        record.wrapped_key = Some(wrapper.wrap(&ctx, &material)?);
        record.kek_ref = format!("{WRAPPED_BY}{}", wrapper.id);
        mac.authenticate(&mut record);
        insert_key(db, &record).await.map_err(store_err)?;
        tracing::info!(
            target: "encrypted_types::audit",
            event = "key_created",
            key_id = id.get(),
            tenant = %crate::tenant::describe(tenant),
            purpose = purpose.as_str(),
            kek = %record.kek_ref,
        );
        Ok(id)
    }

    /// Moves `old` to state `to` (erasing its wrapped bytes when destroyed), re-authenticated by
    /// `mac` (from [`KeyStore::mac_wrapper`], called before `old` was read), after checking its
    /// current record. Returns whether the row was still as read.
    pub(super) async fn set_state<D: KeyDb>(
        &self,
        db: &mut D,
        old: &KeyRecord,
        to: KeyState,
        mac: &Wrapper,
    ) -> Result<bool, Error> {
        self.verified_by(db, old).await?;
        let mut new = old.clone();
        new.state = to.as_str().to_owned();
        new.state_changed_at = now();
        if to == KeyState::Destroyed {
            new.wrapped_key = None;
        }
        mac.authenticate(&mut new);
        Ok(update_record(db, &new, old).await.map_err(store_err)? == 1)
    }
}

/// A new active record of `material`, with its check value; the caller sets the wrap.
fn new_record(
    id: KeyId,
    tenant: Option<&TenantId>,
    purpose: Purpose,
    generation: i64,
    material: &KeyMaterial,
) -> KeyRecord {
    let at = now();
    KeyRecord {
        key_id: i64::from(id.get()),
        tenant: tenant.map(|t| t.as_str().to_owned()),
        purpose: purpose.as_str().to_owned(),
        state: KeyState::Active.as_str().to_owned(),
        wrapped_key: None,
        kek_ref: String::new(),
        created_at: at,
        state_changed_at: at,
        generation,
        check_value: Some(check_value(material).to_vec()),
        mac_key_id: None,
        record_mac: None,
        kek_check: None,
    }
}
