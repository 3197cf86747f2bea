//! KEK rotation: re-wrapping every key of the table under a new deployment wrapping key,
//! itself wrapped by the store's provider, without touching a single data value.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::manifest::Mode;
use super::record::{Wrapper, check_matches, check_value, timestamps_authenticated};
use super::wrap::{NOT_AUTHENTIC, WRAPPED_BY, key_id_of, wrapped_by};
use super::{KEYS, KeyDb, KeyRecord, KeyState, KeyTable, store_err, tenant_keys, update_record};
use crate::Error;
use crate::db::{Param, Query, sync_and_async};
use crate::format::key::KeyId;
use crate::kek::{KekProvider, Purpose, WrapContext};
use crate::store::KeyStore;
use crate::tenant::TenantId;

/// How [`KeyStore::rewrap`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RewrapOptions {
    /// Records re-wrapped per transaction.
    pub batch: usize,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self { batch: 500 }
    }
}

/// What [`KeyStore::rewrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapReport {
    /// The deployment wrapping key every key is now wrapped or authenticated by.
    pub wrapping_key: KeyId,
    /// Keys re-wrapped under it in this run.
    pub rewrapped: u64,
    /// Records only re-authenticated (destroyed keys, keys under a tenant's own KEK).
    pub reauthenticated: u64,
    /// Records another process changed between read and write, picked up by the next pass.
    pub conflicts: u64,
    /// The previous deployment wrapping keys, destroyed at the end.
    pub destroyed_wrapping_keys: Vec<KeyId>,
    /// Calls to KEK providers made through this store during the run.
    pub kek_calls: usize,
    /// True only when an SQL count finds no record left on an old KEK or wrapping key and the
    /// old wrapping keys are destroyed: the old KEK can then be disabled.
    pub finished: bool,
}

impl<P: KekProvider> KeyStore<P> {
    /// Refuses what would hand a tenant's KEK another role, from the key table itself (a store
    /// may not be configured with every tenant's KEK): the deployment KEK of a rewrap that is
    /// some tenant's own KEK (its holder could then unwrap every tenant), and, when `adding`
    /// names a tenant and a KEK, a KEK that is already another tenant's own; the table itself
    /// holding one KEK for two tenants is refused too.
    pub(super) async fn tenant_keks_apart<D: KeyDb>(
        &self,
        db: &mut D,
        adding: Option<(&TenantId, &str)>,
    ) -> Result<(), Error> {
        let q = Query::sql(format!(
            "SELECT {} FROM {KEYS} WHERE purpose = 'wrapping' AND tenant IS NOT NULL AND state <> 'destroyed' ORDER BY key_id",
            super::RECORD_COLS
        ));
        let records = <D::Backend as KeyTable>::load_records(db, &q)
            .await
            .map_err(store_err)?;
        let target = self.provider.kek_ref();
        let mut owners: HashMap<&str, &str> = HashMap::new();
        let adding = adding.map(|(t, k)| (t.as_str(), k));
        for (tenant, kek) in records
            .iter()
            .filter_map(|r| r.tenant.as_deref().map(|t| (t, r.kek_ref.as_str())))
            .chain(adding)
        {
            if adding.is_none() && kek == target {
                return Err(Error::KekRoles {
                    kek: kek.to_owned(),
                    tenant: tenant.to_owned(),
                });
            }
            match owners.insert(kek, tenant) {
                Some(first) if first != tenant => {
                    return Err(Error::SharedTenantKek {
                        kek: kek.to_owned(),
                        first: first.to_owned(),
                        second: tenant.to_owned(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    sync_and_async! {
        /// Rotates the KEK: creates a deployment wrapping key under this store's provider (if the
        /// active one is under another KEK), then re-wraps every data and blind-index key under it
        /// and re-authenticates every record, `options.batch` records per transaction, never
        /// touching a data value. Keys wrapped by a tenant's own KEK stay under it.
        ///
        /// Resumable and idempotent: a run killed at any point is simply run again, and skips
        /// what is done. While it runs, every process must have both KEKs (the old one through
        /// [`KeyStore::with_kek`]); once it reports `finished`, the old deployment wrapping key is
        /// destroyed and the old KEK can be disabled. The same job moves a table from before the
        /// key hierarchy (every key wrapped by the KEK itself) under a wrapping key.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::{KeyStore, RewrapOptions};
        /// # let dir = std::env::temp_dir().join(format!("et-rewrap-doc-{}", std::process::id()));
        /// # std::fs::create_dir_all(&dir).unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let old = KeyStore::new(LocalKek::create(dir.join("old.kek"))?);
        /// old.create_tenant(conn, Some(&"clinic-a".into()))?;
        ///
        /// // Every process now runs with the new KEK and still has the old one ...
        /// let store = KeyStore::new(LocalKek::create(dir.join("new.kek"))?)
        ///     .with_kek(LocalKek::open(dir.join("old.kek"))?);
        /// let report = store.rewrap(conn, RewrapOptions::default())?;
        /// assert!(report.finished);
        ///
        /// // ... and after it, the old KEK is not needed.
        /// std::fs::remove_file(dir.join("old.kek")).unwrap();
        /// let store = KeyStore::new(LocalKek::open(dir.join("new.kek"))?);
        /// assert_eq!(store.load(conn)?.1.data_keys, 1);
        /// # std::fs::remove_dir_all(&dir).unwrap();
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::KekRoles`] when this store's provider is some tenant's own KEK (its holder
        /// would then unwrap every tenant), [`Error::SharedTenantKek`] when the table holds one
        /// KEK for two tenants; [`Error::KeyRecord`] for a record that does not authenticate,
        /// [`Error::KeyUnwrap`], [`Error::KeyCheck`], provider errors, [`Error::Store`].
        pub fn rewrap / rewrap_async(&self, options: RewrapOptions)
            -> Result<RewrapReport, Error> where Backend: KeyTable => self.rewrap_on
    }

    async fn rewrap_on<D: KeyDb>(
        &self,
        db: &mut D,
        options: RewrapOptions,
    ) -> Result<RewrapReport, Error> {
        let calls_before = self.calls.load(Ordering::Relaxed);
        self.tenant_keks_apart(db, None).await?;
        let target = crate::db::transaction(db, store_err, async |db| {
            let change = self.manifest_begin(db, &[None], Mode::Rewrap).await?;
            let absent = change.absent();
            let target = self.rewrap_target(db).await?;
            if absent {
                // A table that had no manifest to protect (from before the hierarchy, adopted
                // just now, or one this store may load without): its manifest is written now,
                // so that every later batch, and a rerun after a crash, keeps it.
                let (epoch, accepted) = self.manifest_build(db, &target).await?;
                tracing::warn!(
                    target: "encrypted_types::audit",
                    event = "key_manifest_written_by_rewrap",
                    epoch,
                    accepted = ?accepted,
                );
            } else {
                self.manifest_commit(db, change, &target).await?;
            }
            Ok(target)
        })
        .await?;
        let mut report = RewrapReport {
            wrapping_key: target.id,
            rewrapped: 0,
            reauthenticated: 0,
            conflicts: 0,
            destroyed_wrapping_keys: Vec::new(),
            kek_calls: 0,
            finished: false,
        };
        // Passes until a count finds nothing left: a record another process changed between
        // read and write is picked up by the next pass.
        for _ in 0..3 {
            let mut after = -1i64;
            loop {
                let (last, more) = crate::db::transaction(db, store_err, async |db| {
                    self.rewrap_batch(db, &target, after, options.batch.max(1), &mut report)
                        .await
                })
                .await?;
                after = last;
                if !more {
                    break;
                }
            }
            if remaining(db, target.id).await? == 0 {
                break;
            }
        }
        // Nothing depends on the old deployment wrapping keys any more: destroy them, counting
        // again in the same transaction (the active wrapping key is read under a row lock by
        // every writer, so no key can be wrapped under an old one after this count).
        let destroyed = crate::db::transaction(db, store_err, async |db| {
            let change = self.manifest_begin(db, &[None], Mode::Rewrap).await?;
            if remaining(db, target.id).await? > 0 {
                return Ok(None);
            }
            self.upgrade_target(db, &target).await?;
            // Every manifest row under the target before the old wrapping keys go: a row
            // MAC'd by a destroyed key would no longer authenticate.
            self.manifest_rekey(db, &target).await?;
            let mut destroyed = Vec::new();
            for old in tenant_keys(db, None, Some(Purpose::Wrapping), None)
                .await
                .map_err(store_err)?
            {
                if old.key_id == i64::from(target.id.get())
                    || old.state == KeyState::Destroyed.as_str()
                {
                    continue;
                }
                if !self
                    .set_state(db, &old, KeyState::Destroyed, &target)
                    .await?
                {
                    return Err(Error::Store(
                        "a wrapping key changed during the rewrap; run again".into(),
                    ));
                }
                let id = key_id_of(&old)?;
                self.forget_wrapping(id);
                destroyed.push(id);
            }
            self.manifest_commit(db, change, &target).await?;
            Ok(Some(destroyed))
        })
        .await?;
        let Some(destroyed) = destroyed else {
            report.kek_calls = self.calls.load(Ordering::Relaxed) - calls_before;
            return Ok(report);
        };
        report.destroyed_wrapping_keys = destroyed;
        report.kek_calls = self.calls.load(Ordering::Relaxed) - calls_before;
        // The independent check: no record on an old KEK or wrapping key, no old wrapping key live.
        report.finished =
            remaining(db, target.id).await? == 0 && live_old_wrappers(db, target.id).await? == 0;
        tracing::info!(
            target: "encrypted_types::audit",
            event = "rewrap_done",
            wrapping_key = target.id.get(),
            rewrapped = report.rewrapped,
            reauthenticated = report.reauthenticated,
            finished = report.finished,
        );
        Ok(report)
    }

    /// The deployment wrapping key under this store's provider, created (and the previous one
    /// retired) if the active one is under another KEK.
    async fn rewrap_target<D: KeyDb>(&self, db: &mut D) -> Result<Arc<Wrapper>, Error> {
        let current = self.mac_wrapper_or(db, true).await?;
        let active = tenant_keys(db, None, Some(Purpose::Wrapping), Some(KeyState::Active))
            .await
            .map_err(store_err)?;
        let Some(row) = active.first() else {
            return Err(Error::Store("no active deployment wrapping key".into()));
        };
        if row.kek_ref == self.provider.kek_ref() {
            return Ok(current);
        }
        // Retired first (the table allows one active wrapping key), still authenticated by
        // itself until the rewrap destroys it.
        if !self.set_state(db, row, KeyState::Retired, &current).await? {
            return Err(Error::Store(
                "the wrapping key changed during the rewrap; run again".into(),
            ));
        }
        self.create_wrapping(db, None, &self.provider, None).await
    }

    /// Re-wraps and re-authenticates the records after key id `after`, up to `limit` of them.
    /// Returns the last key id read and whether there may be more.
    async fn rewrap_batch<D: KeyDb>(
        &self,
        db: &mut D,
        target: &Wrapper,
        after: i64,
        limit: usize,
        report: &mut RewrapReport,
    ) -> Result<(i64, bool), Error> {
        let wrapping: HashMap<i64, KeyRecord> =
            tenant_keys_of_purpose(db, Purpose::Wrapping).await?;
        let mut q = Query::new();
        let a = q.bind::<D::Backend>(Param::Int(after));
        let n = q.bind::<D::Backend>(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        q.sql = format!(
            "SELECT {} FROM {KEYS} WHERE key_id > {a} ORDER BY key_id LIMIT {n}",
            super::RECORD_COLS
        );
        let rows = D::Backend::load_records(db, &q).await.map_err(store_err)?;
        let mut groups: Vec<Option<&str>> = rows.iter().map(|r| r.tenant.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        let change = self.manifest_begin(db, &groups, Mode::Rewrap).await?;
        let last = rows.last().map_or(after, |r| r.key_id);
        let more = rows.len() == limit;
        let target_id = i64::from(target.id.get());
        for old in &rows {
            // Live old deployment wrapping keys are destroyed at the end; destroyed ones are
            // re-authenticated like any record.
            // The target's own record is brought to version 2 last (`upgrade_target`): from
            // then on it authenticates version 2 records only.
            if old.purpose == Purpose::Wrapping.as_str()
                && old.tenant.is_none()
                && (old.key_id == target_id || old.state != KeyState::Destroyed.as_str())
            {
                continue;
            }
            // Keys under a tenant's own wrapping key stay there; the rest move under the target.
            let wrapper_row =
                wrapped_by(&old.kek_ref).and_then(|w| wrapping.get(&i64::from(w.get())));
            // The wrapping key's record decides whether the key stays under a tenant's own KEK:
            // it must authenticate and belong to the key's own tenant, or a changed row could
            // move a tenant's keys out from under its KEK.
            if let Some(w) = wrapper_row {
                self.authentic(w, &wrapping)?;
                if w.tenant.is_some() && w.tenant != old.tenant {
                    return Err(Error::KeyRecord {
                        key_id: key_id_of(old)?,
                        reason: "wrapped by another tenant's wrapping key",
                    });
                }
            }
            let own_kek = wrapper_row.is_some_and(|w| w.tenant.is_some());
            let rewrap = old.purpose != Purpose::Wrapping.as_str()
                && old.state != KeyState::Destroyed.as_str()
                && !own_kek
                && old.kek_ref != format!("{WRAPPED_BY}{}", target.id);
            if !rewrap && old.mac_key_id == Some(target_id) && timestamps_authenticated(old) {
                continue;
            }
            self.authentic(old, &wrapping)?;
            let mut new = old.clone();
            if rewrap {
                let id = key_id_of(old)?;
                let tenant = old.tenant.as_deref().map(TenantId::from);
                let ctx = WrapContext {
                    tenant: tenant.as_ref(),
                    purpose: Purpose::parse(&old.purpose).ok_or(Error::KeyRecord {
                        key_id: id,
                        reason: "unknown purpose",
                    })?,
                    key_id: id,
                };
                let wrapped = old.wrapped_key.as_deref().ok_or(Error::KeyRecord {
                    key_id: id,
                    reason: "no wrapped key bytes",
                })?;
                let material = match wrapper_row {
                    Some(w) => self.wrapping(w)?.unwrap(&ctx, wrapped)?,
                    None if wrapped_by(&old.kek_ref).is_some() => {
                        return Err(Error::KeyRecord {
                            key_id: id,
                            reason: "wrapped by a wrapping key the table does not hold",
                        });
                    }
                    None => {
                        let kek = self.kek(None, &old.kek_ref).ok_or(Error::KeyRecord {
                            key_id: id,
                            reason: super::wrap::NO_KEK,
                        })?;
                        self.calls.fetch_add(1, Ordering::Relaxed);
                        super::wrap::unwrap_by_kek(kek, &ctx, wrapped, old.kek_check.as_deref())?
                    }
                };
                if let Some(check) = old.check_value.as_deref()
                    && !check_matches(&material, check)
                {
                    return Err(Error::KeyCheck { key_id: id });
                }
                new.wrapped_key = Some(target.wrap(&ctx, &material)?);
                new.kek_ref = format!("{WRAPPED_BY}{}", target.id);
                new.check_value = Some(check_value(&material).to_vec());
                // Now wrapped by a wrapping key, not a KEK.
                new.kek_check = None;
            }
            // A version 1 record's timestamps were never authenticated: a retirement is taken
            // as no older than now, so a destroy waits out its grace period from here.
            if !timestamps_authenticated(old) && old.state == KeyState::Retired.as_str() {
                new.state_changed_at = new.state_changed_at.max(super::sql::now());
            }
            target.authenticate(&mut new);
            if update_record(db, &new, old).await.map_err(store_err)? == 1 {
                if rewrap {
                    report.rewrapped += 1;
                } else {
                    report.reauthenticated += 1;
                }
            } else {
                report.conflicts += 1;
            }
        }
        self.manifest_commit(db, change, target).await?;
        Ok((last, more))
    }

    /// Re-authenticates the target wrapping key's own record under version 2 if it is still
    /// version 1: last, once every other record is version 2, because from then on the key
    /// accepts version 2 records only.
    async fn upgrade_target<D: KeyDb>(&self, db: &mut D, target: &Wrapper) -> Result<(), Error> {
        let own = super::sql::key_by_id(db, i64::from(target.id.get()))
            .await
            .map_err(store_err)?
            .ok_or_else(|| {
                Error::Store("the wrapping key left the table during the rewrap".into())
            })?;
        if timestamps_authenticated(&own) {
            return Ok(());
        }
        if !target.verifies(&own) {
            return Err(Error::KeyRecord {
                key_id: target.id,
                reason: NOT_AUTHENTIC,
            });
        }
        let mut new = own.clone();
        target.authenticate(&mut new);
        if update_record(db, &new, &own).await.map_err(store_err)? != 1 {
            return Err(Error::Store(
                "the wrapping key changed during the rewrap; run again".into(),
            ));
        }
        self.forget_wrapping(target.id);
        Ok(())
    }

    /// Checks `r`'s MAC against the deployment wrapping key that made it.
    fn authentic(&self, r: &KeyRecord, wrapping: &HashMap<i64, KeyRecord>) -> Result<(), Error> {
        let id = key_id_of(r)?;
        let mac_row = r
            .mac_key_id
            .and_then(|m| wrapping.get(&m))
            .filter(|m| m.tenant.is_none() && m.state != KeyState::Destroyed.as_str());
        let ok = match mac_row {
            Some(m) => {
                let w = self.wrapping(m)?;
                w.verifies(m) && w.verifies(r)
            }
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::KeyRecord {
                key_id: id,
                reason: NOT_AUTHENTIC,
            })
        }
    }
}

/// Every record of `purpose`, by key id.
async fn tenant_keys_of_purpose<D: KeyDb>(
    db: &mut D,
    purpose: Purpose,
) -> Result<HashMap<i64, KeyRecord>, Error> {
    let mut q = Query::new();
    let p = q.bind::<D::Backend>(Param::Text(purpose.as_str().to_owned()));
    q.sql = format!(
        "SELECT {} FROM {KEYS} WHERE purpose = {p}",
        super::RECORD_COLS
    );
    Ok(D::Backend::load_records(db, &q)
        .await
        .map_err(store_err)?
        .into_iter()
        .map(|r| (r.key_id, r))
        .collect())
}

/// Records not yet under `target`: not authenticated by it, or a live key still wrapped by a
/// KEK directly or by another deployment wrapping key. Counted in SQL, not by the job's code.
async fn remaining<D: KeyDb>(db: &mut D, target: KeyId) -> Result<i64, Error> {
    let old: Vec<i64> = tenant_keys_of_purpose(db, Purpose::Wrapping)
        .await?
        .into_values()
        .filter(|r| r.tenant.is_none() && r.key_id != i64::from(target.get()))
        .map(|r| r.key_id)
        .collect();
    let mut q = Query::new();
    let t = q.bind::<D::Backend>(Param::Int(i64::from(target.get())));
    let t2 = q.bind::<D::Backend>(Param::Int(i64::from(target.get())));
    let mut under_old = String::from("kek_ref NOT LIKE 'key:%'");
    if !old.is_empty() {
        let refs: Vec<String> = old
            .iter()
            .map(|id| q.bind::<D::Backend>(Param::Text(format!("{WRAPPED_BY}{id}"))))
            .collect();
        under_old = format!("({under_old} OR kek_ref IN ({}))", refs.join(", "));
    }
    // A version 1 MAC (32 bytes, timestamps not covered) is left to do as well; the target's
    // own record is upgraded after this count finds nothing else.
    q.sql = format!(
        "SELECT COUNT(*) AS n FROM {KEYS} WHERE key_id <> {t} \
         AND NOT (purpose = 'wrapping' AND tenant IS NULL AND state <> 'destroyed') \
         AND (mac_key_id IS NULL OR mac_key_id <> {t2} OR LENGTH(record_mac) <> 33 \
              OR (purpose <> 'wrapping' AND state <> 'destroyed' AND {under_old}))"
    );
    D::Backend::count_q(db, &q).await.map_err(store_err)
}

/// Deployment wrapping keys other than `target` that are not destroyed.
async fn live_old_wrappers<D: KeyDb>(db: &mut D, target: KeyId) -> Result<i64, Error> {
    let mut q = Query::new();
    let t = q.bind::<D::Backend>(Param::Int(i64::from(target.get())));
    q.sql = format!(
        "SELECT COUNT(*) AS n FROM {KEYS} WHERE purpose = 'wrapping' AND tenant IS NULL \
         AND state <> 'destroyed' AND key_id <> {t}"
    );
    D::Backend::count_q(db, &q).await.map_err(store_err)
}
