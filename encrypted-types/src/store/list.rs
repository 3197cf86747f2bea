//! The key table as an operator reads it: every key's metadata (never its bytes), and the
//! key-age policy that cron checks.

use std::collections::HashMap;
use std::time::Duration;

use super::{KeyDb, KeyState, KeyStore, KeyTable, store_err};
use crate::Error;
use crate::db::sync_and_async;
use crate::format::key::KeyId;
use crate::kek::Purpose;

/// One key of the key table, without its wrapped bytes ([`list_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key id sealed headers name.
    pub key_id: KeyId,
    /// The tenant; `None` for keys of no tenant and the deployment's wrapping keys.
    pub tenant: Option<String>,
    /// What it is for.
    pub purpose: Purpose,
    /// Its life-cycle state.
    pub state: KeyState,
    /// The KEK (or wrapping key) reference it is stored under.
    pub kek_ref: String,
    /// Unix seconds. Authenticated only where [`KeyInfo::timestamps_authenticated`] says so:
    /// otherwise a database writer can make a key look younger than it is.
    pub created_at: i64,
    /// Unix seconds of the last state change (when it was retired or destroyed).
    pub state_changed_at: i64,
    /// Its generation within the tenant and purpose.
    pub generation: i64,
    /// Whether `created_at` and `state_changed_at` were read from a record whose version 2 MAC
    /// verified ([`KeyStore::verified_keys`]). Always `false` from [`list_keys`], which
    /// authenticates nothing, and for records written before 0.2 (version 1 MACs, which do not
    /// cover the timestamps) until `rewrap` re-authenticates them.
    pub timestamps_authenticated: bool,
}

impl<P: crate::kek::KekProvider> KeyStore<P> {
    sync_and_async! {
        /// Every key of the key table, as [`list_keys`], with every record authenticated first
        /// under the deployment wrapping key it names (which unwraps each deployment wrapping key
        /// once, through the KEK: a host that runs it needs the KEK's decrypt right). What
        /// `check` reads key ages from, so that a database writer cannot silence the alarm by
        /// making a key look young.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use encrypted_types::kek::local::LocalKek;
        /// # use encrypted_types::store::KeyStore;
        /// # let dir = tempfile::tempdir().unwrap();
        /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
        /// # KeyStore::<LocalKek>::run_migrations(conn)?;
        /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
        /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
        /// let keys = store.verified_keys(conn)?;
        /// assert!(keys.iter().all(|k| k.timestamps_authenticated));
        /// # Ok::<(), encrypted_types::Error>(())
        /// ```
        ///
        /// # Errors
        /// [`Error::KeyRecord`] naming the first record that does not authenticate (a table from
        /// before the key hierarchy has none that do), provider errors, [`Error::Store`].
        pub fn verified_keys / verified_keys_async(&self)
            -> Result<Vec<KeyInfo>, Error> where Backend: KeyTable => self.verified_keys_on
    }

    async fn verified_keys_on<D: KeyDb>(&self, db: &mut D) -> Result<Vec<KeyInfo>, Error> {
        let records = match super::all_keys(db).await {
            Ok(r) => r,
            Err(e) => {
                return Err(
                    super::migrated::explain(db, super::migrated::KEY_TABLE, store_err(e)).await,
                );
            }
        };
        let by_id: HashMap<i64, &super::KeyRecord> =
            records.iter().map(|r| (r.key_id, r)).collect();
        for r in &records {
            let named = r.mac_key_id.and_then(|m| by_id.get(&m).copied());
            let mac_row = named.ok_or_else(|| Error::KeyRecord {
                key_id: KeyId::from(u32::try_from(r.key_id).unwrap_or(0)),
                reason: super::wrap::NOT_AUTHENTIC,
            })?;
            self.verified_with(r, mac_row)?;
        }
        infos(records, super::record::timestamps_authenticated)
    }
}

sync_and_async! {
    /// Every key of the key table, by tenant, purpose and id: metadata only. Reads the table as
    /// it is, without unwrapping or authenticating anything: a tampered record shows here as it
    /// is stored and fails at [`super::KeyStore::load`].
    ///
    /// # Errors
    /// [`Error::Store`] if the table cannot be read; [`Error::KeyRecord`] for a row whose id,
    /// purpose or state is not one the library writes.
    pub fn list_keys / list_keys_async() -> Result<Vec<KeyInfo>, Error> where Backend: KeyTable => list_keys_on
}

async fn list_keys_on<D: KeyDb>(db: &mut D) -> Result<Vec<KeyInfo>, Error> {
    let records = match super::all_keys(db).await {
        Ok(r) => r,
        Err(e) => {
            return Err(
                super::migrated::explain(db, super::migrated::KEY_TABLE, store_err(e)).await,
            );
        }
    };
    infos(records, |_| false)
}

/// The records as [`KeyInfo`]s, by tenant (keys of no tenant first), purpose and id, the same on
/// every backend.
fn infos(
    mut records: Vec<super::KeyRecord>,
    authenticated: impl Fn(&super::KeyRecord) -> bool,
) -> Result<Vec<KeyInfo>, Error> {
    records
        .sort_by(|a, b| (&a.tenant, &a.purpose, a.key_id).cmp(&(&b.tenant, &b.purpose, b.key_id)));
    records
        .into_iter()
        .map(|r| {
            let key_id = u32::try_from(r.key_id)
                .map(KeyId::from)
                .map_err(|_| Error::Store("a key id outside 0..2^32 in the key table".into()))?;
            let bad = |reason| Error::KeyRecord { key_id, reason };
            let timestamps_authenticated = authenticated(&r);
            Ok(KeyInfo {
                key_id,
                purpose: Purpose::parse(&r.purpose).ok_or_else(|| bad("unknown purpose"))?,
                state: KeyState::parse(&r.state).ok_or_else(|| bad("unknown state"))?,
                tenant: r.tenant,
                kek_ref: r.kek_ref,
                created_at: r.created_at,
                state_changed_at: r.state_changed_at,
                generation: r.generation,
                timestamps_authenticated,
            })
        })
        .collect()
}

/// Key wraps under one KEK that share a nonce ([`reused_wrap_nonces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReusedWrapNonce {
    /// The KEK (or `key:<id>` wrapping key) both wraps are under.
    pub kek_ref: String,
    /// The keys whose wraps share the nonce.
    pub key_ids: Vec<KeyId>,
}

/// The references whose wraps are AES-GCM with the nonce in their first 12 bytes: the local
/// KEK, PKCS#11 and the table's own wrapping keys. An AWS KMS ciphertext is KMS's own format.
const GCM_WRAPS: [&str; 3] = ["local:", "pkcs11:", super::wrap::WRAPPED_BY];

sync_and_async! {
    /// Key wraps (AES-GCM) under one KEK that share a nonce: what a process that forked, or a
    /// VM snapshot restored twice, could write with releases before 0.2, whose wraps drew
    /// their nonce from the per-thread pool. Two such wraps give away the XOR of the two keys
    /// and GCM's authentication key for that KEK. Remedy (`docs/KEYS.md`): `rewrap` to a new
    /// KEK, then rotate the affected keys and re-seal. An empty list is the healthy answer.
    /// Reads the stored wraps only; unwraps nothing.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use encrypted_types::kek::local::LocalKek;
    /// # use encrypted_types::store::{KeyStore, reused_wrap_nonces};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    /// # KeyStore::<LocalKek>::run_migrations(conn)?;
    /// let store = KeyStore::new(LocalKek::create(dir.path().join("dev.kek"))?);
    /// store.create_tenant(conn, Some(&"clinic-a".into()))?;
    /// assert!(reused_wrap_nonces(conn)?.is_empty());
    /// # Ok::<(), encrypted_types::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Store`] if the table cannot be read.
    pub fn reused_wrap_nonces / reused_wrap_nonces_async() -> Result<Vec<ReusedWrapNonce>, Error> where Backend: KeyTable => reused_wrap_nonces_on
}

async fn reused_wrap_nonces_on<D: KeyDb>(db: &mut D) -> Result<Vec<ReusedWrapNonce>, Error> {
    let records = super::all_keys(db).await.map_err(store_err)?;
    let mut by_nonce: HashMap<(&str, &[u8]), Vec<KeyId>> = HashMap::new();
    for r in &records {
        let (Some(wrapped), Ok(id)) = (r.wrapped_key.as_deref(), u32::try_from(r.key_id)) else {
            continue;
        };
        if !GCM_WRAPS.iter().any(|p| r.kek_ref.starts_with(p)) {
            continue;
        }
        if let Some(nonce) = wrapped.get(..12) {
            by_nonce
                .entry((r.kek_ref.as_str(), nonce))
                .or_default()
                .push(KeyId::from(id));
        }
    }
    let mut out: Vec<ReusedWrapNonce> = by_nonce
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|((kek_ref, _), mut key_ids)| {
            key_ids.sort_unstable();
            ReusedWrapNonce {
                kek_ref: kek_ref.to_owned(),
                key_ids,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.kek_ref, &a.key_ids).cmp(&(&b.kek_ref, &b.key_ids)));
    Ok(out)
}

/// A key-age policy ([`KeyPolicy::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// The oldest an active data key may be (a rotation cadence: 90 to 365 days).
    pub max_age: Duration,
    /// How long a retired data key may still seal stored values: the time a rotation job has
    /// to re-seal them.
    pub retired_grace: Duration,
}

/// A breach of a [`KeyPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyBreach {
    /// An active data key older than [`KeyPolicy::max_age`]: rotate it.
    TooOld {
        /// The key.
        key_id: KeyId,
        /// Its tenant.
        tenant: Option<String>,
        /// Its age.
        age: Duration,
    },
    /// A data key retired longer than [`KeyPolicy::retired_grace`] that stored values still
    /// name: run the rotation job.
    RetiredInUse {
        /// The key.
        key_id: KeyId,
        /// Its tenant.
        tenant: Option<String>,
        /// How long ago it was retired.
        retired_for: Duration,
        /// Values sealed with it.
        values: u64,
    },
}

impl KeyPolicy {
    /// The breaches of the policy at `now` (unix seconds), given the keys ([`list_keys`]) and how
    /// many stored values name each key (from [`crate::jobs::inventory`]). Blind-index root
    /// keys are not checked: replacing one needs a full reindex, and nothing stored names
    /// them.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::time::Duration;
    /// use encrypted_types::store::KeyPolicy;
    ///
    /// let policy = KeyPolicy {
    ///     max_age: Duration::from_secs(90 * 86_400),
    ///     retired_grace: Duration::from_secs(7 * 86_400),
    /// };
    /// // No keys, nothing to breach.
    /// assert!(policy.check(&[], &HashMap::new(), 1_800_000_000).is_empty());
    /// ```
    pub fn check(
        &self,
        keys: &[KeyInfo],
        values: &HashMap<KeyId, u64>,
        now: i64,
    ) -> Vec<PolicyBreach> {
        let since = |t: i64| Duration::from_secs(u64::try_from(now.saturating_sub(t)).unwrap_or(0));
        let mut out = Vec::new();
        for k in keys.iter().filter(|k| k.purpose == Purpose::Data) {
            match k.state {
                KeyState::Active if since(k.created_at) > self.max_age => {
                    out.push(PolicyBreach::TooOld {
                        key_id: k.key_id,
                        tenant: k.tenant.clone(),
                        age: since(k.created_at),
                    });
                }
                KeyState::Retired if since(k.state_changed_at) > self.retired_grace => {
                    let n = values.get(&k.key_id).copied().unwrap_or(0);
                    if n > 0 {
                        out.push(PolicyBreach::RetiredInUse {
                            key_id: k.key_id,
                            tenant: k.tenant.clone(),
                            retired_for: since(k.state_changed_at),
                            values: n,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn key(id: u32, purpose: Purpose, state: KeyState, created: i64, changed: i64) -> KeyInfo {
        KeyInfo {
            key_id: KeyId::from(id),
            tenant: Some("7".into()),
            purpose,
            state,
            kek_ref: "local".into(),
            created_at: created,
            state_changed_at: changed,
            generation: 1,
            timestamps_authenticated: true,
        }
    }

    #[test]
    fn old_active_data_keys_and_long_retired_keys_in_use_breach() {
        let now = 1_000 * DAY;
        let policy = KeyPolicy {
            max_age: Duration::from_secs(90 * 86_400),
            retired_grace: Duration::from_secs(7 * 86_400),
        };
        let keys = [
            key(
                1,
                Purpose::Data,
                KeyState::Active,
                now - 91 * DAY,
                now - 91 * DAY,
            ),
            key(
                2,
                Purpose::Data,
                KeyState::Active,
                now - 89 * DAY,
                now - 89 * DAY,
            ),
            // An old blind-index root is not a breach.
            key(3, Purpose::BlindIndex, KeyState::Active, now - 400 * DAY, 0),
            // Retired long ago and still sealing 5 values; retired long ago with none; retired
            // yesterday with values.
            key(4, Purpose::Data, KeyState::Retired, 0, now - 8 * DAY),
            key(5, Purpose::Data, KeyState::Retired, 0, now - 8 * DAY),
            key(6, Purpose::Data, KeyState::Retired, 0, now - DAY),
        ];
        let values = HashMap::from([(KeyId::from(4), 5), (KeyId::from(6), 9)]);
        let found = policy.check(&keys, &values, now);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            matches!(found[0], PolicyBreach::TooOld { key_id, .. } if key_id == KeyId::from(1))
        );
        assert!(matches!(
            found[1],
            PolicyBreach::RetiredInUse { key_id, values: 5, .. } if key_id == KeyId::from(4)
        ));
    }
}

/// One tenant and purpose of a key table from before the hierarchy, as `keys rewrap` shows it
/// before adopting the table ([`adoption_review`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdoptionGroup {
    /// The tenant (`None`: keys of no tenant).
    pub tenant: Option<String>,
    /// Data key or blind-index root.
    pub purpose: Purpose,
    /// The active key(s): adopting makes them the authenticated ones. More than one, or none
    /// beside live keys, is refused by the load after adoption as in any table.
    pub active: Vec<KeyId>,
    /// The retired keys.
    pub retired: Vec<KeyId>,
    /// Advisory: an active key created before a retired one of its group. A legacy table does
    /// not authenticate `created_at`, so this is a hint, not proof: a writer may have
    /// re-activated an old key, or changed a timestamp. Confirm against a record kept outside
    /// the database (the KMS's own log of the wraps) before adopting.
    pub active_older_than_retired: bool,
}

/// Whether `keys` (from [`list_keys`]) is a key table from before the key hierarchy: records,
/// none of them a deployment wrapping key.
pub fn is_legacy_table(keys: &[KeyInfo]) -> bool {
    !keys.is_empty()
        && !keys
            .iter()
            .any(|k| k.purpose == Purpose::Wrapping && k.tenant.is_none())
}

/// What adopting a key table from before the hierarchy ([`KeyStore::rewrap`]) would make
/// authentic: the active and retired keys per tenant and purpose, with the advisory
/// [`AdoptionGroup::active_older_than_retired`]. Empty for a table that is not one.
///
/// ```
/// use encrypted_types::store::{adoption_review, KeyInfo};
/// # fn keys() -> Vec<KeyInfo> { Vec::new() }
/// for g in adoption_review(&keys()) {
///     if g.active_older_than_retired {
///         eprintln!("check {:?} {} against the KMS log first", g.tenant, g.purpose.as_str());
///     }
/// }
/// ```
pub fn adoption_review(keys: &[KeyInfo]) -> Vec<AdoptionGroup> {
    if !is_legacy_table(keys) {
        return Vec::new();
    }
    let mut groups: Vec<AdoptionGroup> = Vec::new();
    // `keys` is sorted by tenant, purpose and id (`list_keys`): a group is a run.
    for k in keys.iter().filter(|k| k.purpose != Purpose::Wrapping) {
        let same = groups
            .last()
            .is_some_and(|g| g.tenant == k.tenant && g.purpose == k.purpose);
        if !same {
            groups.push(AdoptionGroup {
                tenant: k.tenant.clone(),
                purpose: k.purpose,
                active: Vec::new(),
                retired: Vec::new(),
                active_older_than_retired: false,
            });
        }
        if let Some(g) = groups.last_mut() {
            match k.state {
                KeyState::Active => g.active.push(k.key_id),
                KeyState::Retired => g.retired.push(k.key_id),
                KeyState::Destroyed => {}
            }
        }
    }
    let created = |id: &KeyId| {
        keys.iter()
            .find(|k| k.key_id == *id)
            .map_or(i64::MIN, |k| k.created_at)
    };
    for g in &mut groups {
        let newest_retired = g.retired.iter().map(created).max();
        g.active_older_than_retired =
            newest_retired.is_some_and(|r| g.active.iter().any(|a| created(a) < r));
    }
    groups
}
