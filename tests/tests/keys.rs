//! The key hierarchy: the local KEK file, wrapped keys bound to their context, loading with
//! self-tests, tenants, rotation and crypto-shredding on every backend, and audit output that
//! never holds plaintext or key bytes.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Mutex;

use encrypted_types::kek::local::LocalKek;
use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
use encrypted_types::{Error, KeyId, KeyMaterial, TenantId};

fn kek(dir: &tempfile::TempDir) -> LocalKek {
    LocalKek::create(dir.path().join("test.kek")).unwrap()
}

/// The KEK [`kek`] created, opened again (a second store over the same table).
fn kek_at(dir: &tempfile::TempDir) -> LocalKek {
    LocalKek::open(dir.path().join("test.kek")).unwrap()
}

#[test]
fn the_local_kek_file_is_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.kek");
    assert_eq!(
        LocalKek::open(&path).err(),
        Some(Error::KekFile {
            kek: path.display().to_string(),
            reason: "no such file; opening never creates a KEK (keys wrapped by a lost KEK cannot \
                     be unwrapped by a new one): restore the file, or create it once with `keys \
                     init` (LocalKek::create)"
        })
    );
    assert!(!path.exists(), "opening never creates a KEK");
    LocalKek::create(&path).unwrap();
    assert!(LocalKek::open(&path).is_ok());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        matches!(LocalKek::create(&path), Err(Error::KekFile { .. })),
        "create must not overwrite"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        LocalKek::open(&path).err(),
        Some(Error::KekFile {
            kek: path.display().to_string(),
            reason: "the KEK file is accessible to group or others; chmod 600 it"
        })
    );
    let write = |p: &std::path::Path, bytes: &[u8]| {
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let short = dir.path().join("short.kek");
    write(&short, &[7; 31]);
    assert_eq!(
        LocalKek::open(&short).err(),
        Some(Error::KekFile {
            kek: short.display().to_string(),
            reason: "the KEK file must hold exactly 32 bytes"
        })
    );
    let zeros = dir.path().join("zeros.kek");
    write(&zeros, &[0; 32]);
    assert_eq!(
        LocalKek::open(&zeros).err(),
        Some(Error::KekFile {
            kek: zeros.display().to_string(),
            reason: "the KEK file is all zeros"
        })
    );
}

#[test]
fn a_wrapped_key_opens_only_in_its_own_context() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek(&dir);
    let a = TenantId::from("a");
    let b = TenantId::from("b");
    let ctx = WrapContext {
        tenant: Some(&a),
        purpose: Purpose::Data,
        key_id: KeyId::from(5),
    };
    let dek = KeyMaterial::generate().unwrap();
    let wrapped = kek.wrap(&ctx, &dek).unwrap();
    assert_eq!(kek.unwrap(&ctx, &wrapped).unwrap().expose(), dek.expose());
    let unwrap_err = Some(Error::KeyUnwrap {
        key_id: KeyId::from(5),
    });
    for other in [
        WrapContext {
            tenant: Some(&b),
            ..ctx
        },
        WrapContext {
            tenant: None,
            ..ctx
        },
        WrapContext {
            purpose: Purpose::BlindIndex,
            ..ctx
        },
    ] {
        assert_eq!(kek.unwrap(&other, &wrapped).err(), unwrap_err);
    }
    assert_eq!(
        kek.unwrap(
            &WrapContext {
                key_id: KeyId::from(6),
                ..ctx
            },
            &wrapped
        )
        .err(),
        Some(Error::KeyUnwrap {
            key_id: KeyId::from(6)
        })
    );
    for i in 0..wrapped.len() * 8 {
        let mut t = wrapped.clone();
        t[i / 8] ^= 1 << (i % 8);
        assert_eq!(kek.unwrap(&ctx, &t).err(), unwrap_err, "bit {i}");
    }
    assert_eq!(kek.unwrap(&ctx, &wrapped[..40]).err(), unwrap_err);
    // Another KEK file cannot unwrap it.
    let other_dir = tempfile::tempdir().unwrap();
    assert_eq!(
        self::kek(&other_dir).unwrap(&ctx, &wrapped).err(),
        unwrap_err
    );
}

macro_rules! store_suite {
    ($connect:path) => {
        use diesel::prelude::*;
        use encrypted_types::store::{KeyStore, encrypted_types_keys};
        use encrypted_types::{Error, KeyId, TenantId};
        use encrypted_types_tests::models::Patient;
        use encrypted_types_tests::schema::et_patients;
        use encrypted_types_tests::{lib_error, next_id};

        use super::*;

        #[test]
        fn tenants_load_self_test_and_shred() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let one = store.create_tenant(conn, Some(&"1".into())).unwrap();
            let two = store.create_tenant(conn, Some(&"2".into())).unwrap();
            assert!(
                store.create_tenant(conn, Some(&"1".into())).is_err(),
                "a tenant is created once"
            );

            // Loading unwraps each key once and installs them: the tenants' rows can be written.
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(
                (report.data_keys, report.blind_index_keys, report.destroyed),
                (2, 2, 0)
            );
            let a: Vec<Patient> = (0..5)
                .map(|i| Patient::sample(next_id(), 1, &format!("a{i}@x.org"), "111"))
                .collect();
            let b: Vec<Patient> = (0..3)
                .map(|i| Patient::sample(next_id(), 2, &format!("b{i}@x.org"), "222"))
                .collect();
            for p in a.iter().chain(&b) {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            let header: Vec<u8> = et_patients::table
                .find(a[0].id)
                .select(et_patients::name)
                .first(conn)
                .unwrap();
            assert_eq!(&header[2..6], &one.data.get().to_be_bytes());

            // Shred tenant 1: its keys are destroyed, its rows counted...
            let shred = store
                .shred_tenant(
                    conn,
                    &TenantId::from("1"),
                    &[<Patient as encrypted_types::EncryptedModel>::MODEL],
                )
                .unwrap();
            let mut destroyed = shred.keys.clone();
            destroyed.sort();
            let mut expected = vec![one.data, one.blind_index];
            expected.sort();
            assert_eq!(destroyed, expected);
            assert_eq!(shred.rows_unreadable, 5);
            let wrapped: Vec<Option<Vec<u8>>> = encrypted_types_keys::table
                .filter(encrypted_types_keys::tenant.eq("1"))
                .select(encrypted_types_keys::wrapped_key)
                .load(conn)
                .unwrap();
            assert!(wrapped.iter().all(Option::is_none), "wrapped bytes erased");

            // ...this process stops opening them at once, before any reload...
            for p in &a {
                let err = et_patients::table.find(p.id).select(Patient::as_select()).first::<Patient>(conn).unwrap_err();
                assert_eq!(lib_error(&err), Some(&Error::KeyDestroyed(one.data)), "{err}");
            }
            let late = Patient::sample(next_id(), 1, "late@x.org", "1");
            let err = diesel::insert_into(et_patients::table).values(&late).execute(conn).unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::TenantShredded { tenant: "1".into() }), "{err}");
            // ...and after a reload its rows fail with KeyDestroyed while tenant 2's still open.
            let report = store.load_and_install(conn).unwrap();
            assert_eq!((report.data_keys, report.destroyed), (1, 2));
            for p in &a {
                let err = et_patients::table
                    .find(p.id)
                    .select(Patient::as_select())
                    .first::<Patient>(conn)
                    .unwrap_err();
                assert_eq!(
                    lib_error(&err),
                    Some(&Error::KeyDestroyed(one.data)),
                    "{err}"
                );
            }
            for p in &b {
                let back: Patient = et_patients::table
                    .find(p.id)
                    .select(Patient::as_select())
                    .first(conn)
                    .unwrap();
                assert_eq!(&back, p);
            }
            assert_eq!(
                Patient::find_by_email(conn, &2, "B0@X.org").unwrap(),
                vec![b[0].clone()]
            );
            // A fresh load knows tenant 1 as shredded: its writes and lookups say so.
            let err = diesel::insert_into(et_patients::table).values(&late).execute(conn).unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::TenantShredded { tenant: "1".into() }), "{err}");
            let err = Patient::find_by_email(conn, &1, "a0@x.org").unwrap_err();
            assert!(err.to_string().contains("tenant 1 is crypto-shredded"), "{err}");
            assert_eq!(
                two.data,
                KeyId::from(u32::from_be_bytes(
                    et_patients::table
                        .find(b[0].id)
                        .select(et_patients::email)
                        .first::<Vec<u8>>(conn)
                        .unwrap()[2..6]
                        .try_into()
                        .unwrap()
                ))
            );
        }

        #[test]
        fn rotation_adds_a_primary_and_old_values_still_open() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let first = store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let old = Patient::sample(next_id(), 1, "old@x.org", "1");
            diesel::insert_into(et_patients::table)
                .values(&old)
                .execute(conn)
                .unwrap();

            let new_key = store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            assert_ne!(new_key, first.data);
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(report.data_keys, 3, "the retired key stays loaded");
            let new = Patient::sample(next_id(), 1, "new@x.org", "1");
            diesel::insert_into(et_patients::table)
                .values(&new)
                .execute(conn)
                .unwrap();
            let key_of = |conn: &mut _, id| -> Vec<u8> {
                et_patients::table
                    .find(id)
                    .select(et_patients::name)
                    .first::<Vec<u8>>(conn)
                    .unwrap()[2..6]
                    .to_vec()
            };
            assert_eq!(key_of(conn, old.id), first.data.get().to_be_bytes());
            assert_eq!(key_of(conn, new.id), new_key.get().to_be_bytes());
            assert_eq!(
                Patient::find_by_email(conn, &1, "old@x.org").unwrap(),
                vec![old]
            );
            assert_eq!(
                Patient::find_by_email(conn, &1, "new@x.org").unwrap(),
                vec![new]
            );
        }

        /// A process that stopped polling refuses to seal once its keyring is past the sealing
        /// age (it could be sealing under a key another process retired), opens still, and
        /// seals again after a poll that finds the table unchanged; a poll after a rotation
        /// reloads. A key retired within the destroy grace period is not destroyed, even with
        /// no row on it; after the period (set back in the table here) it is.
        #[test]
        fn a_keyring_past_its_sealing_age_refuses_to_seal_and_a_fresh_retirement_is_not_destroyed() {
            use encrypted_types::EncryptedModel;
            use std::time::Duration;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir)).with_seal_max_age(Duration::from_secs(1));
            let conn = &mut $connect();
            let first = store.create_tenant(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            assert!(!store.refresh(conn).unwrap(), "unchanged: nothing reloaded");
            let old = Patient::sample(next_id(), 1, "lag@x.org", "1");
            diesel::insert_into(et_patients::table)
                .values(&old)
                .execute(conn)
                .unwrap();

            std::thread::sleep(Duration::from_millis(1_200));
            let late = Patient::sample(next_id(), 1, "late@x.org", "1");
            let e = diesel::insert_into(et_patients::table)
                .values(&late)
                .execute(conn)
                .unwrap_err();
            assert!(
                matches!(lib_error(&e), Some(Error::StaleKeyring { max_secs: 1, .. })),
                "{e}"
            );
            // Reading is never refused.
            assert_eq!(
                et_patients::table
                    .find(old.id)
                    .select(Patient::as_select())
                    .first::<Patient>(conn)
                    .unwrap(),
                old
            );
            // A poll that finds the table unchanged lets it seal again.
            assert!(!store.refresh(conn).unwrap());
            diesel::insert_into(et_patients::table)
                .values(&late)
                .execute(conn)
                .unwrap();

            // Another process rotates; this one's poll reloads.
            let other = KeyStore::new(LocalKek::open(dir.path().join("test.kek")).unwrap());
            let new_key = other.rotate_data_key(conn, Some(&"1".into())).unwrap();
            assert!(store.refresh(conn).unwrap(), "changed: reloaded");
            let key_of = |conn: &mut _, id| -> Vec<u8> {
                et_patients::table
                    .find(id)
                    .select(et_patients::name)
                    .first::<Vec<u8>>(conn)
                    .unwrap()[2..6]
                    .to_vec()
            };
            let newest = Patient::sample(next_id(), 1, "newest@x.org", "1");
            diesel::insert_into(et_patients::table)
                .values(&newest)
                .execute(conn)
                .unwrap();
            assert_eq!(key_of(conn, newest.id), new_key.get().to_be_bytes());

            // The old key, with its rows moved off it, is retired only just now: refused by the
            // default grace period (a day) and by this store's (1 s + 5 min).
            diesel::delete(et_patients::table.filter(et_patients::id.eq_any([old.id, late.id])))
                .execute(conn)
                .unwrap();
            for s in [&other, &store] {
                let e = s.destroy_key(conn, first.data, &[Patient::MODEL]).unwrap_err();
                assert!(matches!(e, Error::DestroyTooSoon { key_id, .. } if key_id == first.data), "{e}");
            }
            let state = |conn: &mut _| -> String {
                encrypted_types_keys::table
                    .find(i64::from(first.data.get()))
                    .select(encrypted_types_keys::state)
                    .first(conn)
                    .unwrap()
            };
            assert_eq!(state(conn), "retired");
            // A database writer sets the retirement six minutes back to get it destroyed early:
            // the timestamp is under the record's MAC, so the record no longer authenticates.
            let set_back = |conn: &mut _, by: i64| {
                diesel::update(encrypted_types_keys::table.find(i64::from(first.data.get())))
                    .set(encrypted_types_keys::state_changed_at.eq(encrypted_types_keys::state_changed_at - by))
                    .execute(conn)
                    .unwrap();
            };
            set_back(conn, 360);
            let e = store.destroy_key(conn, first.data, &[Patient::MODEL]).unwrap_err();
            assert!(matches!(e, Error::KeyRecord { key_id, .. } if key_id == first.data), "{e}");
            assert_eq!(state(conn), "retired");
            // As recorded, with a store told every process reloaded (no grace): destroyed.
            set_back(conn, -360);
            let now = KeyStore::new(kek_at(&dir)).with_destroy_grace(Duration::ZERO);
            now.destroy_key(conn, first.data, &[Patient::MODEL]).unwrap();
            assert_eq!(state(conn), "destroyed");
        }

        /// A key made to look young by one UPDATE of its timestamp (which silenced the key-age
        /// alarm while timestamps were outside the record MAC): the load refuses the record,
        /// naming it, and the authenticated listing `check` reads refuses it too.
        #[test]
        fn a_key_timestamp_changed_in_the_database_fails_the_load_naming_the_key() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let keys = store.create_tenant(conn, Some(&"t".into())).unwrap();
            assert!(store.load(conn).is_ok());
            let listed = store.verified_keys(conn).unwrap();
            assert_eq!(listed.len(), 3, "wrapping, data and blind-index keys");
            assert!(listed.iter().all(|k| k.timestamps_authenticated), "{listed:?}");
            assert!(
                encrypted_types::store::list_keys(conn).unwrap().iter().all(|k| !k.timestamps_authenticated),
                "list_keys authenticates nothing"
            );
            for column in ["created_at", "state_changed_at"] {
                let id = i64::from(keys.data.get());
                let younger = |conn: &mut _, by: i64| {
                    let q = match column {
                        "created_at" => diesel::update(encrypted_types_keys::table.find(id))
                            .set(encrypted_types_keys::created_at.eq(encrypted_types_keys::created_at + by))
                            .execute(conn),
                        _ => diesel::update(encrypted_types_keys::table.find(id))
                            .set(encrypted_types_keys::state_changed_at.eq(encrypted_types_keys::state_changed_at + by))
                            .execute(conn),
                    };
                    q.unwrap();
                };
                younger(conn, 200 * 86_400);
                let e = store.load(conn).unwrap_err();
                assert!(matches!(e, Error::KeyRecord { key_id, .. } if key_id == keys.data), "{column}: {e}");
                let e = store.verified_keys(conn).unwrap_err();
                assert!(matches!(e, Error::KeyRecord { key_id, .. } if key_id == keys.data), "{column}: {e}");
                younger(conn, -200 * 86_400);
                assert!(store.load(conn).is_ok(), "{column}: restored");
            }
        }

        #[test]
        fn a_flipped_bit_or_a_moved_wrapped_key_fails_the_load_naming_the_key() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let a = store.create_tenant(conn, Some(&"ta".into())).unwrap();
            let b = store.create_tenant(conn, Some(&"tb".into())).unwrap();
            assert!(store.load(conn).is_ok());
            let wrapped_of = |conn: &mut _, id: KeyId| -> Vec<u8> {
                encrypted_types_keys::table
                    .find(i64::from(id.get()))
                    .select(encrypted_types_keys::wrapped_key)
                    .first::<Option<Vec<u8>>>(conn)
                    .unwrap()
                    .unwrap()
            };
            let set = |conn: &mut _, id: KeyId, bytes: Vec<u8>| {
                diesel::update(encrypted_types_keys::table.find(i64::from(id.get())))
                    .set(encrypted_types_keys::wrapped_key.eq(Some(bytes)))
                    .execute(conn)
                    .unwrap();
            };
            let original = wrapped_of(conn, a.data);
            let mut flipped = original.clone();
            flipped[20] ^= 0x04;
            set(conn, a.data, flipped);
            // The record's MAC covers the wrapped bytes: the load names the key before unwrapping.
            let refused = |r: Result<_, Error>| match r.err() {
                Some(Error::KeyRecord { key_id, reason }) => (key_id, reason.contains("does not authenticate")),
                other => panic!("{other:?}"),
            };
            assert_eq!(refused(store.load(conn)), (a.data, true));
            // Tenant b's wrapped key presented in tenant a's row: refused the same way.
            let b_wrapped = wrapped_of(conn, b.data);
            set(conn, a.data, b_wrapped);
            assert_eq!(refused(store.load(conn)), (a.data, true));
            set(conn, a.data, original);
            assert!(store.load(conn).is_ok());
            // A store with another KEK (same file name, other bytes) cannot add keys to this
            // table: it cannot unwrap the deployment wrapping key, and says it is the wrong KEK
            // (its check value differs from the one stored beside the wrap).
            let other_dir = tempfile::tempdir().unwrap();
            let other = KeyStore::new(kek(&other_dir));
            let err = other.create_tenant(conn, Some(&"tc".into())).err().unwrap();
            assert!(matches!(&err, Error::WrongKek { kek_ref } if *kek_ref == other.provider().kek_ref()), "{err}");
            assert!(store.load(conn).is_ok(), "the failed creation left nothing behind");
        }

        #[test]
        fn tenants_differing_only_in_case_or_spaces_are_different_tenants() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let lower = store.create_tenant(conn, Some(&"clinic-a".into())).unwrap();
            let upper = store.create_tenant(conn, Some(&"CLINIC-A".into())).unwrap();
            store.create_tenant(conn, Some(&"clinic-a ".into())).unwrap();
            let shred = store.shred_tenant(conn, &"clinic-a".into(), &[]).unwrap();
            let mut keys = shred.keys.clone();
            keys.sort();
            let mut want = vec![lower.data, lower.blind_index];
            want.sort();
            assert_eq!(keys, want, "only clinic-a's keys are destroyed");
            let (keyring, report) = store.load(conn).unwrap();
            assert_eq!(report.data_keys, 2);
            assert!(keyring.key(upper.data).is_ok());
        }

        #[test]
        fn one_active_key_per_tenant_and_purpose_is_enforced_by_the_table() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::new(kek(&dir));
            let conn = &mut $connect();
            let keys = store.create_tenant(conn, Some(&"t1".into())).unwrap();
            // A second active data key, as a concurrent creator would insert: refused by SQL.
            let mut row: encrypted_types::store::KeyRecord = encrypted_types_keys::table
                .find(i64::from(keys.data.get()))
                .select(encrypted_types::store::KeyRecord::as_select())
                .first(conn)
                .unwrap();
            row.key_id += 1;
            let dup = conn.transaction(|c| diesel::insert_into(encrypted_types_keys::table).values(&row).execute(c));
            assert!(dup.is_err(), "a second active data key was accepted");
            // A tenant missing its blind-index key fails the load, naming a key.
            diesel::delete(encrypted_types_keys::table.find(i64::from(keys.blind_index.get()))).execute(conn).unwrap();
            let err = store.load(conn).err().unwrap();
            assert!(matches!(err, Error::KeyRecord { key_id, .. } if key_id == keys.data), "{err}");
        }
    };
}

mod sqlite {
    store_suite!(encrypted_types_tests::keystore::sqlite);
}

mod postgres {
    store_suite!(encrypted_types_tests::keystore::pg);
}

mod mysql {
    store_suite!(encrypted_types_tests::keystore::mysql);
}

/// Every audit path at TRACE level, captured: canary plaintexts and key bytes never appear.
#[test]
fn trace_output_holds_no_plaintext_and_no_key_bytes() {
    use std::sync::Arc;

    use diesel::prelude::*;
    use encrypted_types::audit::{CoalescingSink, set_sink};
    use encrypted_types::store::{KeyRecord, KeyStore, encrypted_types_keys};
    use encrypted_types_tests::models::Patient;
    use encrypted_types_tests::schema::et_patients;
    use encrypted_types_tests::{CANARY_EMAIL, CANARY_NAME, next_id};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();

    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let kek_bytes = {
        let path = dir.path().join("test.kek");
        LocalKek::create(&path).unwrap();
        std::fs::read(&path).unwrap()
    };
    let store = KeyStore::new(LocalKek::open(dir.path().join("test.kek")).unwrap());
    let mut secrets: Vec<Vec<u8>> = vec![kek_bytes];
    tracing::subscriber::with_default(subscriber, || {
        set_sink(CoalescingSink::new(std::time::Duration::ZERO));
        let conn = &mut encrypted_types_tests::keystore::sqlite();
        store.create_tenant(conn, Some(&"1".into())).unwrap();
        store.create_tenant(conn, Some(&"2".into())).unwrap();
        store.load_and_install(conn).unwrap();
        let records: Vec<KeyRecord> = encrypted_types_keys::table
            .select(KeyRecord::as_select())
            .load(conn)
            .unwrap();
        for r in &records {
            let wrapping = r
                .kek_ref
                .strip_prefix("key:")
                .map(|w| records.iter().find(|x| x.key_id.to_string() == w).unwrap());
            secrets.push(
                encrypted_types_tests::keytable::unwrap(r, wrapping, store.provider()).to_vec(),
            );
        }
        assert!(
            records.len() >= 5,
            "the wrapping key and both tenants' keys are checked"
        );
        let mut p = Patient::sample(next_id(), 1, CANARY_EMAIL, "123-45-6789");
        p.name = CANARY_NAME.into();
        diesel::insert_into(et_patients::table)
            .values(&p)
            .execute(conn)
            .unwrap();
        let _: Patient = et_patients::table
            .find(p.id)
            .select(Patient::as_select())
            .first(conn)
            .unwrap();
        // Failed opens: a tenant swap, a tampered value, then a shredded tenant.
        let other = Patient::sample(next_id(), 2, "other@example.org", "1");
        diesel::insert_into(et_patients::table)
            .values(&other)
            .execute(conn)
            .unwrap();
        let other_name: Vec<u8> = et_patients::table
            .find(other.id)
            .select(et_patients::name)
            .first(conn)
            .unwrap();
        let own_name: Vec<u8> = et_patients::table
            .find(p.id)
            .select(et_patients::name)
            .first(conn)
            .unwrap();
        diesel::update(et_patients::table.find(p.id))
            .set(et_patients::name.eq(&other_name))
            .execute(conn)
            .unwrap();
        let err = et_patients::table
            .find(p.id)
            .select(Patient::as_select())
            .first::<Patient>(conn)
            .unwrap_err();
        assert!(err.to_string().contains("another tenant"), "{err}");
        diesel::update(et_patients::table.find(p.id))
            .set(et_patients::name.eq(&own_name))
            .execute(conn)
            .unwrap();
        let mut name: Vec<u8> = et_patients::table
            .find(p.id)
            .select(et_patients::name)
            .first(conn)
            .unwrap();
        name[30] ^= 1;
        diesel::update(et_patients::table.find(p.id))
            .set(et_patients::name.eq(&name))
            .execute(conn)
            .unwrap();
        assert!(
            et_patients::table
                .find(p.id)
                .select(Patient::as_select())
                .first::<Patient>(conn)
                .is_err()
        );
        store
            .shred_tenant(
                conn,
                &"1".into(),
                &[<Patient as encrypted_types::EncryptedModel>::MODEL],
            )
            .unwrap();
        store.load_and_install(conn).unwrap();
        assert!(
            et_patients::table
                .find(p.id)
                .select(Patient::as_select())
                .first::<Patient>(conn)
                .is_err()
        );
        // A failed unwrap at load.
        let two: i64 = encrypted_types_keys::table
            .filter(encrypted_types_keys::tenant.eq("2"))
            .select(encrypted_types_keys::key_id)
            .first(conn)
            .unwrap();
        diesel::update(encrypted_types_keys::table.find(two))
            .set(encrypted_types_keys::wrapped_key.eq(Some(vec![0u8; 60])))
            .execute(conn)
            .unwrap();
        assert!(store.load(conn).is_err());
        encrypted_types::audit::clear_sink();
    });

    let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        out.contains("belongs to another tenant"),
        "no audit event for the tenant swap"
    );
    for event in [
        "key_created",
        "keyring_loaded",
        "key_unwrapped",
        "decrypts",
        "open_failed",
        "tenant_shredded",
    ] {
        assert!(out.contains(event), "no {event} event in:\n{out}");
    }
    for canary in [CANARY_EMAIL, CANARY_NAME, "123-45-6789", "canary-notes"] {
        assert!(
            !out.contains(canary),
            "plaintext {canary} in the trace output"
        );
    }
    for secret in &secrets {
        let hex = hex::encode(secret);
        let debug = format!("{:?}", &secret[..8]);
        let debug_tail = debug.trim_start_matches('[').trim_end_matches(']');
        assert!(
            !out.contains(&hex) && !out.contains(&hex.to_uppercase()),
            "key bytes (hex) in the trace output"
        );
        assert!(
            !out.contains(debug_tail),
            "key bytes (Debug) in the trace output"
        );
        assert!(
            !out.as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_slice()),
            "raw key bytes in the trace output"
        );
    }
}

/// A provider that fails as told, for the retry policy (the only in-process fake: real
/// providers are tested against SoftHSM2 and the KMS emulator).
#[derive(Debug)]
struct Flaky {
    calls: std::sync::atomic::AtomicU32,
    fail_first: u32,
    error: Error,
}

impl KekProvider for Flaky {
    fn kek_ref(&self) -> String {
        "flaky".into()
    }
    fn wrap(&self, _: &WrapContext<'_>, _: &KeyMaterial) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }
    fn unwrap(&self, _: &WrapContext<'_>, _: &[u8]) -> Result<KeyMaterial, Error> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.fail_first {
            Err(self.error.clone())
        } else {
            Ok(KeyMaterial::from_bytes([1; 32]))
        }
    }
}

#[test]
fn retries_are_bounded_and_a_wrong_key_is_not_retried() {
    use encrypted_types::kek::{RetryPolicy, Retrying};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let policy = RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let ctx = WrapContext {
        tenant: None,
        purpose: Purpose::Data,
        key_id: KeyId::from(1),
    };
    let transient = Error::Provider {
        operation: "unwrap",
        key_id: KeyId::from(1),
        reason: "throttled".into(),
    };
    let flaky = |fail_first, error| Flaky {
        calls: 0.into(),
        fail_first,
        error,
    };

    let recovers = flaky(2, transient.clone());
    assert!(Retrying::new(&recovers, policy).unwrap(&ctx, &[]).is_ok());
    assert_eq!(
        recovers.calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );

    let gives_up = flaky(
        10,
        Error::Timeout {
            operation: "unwrap",
            key_id: KeyId::from(1),
        },
    );
    assert_eq!(
        Retrying::new(&gives_up, policy).unwrap(&ctx, &[]).err(),
        Some(Error::Timeout {
            operation: "unwrap",
            key_id: KeyId::from(1)
        })
    );
    assert_eq!(
        gives_up.calls.load(Ordering::SeqCst),
        3,
        "three attempts, no more"
    );

    let wrong = flaky(
        10,
        Error::KeyUnwrap {
            key_id: KeyId::from(1),
        },
    );
    assert_eq!(
        Retrying::new(&wrong, policy).unwrap(&ctx, &[]).err(),
        Some(Error::KeyUnwrap {
            key_id: KeyId::from(1)
        })
    );
    assert_eq!(
        wrong.calls.load(Ordering::SeqCst),
        1,
        "a wrong key is not retried"
    );
}
