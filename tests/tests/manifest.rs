//! The key table's manifest (KEYTABLE.md §6, review 3 finding M3), on the three backends: a
//! database writer who puts back older copies of key records (a rotation undone, a shredded
//! tenant revived) is refused by a fresh process, naming the tenant; one who also puts back the
//! tenant's manifest row is refused by a full load; one who puts back the whole table is refused
//! where the deployment pins a minimum epoch. The first test shows the restore is one a load
//! without the manifest accepts.

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyRecord, KeyStore, encrypted_types_keys};
use encrypted_types::{Error, TenantId};
use encrypted_types_tests::keystore;

diesel::table! {
    /// The manifest, as a database writer sees it.
    encrypted_types_key_manifest (scope) {
        /// `tenant:<id>`, `none` or `deployment`.
        scope -> Text,
        /// The row's epoch.
        epoch -> BigInt,
        /// The group's digest, or the deployment's.
        digest -> Binary,
        /// The wrapping key whose MAC key made `mac`.
        mac_key_id -> BigInt,
        /// The row's MAC.
        mac -> Binary,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Insertable)]
#[diesel(table_name = encrypted_types_key_manifest)]
struct Row {
    scope: String,
    epoch: i64,
    digest: Vec<u8>,
    mac_key_id: i64,
    mac: Vec<u8>,
}

fn manifest_refuses(result: Result<impl std::fmt::Debug, Error>, scope: &str) {
    assert!(
        matches!(&result, Err(Error::Manifest { scope: s, .. }) if s == scope),
        "expected the manifest to refuse {scope}, got {result:?}"
    );
}

macro_rules! manifest_tests {
    ($backend:ident, $conn_ty:ty, $conn:expr) => {
        mod $backend {
            use super::*;

            type Conn = $conn_ty;

            fn records(conn: &mut Conn, tenant: &str) -> Vec<KeyRecord> {
                encrypted_types_keys::table
                    .filter(encrypted_types_keys::tenant.eq(tenant))
                    .order(encrypted_types_keys::key_id)
                    .load(conn)
                    .unwrap()
            }

            /// Puts `tenant`'s records back as `old` (the newer ones deleted), as a writer with
            /// the database's rights only can.
            fn restore(conn: &mut Conn, tenant: &str, old: &[KeyRecord]) {
                diesel::delete(
                    encrypted_types_keys::table.filter(encrypted_types_keys::tenant.eq(tenant)),
                )
                .execute(conn)
                .unwrap();
                for r in old {
                    diesel::insert_into(encrypted_types_keys::table)
                        .values(r.clone())
                        .execute(conn)
                        .unwrap();
                }
            }

            fn row(conn: &mut Conn, scope: &str) -> Row {
                encrypted_types_key_manifest::table
                    .filter(encrypted_types_key_manifest::scope.eq(scope))
                    .first(conn)
                    .unwrap()
            }

            fn put_row(conn: &mut Conn, r: &Row) {
                diesel::delete(
                    encrypted_types_key_manifest::table
                        .filter(encrypted_types_key_manifest::scope.eq(&r.scope)),
                )
                .execute(conn)
                .unwrap();
                diesel::insert_into(encrypted_types_key_manifest::table)
                    .values(r.clone())
                    .execute(conn)
                    .unwrap();
            }

            fn all_rows(conn: &mut Conn) -> Vec<Row> {
                encrypted_types_key_manifest::table
                    .order(encrypted_types_key_manifest::scope)
                    .load(conn)
                    .unwrap()
            }

            fn setup() -> (Conn, tempfile::TempDir, std::path::PathBuf) {
                let conn = $conn;
                let dir = tempfile::tempdir().unwrap();
                let kek = dir.path().join("dev.kek");
                LocalKek::create(&kek).unwrap();
                (conn, dir, kek)
            }

            fn store(kek: &std::path::Path) -> KeyStore<LocalKek> {
                KeyStore::new(LocalKek::open(kek).unwrap())
                    .with_destroy_grace(std::time::Duration::ZERO)
            }

            /// A rotation undone by putting the tenant's older records back: every fresh
            /// process refuses the table, naming the tenant, at a full load and at a load of
            /// that tenant, and a key-store write to the tenant refuses too. Without the
            /// manifest (deleted, loaded with the upgrade opt-in) the same table loads and
            /// seals under the retired key: the finding.
            #[test]
            fn a_rotation_undone_in_the_records_is_refused_naming_the_tenant() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, _dir, kek) = setup();
                let conn = &mut conn;
                let (a, b) = (TenantId::from("clinic-a"), TenantId::from("clinic-b"));
                let s = store(&kek);
                let first = s.create_tenant(conn, Some(&a)).unwrap().data;
                s.create_tenant(conn, Some(&b)).unwrap();
                let before = records(conn, "clinic-a");
                let second = s.rotate_data_key(conn, Some(&a)).unwrap();
                assert_ne!(first, second);
                restore(conn, "clinic-a", &before);

                manifest_refuses(store(&kek).load(conn), "tenant clinic-a");
                manifest_refuses(
                    store(&kek).load_tenants(conn, std::slice::from_ref(&a)),
                    "tenant clinic-a",
                );
                manifest_refuses(
                    store(&kek).rotate_data_key(conn, Some(&a)),
                    "tenant clinic-a",
                );
                // Another tenant's load is not held up by it.
                assert_eq!(
                    store(&kek)
                        .load_tenants(conn, std::slice::from_ref(&b))
                        .unwrap()
                        .1
                        .data_keys,
                    1
                );

                // What the manifest closes: the same records without it seal under the
                // retired key.
                diesel::delete(encrypted_types_key_manifest::table)
                    .execute(conn)
                    .unwrap();
                manifest_refuses(store(&kek).load(conn), "the deployment row");
                // A routine rewrap does not write a manifest for it either (review finding H1).
                manifest_refuses(
                    store(&kek).rewrap(conn, Default::default()),
                    "the deployment row",
                );
                manifest_refuses(store(&kek).load(conn), "the deployment row");
                let (keyring, _) = store(&kek).allow_unmanifested_table().load(conn).unwrap();
                assert_eq!(keyring.primary_key(Some(&a)).unwrap().id(), first);
            }

            /// A deployment row that no longer authenticates (edited by SQL) is refused; the
            /// status names it, and a rebuild from that reviewed status accepts the table.
            #[test]
            fn an_altered_deployment_row_is_refused_until_a_reviewed_rebuild() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, _dir, kek) = setup();
                let conn = &mut conn;
                let s = store(&kek);
                s.create_tenant(conn, Some(&TenantId::from("clinic-a")))
                    .unwrap();
                let mut d = row(conn, "deployment");
                d.epoch += 100;
                put_row(conn, &d);
                manifest_refuses(store(&kek).load(conn), "the deployment row");
                let status = store(&kek).manifest_status(conn).unwrap();
                assert_eq!(status.differing, ["the deployment row"]);
                let rebuilt = store(&kek).rebuild_manifest(conn, &status).unwrap();
                assert!(rebuilt.epoch.unwrap() > 100, "above the edited epoch too");
                assert_eq!(
                    store(&kek).load(conn).unwrap().1.manifest_epoch,
                    rebuilt.epoch
                );
                // A status read before a later change is refused, nothing written.
                s.rotate_data_key(conn, Some(&TenantId::from("clinic-a")))
                    .unwrap();
                let stale = store(&kek).manifest_status(conn).unwrap();
                let mut a = row(conn, "tenant:clinic-a");
                a.epoch += 1;
                put_row(conn, &a);
                let before = all_rows(conn);
                assert!(matches!(
                    store(&kek).rebuild_manifest(conn, &stale),
                    Err(Error::Store(_))
                ));
                assert_eq!(all_rows(conn), before);
            }

            /// A key table and manifest wiped: a store with a pinned epoch refuses to load it
            /// or to start a new deployment in it.
            #[test]
            fn a_wiped_table_is_not_new_to_a_pinned_store() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, _dir, kek) = setup();
                let conn = &mut conn;
                let s = store(&kek);
                s.create_tenant(conn, None).unwrap();
                let epoch = s.manifest_epoch(conn).unwrap().unwrap();
                diesel::delete(encrypted_types_keys::table)
                    .execute(conn)
                    .unwrap();
                diesel::delete(encrypted_types_key_manifest::table)
                    .execute(conn)
                    .unwrap();
                let pinned = store(&kek).with_min_epoch(epoch);
                manifest_refuses(pinned.load(conn), "the deployment row");
                manifest_refuses(pinned.create_tenant(conn, None), "the deployment row");
                assert!(
                    store(&kek).load(conn).is_ok(),
                    "an empty table, unpinned, is new"
                );
            }

            /// A shredded tenant revived from its older records is refused; so is a replaced
            /// blind-index root put back.
            #[test]
            fn a_shred_or_a_root_replacement_undone_is_refused() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, _dir, kek) = setup();
                let conn = &mut conn;
                let (a, b) = (TenantId::from("clinic-a"), TenantId::from("clinic-b"));
                let s = store(&kek);
                s.create_tenant(conn, Some(&a)).unwrap();
                s.create_tenant(conn, Some(&b)).unwrap();
                let live = records(conn, "clinic-b");
                s.shred_tenant(conn, &b, &[]).unwrap();
                restore(conn, "clinic-b", &live);
                manifest_refuses(store(&kek).load(conn), "tenant clinic-b");
                manifest_refuses(
                    store(&kek).load_tenants(conn, std::slice::from_ref(&b)),
                    "tenant clinic-b",
                );

                let roots = records(conn, "clinic-a");
                s.replace_blind_index_root(conn, Some(&a)).unwrap();
                restore(conn, "clinic-a", &roots);
                manifest_refuses(store(&kek).load_tenants(conn, &[a]), "tenant clinic-a");
            }

            /// The tenant's older records put back with its older manifest row: a load of that
            /// tenant cannot tell (its row and records agree), a full load can (the rows no
            /// longer add up to the deployment row), and `manifest_status` says so.
            #[test]
            fn a_rollback_with_its_manifest_row_is_refused_by_a_full_load() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, dir, kek) = setup();
                let conn = &mut conn;
                let a = TenantId::from("clinic-a");
                let s = store(&kek);
                s.create_tenant(conn, Some(&a)).unwrap();
                s.rotate_data_key(conn, Some(&a)).unwrap();
                let (old_records, old_row) =
                    (records(conn, "clinic-a"), row(conn, "tenant:clinic-a"));
                s.rotate_data_key(conn, Some(&a)).unwrap();
                restore(conn, "clinic-a", &old_records);
                put_row(conn, &old_row);

                manifest_refuses(store(&kek).load(conn), "the deployment row");
                assert_eq!(store(&kek).load_tenants(conn, &[a]).unwrap().1.data_keys, 2);
                let status = store(&kek).manifest_status(conn).unwrap();
                assert!(!status.adds_up, "{status:?}");
                // A rewrap to a new KEK does not fold the rollback into a new digest (review
                // finding H2): refused, nothing written.
                let new_kek = dir.path().join("new.kek");
                LocalKek::create(&new_kek).unwrap();
                let rows_before = all_rows(conn);
                let moving = KeyStore::new(LocalKek::open(&new_kek).unwrap())
                    .with_kek(LocalKek::open(&kek).unwrap());
                manifest_refuses(
                    moving.rewrap(conn, Default::default()),
                    "the deployment row",
                );
                assert_eq!(all_rows(conn), rows_before);
                manifest_refuses(store(&kek).load(conn), "the deployment row");
            }

            /// The whole key table and manifest put back from one older moment: a fresh
            /// process without a pin cannot tell; one pinned at the newer epoch refuses, as
            /// does the process that loaded the newer epoch. Every operation raised the epoch.
            #[test]
            fn a_whole_table_rollback_is_refused_by_the_pinned_epoch() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, _dir, kek) = setup();
                let conn = &mut conn;
                let a = TenantId::from("clinic-a");
                let s = store(&kek);
                s.create_tenant(conn, Some(&a)).unwrap();
                let e1 = s.manifest_epoch(conn).unwrap().unwrap();
                let (keys, rows) = (records(conn, "clinic-a"), all_rows(conn));
                s.rotate_data_key(conn, Some(&a)).unwrap();
                let e2 = s.manifest_epoch(conn).unwrap().unwrap();
                assert_eq!(e2, e1 + 1);
                let retired = records(conn, "clinic-a")
                    .into_iter()
                    .find(|r| r.state == "retired")
                    .unwrap();
                s.destroy_key(conn, (retired.key_id as u32).into(), &[])
                    .unwrap();
                let e3 = s.manifest_epoch(conn).unwrap().unwrap();
                assert_eq!(e3, e2 + 1);
                // This process loads the newest table.
                assert_eq!(s.load(conn).unwrap().1.manifest_epoch, Some(e3));

                restore(conn, "clinic-a", &keys);
                diesel::delete(encrypted_types_key_manifest::table)
                    .execute(conn)
                    .unwrap();
                for r in &rows {
                    put_row(conn, r);
                }
                assert_eq!(store(&kek).load(conn).unwrap().1.manifest_epoch, Some(e1));
                manifest_refuses(
                    store(&kek).with_min_epoch(e3).load(conn),
                    "the deployment row",
                );
                // `keys manifest` with the pin lists it, so a rebuild asks first.
                let status = store(&kek)
                    .with_min_epoch(e3)
                    .manifest_status(conn)
                    .unwrap();
                assert_eq!(status.differing, ["the deployment row"]);
                assert!(
                    store(&kek)
                        .manifest_status(conn)
                        .unwrap()
                        .differing
                        .is_empty()
                );
                // (Its generations refuse it first; the epoch would too.)
                let again = s.load(conn);
                assert!(
                    matches!(again, Err(Error::KeyRecord { .. } | Error::Manifest { .. })),
                    "{again:?}"
                );
            }

            /// A table whose manifest is missing (one from before 0.3) is refused until
            /// `rebuild_manifest`, which accepts it as it is, at an epoch above the old one; a
            /// rewrap to a new KEK keeps the manifest whole and moves it to the new wrapping
            /// key, so a store with the new KEK alone loads it.
            #[test]
            fn the_manifest_is_rebuilt_on_upgrade_and_follows_a_rewrap() {
                let _serial = encrypted_types_tests::serial();
                let (mut conn, dir, kek) = setup();
                let conn = &mut conn;
                let a = TenantId::from("clinic-a");
                let s = store(&kek);
                s.create_tenant(conn, None).unwrap();
                s.create_tenant(conn, Some(&a)).unwrap();
                s.rotate_data_key(conn, Some(&a)).unwrap();
                let old_epoch = s.manifest_epoch(conn).unwrap().unwrap();
                diesel::delete(encrypted_types_key_manifest::table)
                    .execute(conn)
                    .unwrap();
                // The operator's pin survives the lost manifest: the rebuild starts above it.
                let fresh = store(&kek).with_min_epoch(old_epoch);
                manifest_refuses(fresh.load(conn), "the deployment row");
                manifest_refuses(fresh.rotate_data_key(conn, Some(&a)), "the deployment row");
                let status = fresh.manifest_status(conn).unwrap();
                assert_eq!(status.epoch, None);
                assert_eq!(
                    status.differing,
                    ["tenant clinic-a", "the keys of no tenant"]
                );
                let rebuilt = fresh.rebuild_manifest(conn, &status).unwrap();
                assert_eq!(
                    rebuilt.differing,
                    ["tenant clinic-a", "the keys of no tenant"]
                );
                let epoch = rebuilt.epoch.unwrap();
                assert!(epoch > old_epoch, "{epoch} > {old_epoch}");
                let report = store(&kek).load(conn).unwrap().1;
                assert_eq!(report.manifest_epoch, Some(epoch));
                assert!(store(&kek).with_min_epoch(old_epoch).load(conn).is_ok());

                let new_kek = dir.path().join("new.kek");
                LocalKek::create(&new_kek).unwrap();
                let moving = KeyStore::new(LocalKek::open(&new_kek).unwrap())
                    .with_kek(LocalKek::open(&kek).unwrap());
                let r = moving.rewrap(conn, Default::default()).unwrap();
                assert!(r.finished, "{r:?}");
                let after = KeyStore::new(LocalKek::open(&new_kek).unwrap());
                let report = after.load(conn).unwrap().1;
                assert!(report.manifest_epoch.unwrap() > epoch);
                let status = after.manifest_status(conn).unwrap();
                assert!(status.differing.is_empty() && status.adds_up, "{status:?}");
                let w = i64::from(r.wrapping_key.get());
                assert!(all_rows(conn).iter().all(|row| row.mac_key_id == w));
            }
        }
    };
}

manifest_tests!(sqlite, SqliteConnection, keystore::sqlite());
manifest_tests!(postgres, PgConnection, keystore::pg());
manifest_tests!(mysql, MysqlConnection, keystore::mysql());
