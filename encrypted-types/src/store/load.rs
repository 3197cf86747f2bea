//! Loading the key table into a keyring: one KEK call per wrapping key, every record
//! authenticated, every key checked (ADR 0003, `docs/KEYTABLE.md`).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::record::{Wrapper, check_matches};
use super::wrap::{NOT_AUTHENTIC, key_id_of, wrapped_by};
use super::{KeyDb, KeyRecord, KeyState, LoadReport, all_keys, self_test, store_err};
use crate::Error;
use crate::kek::{KekProvider, Purpose, WrapContext};
use crate::key::KeyId;
use crate::keyring::Keyring;
use crate::store::KeyStore;
use crate::tenant::TenantId;

/// A record with its fields parsed.
struct Parsed<'a> {
    r: &'a KeyRecord,
    id: KeyId,
    purpose: Purpose,
    state: KeyState,
}

fn parse(r: &KeyRecord) -> Result<Parsed<'_>, Error> {
    let id = key_id_of(r)?;
    let bad = |reason| Error::KeyRecord { key_id: id, reason };
    Ok(Parsed {
        r,
        id,
        purpose: Purpose::parse(&r.purpose).ok_or_else(|| bad("unknown purpose"))?,
        state: KeyState::parse(&r.state).ok_or_else(|| bad("unknown state"))?,
    })
}

/// Whether a KEK's failure means "this KEK is unavailable" (disabled, unreachable) rather than
/// "these bytes are wrong": only the first makes a tenant with its own KEK unavailable instead
/// of failing the load.
fn kek_unavailable(e: &Error) -> bool {
    matches!(e, Error::Provider { .. } | Error::Timeout { .. })
        || matches!(e, Error::KeyRecord { reason, .. } if reason.contains("no provider"))
}

impl<P: KekProvider> KeyStore<P> {
    pub(super) async fn load_on<D: KeyDb>(
        &self,
        db: &mut D,
    ) -> Result<(Keyring, LoadReport), Error> {
        let started = Instant::now();
        let records = all_keys(db).await.map_err(store_err)?;
        let parsed = records.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        let mut report = LoadReport {
            data_keys: 0,
            blind_index_keys: 0,
            destroyed: 0,
            kek_calls: 0,
            unavailable: Vec::new(),
            unauthenticated: 0,
        };

        // The deployment's wrapping keys: each unwrapped by its KEK (one call), checked, and
        // authenticated by its own MAC key. They authenticate every other record.
        let hierarchical = parsed
            .iter()
            .any(|p| p.purpose == Purpose::Wrapping && p.r.tenant.is_none());
        let mut macs: HashMap<KeyId, Arc<Wrapper>> = HashMap::new();
        for p in &parsed {
            if p.purpose == Purpose::Wrapping
                && p.r.tenant.is_none()
                && p.state != KeyState::Destroyed
            {
                let w = self.unwrap_wrapping(p.r, &mut report.kek_calls)?;
                if !w.verifies(p.r) {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: NOT_AUTHENTIC,
                    });
                }
                macs.insert(p.id, w);
            }
        }
        for p in &parsed {
            let authentic =
                p.r.mac_key_id
                    .and_then(|id| u32::try_from(id).ok())
                    .and_then(|id| macs.get(&KeyId::from(id)))
                    .is_some_and(|w| w.verifies(p.r));
            if hierarchical && !authentic {
                return Err(Error::KeyRecord {
                    key_id: p.id,
                    reason: NOT_AUTHENTIC,
                });
            }
            if !hierarchical {
                if p.r.record_mac.is_some() || p.purpose == Purpose::Wrapping {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "authenticated, but the table has no deployment wrapping key",
                    });
                }
                report.unauthenticated += 1;
            }
        }
        if hierarchical {
            self.check_generations(&parsed)?;
        }

        // Tenants' own wrapping keys: a KEK that is disabled or unreachable makes that tenant
        // unavailable, and only that tenant.
        let mut tenant_wrappers: HashMap<KeyId, (Arc<Wrapper>, &str)> = HashMap::new();
        let mut unavailable: HashMap<&str, (&str, Vec<u32>)> = HashMap::new();
        for p in &parsed {
            let Some(tenant) = p.r.tenant.as_deref() else {
                continue;
            };
            if p.purpose != Purpose::Wrapping || p.state == KeyState::Destroyed {
                continue;
            }
            match self.unwrap_wrapping(p.r, &mut report.kek_calls) {
                Ok(w) => {
                    tenant_wrappers.insert(p.id, (w, tenant));
                }
                Err(e) if kek_unavailable(&e) => {
                    self.forget_wrapping(p.id);
                    tracing::warn!(
                        target: "encrypted_types::audit",
                        event = "tenant_unavailable",
                        tenant = %tenant,
                        kek = %p.r.kek_ref,
                        error = %e,
                    );
                    unavailable
                        .entry(tenant)
                        .or_insert((p.r.kek_ref.as_str(), Vec::new()));
                }
                Err(e) => return Err(e),
            }
        }

        let mut builder = Keyring::builder();
        let mut self_tested = false;
        for p in &parsed {
            if p.purpose == Purpose::Wrapping {
                continue;
            }
            let tenant = p.r.tenant.as_deref().map(TenantId::from);
            if p.state == KeyState::Destroyed {
                if p.purpose == Purpose::Data {
                    builder = builder.destroyed_key(p.id.get());
                }
                report.destroyed += 1;
                continue;
            }
            let bad = |reason| Error::KeyRecord {
                key_id: p.id,
                reason,
            };
            if let Some((_, ids)) = p.r.tenant.as_deref().and_then(|t| unavailable.get_mut(t)) {
                ids.push(p.id.get());
                continue;
            }
            let wrapped =
                p.r.wrapped_key
                    .as_deref()
                    .ok_or_else(|| bad("no wrapped key bytes"))?;
            let ctx = WrapContext {
                tenant: tenant.as_ref(),
                purpose: p.purpose,
                key_id: p.id,
            };
            let material = match wrapped_by(&p.r.kek_ref) {
                Some(w_id) => {
                    let w = match (macs.get(&w_id), tenant_wrappers.get(&w_id)) {
                        (Some(w), _) => w,
                        (None, Some((w, owner))) if Some(*owner) == p.r.tenant.as_deref() => w,
                        _ => return Err(bad("wrapped by a wrapping key the table does not hold")),
                    };
                    w.unwrap(&ctx, wrapped)?
                }
                // A key written before the table had a wrapping key: one KEK call each.
                None => {
                    let kek = self.kek(&p.r.kek_ref).ok_or_else(|| {
                        bad("wrapped by another KEK than this process's provider")
                    })?;
                    report.kek_calls += 1;
                    kek.unwrap(&ctx, wrapped)?
                }
            };
            match p.r.check_value.as_deref() {
                Some(check) if !check_matches(&material, check) => {
                    return Err(Error::KeyCheck { key_id: p.id });
                }
                Some(_) => {}
                None if hierarchical && wrapped_by(&p.r.kek_ref).is_some() => {
                    return Err(bad("no check value"));
                }
                None => {}
            }
            tracing::debug!(target: "encrypted_types::audit", event = "key_unwrapped", key_id = p.id.get(), purpose = p.purpose.as_str());
            match p.purpose {
                Purpose::Data => {
                    // A check value proves the bytes; the canary proves the cipher, once, and
                    // every key that has no check value.
                    if !self_tested || p.r.check_value.is_none() {
                        self_test(p.id, tenant.as_ref(), &material)?;
                        self_tested = true;
                    }
                    builder = builder.data_key(p.id.get(), tenant.clone(), material);
                    if p.state == KeyState::Active {
                        builder = builder.primary(tenant, p.id.get());
                    }
                    report.data_keys += 1;
                }
                Purpose::BlindIndex if p.state == KeyState::Active => {
                    builder = builder.blind_index_root(tenant, material);
                    report.blind_index_keys += 1;
                }
                // A root being replaced: lookups of the previous index version still use it.
                Purpose::BlindIndex => {
                    builder = builder.retired_blind_index_root(tenant, material);
                    report.blind_index_keys += 1;
                }
                Purpose::Wrapping => {}
            }
        }
        check_complete(&parsed, &unavailable)?;
        let mut gone: Vec<(TenantId, String)> = Vec::new();
        for (tenant, (kek, ids)) in unavailable {
            builder = builder.unavailable_tenant(tenant.into(), kek.to_owned(), ids);
            gone.push((tenant.into(), kek.to_owned()));
        }
        gone.sort();
        report.unavailable = gone;
        let keyring = builder.build()?;
        tracing::info!(
            target: "encrypted_types::audit",
            event = "keyring_loaded",
            data_keys = report.data_keys,
            blind_index_keys = report.blind_index_keys,
            destroyed = report.destroyed,
            kek_calls = report.kek_calls,
            unavailable = report.unavailable.len(),
            millis = started.elapsed().as_millis() as u64,
        );
        Ok((keyring, report))
    }

    /// Per tenant and purpose, generations are distinct and the active key's is the highest:
    /// a retired key made active again, even with a record that once authenticated, is refused.
    /// Across loads in one process, an active key older than one seen before is refused too.
    fn check_generations(&self, parsed: &[Parsed<'_>]) -> Result<(), Error> {
        let mut groups: HashMap<(Option<&str>, Purpose), Vec<&Parsed<'_>>> = HashMap::new();
        for p in parsed {
            groups
                .entry((p.r.tenant.as_deref(), p.purpose))
                .or_default()
                .push(p);
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for ((tenant, purpose), mut keys) in groups {
            keys.sort_by_key(|p| p.r.generation);
            if let Some(w) = keys
                .windows(2)
                .find(|w| matches!(w, [a, b] if a.r.generation == b.r.generation))
            {
                let id = w.get(1).map_or(KeyId::from(0), |p| p.id);
                return Err(Error::KeyRecord {
                    key_id: id,
                    reason: "two keys of one tenant and purpose share a generation",
                });
            }
            let newest = keys.last().map_or(0, |p| p.r.generation);
            for p in &keys {
                if p.state == KeyState::Active && p.r.generation != newest {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "an older key was made active again (a newer one exists)",
                    });
                }
            }
            let slot = seen
                .entry((tenant.map(str::to_owned), purpose))
                .or_insert(newest);
            if newest < *slot {
                let id = keys.last().map_or(KeyId::from(0), |p| p.id);
                return Err(Error::KeyRecord {
                    key_id: id,
                    reason: "the key table was rolled back: this process loaded a newer key of its tenant before",
                });
            }
            *slot = newest;
        }
        Ok(())
    }
}

/// Every tenant with live keys has exactly one active key of each purpose (a half-created
/// tenant fails at startup, not on its first write); tenants that are unavailable are skipped.
fn check_complete(
    parsed: &[Parsed<'_>],
    unavailable: &HashMap<&str, (&str, Vec<u32>)>,
) -> Result<(), Error> {
    let mut active: HashMap<(Option<&str>, Purpose), usize> = HashMap::new();
    for p in parsed {
        if p.state == KeyState::Active {
            *active
                .entry((p.r.tenant.as_deref(), p.purpose))
                .or_default() += 1;
        }
    }
    for p in parsed {
        let tenant = p.r.tenant.as_deref();
        if p.state == KeyState::Destroyed || tenant.is_some_and(|t| unavailable.contains_key(t)) {
            continue;
        }
        let purposes: &[Purpose] = if p.purpose == Purpose::Wrapping {
            &[Purpose::Wrapping]
        } else {
            &[Purpose::Data, Purpose::BlindIndex]
        };
        for purpose in purposes {
            match active.get(&(tenant, *purpose)) {
                Some(1) => {}
                Some(_) => {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "its tenant has two active keys of one purpose",
                    });
                }
                None => {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "its tenant lacks an active data key or blind-index key",
                    });
                }
            }
        }
    }
    Ok(())
}
