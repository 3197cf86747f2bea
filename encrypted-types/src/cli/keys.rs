//! `keys ...`: the key table's life cycle.

use std::collections::HashMap;

use diesel::connection::LoadConnection;
use serde_json::json;

use super::{CliError, Outcome, confirm, out};
use crate::format::key::KeyId;
use crate::jobs::{Content, JobTable};
use crate::kek::{KekProvider, Purpose};
use crate::model::ModelInfo;
use crate::store::{KeyInfo, KeyState, KeyStore, RewrapOptions, adoption_review, list_keys};
use crate::tenant::TenantId;

/// `keys ...`
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum KeysCommand {
    /// Creates the key table (if needed) and the keys of values without a tenant.
    Init {
        /// Only the key table: every value belongs to a tenant (`keys create-tenant`).
        #[arg(long)]
        tenants_only: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Creates a tenant's data key and blind-index root key.
    CreateTenant {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every key: id, tenant, purpose, state, age, KEK reference and the stored values that
    /// name it (counted in SQL). Never key bytes.
    List {
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// New active data keys; the previous ones are retired (they still open). Then run
    /// `jobs rotate` to re-seal the values.
    Rotate {
        /// The tenants to rotate (repeatable); every tenant with an active data key if none.
        #[arg(long)]
        tenant: Vec<String>,
        /// Every tenant: the default for data keys; required (or `--tenant`) with
        /// `--blind-index`.
        #[arg(long, conflicts_with = "tenant")]
        all_tenants: bool,
        /// Replace the blind-index root keys instead (then run `jobs reindex`): after a
        /// compromise only, since every index must be recomputed. Needs `--tenant` or
        /// `--all-tenants`, and asks first. A tenant whose earlier replacement is not finished
        /// (its retired root not destroyed) is reported and left as it is, so a rerun
        /// completes the tenants an interrupted run left; the command then exits 3.
        #[arg(long)]
        blind_index: bool,
        /// Do not ask (required without a terminal) before replacing blind-index roots.
        #[arg(long)]
        yes: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-wraps every key under this store's KEK (a KEK rotation); no data value is touched.
    /// On a key table from before the hierarchy this adopts it: its active keys become the
    /// authenticated ones, so it lists them per tenant and purpose (flagging an active key
    /// older than a retired one) and asks first.
    Rewrap {
        /// Records per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Do not ask (required without a terminal) before adopting a table from before the
        /// hierarchy.
        #[arg(long)]
        yes: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroys a retired key that no stored value names.
    Destroy {
        /// The key id (`keys list`).
        #[arg(long)]
        key_id: u32,
        /// Do not ask (required without a terminal).
        #[arg(long)]
        yes: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compares the key table's manifest (`docs/KEYTABLE.md` §6) with its records; with
    /// `--rebuild`, writes the manifest of the records as they are: the upgrade step from 0.2,
    /// and the acceptance of a table that loads refuse for its manifest. Lists the groups it
    /// would accept as they are and asks first: a group listed there may have been rolled back.
    Manifest {
        /// Write the manifest of the records as they are.
        #[arg(long)]
        rebuild: bool,
        /// Do not ask (required without a terminal) before rebuilding.
        #[arg(long)]
        yes: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Crypto-shreds a tenant: destroys all its keys; its values can never be read again.
    ShredTenant {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// Do not ask (required without a terminal).
        #[arg(long)]
        yes: bool,
        /// Output as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn execute<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    cmd: &KeysCommand,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    let outcome = run(conn, store, models, cmd)?;
    // The epoch the command leaves, for the operator to pin (`--min-epoch`): on standard
    // error, so that `--json` output stays one document.
    if !matches!(cmd, KeysCommand::List { .. } | KeysCommand::Manifest { .. })
        && let Some(epoch) = store.manifest_epoch(conn)?
    {
        out::note(&format!(
            "key table epoch {epoch}: pin it with --min-epoch (ENCRYPTED_TYPES_MIN_EPOCH) to refuse an older copy of the table"
        ))?;
    }
    Ok(outcome)
}

fn run<C, P>(
    conn: &mut C,
    store: &KeyStore<P>,
    models: &[ModelInfo],
    cmd: &KeysCommand,
) -> Result<Outcome, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
    P: KekProvider,
{
    match cmd {
        KeysCommand::Init { tenants_only, json } => {
            let keys = list_keys(conn)?;
            let has_own = keys
                .iter()
                .any(|k| k.tenant.is_none() && k.purpose == Purpose::Data);
            let created = if *tenants_only || has_own {
                None
            } else {
                Some(store.create_tenant(conn, None)?)
            };
            if *json {
                out::json(&json!({
                    "created": created.map(|k| json!({"data": k.data.get(), "blind_index": k.blind_index.get()})),
                }))?;
            } else if let Some(k) = created {
                out::line(&format!(
                    "key table ready; created the keys of values without a tenant: data key {}, blind-index key {}",
                    k.data, k.blind_index
                ))?;
            } else {
                out::line("key table ready; no key created")?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::CreateTenant { tenant, json } => {
            let exists = list_keys(conn)?
                .iter()
                .any(|k| k.tenant.as_deref() == Some(tenant) && k.state != KeyState::Destroyed);
            if exists {
                return Err(CliError::Usage(format!(
                    "tenant {tenant} already has keys: `keys rotate --tenant {tenant}` replaces its data key"
                )));
            }
            let k = store.create_tenant(conn, Some(&TenantId::from(tenant.as_str())))?;
            if *json {
                out::json(
                    &json!({"tenant": tenant, "data": k.data.get(), "blind_index": k.blind_index.get()}),
                )?;
            } else {
                out::line(&format!(
                    "tenant {tenant}: data key {}, blind-index key {}",
                    k.data, k.blind_index
                ))?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::List { json } => {
            let keys = list_keys(conn)?;
            // The keys are listed before the application's migrations have run, too: a model
            // whose table does not exist yet holds no values, and says so.
            let missing: Vec<String> = crate::schema::check(conn, models)?
                .into_iter()
                .filter_map(|m| match m {
                    crate::schema::Mismatch::NoTable { table } => Some(table),
                    _ => None,
                })
                .collect();
            for table in &missing {
                out::note(&format!(
                    "table {table} does not exist (the application's migrations have not run \
                     here): none of its values are counted"
                ))?;
            }
            let present: Vec<ModelInfo> = models
                .iter()
                .filter(|m| !missing.iter().any(|t| *t == m.display_name()))
                .copied()
                .collect();
            let values = values_per_key(conn, &present)?;
            print_list(&keys, &values, *json)?;
            Ok(Outcome::Done)
        }
        KeysCommand::Rotate {
            tenant,
            all_tenants,
            blind_index,
            yes,
            json,
        } => {
            let purpose = if *blind_index {
                Purpose::BlindIndex
            } else {
                Purpose::Data
            };
            if *blind_index && tenant.is_empty() && !*all_tenants {
                return Err(CliError::Usage(
                    "keys rotate --blind-index replaces roots after a compromise and every index \
                     must then be recomputed: name the tenants (--tenant T) or pass --all-tenants"
                        .into(),
                ));
            }
            let keys = list_keys(conn)?;
            let mut tenants: Vec<Option<String>> = if tenant.is_empty() {
                keys.iter()
                    .filter(|k| k.purpose == purpose && k.state == KeyState::Active)
                    .map(|k| k.tenant.clone())
                    .collect()
            } else {
                tenant.iter().cloned().map(Some).collect()
            };
            // A replacement is under way while the tenant's retired root is not destroyed:
            // reported and left, so that a rerun after an interruption finishes the others.
            let mut under_way = Vec::new();
            if *blind_index {
                tenants.retain(|t| {
                    let busy = keys.iter().any(|k| {
                        k.purpose == Purpose::BlindIndex
                            && k.state == KeyState::Retired
                            && k.tenant == *t
                    });
                    if busy {
                        under_way.push(t.clone());
                    }
                    !busy
                });
                for t in &under_way {
                    let name = t.as_deref().unwrap_or("(no tenant)");
                    out::note(&format!(
                        "{name}: an earlier blind-index replacement is not finished (run `jobs \
                         reindex`, then destroy the retired root): left as it is"
                    ))?;
                }
                if !tenants.is_empty() {
                    confirm(
                        &format!(
                            "replace the blind-index root keys of {} tenant(s); every index of \
                             theirs must then be recomputed with `jobs reindex`",
                            tenants.len()
                        ),
                        "replace",
                        *yes,
                    )?;
                }
            }
            let mut done = Vec::new();
            for t in &tenants {
                let id = t.as_deref().map(TenantId::from);
                let new = if *blind_index {
                    store.replace_blind_index_root(conn, id.as_ref())?.0
                } else {
                    store.rotate_data_key(conn, id.as_ref())?
                };
                done.push((t.clone(), new));
                if !*json {
                    out::line(&format!(
                        "{}: new {} key {new}; the previous one is retired",
                        t.as_deref().unwrap_or("(no tenant)"),
                        purpose.as_str()
                    ))?;
                }
            }
            if *json {
                out::json(&json!({
                    "purpose": purpose.as_str(),
                    "rotated": done.iter().map(|(t, k)| json!({"tenant": t, "key_id": k.get()})).collect::<Vec<_>>(),
                    "under_way": under_way,
                }))?;
            } else {
                let next = if *blind_index {
                    "jobs reindex"
                } else {
                    "jobs rotate"
                };
                out::line(&format!(
                    "{} key(s) rotated; run `{next}` to move the stored values",
                    done.len()
                ))?;
            }
            // A tenant left as it was is not done: exit 3, so a script after a compromise
            // does not take the run for a full replacement.
            Ok(if under_way.is_empty() {
                Outcome::Done
            } else {
                Outcome::Incomplete
            })
        }
        KeysCommand::Rewrap { batch, yes, json } => {
            // Adoption authenticates whatever the table says is active: show it, ask first.
            let listed = list_keys(conn)?;
            let review = adoption_review(&listed);
            if !review.is_empty() {
                // With `--json`, standard output holds the JSON only: the list goes to
                // standard error, before the question.
                let show = |text: &str| -> std::io::Result<()> {
                    if *json {
                        use std::io::Write;
                        writeln!(std::io::stderr(), "{text}")
                    } else {
                        out::line(text)
                    }
                };
                show(
                    "adopting a key table from before the key hierarchy; these keys become authenticated as they are:",
                )?;
                for g in &review {
                    let ids = |v: &[KeyId]| {
                        v.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    show(&format!(
                        "  tenant {}, {}: active {}; retired {}{}",
                        g.tenant.as_deref().unwrap_or("(none)"),
                        g.purpose.as_str(),
                        ids(&g.active),
                        ids(&g.retired),
                        if g.active_older_than_retired {
                            "  ADVISORY: the active key is older than a retired one; confirm against the KMS's log of the wraps (docs/KEYS.md)"
                        } else {
                            ""
                        }
                    ))?;
                }
                let flagged = review
                    .iter()
                    .filter(|g| g.active_older_than_retired)
                    .count();
                confirm(
                    &format!(
                        "adopt the key table: {} groups, {flagged} flagged",
                        review.len()
                    ),
                    "adopt",
                    *yes,
                )?;
                // What was confirmed is what gets adopted: a table that changed while the
                // operator read it (minutes) is refused, leaving only the moment until
                // `rewrap`'s own transaction.
                if list_keys(conn)? != listed {
                    return Err(CliError::NotConfirmed(
                        "the key table changed while it was reviewed: run `keys rewrap` again"
                            .into(),
                    ));
                }
            }
            let r = store.rewrap(
                conn,
                RewrapOptions {
                    batch: (*batch).max(1),
                },
            )?;
            if *json {
                out::json(&json!({
                    "wrapping_key": r.wrapping_key.get(),
                    "rewrapped": r.rewrapped,
                    "reauthenticated": r.reauthenticated,
                    "conflicts": r.conflicts,
                    "destroyed_wrapping_keys": r.destroyed_wrapping_keys.iter().map(|k| k.get()).collect::<Vec<_>>(),
                    "finished": r.finished,
                    "adopted": review.iter().map(|g| json!({
                        "tenant": g.tenant,
                        "purpose": g.purpose.as_str(),
                        "active": g.active.iter().map(|k| k.get()).collect::<Vec<_>>(),
                        "retired": g.retired.iter().map(|k| k.get()).collect::<Vec<_>>(),
                        "active_older_than_retired": g.active_older_than_retired,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                out::line(&format!(
                    "re-wrapped {} keys under wrapping key {} ({} re-authenticated, {} conflicts); finished: {}",
                    r.rewrapped, r.wrapping_key, r.reauthenticated, r.conflicts, r.finished
                ))?;
            }
            Ok(if r.finished {
                Outcome::Done
            } else {
                Outcome::Incomplete
            })
        }
        KeysCommand::Destroy { key_id, yes, json } => {
            let id = KeyId::from(*key_id);
            confirm(&format!("destroy key {id}"), &id.to_string(), *yes)?;
            store.destroy_key(conn, id, models)?;
            if *json {
                out::json(&json!({"destroyed": id.get()}))?;
            } else {
                out::line(&format!("key {id} destroyed"))?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::Manifest { rebuild, yes, json } => {
            let status = store.manifest_status(conn)?;
            let clean = status.epoch.is_some() && status.differing.is_empty() && status.adds_up;
            let text = manifest_text(&status);
            if !*rebuild && *json {
                out::json(&manifest_json(&status, false))?;
            } else if *json {
                // Standard output holds the one JSON document: the review goes to standard
                // error, before the question.
                use std::io::Write as _;
                writeln!(std::io::stderr(), "{text}")?;
            } else {
                out::line(&text)?;
            }
            if !*rebuild {
                return Ok(if clean {
                    Outcome::Done
                } else {
                    Outcome::Findings
                });
            }
            if !clean {
                confirm(
                    &format!(
                        "accept the key table as it is ({} group(s) listed above{}); a group \
                         listed may have been rolled back by a database writer",
                        status.differing.len(),
                        if status.adds_up {
                            ""
                        } else {
                            ", rows that do not add up"
                        }
                    ),
                    "accept",
                    *yes,
                )?;
            }
            let rebuilt = store.rebuild_manifest(conn, &status)?;
            if *json {
                out::json(&manifest_json(&rebuilt, true))?;
            } else {
                out::line(&format!(
                    "manifest written: epoch {}, {} group(s) accepted as they are",
                    rebuilt.epoch.unwrap_or(0),
                    rebuilt.differing.len()
                ))?;
            }
            Ok(Outcome::Done)
        }
        KeysCommand::ShredTenant { tenant, yes, json } => {
            confirm(&format!("crypto-shred tenant {tenant}"), tenant, *yes)?;
            let r = store.shred_tenant(conn, &TenantId::from(tenant.as_str()), models)?;
            if *json {
                out::json(&json!({
                    "tenant": tenant,
                    "destroyed": r.keys.iter().map(|k| k.get()).collect::<Vec<_>>(),
                    "rows_unreadable": r.rows_unreadable,
                }))?;
            } else {
                out::line(&format!(
                    "tenant {tenant}: destroyed {} key(s); {} row(s) can never be read again",
                    r.keys.len(),
                    r.rows_unreadable
                ))?;
            }
            Ok(Outcome::Done)
        }
    }
}

/// Stored values per data key id, over every model ([`crate::jobs::inventory`]).
pub(super) fn values_per_key<C>(
    conn: &mut C,
    models: &[ModelInfo],
) -> Result<HashMap<KeyId, u64>, CliError>
where
    C: LoadConnection,
    C::Backend: JobTable,
{
    let mut per_key = HashMap::new();
    for e in crate::jobs::inventory(conn, models)? {
        if let Content::Sealed { key_id, .. } = e.content {
            *per_key.entry(key_id).or_default() += e.values;
        }
    }
    Ok(per_key)
}

fn print_list(keys: &[KeyInfo], values: &HashMap<KeyId, u64>, json: bool) -> Result<(), CliError> {
    let now = out::now();
    let age = |k: &KeyInfo| u64::try_from(now.saturating_sub(k.created_at)).unwrap_or(0);
    // Only data keys are named by stored values; the others show no count.
    let count = |k: &KeyInfo| {
        (k.purpose == Purpose::Data).then(|| values.get(&k.key_id).copied().unwrap_or(0))
    };
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "key_id": k.key_id.get(),
                    "tenant": k.tenant,
                    "purpose": k.purpose.as_str(),
                    "state": k.state.as_str(),
                    "age_secs": age(k),
                    "created_at": k.created_at,
                    "kek_ref": k.kek_ref,
                    "values": count(k),
                })
            })
            .collect();
        out::json(&json!({ "keys": rows }))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.to_string(),
                k.tenant.clone().unwrap_or_else(|| "-".into()),
                k.purpose.as_str().to_owned(),
                k.state.as_str().to_owned(),
                out::age(age(k)),
                k.kek_ref.clone(),
                count(k).map_or_else(|| "-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    out::table(
        &[
            ">key id", "tenant", "purpose", "state", ">age", "kek", ">values",
        ],
        &rows,
    )?;
    Ok(())
}

fn manifest_text(status: &crate::store::ManifestStatus) -> String {
    let mut text = match status.epoch {
        Some(e) => format!("key table epoch {e}"),
        None => "the key table has no manifest (run `keys manifest --rebuild`)".to_owned(),
    };
    if status.epoch.is_some() && !status.adds_up {
        text.push_str("; the manifest's rows do not add up to its deployment row");
    }
    for g in &status.differing {
        text.push_str(&format!("\n  {g}: differs from its key records"));
    }
    text
}

fn manifest_json(status: &crate::store::ManifestStatus, rebuilt: bool) -> serde_json::Value {
    json!({
        "epoch": status.epoch,
        "differing": status.differing,
        "adds_up": status.adds_up,
        "rebuilt": rebuilt,
    })
}
