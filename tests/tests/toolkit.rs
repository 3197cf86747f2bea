//! The operator's toolkit on every backend: the key list, the inventory counted in SQL from the
//! header bytes (checked against the stored bytes read back and parsed here), the job table's
//! status, and `cli::execute` end to end (rotate, re-seal, verify, a tampered value), sync and
//! async.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use encrypted_types::jobs::{Content, InventoryEntry};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types_tests::models::Patient;

fn store(dir: &tempfile::TempDir) -> KeyStore<LocalKek> {
    KeyStore::new(LocalKek::create(dir.path().join("t.kek")).unwrap())
}

/// Parses a stored header here, independently of the library: (suite, key id) or `None`.
fn header(bytes: &[u8]) -> Option<(u8, u32)> {
    match bytes {
        [1, suite @ (1..=3), a, b, c, d, ..] => {
            Some((*suite, u32::from_be_bytes([*a, *b, *c, *d])))
        }
        _ => None,
    }
}

/// The inventory as (column, tenant, content) → values, for comparing.
fn tally(entries: &[InventoryEntry]) -> BTreeMap<(&'static str, Option<String>, Content), u64> {
    entries
        .iter()
        .map(|e| ((e.column, e.tenant.clone(), e.content), e.values))
        .collect()
}

fn cli(args: &[&str]) -> encrypted_types::cli::Command {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Top {
        #[command(subcommand)]
        command: encrypted_types::cli::Command,
    }
    let mut all = vec!["toolkit"];
    all.extend_from_slice(args);
    Top::parse_from(all).command
}

macro_rules! toolkit_suite {
    ($connect:path) => {
        use super::*;
        use diesel::prelude::*;
        use encrypted_types::cli::{CliError, Outcome, execute};
        use encrypted_types::store::{KeyState, list_keys};
        use encrypted_types::{EncryptedModel, TenantId};
        use encrypted_types_tests::schema::et_patients;

        /// What the table holds, read back and parsed here: (column, tenant, content) → values.
        fn stored(conn: &mut _Conn) -> BTreeMap<(&'static str, Option<String>, Content), u64> {
            let rows: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = et_patients::table
                .select((et_patients::clinic_id, et_patients::name, et_patients::notes))
                .load(conn)
                .unwrap();
            let mut out = BTreeMap::new();
            for (tenant, name, notes) in rows {
                for (column, v) in [("name", Some(name)), ("notes", notes)] {
                    let Some(v) = v else { continue };
                    let content = match header(&v) {
                        Some((suite, key)) => Content::Sealed {
                            suite,
                            key_id: encrypted_types::KeyId::from(key),
                        },
                        None => Content::Unrecognized,
                    };
                    *out.entry((column, Some(tenant.to_string()), content))
                        .or_default() += 1;
                }
            }
            out
        }

        /// `keys manifest` reports the key table's epoch; with the manifest deleted it reports
        /// that (exit 4), a rotation is refused, and `--rebuild` writes nothing until it is
        /// confirmed; a rebuild by a store pinned at the old epoch starts above it.
        #[test]
        fn keys_manifest_reports_and_rebuilds_only_when_confirmed() {
            use diesel::connection::SimpleConnection;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            let models = [Patient::MODEL];
            store.create_tenant(conn, Some(&TenantId::from(1))).unwrap();
            let run = |conn: &mut _Conn, store: &KeyStore<LocalKek>, args: &[&str]| {
                execute(conn, store, &models, &cli(args))
            };
            assert_eq!(run(conn, &store, &["keys", "manifest"]).unwrap(), Outcome::Done);
            let before = store.manifest_epoch(conn).unwrap().unwrap();
            assert_eq!(
                run(conn, &store, &["keys", "rotate", "--tenant", "1"]).unwrap(),
                Outcome::Done
            );
            let epoch = store.manifest_epoch(conn).unwrap().unwrap();
            assert_eq!(epoch, before + 1, "a rotation raises the epoch");

            conn.batch_execute("DELETE FROM encrypted_types_key_manifest").unwrap();
            let fresh = KeyStore::new(LocalKek::open(dir.path().join("t.kek")).unwrap())
                .with_min_epoch(epoch);
            assert_eq!(run(conn, &fresh, &["keys", "manifest"]).unwrap(), Outcome::Findings);
            assert!(matches!(
                run(conn, &fresh, &["keys", "rotate", "--tenant", "1"]),
                Err(CliError::Library(encrypted_types::Error::Manifest { .. }))
            ));
            assert!(matches!(
                run(conn, &fresh, &["keys", "manifest", "--rebuild"]),
                Err(CliError::NotConfirmed(_))
            ));
            assert_eq!(fresh.manifest_epoch(conn).unwrap(), None, "nothing written unasked");
            assert_eq!(
                run(conn, &fresh, &["keys", "manifest", "--rebuild", "--yes", "--json"]).unwrap(),
                Outcome::Done
            );
            assert!(fresh.manifest_epoch(conn).unwrap().unwrap() > epoch);
            assert_eq!(run(conn, &fresh, &["keys", "manifest"]).unwrap(), Outcome::Done);
        }

        /// Replacing blind-index roots (after a compromise) names its scope and asks first; a
        /// rerun over every tenant after an interrupted one reports the tenant already
        /// mid-replacement and finishes the others, instead of stopping at it.
        #[test]
        fn blind_index_replacement_is_scoped_confirmed_and_resumable() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            let models = [Patient::MODEL];
            for t in [1_i64, 2, 3] {
                store.create_tenant(conn, Some(&TenantId::from(t))).unwrap();
            }
            let roots = |conn: &mut _Conn| -> Vec<(String, KeyState, u32)> {
                let mut r: Vec<_> = list_keys(conn)
                    .unwrap()
                    .into_iter()
                    .filter(|k| k.purpose.as_str() == "blind_index")
                    .map(|k| (k.tenant.unwrap(), k.state, k.key_id.get()))
                    .collect();
                r.sort_by_key(|k| (k.0.clone(), k.2));
                r
            };
            let before = roots(conn);
            let run = |conn: &mut _Conn, args: &[&str]| execute(conn, &store, &models, &cli(args));

            assert!(matches!(
                run(conn, &["keys", "rotate", "--blind-index"]),
                Err(CliError::Usage(_))
            ));
            assert!(matches!(
                run(conn, &["keys", "rotate", "--blind-index", "--all-tenants"]),
                Err(CliError::NotConfirmed(_))
            ));
            assert_eq!(roots(conn), before, "nothing replaced without a scope and a yes");

            // An interrupted run: tenant 1 was replaced, its reindex not done.
            assert_eq!(
                run(conn, &["keys", "rotate", "--blind-index", "--tenant", "1", "--yes"]).unwrap(),
                Outcome::Done
            );
            let first = roots(conn);
            let rerun = run(
                conn,
                &["keys", "rotate", "--blind-index", "--all-tenants", "--yes", "--json"],
            );
            assert_eq!(rerun.unwrap(), Outcome::Incomplete, "tenant 1 was left: exit 3");
            let after = roots(conn);
            let of = |r: &[(String, KeyState, u32)], t: &str, s: KeyState| -> Vec<u32> {
                r.iter().filter(|k| k.0 == t && k.1 == s).map(|k| k.2).collect()
            };
            assert_eq!(
                of(&after, "1", KeyState::Active),
                of(&first, "1", KeyState::Active),
                "tenant 1, mid-replacement, is left as it is"
            );
            for t in ["2", "3"] {
                assert_eq!(of(&after, t, KeyState::Retired), of(&before, t, KeyState::Active));
                assert_eq!(of(&after, t, KeyState::Active).len(), 1);
                assert_ne!(of(&after, t, KeyState::Active), of(&before, t, KeyState::Active));
            }
        }

        /// Two wraps under one KEK with one nonce (what a forked process could write before
        /// key wraps took their nonce from the OS): `reused_wrap_nonces` (which `check` runs) names both
        /// keys; a healthy table reports nothing and passes `check`.
        #[test]
        fn check_reports_key_wraps_that_share_a_nonce() {
            use encrypted_types::store::{encrypted_types_keys as k, reused_wrap_nonces};
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            let models = [Patient::MODEL];
            for t in [1_i64, 2] {
                store.create_tenant(conn, Some(&TenantId::from(t))).unwrap();
            }
            assert!(reused_wrap_nonces(conn).unwrap().is_empty());
            store.load_and_install(conn).unwrap();
            assert_eq!(
                execute(conn, &store, &models, &cli(&["check", "--max-key-age", "90d"])).unwrap(),
                Outcome::Done
            );
            // The data keys of tenants 1 and 2 are both wrapped under the deployment's wrapping
            // key: give the second wrap the first one's nonce.
            let data: Vec<(i64, String, Vec<u8>)> = k::table
                .filter(k::purpose.eq("data"))
                .order(k::key_id)
                .select((k::key_id, k::kek_ref, k::wrapped_key.assume_not_null()))
                .load(conn)
                .unwrap();
            assert_eq!(data.len(), 2);
            assert_eq!(data[0].1, data[1].1, "one wrapping key");
            let mut forged = data[0].2[..12].to_vec();
            forged.extend_from_slice(&data[1].2[12..]);
            diesel::update(k::table.find(data[1].0))
                .set(k::wrapped_key.eq(forged))
                .execute(conn)
                .unwrap();
            let reused = reused_wrap_nonces(conn).unwrap();
            assert_eq!(reused.len(), 1, "{reused:?}");
            assert_eq!(reused[0].kek_ref, data[0].1);
            let ids: Vec<i64> = reused[0].key_ids.iter().map(|k| i64::from(k.get())).collect();
            assert_eq!(ids, vec![data[0].0, data[1].0]);
        }

        /// Adopting a key table from before the hierarchy authenticates whatever it says is
        /// active: `keys rewrap` lists the groups, flags an active key older than a retired one
        /// (a re-activation's mark), and writes nothing until confirmed.
        #[test]
        fn adopting_a_legacy_table_shows_its_active_keys_and_asks_first() {
            use encrypted_types::kek::Purpose;
            use encrypted_types::store::{adoption_review, encrypted_types_keys as k};
            use encrypted_types_tests::keytable::legacy_record;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            // (id, tenant, purpose, state, created_at): tenant 2's active data key predates
            // its retired one.
            let keys = [
                (2001, "1", Purpose::Data, "retired", 100),
                (2002, "1", Purpose::Data, "active", 200),
                (2003, "1", Purpose::BlindIndex, "active", 100),
                (2011, "2", Purpose::Data, "active", 100),
                (2012, "2", Purpose::Data, "retired", 300),
                (2013, "2", Purpose::BlindIndex, "active", 100),
            ];
            for (id, tenant, purpose, state, created) in keys {
                let r = legacy_record(store.provider(), id, &TenantId::from(tenant), purpose, state, created);
                diesel::insert_into(k::table).values(&r).execute(conn).unwrap();
            }
            let review = adoption_review(&list_keys(conn).unwrap());
            let seen: Vec<(Option<&str>, &str, Vec<u32>, Vec<u32>, bool)> = review
                .iter()
                .map(|g| {
                    (
                        g.tenant.as_deref(),
                        g.purpose.as_str(),
                        g.active.iter().map(|k| k.get()).collect(),
                        g.retired.iter().map(|k| k.get()).collect(),
                        g.active_older_than_retired,
                    )
                })
                .collect();
            assert_eq!(
                seen,
                vec![
                    (Some("1"), "blind_index", vec![2003], vec![], false),
                    (Some("1"), "data", vec![2002], vec![2001], false),
                    (Some("2"), "blind_index", vec![2013], vec![], false),
                    (Some("2"), "data", vec![2011], vec![2012], true),
                ]
            );
            let wrapping = |conn: &mut _Conn| -> i64 {
                k::table.filter(k::purpose.eq("wrapping")).count().get_result(conn).unwrap()
            };
            let run = |conn: &mut _Conn, args: &[&str]| execute(conn, &store, &[], &cli(args));
            assert!(matches!(
                run(conn, &["keys", "rewrap", "--json"]),
                Err(CliError::NotConfirmed(_))
            ));
            assert_eq!(wrapping(conn), 0, "nothing adopted without confirmation");
            assert!(store.load(conn).is_err(), "still a table from before the hierarchy");
            assert_eq!(run(conn, &["keys", "rewrap", "--yes", "--json"]).unwrap(), Outcome::Done);
            assert_eq!(wrapping(conn), 1);
            assert!(adoption_review(&list_keys(conn).unwrap()).is_empty());
            let (_, report) = store.load(conn).unwrap();
            assert_eq!((report.data_keys, report.blind_index_keys), (4, 2));
            // An authenticated table is re-wrapped (a KEK rotation) without a question.
            assert_eq!(run(conn, &["keys", "rewrap", "--json"]).unwrap(), Outcome::Done);
        }

        /// `schema --check` passes on the tables the tests create, and `index-leakage` exits 4
        /// exactly when the library's own report finds an index to re-size.
        #[test]
        fn schema_check_and_index_leakage_commands_report_what_the_library_finds() {
            use encrypted_types::index::IndexVerdict;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            let models = [Patient::MODEL];
            assert_eq!(
                execute(conn, &store, &models, &cli(&["schema", "--check"])).unwrap(),
                Outcome::Done
            );
            assert!(encrypted_types::schema::check(conn, &models).unwrap().is_empty());

            for t in [1_i64, 2] {
                store.create_tenant(conn, Some(&TenantId::from(t))).unwrap();
            }
            store.load_and_install(conn).unwrap();
            let patients: Vec<Patient> = (0..40)
                .map(|i| Patient::sample(9_100 + i, 1 + i64::from(i % 2), &format!("p{i}@example.org"), &format!("{:09}", i * 7)))
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&patients))
                .execute(conn)
                .unwrap();
            let report = encrypted_types::jobs::index_leakage(conn, &Patient::MODEL).unwrap();
            let resize = report.iter().filter(|l| l.verdict != IndexVerdict::Ok).count();
            assert!(resize > 0, "a full-length email index over 20 rows per tenant leaks more: {report:?}");
            assert_eq!(
                execute(conn, &store, &models, &cli(&["index-leakage", "--json"])).unwrap(),
                Outcome::Findings
            );
        }

        #[test]
        fn keys_inventory_status_and_execute_agree_with_the_table() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect();
            let models = [Patient::MODEL];
            for t in [1_i64, 2] {
                store.create_tenant(conn, Some(&TenantId::from(t))).unwrap();
            }
            store.load_and_install(conn).unwrap();
            let mut rows = Patient::several(6, "toolkit");
            rows[0].notes = None;
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&rows))
                .execute(conn)
                .unwrap();
            // Plaintext written around the model into one row's notes.
            diesel::update(et_patients::table.find(rows[1].id))
                .set(et_patients::notes.eq(b"written around the model".to_vec()))
                .execute(conn)
                .unwrap();

            let keys = list_keys(conn).unwrap();
            // Two tenants' data and blind-index keys, and the deployment's wrapping key.
            assert_eq!(keys.len(), 5, "{keys:?}");
            let inv = encrypted_types::jobs::inventory(conn, &models).unwrap();
            let only = |inv: &[InventoryEntry]| -> BTreeMap<_, _> {
                tally(inv)
                    .into_iter()
                    .filter(|((c, ..), _)| ["name", "notes"].contains(c))
                    .collect()
            };
            assert_eq!(only(&inv), stored(conn));
            assert!(
                inv.iter().any(|e| e.content == Content::Unrecognized
                    && e.column == "notes"
                    && e.values == 1),
                "{inv:?}"
            );
            // Every column is counted: 6 rows x 4 required columns, notes of 5, phone of none.
            let total: u64 = inv.iter().map(|e| e.values).sum();
            assert_eq!(total, 6 * 4 + 5);

            // Through the command line: rotate tenant 1, re-seal, then nothing names the
            // retired key; verify finds the planted plaintext.
            let old: Vec<_> = keys
                .iter()
                .filter(|k| k.tenant.as_deref() == Some("1") && k.purpose.as_str() == "data")
                .map(|k| k.key_id)
                .collect();
            let run = |conn: &mut _Conn, args: &[&str]| {
                execute(conn, &store, &models, &cli(args)).unwrap()
            };
            assert_eq!(run(conn, &["keys", "rotate", "--tenant", "1"]), Outcome::Done);
            // Tenant 1's three rows: 4 required values each and two notes. The planted
            // plaintext names no key: not the rotation's business. One batch, then the rest.
            let job = ["jobs", "rotate", "--job", "toolkit-rotate", "--batch", "2"];
            let mut once = job.to_vec();
            once.extend(["--max-batches", "1"]);
            assert_eq!(run(conn, &once), Outcome::Incomplete, "stopped after one batch");
            assert_eq!(run(conn, &job), Outcome::Done);
            let after = list_keys(conn).unwrap();
            let retired: Vec<_> = after
                .iter()
                .filter(|k| k.state == KeyState::Retired)
                .map(|k| k.key_id)
                .collect();
            assert_eq!(retired, old);
            let inv = encrypted_types::jobs::inventory(conn, &models).unwrap();
            assert_eq!(only(&inv), stored(conn));
            assert!(
                inv.iter().all(|e| !matches!(e.content,
                    Content::Sealed { key_id, .. } if key_id == old[0])),
                "{inv:?}"
            );
            let status = encrypted_types::jobs::status(conn).unwrap();
            let job = status.iter().find(|j| j.job == "toolkit-rotate").unwrap();
            assert_eq!((job.operation.as_str(), job.units), ("rotate", 6));
            assert_eq!(job.rows_done, 14);
            assert!(job.complete());
            assert_eq!(run(conn, &["verify"]), Outcome::Findings);
            // Once the planted value is gone, verify passes; the same job again has nothing to
            // do and writes nothing.
            diesel::update(et_patients::table.find(rows[1].id))
                .set(et_patients::notes.eq(None::<Vec<u8>>))
                .execute(conn)
                .unwrap();
            assert_eq!(
                run(conn, &["jobs", "rotate", "--job", "toolkit-rotate"]),
                Outcome::Done
            );
            let again = encrypted_types::jobs::status(conn).unwrap();
            let again = again.iter().find(|j| j.job == "toolkit-rotate").unwrap();
            assert_eq!(again.rows_done, 14);
            assert_eq!(run(conn, &["verify", "--json"]), Outcome::Done);
            assert_eq!(
                run(conn, &["check", "--max-key-age", "90d"]),
                Outcome::Done
            );
            // Destroying needs --yes without a terminal (the test's stdin is not one), and the
            // library refuses the tenant's active key whatever the flag.
            let active = after
                .iter()
                .find(|k| {
                    k.state == KeyState::Active
                        && k.tenant.as_deref() == Some("1")
                        && k.purpose.as_str() == "data"
                })
                .unwrap()
                .key_id;
            let id = active.to_string();
            let destroy = |conn: &mut _Conn, yes: bool| {
                let mut args = vec!["keys", "destroy", "--key-id", id.as_str()];
                if yes {
                    args.push("--yes");
                }
                execute(conn, &store, &models, &cli(&args))
            };
            assert!(matches!(destroy(conn, false), Err(CliError::NotConfirmed(_))));
            assert!(matches!(
                destroy(conn, true),
                Err(CliError::Library(encrypted_types::Error::NotDestroyable { key_id, .. })) if key_id == active
            ));
            let still = list_keys(conn).unwrap();
            assert!(still.iter().any(|k| k.key_id == active && k.state == KeyState::Active));

            // Default job names follow the target: a second rotation (new retired keys) is a new
            // job, not a mismatch with the first; run again, it is found finished.
            assert_eq!(run(conn, &["keys", "rotate", "--tenant", "2"]), Outcome::Done);
            assert_eq!(run(conn, &["jobs", "rotate"]), Outcome::Done);
            assert_eq!(run(conn, &["keys", "rotate", "--tenant", "1"]), Outcome::Done);
            assert_eq!(run(conn, &["jobs", "rotate"]), Outcome::Done);
            assert_eq!(run(conn, &["jobs", "rotate"]), Outcome::Done);
            let names: Vec<String> = encrypted_types::jobs::status(conn)
                .unwrap()
                .into_iter()
                .map(|j| j.job)
                .filter(|j| j.starts_with("rotate-et_patients-"))
                .collect();
            assert_eq!(names.len(), 2, "{names:?}");
            assert_eq!(
                encrypted_types::jobs::inventory(conn, &models)
                    .unwrap()
                    .iter()
                    .filter(|e| matches!(e.content, Content::Sealed { key_id, .. }
                        if still.iter().any(|k| k.key_id == key_id && k.state == KeyState::Active)))
                    .count(),
                0,
                "every value moved off the keys active before the last two rotations"
            );
        }
    };
}

mod sqlite {
    type _Conn = SqliteConnection;
    toolkit_suite!(encrypted_types_tests::keystore::sqlite);
}
mod postgres {
    type _Conn = PgConnection;
    toolkit_suite!(encrypted_types_tests::keystore::pg);
}
mod mysql {
    type _Conn = MysqlConnection;
    toolkit_suite!(encrypted_types_tests::keystore::mysql);
}

macro_rules! async_toolkit {
    ($connect:path) => {
        use super::*;
        use diesel_async::RunQueryDsl;
        use encrypted_types::{EncryptedModel, TenantId};
        use encrypted_types_tests::schema::et_patients;

        #[test]
        fn inventory_status_and_keys_async() {
            // Serialized with the sync suite, whose transaction holds the key table's rows;
            // the guard is held outside the future.
            let _g = encrypted_types_tests::serial();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(body());
        }

        async fn body() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(&dir);
            let conn = &mut $connect().await;
            for t in [1_i64, 2] {
                store
                    .create_tenant_async(conn, Some(&TenantId::from(t)))
                    .await
                    .unwrap();
            }
            store.load_and_install_async(conn).await.unwrap();
            for p in Patient::several(2, "toolkit-async") {
                diesel::insert_into(et_patients::table)
                    .values(&p)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            let keys = encrypted_types::store::list_keys_async(conn).await.unwrap();
            let data = keys
                .iter()
                .find(|k| k.purpose.as_str() == "data" && k.tenant.as_deref() == Some("1"))
                .unwrap()
                .key_id;
            let inv = encrypted_types::jobs::inventory_async(conn, &[Patient::MODEL])
                .await
                .unwrap();
            // One row per clinic, five values each (name, email, SSN, date of birth, notes):
            // clinic 1's under its data key, tagged with its tenant.
            let on_key: Vec<(Option<String>, u64)> = inv
                .iter()
                .filter(|e| matches!(e.content, Content::Sealed { key_id, .. } if key_id == data))
                .map(|e| (e.tenant.clone(), e.values))
                .collect();
            assert_eq!(on_key, vec![(Some("1".to_owned()), 1); 5], "{inv:?}");
            assert_eq!(inv.iter().map(|e| e.values).sum::<u64>(), 10, "{inv:?}");
            // A reindex, then the job table's record of it: one unit per blind index, all done.
            let report = encrypted_types::jobs::reindex_async(
                conn,
                &Patient::MODEL,
                "toolkit-async-reindex",
                &encrypted_types::jobs::JobOptions::default(),
                |_| {},
            )
            .await
            .unwrap();
            assert!(report.finished);
            let status = encrypted_types::jobs::status_async(conn).await.unwrap();
            let job = status
                .iter()
                .find(|j| j.job == "toolkit-async-reindex")
                .unwrap();
            assert_eq!((job.units, job.done, job.leased), (3, 3, 0), "{job:?}");
            assert_eq!(job.operation, "reindex");
        }
    };
}

mod async_sqlite {
    async_toolkit!(encrypted_types_tests::keystore::async_sqlite);
}
mod async_postgres {
    async_toolkit!(encrypted_types_tests::keystore::async_pg);
}
mod async_mysql {
    async_toolkit!(encrypted_types_tests::keystore::async_mysql);
}

/// `schema --check` names drift: a dropped tenant-leading index, then a missing table. (SQLite:
/// the DDL would end the MySQL test's transaction.)
#[test]
fn schema_check_names_a_dropped_index_and_a_missing_table() {
    use diesel::connection::SimpleConnection;
    use encrypted_types::EncryptedModel;
    use encrypted_types::cli::{Outcome, execute};
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let conn = &mut encrypted_types_tests::keystore::sqlite();
    let models = [Patient::MODEL];
    let check =
        |conn: &mut _| execute(conn, &store, &models, &cli(&["schema", "--check"])).unwrap();
    assert_eq!(check(conn), Outcome::Done);
    conn.batch_execute("DROP INDEX et_patients_email").unwrap();
    assert_eq!(check(conn), Outcome::Findings);
    let found = encrypted_types::schema::check(conn, &models).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].to_string().contains("email_bidx"), "{}", found[0]);
    conn.batch_execute("DROP TABLE et_patients").unwrap();
    assert_eq!(check(conn), Outcome::Findings);
    assert_eq!(
        encrypted_types::schema::check(conn, &models).unwrap()[0].to_string(),
        "table et_patients does not exist"
    );
}
