//! Loading the key table into a keyring: one KEK call per wrapping key, every record
//! authenticated, every key checked (ADR 0003, `docs/KEYTABLE.md`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::record::{Wrapper, check_matches};
use super::wrap::{NOT_AUTHENTIC, has_hierarchy_traces, key_id_of, wrapped_by};
use super::{KeyDb, KeyRecord, KeyState, LoadReport, all_keys, scoped_keys, self_test, store_err};
use crate::Error;
use crate::format::key::KeyId;
use crate::format::key::KeyMaterial;
use crate::kek::{KekProvider, Purpose, WrapContext};
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

/// What the parallel pass made of one record.
enum Opened {
    /// A live data or blind-index key, unwrapped and checked.
    Key(Box<KeyMaterial>),
    /// A record of a table from before the hierarchy: its key (if live) needs a KEK call.
    Legacy,
    /// Nothing to open: a wrapping key, a destroyed key, a key of an unavailable tenant.
    Nothing,
}

/// The tenants whose own KEK failed, with that KEK's reference and their key ids.
type Unavailable<'a> = HashMap<&'a str, (&'a str, Vec<u32>)>;

/// One tenant wrapping key for its tenant's own KEK to unwrap, owned so that it can be asked
/// on another thread and abandoned there.
struct TenantCall {
    kek: Arc<dyn KekProvider>,
    /// Set while a call on `kek` runs, cleared when the provider returns, late or not.
    busy: Arc<std::sync::atomic::AtomicBool>,
    tenant: TenantId,
    key_id: KeyId,
    wrapped: Vec<u8>,
    kek_check: Option<Vec<u8>>,
}

/// At most this many tenant KEK calls in flight during a load.
const TENANT_CALLS_IN_FLIGHT: usize = 16;

/// Unwraps every call's key through its KEK, up to [`TENANT_CALLS_IN_FLIGHT`] at once, and
/// waits at most `deadline` in all (a deadline too far to represent waits for every answer).
/// Answers in the calls' order; a call not answered by then is [`Error::Timeout`], and its
/// worker, still waiting on the provider, drops the late answer (boxed, so the key bytes are
/// wiped where they lie) and starts no other call. A KEK still busy with a call an earlier
/// load gave up on is not asked again: that tenant times out at once. Also returns how many
/// calls reached a provider by the time it returns.
fn unwrap_concurrently(
    calls: Vec<TenantCall>,
    deadline: std::time::Duration,
) -> (Vec<Result<Box<KeyMaterial>, Error>>, usize) {
    use std::sync::atomic::Ordering;
    let ids: Vec<KeyId> = calls.iter().map(|c| c.key_id).collect();
    let mut answers: Vec<Option<Result<Box<KeyMaterial>, Error>>> =
        ids.iter().map(|_| None).collect();
    let ask = |c: &TenantCall| {
        let ctx = WrapContext {
            tenant: Some(&c.tenant),
            purpose: Purpose::Wrapping,
            key_id: c.key_id,
        };
        let answer = super::wrap::unwrap_by_kek(&*c.kek, &ctx, &c.wrapped, c.kek_check.as_deref())
            .map(Box::new);
        c.busy.store(false, Ordering::SeqCst);
        answer
    };
    let end = Instant::now().checked_add(deadline);
    let before_end = move || end.is_none_or(|e| Instant::now() < e);
    // Calls whose KEK is still busy are left unanswered (a timeout below).
    let calls: Vec<(usize, TenantCall)> = calls
        .into_iter()
        .enumerate()
        .filter(|(_, c)| !c.busy.swap(true, Ordering::SeqCst))
        .collect();
    let asked = calls.len();
    let workers = asked.min(TENANT_CALLS_IN_FLIGHT);
    let queue = Arc::new(std::sync::Mutex::new(
        calls.into_iter().collect::<std::collections::VecDeque<_>>(),
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut started = 0;
    for _ in 0..workers {
        let (queue, tx, made) = (Arc::clone(&queue), tx.clone(), Arc::clone(&made));
        let spawned = std::thread::Builder::new()
            .name("et-tenant-kek".into())
            .spawn(move || {
                while before_end() {
                    // Counted under the queue's lock: the load drains what is left under it.
                    let next = {
                        let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                        let next = q.pop_front();
                        if next.is_some() {
                            made.fetch_add(1, Ordering::SeqCst);
                        }
                        next
                    };
                    let Some((i, call)) = next else { break };
                    // A closed channel: the load gave up waiting, and this answer is late.
                    if tx.send((i, ask(&call))).is_err() {
                        break;
                    }
                }
            });
        started += usize::from(spawned.is_ok());
    }
    drop(tx);
    // With no thread started, nothing is asked (its tenants time out): a call on this thread
    // could hang the load past any deadline.
    let mut pending = if started == 0 { 0 } else { asked };
    while pending > 0 {
        let next = match end {
            Some(e) => rx
                .recv_timeout(e.saturating_duration_since(Instant::now()))
                .ok(),
            None => rx.recv().ok(),
        };
        match next {
            Some((i, answer)) => {
                if let Some(slot @ None) = answers.get_mut(i) {
                    *slot = Some(answer);
                    pending -= 1;
                }
            }
            // The deadline passed, or every worker is done.
            None => break,
        }
    }
    // Calls no worker started (the deadline passed, or no thread could be started): their
    // KEKs are free again.
    for (_, call) in queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
    {
        call.busy.store(false, Ordering::SeqCst);
    }
    let answers = answers
        .into_iter()
        .zip(ids)
        .map(|(answer, key_id)| {
            answer.unwrap_or(Err(Error::Timeout {
                operation: "unwrap",
                key_id,
            }))
        })
        .collect();
    (answers, made.load(Ordering::SeqCst))
}

/// `f` over `items` on every available core, results in order; `None` if a thread failed, so
/// no result is ever paired with another item than its own.
pub(super) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Option<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || items.len() < 4096 {
        return Some(items.iter().map(&f).collect());
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok())
            .collect::<Option<Vec<Vec<R>>>>()
            .map(|parts| parts.into_iter().flatten().collect())
    })
}

impl<P: KekProvider> KeyStore<P> {
    /// The load, of the whole table or (`scope`) of some tenants' records and those of no
    /// tenant (which hold the deployment's wrapping keys).
    pub(super) async fn load_scoped<D: KeyDb>(
        &self,
        db: &mut D,
        scope: Option<&[TenantId]>,
    ) -> Result<(Keyring, LoadReport), Error> {
        self.load_checked(db, scope, true).await
    }

    /// [`KeyStore::load_scoped`], checking the manifest or (for its rebuild) not.
    pub(super) async fn load_checked<D: KeyDb>(
        &self,
        db: &mut D,
        scope: Option<&[TenantId]>,
        check_manifest: bool,
    ) -> Result<(Keyring, LoadReport), Error> {
        let started = Instant::now();
        self.roles_checked()?;
        let sequence = crate::keyring::next_load();
        // Read first: a change after it shows in the next poll, never hides behind this load.
        let generation = super::sql::generation(db).await?;
        // The records and the manifest rows are read in two statements: read the deployment
        // row before and after, and again while a change committed in between (every change
        // but a tenant's creation moves it; a creation adds a new group, whole).
        let seen = self.seen_epoch.load(std::sync::atomic::Ordering::SeqCst);
        let mut attempts = 0;
        let (records, manifest_rows) = loop {
            attempts += 1;
            let before = super::manifest::deployment_row(db).await?;
            let records = match scope {
                None => all_keys(db).await,
                Some(tenants) => scoped_keys(db, tenants).await,
            };
            let records = match records {
                Ok(r) => r,
                Err(e) => {
                    return Err(super::migrated::explain(
                        db,
                        super::migrated::KEY_TABLE,
                        store_err(e),
                    )
                    .await);
                }
            };
            let rows = super::manifest::load_rows(db, scope).await?;
            let after = rows.iter().find(|r| r.scope == "deployment");
            if before.as_ref() == after {
                break (records, rows);
            }
            // Never check records and rows that may come from different moments: a false
            // "rolled back" would send the operator the wrong way.
            if attempts >= 5 {
                return Err(Error::Store(
                    "the key table changed during each of five reads (a rewrap or many key \
                     operations running): load again"
                        .into(),
                ));
            }
        };
        let parsed = records.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        let mut report = LoadReport {
            data_keys: 0,
            blind_index_keys: 0,
            destroyed: 0,
            kek_calls: 0,
            unavailable: Vec::new(),
            unauthenticated: 0,
            manifest_epoch: None,
        };

        // The deployment's wrapping keys: each unwrapped by its KEK (one call), checked, and
        // authenticated by its own MAC key. They authenticate every other record.
        let hierarchical = parsed
            .iter()
            .any(|p| p.purpose == Purpose::Wrapping && p.r.tenant.is_none());
        // A table this process saw authenticated does not lose its wrapping keys.
        let was_authenticated = self
            .authenticated
            .load(std::sync::atomic::Ordering::Relaxed);
        if !hierarchical && let Some(p) = parsed.first() {
            if was_authenticated {
                return Err(Error::KeyRecord {
                    key_id: p.id,
                    reason: "the key table lost its deployment wrapping keys: this process loaded it authenticated before",
                });
            }
            // Unauthenticated records are only read during an upgrade the operator asked for:
            // otherwise a writer who strips a table back to that form would be believed.
            if !self.legacy_allowed {
                return Err(Error::KeyRecord {
                    key_id: p.id,
                    reason: "the key table is from before the key hierarchy (its records are not authenticated): run KeyStore::rewrap, and load it meanwhile with KeyStore::allow_legacy_table",
                });
            }
        }
        let mut macs: HashMap<KeyId, Arc<Wrapper>> = HashMap::new();
        for p in &parsed {
            if p.purpose == Purpose::Wrapping
                && p.r.tenant.is_none()
                && p.state != KeyState::Destroyed
            {
                let w = self.unwrap_wrapping(p.r, &mut report.kek_calls)?;
                if !w.verifies(p.r) {
                    return Err(not_authentic(p.id));
                }
                macs.insert(p.id, w);
            }
        }

        // Tenants' own wrapping keys (records checked first): a KEK that is disabled or
        // unreachable makes that tenant unavailable, and only that tenant.
        let mut tenant_wrappers: HashMap<KeyId, (Arc<Wrapper>, &str)> = HashMap::new();
        let mut unavailable: Unavailable<'_> = HashMap::new();
        let (mut asked, mut calls, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for p in &parsed {
            let Some(tenant) = p.r.tenant.as_deref() else {
                continue;
            };
            if p.purpose != Purpose::Wrapping || p.state == KeyState::Destroyed {
                continue;
            }
            if !authentic(p.r, &macs) {
                return Err(not_authentic(p.id));
            }
            // A tenant's KEK given as a deployment KEK (`with_kek`) could vouch for a planted
            // deployment wrapping key: refuse the configuration, not just this tenant.
            if self.provider.kek_ref() == p.r.kek_ref
                || self.others.iter().any(|k| k.kek_ref() == p.r.kek_ref)
            {
                return Err(Error::KekRoles {
                    kek: p.r.kek_ref.clone(),
                    tenant: tenant.to_owned(),
                });
            }
            match (self.tenant_kek(tenant, &p.r.kek_ref), &p.r.wrapped_key) {
                (Some((kek, busy)), Some(wrapped)) => {
                    asked.push((p, tenant));
                    calls.push(TenantCall {
                        kek,
                        busy,
                        tenant: TenantId::from(tenant),
                        key_id: p.id,
                        wrapped: wrapped.clone(),
                        kek_check: p.r.kek_check.clone(),
                    });
                }
                (kek, _) => {
                    let e = Error::KeyRecord {
                        key_id: p.id,
                        reason: if kek.is_none() {
                            super::wrap::NO_KEK
                        } else {
                            "no wrapped key bytes"
                        },
                    };
                    failed.push((p, tenant, e));
                }
            }
        }
        // Every tenant's own KEK at once, under one deadline: a KMS that hangs makes its tenant
        // unavailable, not every start slow.
        // Counted as made: a tenant skipped because its KEK is still busy, or left when the
        // deadline passed, cost no call.
        let (answers, made) = unwrap_concurrently(calls, self.tenant_kek_deadline);
        report.kek_calls += made;
        self.calls
            .fetch_add(made, std::sync::atomic::Ordering::Relaxed);
        for ((p, tenant), answer) in asked.into_iter().zip(answers) {
            match answer.and_then(|m| self.wrapping_from(p.r, &m)) {
                Ok(w) => {
                    tenant_wrappers.insert(p.id, (w, tenant));
                }
                Err(e) => failed.push((p, tenant, e)),
            }
        }
        // The records authenticated, so whatever went wrong is the tenant's KEK's doing
        // (disabled, unreachable, too slow, not configured here, wrong bytes): that tenant only.
        for (p, tenant, e) in failed {
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

        // Every record's MAC, and every live key's unwrap and check value: pure computation, on
        // every core; the first failure in key-id order is reported, as a sequential pass would.
        let owners: HashSet<&str> = tenant_wrappers.values().map(|(_, t)| *t).collect();
        let outcomes = parallel_map(&parsed, |p| {
            open_record(
                p,
                hierarchical,
                &macs,
                &tenant_wrappers,
                &owners,
                &unavailable,
            )
        })
        .ok_or_else(|| Error::Store("a thread checking the key table failed".into()))?;
        let mut opened = Vec::with_capacity(parsed.len());
        for (p, outcome) in parsed.iter().zip(outcomes) {
            match outcome? {
                Opened::Key(material) => opened.push((p, material)),
                Opened::Legacy => {
                    if !hierarchical {
                        report.unauthenticated += 1;
                    }
                    if p.purpose != Purpose::Wrapping && p.state != KeyState::Destroyed {
                        opened.push((p, Box::new(self.open_legacy(p, &mut report.kek_calls)?)));
                    }
                }
                Opened::Nothing => {}
            }
        }
        check_groups(&parsed, &unavailable, hierarchical.then_some(self), scope)?;
        // An empty table is checked too (with a pinned epoch it was wiped, not created), and
        // so is one that looks older than the hierarchy once an epoch is pinned or was seen.
        let pinned = self.min_epoch.is_some() || seen > 0;
        if (hierarchical || records.is_empty() || pinned) && check_manifest {
            report.manifest_epoch = super::manifest::check(
                self,
                &manifest_rows,
                &records,
                &macs,
                scope.is_none(),
                seen,
            )?
            .and_then(|e| u64::try_from(e).ok());
        }

        let mut builder = Keyring::builder().load_began(sequence).seal_limit(
            self.seal_max_age
                .map(|age| Arc::new(crate::keyring::SealLimit::new(age, started))),
        );
        if let Some(tenants) = scope {
            builder = builder.loaded_for(tenants.iter().cloned().collect());
        }
        for p in &parsed {
            if p.purpose == Purpose::Wrapping {
                continue;
            }
            if p.state == KeyState::Destroyed {
                if p.purpose == Purpose::Data {
                    builder = builder.destroyed_key(p.id.get());
                }
                report.destroyed += 1;
            } else if let Some((_, ids)) =
                p.r.tenant.as_deref().and_then(|t| unavailable.get_mut(t))
            {
                ids.push(p.id.get());
            }
        }
        let mut self_tested = false;
        for (p, material) in opened {
            let tenant = p.r.tenant.as_deref().map(TenantId::from);
            tracing::debug!(target: "encrypted_types::audit", event = "key_unwrapped", key_id = p.id.get(), purpose = p.purpose.as_str());
            match p.purpose {
                Purpose::Data => {
                    // A check value proves the bytes; the canary proves the cipher, once, and
                    // every key that has no check value.
                    if !self_tested || p.r.check_value.is_none() {
                        self_test(p.id, tenant.as_ref(), &material)?;
                        self_tested = true;
                    }
                    builder = builder.data_key_boxed(p.id.get(), tenant.clone(), material);
                    if p.state == KeyState::Active {
                        builder = builder.primary(tenant, p.id.get());
                    }
                    report.data_keys += 1;
                }
                Purpose::BlindIndex if p.state == KeyState::Active => {
                    builder = builder.blind_index_root_boxed(tenant, material);
                    report.blind_index_keys += 1;
                }
                // A root being replaced: lookups of the previous index version still use it.
                Purpose::BlindIndex => {
                    builder = builder.retired_blind_index_root_boxed(tenant, material);
                    report.blind_index_keys += 1;
                }
                Purpose::Wrapping => {}
            }
        }
        // A tenant whose records are all destroyed is shredded: its errors say so.
        let mut live_or_not: HashMap<&str, bool> = HashMap::new();
        for p in &parsed {
            if let Some(t) = p.r.tenant.as_deref() {
                *live_or_not.entry(t).or_insert(false) |= p.state != KeyState::Destroyed;
            }
        }
        for (tenant, live) in live_or_not {
            if !live {
                builder = builder.shredded_tenant(tenant.into());
            }
        }
        let mut gone: Vec<(TenantId, String)> = Vec::new();
        for (tenant, (kek, ids)) in unavailable {
            builder = builder.unavailable_tenant(tenant.into(), kek.to_owned(), ids);
            gone.push((tenant.into(), kek.to_owned()));
        }
        gone.sort();
        report.unavailable = gone;
        let keyring = builder.build()?;
        if hierarchical {
            self.authenticated
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(epoch) = report.manifest_epoch {
            self.saw_epoch(i64::try_from(epoch).unwrap_or(i64::MAX));
        }
        *self
            .loaded_generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(generation);
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

    /// A key written before the table had a wrapping key: one KEK call.
    fn open_legacy(&self, p: &Parsed<'_>, calls: &mut usize) -> Result<KeyMaterial, Error> {
        let bad = |reason| Error::KeyRecord {
            key_id: p.id,
            reason,
        };
        let kek = self
            .kek(None, &p.r.kek_ref)
            .ok_or_else(|| bad("wrapped by another KEK than this process's provider"))?;
        let wrapped =
            p.r.wrapped_key
                .as_deref()
                .ok_or_else(|| bad("no wrapped key bytes"))?;
        let tenant = p.r.tenant.as_deref().map(TenantId::from);
        let ctx = WrapContext {
            tenant: tenant.as_ref(),
            purpose: p.purpose,
            key_id: p.id,
        };
        *calls += 1;
        let material = super::wrap::unwrap_by_kek(kek, &ctx, wrapped, p.r.kek_check.as_deref())?;
        if let Some(check) = p.r.check_value.as_deref()
            && !check_matches(&material, check)
        {
            return Err(Error::KeyCheck { key_id: p.id });
        }
        Ok(material)
    }
}

fn not_authentic(key_id: KeyId) -> Error {
    Error::KeyRecord {
        key_id,
        reason: NOT_AUTHENTIC,
    }
}

/// Whether `r`'s MAC verifies under the deployment wrapping key it names.
fn authentic(r: &KeyRecord, macs: &HashMap<KeyId, Arc<Wrapper>>) -> bool {
    r.mac_key_id
        .and_then(|id| u32::try_from(id).ok())
        .and_then(|id| macs.get(&KeyId::from(id)))
        .is_some_and(|w| w.verifies(r))
}

/// One record of the parallel pass: its MAC, then its key, unwrapped and checked.
fn open_record(
    p: &Parsed<'_>,
    hierarchical: bool,
    macs: &HashMap<KeyId, Arc<Wrapper>>,
    tenant_wrappers: &HashMap<KeyId, (Arc<Wrapper>, &str)>,
    owners: &HashSet<&str>,
    unavailable: &Unavailable<'_>,
) -> Result<Opened, Error> {
    if !hierarchical {
        if has_hierarchy_traces(p.r) {
            return Err(Error::KeyRecord {
                key_id: p.id,
                reason: "written under a wrapping key, but the table has no deployment wrapping key",
            });
        }
        return Ok(Opened::Legacy);
    }
    if !authentic(p.r, macs) {
        return Err(not_authentic(p.id));
    }
    if p.purpose == Purpose::Wrapping
        || p.state == KeyState::Destroyed
        || p.r
            .tenant
            .as_deref()
            .is_some_and(|t| unavailable.contains_key(t))
    {
        return Ok(Opened::Nothing);
    }
    let bad = |reason| Error::KeyRecord {
        key_id: p.id,
        reason,
    };
    let wrapped =
        p.r.wrapped_key
            .as_deref()
            .ok_or_else(|| bad("no wrapped key bytes"))?;
    // A tenant with its own wrapping key has every key under it: one found under the
    // deployment's (or its KEK directly) was moved there by someone other than this library.
    let own = p.r.tenant.as_deref().is_some_and(|t| owners.contains(t));
    let Some(w_id) = wrapped_by(&p.r.kek_ref) else {
        if own {
            return Err(bad(
                "its tenant has its own wrapping key, but this key is not under it",
            ));
        }
        // Authenticated, but wrapped by the KEK itself: a key adopted from before the hierarchy.
        return Ok(Opened::Legacy);
    };
    let w = match (macs.get(&w_id), tenant_wrappers.get(&w_id)) {
        (Some(w), _) if !own => w,
        (None, Some((w, owner))) if Some(*owner) == p.r.tenant.as_deref() => w,
        (Some(_), _) => {
            return Err(bad(
                "its tenant has its own wrapping key, but this key is not under it",
            ));
        }
        _ => return Err(bad("wrapped by a wrapping key the table does not hold")),
    };
    let tenant = p.r.tenant.as_deref().map(TenantId::from);
    let ctx = WrapContext {
        tenant: tenant.as_ref(),
        purpose: p.purpose,
        key_id: p.id,
    };
    let material = Box::new(w.unwrap(&ctx, wrapped)?);
    let check =
        p.r.check_value
            .as_deref()
            .ok_or_else(|| bad("no check value"))?;
    if !check_matches(&material, check) {
        return Err(Error::KeyCheck { key_id: p.id });
    }
    Ok(Opened::Key(material))
}

/// Per tenant and purpose, over the records sorted once:
/// - (with `store`, in an authenticated table) generations are distinct and the active key's
///   is the highest, so a retired key made active again is refused even with a record that once
///   authenticated; and across loads in one process, an active key older than one seen before
///   (a rolled-back table) is refused too;
/// - every tenant with live keys has exactly one active key of each purpose (a half-created
///   tenant fails at startup, not on its first write); unavailable tenants are skipped.
fn check_groups<P: KekProvider>(
    parsed: &[Parsed<'_>],
    unavailable: &Unavailable<'_>,
    store: Option<&KeyStore<P>>,
    scope: Option<&[TenantId]>,
) -> Result<(), Error> {
    let purpose_rank = |p: Purpose| match p {
        Purpose::Data => 0u8,
        Purpose::BlindIndex => 1,
        Purpose::Wrapping => 2,
    };
    // Grouped by a number per tenant, so the sort compares integers, not strings.
    let mut numbers: HashMap<Option<&str>, usize> = HashMap::new();
    let mut sorted: Vec<(usize, u8, i64, &Parsed<'_>)> = parsed
        .iter()
        .map(|p| {
            let next = numbers.len();
            let n = *numbers.entry(p.r.tenant.as_deref()).or_insert(next);
            (n, purpose_rank(p.purpose), p.r.generation, p)
        })
        .collect();
    sorted.sort_unstable_by_key(|&(n, rank, generation, p)| (n, rank, generation, p.id));
    let sorted: Vec<&Parsed<'_>> = sorted.into_iter().map(|(.., p)| p).collect();
    let mut seen = store.map(|s| s.seen.lock().unwrap_or_else(PoisonError::into_inner));
    let mut i = 0;
    while let Some(first) = sorted.get(i) {
        let tenant = first.r.tenant.as_deref();
        let mut j = i;
        while sorted
            .get(j)
            .is_some_and(|p| p.r.tenant.as_deref() == tenant)
        {
            j += 1;
        }
        let group = sorted.get(i..j).unwrap_or_default();
        i = j;
        let skip = tenant.is_some_and(|t| unavailable.contains_key(t));
        let live_key = group
            .iter()
            .find(|p| p.state != KeyState::Destroyed && p.purpose != Purpose::Wrapping);
        let live_wrapping = group
            .iter()
            .find(|p| p.state != KeyState::Destroyed && p.purpose == Purpose::Wrapping);
        let mut newest_of = [0i64; 3];
        for purpose in [Purpose::Data, Purpose::BlindIndex, Purpose::Wrapping] {
            let rank = usize::from(purpose_rank(purpose));
            // Sorted by generation within the purpose.
            let keys = group.iter().filter(|p| p.purpose == purpose);
            let (mut active, mut previous, mut newest) = (0usize, None, None);
            for p in keys {
                if seen.is_some() && previous == Some(p.r.generation) {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "two keys of one tenant and purpose share a generation",
                    });
                }
                previous = Some(p.r.generation);
                newest = Some(*p);
                if p.state == KeyState::Active {
                    active += 1;
                }
            }
            if seen.is_some() {
                let newest_gen = newest.map_or(0, |p| p.r.generation);
                if let Some(p) = group.iter().find(|p| {
                    p.purpose == purpose
                        && p.state == KeyState::Active
                        && p.r.generation != newest_gen
                }) {
                    return Err(Error::KeyRecord {
                        key_id: p.id,
                        reason: "an older key was made active again (a newer one exists)",
                    });
                }
                if let Some(slot) = newest_of.get_mut(rank) {
                    *slot = newest_gen;
                }
            }
            let live = if purpose == Purpose::Wrapping {
                live_wrapping
            } else {
                live_key
            };
            let (Some(live), false) = (live, skip) else {
                continue;
            };
            match active {
                1 => {}
                0 => {
                    return Err(Error::KeyRecord {
                        key_id: live.id,
                        reason: "its tenant lacks an active data key or blind-index key",
                    });
                }
                _ => {
                    return Err(Error::KeyRecord {
                        key_id: live.id,
                        reason: "its tenant has two active keys of one purpose",
                    });
                }
            }
        }
        if let Some(seen) = seen.as_mut() {
            let (by_tenant, default) = &mut **seen;
            let slot = match tenant {
                None => Some(default),
                Some(t) => by_tenant.get_mut(t),
            };
            let rolled_back =
                |slot: &[i64; 3]| slot.iter().zip(&newest_of).any(|(was, now)| now < was);
            match slot {
                Some(slot) if rolled_back(slot) => {
                    return Err(Error::KeyRecord {
                        key_id: first.id,
                        reason: "the key table was rolled back: this process loaded a newer key of its tenant before",
                    });
                }
                Some(slot) => *slot = newest_of,
                None => {
                    if let Some(t) = tenant {
                        by_tenant.insert(t.to_owned(), newest_of);
                    }
                }
            }
        }
    }
    // No key record is ever deleted (shredding destroys, keeping the row): a tenant this
    // process loaded before whose records are gone was rolled back or deleted by hand.
    if let Some(seen) = seen.as_ref() {
        let by_tenant = &seen.0;
        let present: HashSet<&str> = parsed
            .iter()
            .filter_map(|p| p.r.tenant.as_deref())
            .collect();
        let gone = match scope {
            None => by_tenant
                .keys()
                .map(String::as_str)
                .find(|t| !present.contains(t)),
            Some(ts) => ts
                .iter()
                .map(TenantId::as_str)
                .find(|t| by_tenant.contains_key(*t) && !present.contains(t)),
        };
        if let Some(t) = gone {
            return Err(Error::Store(format!(
                "the key records of tenant {t} are gone, though this process loaded them before: the key table was rolled back or altered"
            )));
        }
    }
    Ok(())
}
