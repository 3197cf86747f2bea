//! The key hierarchy (docs/adr/0003-key-hierarchy.md) on the three backends: one KEK call per
//! wrapping key, authenticated key records against a database writer, the check value against a
//! lying KEK, tenants with their own KEK, and the KEK rotation job (rewrap), crashed and resumed.
// Tests: a failed expectation panics with the value that failed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use encrypted_types::kek::local::LocalKek;
use encrypted_types::kek::{KekProvider, WrapContext};
use encrypted_types::{Error, KeyMaterial};

fn kek_at(dir: &tempfile::TempDir, name: &str) -> LocalKek {
    LocalKek::open_or_create_dev(dir.path().join(name)).unwrap()
}

/// Fault injection: a KEK that counts its unwraps and can be disabled (as `DisableKey` does to a
/// KMS key), fail after a number of calls (a crash mid-job), or return random bytes (a broken HSM).
#[derive(Debug, Clone)]
struct Faulty {
    inner: Arc<LocalKek>,
    name: &'static str,
    calls: Arc<AtomicUsize>,
    /// 0 works, 1 disabled, 2 random bytes, 3 hangs (until the mode changes).
    mode: Arc<AtomicUsize>,
    /// Unwraps allowed before it fails (usize::MAX: no limit).
    budget: Arc<AtomicUsize>,
    /// Calls inside `unwrap` right now.
    inside: Arc<AtomicUsize>,
}

impl Faulty {
    fn new(dir: &tempfile::TempDir, name: &'static str) -> Self {
        Self {
            inner: Arc::new(kek_at(dir, name)),
            name,
            calls: Arc::default(),
            mode: Arc::default(),
            budget: Arc::new(AtomicUsize::new(usize::MAX)),
            inside: Arc::default(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_mode(&self, mode: usize) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl KekProvider for Faulty {
    fn kek_ref(&self) -> String {
        format!("fake:{}", self.name)
    }
    fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        self.inner.wrap(ctx, key)
    }
    fn unwrap(&self, ctx: &WrapContext<'_>, wrapped: &[u8]) -> Result<KeyMaterial, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // A KMS that accepted the connection and never answers, until the test lets it.
        self.inside.fetch_add(1, Ordering::SeqCst);
        while self.mode.load(Ordering::SeqCst) == 3 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        let spent = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err();
        if spent || self.mode.load(Ordering::SeqCst) == 1 {
            return Err(Error::Provider {
                operation: "unwrap",
                key_id: ctx.key_id,
                reason: "DisabledException: the key is disabled".into(),
            });
        }
        if self.mode.load(Ordering::SeqCst) == 2 {
            return KeyMaterial::generate();
        }
        self.inner.unwrap(ctx, wrapped)
    }
}

macro_rules! hierarchy_suite {
    ($connect:path, $conn:ty) => {
        use diesel::prelude::*;
        use encrypted_types::kek::Purpose;
        use encrypted_types::store::{KeyRecord, KeyStore, RewrapOptions, encrypted_types_keys as k};
        use encrypted_types::{KeyId, TenantId};
        use encrypted_types_tests::models::Patient;
        use encrypted_types_tests::schema::et_patients;
        use encrypted_types_tests::{lib_error, next_id};

        use super::*;

        fn record(conn: &mut $conn, id: KeyId) -> KeyRecord {
            k::table.find(i64::from(id.get())).select(KeyRecord::as_select()).first(conn).unwrap()
        }

        fn put(conn: &mut $conn, r: &KeyRecord) {
            diesel::delete(k::table.find(r.key_id)).execute(conn).unwrap();
            diesel::insert_into(k::table).values(r).execute(conn).unwrap();
        }

        fn refused_naming(err: Option<Error>) -> (KeyId, &'static str) {
            match err {
                Some(Error::KeyRecord { key_id, reason }) => (key_id, reason),
                other => panic!("expected a refused key record, got {other:?}"),
            }
        }

        #[test]
        fn a_database_writer_cannot_swap_move_strip_or_roll_back_key_records() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let fresh = || KeyStore::new(kek_at(&dir, "test.kek"));
            let store = fresh();
            let conn = &mut $connect();
            let a = store.create_tenant(conn, Some(&"1".into())).unwrap();
            let b = store.create_tenant(conn, Some(&"2".into())).unwrap();
            let k1_active = record(conn, a.data);
            let k2 = store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            let k3 = store.rotate_data_key(conn, Some(&"1".into())).unwrap();
            store.load_and_install(conn).unwrap();
            let p = Patient::sample(next_id(), 1, "kept@x.org", "1");
            diesel::insert_into(et_patients::table).values(&p).execute(conn).unwrap();
            let k1 = record(conn, a.data);
            let k2_rec = record(conn, k2);
            let k3_rec = record(conn, k3);
            let not_authentic = "its record does not authenticate (altered, moved to another tenant or purpose, or rolled back)";

            // Swapping states between the active and a retired key: both MACs cover the state.
            let set_state = |conn: &mut _, id: KeyId, st: &str| {
                diesel::update(k::table.find(i64::from(id.get()))).set(k::state.eq(st)).execute(conn).unwrap();
            };
            set_state(conn, k3, "retired");
            set_state(conn, k2, "active");
            let (named, why) = refused_naming(fresh().load(conn).err());
            assert!(named == k2 || named == k3, "{named}");
            assert_eq!(why, not_authentic);
            put(conn, &k2_rec);
            put(conn, &k3_rec);
            fresh().load(conn).unwrap();

            // Moving a retired key to another tenant, or to another purpose.
            for (tenant, purpose) in [(Some("2"), "data"), (Some("1"), "blind_index"), (None, "data")] {
                let mut moved = k1.clone();
                moved.tenant = tenant.map(str::to_owned);
                moved.purpose = purpose.into();
                put(conn, &moved);
                assert_eq!(refused_naming(fresh().load(conn).err()), (a.data, not_authentic));
                put(conn, &k1);
            }
            // Another tenant's wrapped key in this row, and a record with its MAC stripped.
            let mut swapped = k1.clone();
            swapped.wrapped_key = record(conn, b.data).wrapped_key;
            put(conn, &swapped);
            assert_eq!(refused_naming(fresh().load(conn).err()), (a.data, not_authentic));
            let mut stripped = k1.clone();
            stripped.record_mac = None;
            stripped.mac_key_id = None;
            put(conn, &stripped);
            assert_eq!(refused_naming(fresh().load(conn).err()), (a.data, not_authentic));
            put(conn, &k1);

            // A rollback with records that once authenticated: k1's record from when it was
            // active, and the newest key deleted. k2 (retired, generation 2) still says k1 is old.
            diesel::delete(k::table.find(i64::from(k3.get()))).execute(conn).unwrap();
            put(conn, &k1_active);
            let (named, why) = refused_naming(fresh().load(conn).err());
            assert_eq!(named, a.data);
            assert!(why.contains("older key was made active again"), "{why}");
            put(conn, &k1);
            put(conn, &k3_rec);
            // After every restoration the table loads and the row opens.
            store.load_and_install(conn).unwrap();
            let back: Patient = et_patients::table.find(p.id).select(Patient::as_select()).first(conn).unwrap();
            assert_eq!(back, p);

            // A whole tenant rolled back to its first key (every newer record deleted) is what
            // the table alone cannot tell from a young tenant; a process that loaded the newer
            // keys refuses it.
            diesel::delete(k::table.filter(k::key_id.eq_any([i64::from(k2.get()), i64::from(k3.get())]))).execute(conn).unwrap();
            put(conn, &k1_active);
            let (_, why) = refused_naming(store.load(conn).err());
            assert!(why.contains("rolled back"), "{why}");
        }

        #[test]
        fn a_tenant_whose_own_kek_is_disabled_is_unavailable_and_no_other() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let one = Faulty::new(&dir, "one");
            let two = Faulty::new(&dir, "two");
            let store = KeyStore::new(kek_at(&dir, "test.kek"))
                .with_tenant_kek("1", one.clone())
                .with_tenant_kek("2", two.clone());
            let conn = &mut $connect();
            store.create_tenant_with_kek(conn, &"1".into(), "fake:one").unwrap();
            store.create_tenant_with_kek(conn, &"2".into(), "fake:two").unwrap();
            store.create_tenant(conn, Some(&"3".into())).unwrap();
            let report = store.load_and_install(conn).unwrap();
            assert_eq!((report.data_keys, report.kek_calls), (3, 3), "one call per wrapping key");
            let rows: Vec<Patient> = (1..=3)
                .map(|t| Patient::sample(next_id(), t, &format!("p{t}@x.org"), "1"))
                .collect();
            for p in &rows {
                diesel::insert_into(et_patients::table).values(p).execute(conn).unwrap();
            }
            let read = |conn: &mut _, p: &Patient| {
                et_patients::table.find(p.id).select(Patient::as_select()).first::<Patient>(conn)
            };

            one.set_mode(1);
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(report.unavailable, vec![(TenantId::from("1"), "fake:one".to_owned())]);
            let unavailable = Error::TenantUnavailable { tenant: "1".into(), kek: "fake:one".into() };
            assert_eq!(lib_error(&read(conn, &rows[0]).unwrap_err()), Some(&unavailable));
            let err = diesel::insert_into(et_patients::table)
                .values(&Patient::sample(next_id(), 1, "new@x.org", "1"))
                .execute(conn)
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&unavailable));
            assert_eq!(Patient::find_by_email(conn, &1, "p1@x.org").err().as_ref().and_then(lib_error), Some(&unavailable));
            assert!(!unavailable.to_string().contains("p1@x.org"));
            assert_eq!(read(conn, &rows[1]).unwrap(), rows[1]);
            assert_eq!(read(conn, &rows[2]).unwrap(), rows[2]);

            // A tenant's KEK answering with wrong bytes takes down that tenant, not the load.
            one.set_mode(2);
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(report.unavailable, vec![(TenantId::from("1"), "fake:one".to_owned())]);
            assert_eq!(lib_error(&read(conn, &rows[0]).unwrap_err()), Some(&unavailable));
            assert_eq!(read(conn, &rows[1]).unwrap(), rows[1]);

            one.set_mode(0);
            let report = store.load_and_install(conn).unwrap();
            assert!(report.unavailable.is_empty());
            assert_eq!(read(conn, &rows[0]).unwrap(), rows[0]);
            assert!(one.calls() >= 3 && two.calls() >= 3, "every load asks the tenant's KEK again");

            // Shredding the tenant destroys its wrapping key with its keys.
            let shred = store.shred_tenant(conn, &"1".into(), &[]).unwrap();
            assert_eq!(shred.keys.len(), 3);
            assert_eq!(store.load_and_install(conn).unwrap().kek_calls, 2);
        }

        /// A tenant whose KMS hangs misses the load's deadline: that tenant is unavailable
        /// (its late answer discarded), every other tenant loads, and no load waits for it
        /// beyond the deadline (the hang here ends only when the test ends it, so a load that
        /// waited for it would never return).
        #[test]
        fn a_tenant_whose_kek_hangs_misses_the_deadline_and_no_other() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let one = Faulty::new(&dir, "one");
            let two = Faulty::new(&dir, "two");
            let store = KeyStore::new(kek_at(&dir, "test.kek"))
                .with_tenant_kek("1", one.clone())
                .with_tenant_kek("2", two.clone())
                .with_tenant_kek_deadline(std::time::Duration::from_millis(300));
            let conn = &mut $connect();
            store.create_tenant_with_kek(conn, &"1".into(), "fake:one").unwrap();
            store.create_tenant_with_kek(conn, &"2".into(), "fake:two").unwrap();
            let p2 = Patient::sample(next_id(), 2, "p2@x.org", "1");
            store.load_and_install(conn).unwrap();
            diesel::insert_into(et_patients::table).values(&p2).execute(conn).unwrap();

            one.set_mode(3);
            let report = store.load_and_install(conn).unwrap();
            assert_eq!(report.unavailable, vec![(TenantId::from("1"), "fake:one".to_owned())]);
            assert_eq!((report.data_keys, report.kek_calls), (1, 3));
            let back: Patient = et_patients::table.find(p2.id).select(Patient::as_select()).first(conn).unwrap();
            assert!(back == p2, "tenant 2 did not load");
            let err = diesel::insert_into(et_patients::table)
                .values(&Patient::sample(next_id(), 1, "new@x.org", "1"))
                .execute(conn)
                .unwrap_err();
            assert_eq!(
                lib_error(&err),
                Some(&Error::TenantUnavailable { tenant: "1".into(), kek: "fake:one".into() })
            );
            // A second load while the first call still hangs: the same, no wait on it, and no
            // second call on the hung KEK (one thread waits on it, not one per load).
            let asked = one.calls();
            let second = store.load(conn).unwrap().1;
            assert_eq!(second.unavailable.len(), 1);
            assert_eq!(second.kek_calls, 2, "a KEK not asked is not counted as a call");
            assert_eq!(one.calls(), asked, "a busy KEK was asked again");
            assert_eq!(one.inside.load(Ordering::SeqCst), 1);

            // The KMS answers again: the late answer goes nowhere, the next load has tenant 1.
            one.set_mode(0);
            for _ in 0..1_000 {
                if one.inside.load(Ordering::SeqCst) == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // The first load's worker returns and frees the KEK (it polls every 5 ms); until
            // then a load skips the busy KEK, so wait on the outcome, not on a fixed time.
            let mut report = store.load_and_install(conn).unwrap();
            for _ in 0..1_000 {
                if report.unavailable.is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                report = store.load_and_install(conn).unwrap();
            }
            assert!(report.unavailable.is_empty(), "{:?}", report.unavailable);
            assert_eq!(report.data_keys, 2);
        }

        /// A rewrap whose target KEK is a tenant's own KEK would let that tenant's KEK holder
        /// unwrap every tenant: refused from the key table even when the store was not told of
        /// the tenant's KEK, before anything is written. One KEK for two tenants is refused
        /// at creation.
        #[test]
        fn rewrap_to_a_tenants_kek_and_one_kek_for_two_tenants_are_refused() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let one = Faulty::new(&dir, "one");
            let store = KeyStore::new(kek_at(&dir, "test.kek"))
                .with_tenant_kek("1", one.clone())
                .with_tenant_kek("2", one.clone());
            let conn = &mut $connect();
            store.create_tenant_with_kek(conn, &"1".into(), "fake:one").unwrap();
            let e = store
                .create_tenant_with_kek(conn, &"2".into(), "fake:one")
                .unwrap_err();
            assert!(
                matches!(&e, Error::SharedTenantKek { kek, first, second } if kek == "fake:one" && first == "1" && second == "2"),
                "{e:?}"
            );
            assert_eq!(
                k::table.filter(k::tenant.eq("2")).count().get_result::<i64>(conn).unwrap(),
                0,
                "nothing written for tenant 2"
            );
            store.create_tenant(conn, Some(&"3".into())).unwrap();
            let before: Vec<KeyRecord> = k::table.order(k::key_id).select(KeyRecord::as_select()).load(conn).unwrap();

            // The operator points the rewrap at tenant 1's KEK (a plausible typo of a KMS alias).
            let handover = KeyStore::new(one.clone()).with_kek(kek_at(&dir, "test.kek"));
            let e = handover.rewrap(conn, RewrapOptions::default()).unwrap_err();
            assert!(
                matches!(&e, Error::KekRoles { kek, tenant } if kek == "fake:one" && tenant == "1"),
                "{e:?}"
            );
            let after: Vec<KeyRecord> = k::table.order(k::key_id).select(KeyRecord::as_select()).load(conn).unwrap();
            assert_eq!(
                format!("{before:?}"),
                format!("{after:?}"),
                "the refused rewrap wrote nothing"
            );
            assert_eq!(store.load(conn).unwrap().0.key_ids().len(), 2);
        }

        #[test]
        fn a_tenants_own_kek_cannot_vouch_for_the_deployment_or_move_its_keys() {
            use encrypted_types_tests::keytable;
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let one = Faulty::new(&dir, "one");
            let deployment = || KeyStore::new(kek_at(&dir, "test.kek"));
            let store = deployment().with_tenant_kek("1", one.clone());
            let conn = &mut $connect();
            store.create_tenant_with_kek(conn, &"1".into(), "fake:one").unwrap();
            let victim = store.create_tenant(conn, Some(&"2".into())).unwrap();
            let clean: Vec<KeyRecord> = k::table.select(KeyRecord::as_select()).load(conn).unwrap();

            // Tenant 1 holds its KEK and writes to the database: it plants a deployment wrapping
            // key under its own KEK and, under that, a data key of its choosing for tenant 2.
            let planted = KeyId::from(0x7654_3211);
            let w = *KeyMaterial::generate().unwrap().expose();
            let w_ctx = WrapContext { tenant: None, purpose: Purpose::Wrapping, key_id: planted };
            let mut w_row = KeyRecord {
                key_id: i64::from(planted.get()),
                tenant: None,
                purpose: "wrapping".into(),
                state: "retired".into(),
                wrapped_key: Some(one.wrap(&w_ctx, &KeyMaterial::from_slice(&w).unwrap()).unwrap()),
                kek_ref: one.kek_ref(),
                created_at: 1,
                state_changed_at: 1,
                generation: 0,
                check_value: Some(keytable::check_value(&w)),
                mac_key_id: None,
                record_mac: None,
                kek_check: None,
            };
            keytable::authenticate(&mut w_row, planted.get(), &w);
            put(conn, &w_row);
            let chosen = [7u8; 32];
            let tenant2 = TenantId::from("2");
            let d_ctx = WrapContext { tenant: Some(&tenant2), purpose: Purpose::Data, key_id: victim.data };
            let mut forged = record(conn, victim.data);
            forged.wrapped_key = Some(keytable::wrap_under(planted.get(), &w, &d_ctx, &chosen));
            forged.kek_ref = format!("key:{}", planted.get());
            forged.check_value = Some(keytable::check_value(&chosen));
            keytable::authenticate(&mut forged, planted.get(), &w);
            put(conn, &forged);

            // The forgery is well-formed: a store that let tenant 1's KEK act for the
            // deployment loads it (MACs verify; the key unwrapped for tenant 2 matches the check
            // value of the bytes tenant 1 chose), and would seal tenant 2's data under it ...
            // (shown with tenant 1's own records out of the way) ...
            let tenant1: Vec<KeyRecord> = k::table
                .filter(k::tenant.eq("1"))
                .select(KeyRecord::as_select())
                .load(conn)
                .unwrap();
            diesel::delete(k::table.filter(k::tenant.eq("1"))).execute(conn).unwrap();
            let confused = || deployment().with_kek(one.clone());
            // The key table's manifest alone refuses it (the records of no tenant changed,
            // KEYTABLE.md §6). The rest of this test runs without one (a store in an upgrade
            // window): the checks below must hold on their own.
            assert!(
                matches!(confused().load(conn), Err(Error::Manifest { ref scope, .. }) if scope == "the keys of no tenant")
            );
            diesel::sql_query("DELETE FROM encrypted_types_key_manifest").execute(conn).unwrap();
            let deployment = || KeyStore::new(kek_at(&dir, "test.kek")).allow_unmanifested_table();
            let store = deployment().with_tenant_kek("1", one.clone());
            let confused = || deployment().with_kek(one.clone());
            let (keyring, _) = confused().load(conn).unwrap();
            assert_eq!(keyring.primary_key(Some(&tenant2)).unwrap().id(), victim.data);
            for r in &tenant1 {
                diesel::insert_into(k::table).values(r).execute(conn).unwrap();
            }
            // ... so a tenant's KEK given as a deployment KEK is refused as a configuration ...
            let roles = Error::KekRoles { kek: "fake:one".into(), tenant: "1".into() };
            assert_eq!(confused().load(conn).err(), Some(roles.clone()));
            let both = deployment().with_kek(one.clone()).with_tenant_kek("1", one.clone());
            assert_eq!(both.load_tenants(conn, &["2".into()]).err(), Some(roles));
            // ... and the real store refuses it, naming the planted key.
            let (id, why) = refused_naming(store.load(conn).err());
            assert_eq!(id, planted, "{why}");
            assert!(why.contains("no provider"), "{why}");

            // A tenant whose own wrapping-key row is deleted is not rotated under the
            // deployment's wrapping key: its keys stay where only its KEK opens them.
            diesel::delete(k::table).execute(conn).unwrap();
            for r in &clean {
                diesel::insert_into(k::table).values(r).execute(conn).unwrap();
            }
            let own: KeyRecord = k::table
                .filter(k::tenant.eq("1").and(k::purpose.eq("wrapping")))
                .select(KeyRecord::as_select())
                .first(conn)
                .unwrap();
            diesel::delete(k::table.find(own.key_id)).execute(conn).unwrap();
            let before: i64 = k::table.filter(k::tenant.eq("1")).count().get_result(conn).unwrap();
            let (_, why) = refused_naming(store.rotate_data_key(conn, Some(&"1".into())).err());
            assert!(why.contains("own wrapping key"), "{why}");
            let after: i64 = k::table.filter(k::tenant.eq("1")).count().get_result(conn).unwrap();
            assert_eq!(before, after, "no key was created");

            // Its row moved to the deployment (retired there) does not make a rotation or
            // `rewrap` move the tenant's keys under the deployment's wrapping key either.
            let mut moved = own.clone();
            moved.tenant = None;
            moved.state = "retired".into();
            put(conn, &moved);
            let (id, why) = refused_naming(store.rotate_data_key(conn, Some(&"1".into())).err());
            assert_eq!(i64::from(id.get()), own.key_id, "{why}");
            let after: i64 = k::table.filter(k::tenant.eq("1")).count().get_result(conn).unwrap();
            assert_eq!(before, after, "no key was created");
            let (id, why) = refused_naming(store.rewrap(conn, RewrapOptions::default()).err());
            assert_eq!(i64::from(id.get()), own.key_id, "{why}");
            let still_own: i64 = k::table
                .filter(k::tenant.eq("1").and(k::purpose.ne("wrapping")))
                .filter(k::kek_ref.eq(format!("key:{}", own.key_id)))
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(still_own, 2, "tenant 1's keys stay under its own wrapping key");
        }

        #[test]
        fn a_process_loads_the_tenants_it_serves_and_adds_more_outside_queries() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let one = Faulty::new(&dir, "one");
            let store = KeyStore::new(kek_at(&dir, "test.kek")).with_tenant_kek("1", one.clone());
            let conn = &mut $connect();
            let keys1 = store.create_tenant_with_kek(conn, &"1".into(), "fake:one").unwrap();
            store.create_tenant(conn, Some(&"2".into())).unwrap();
            let keys3 = store.create_tenant(conn, Some(&"3".into())).unwrap();
            store.load_and_install(conn).unwrap();
            assert_eq!(store.ensure_loaded(conn, &["1".into()]).unwrap(), 0, "complete already");
            let rows: Vec<Patient> = (1..=3)
                .map(|t| Patient::sample(next_id(), t, &format!("s{t}@x.org"), "1"))
                .collect();
            for p in &rows {
                diesel::insert_into(et_patients::table).values(p).execute(conn).unwrap();
            }
            let read = |conn: &mut _, p: &Patient| {
                et_patients::table.find(p.id).select(Patient::as_select()).first::<Patient>(conn)
            };

            // A process serving tenant 2: its records only, no other tenant's KEK asked.
            let asked = one.calls();
            let (keyring, report) = store.load_tenants(conn, &["2".into()]).unwrap();
            assert_eq!((report.data_keys, report.kek_calls, one.calls()), (1, 1, asked));
            assert!(!keyring.is_complete());
            keyring.install();
            assert_eq!(read(conn, &rows[1]).unwrap(), rows[1]);
            let not_loaded = Error::KeyNotLoaded(keys1.data);
            assert_eq!(lib_error(&read(conn, &rows[0]).unwrap_err()), Some(&not_loaded));
            let err = diesel::insert_into(et_patients::table)
                .values(&Patient::sample(next_id(), 3, "new@x.org", "1"))
                .execute(conn)
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::TenantNotLoaded { tenant: "3".into() }));
            let found = Patient::find_by_email(conn, &3, "s3@x.org").err();
            assert_eq!(found.as_ref().and_then(lib_error), Some(&Error::TenantNotLoaded { tenant: "3".into() }));
            // A job needs every tenant: refused before it writes anything.
            let job = encrypted_types::jobs::rotate_data_keys(
                conn,
                &<Patient as encrypted_types::EncryptedModel>::MODEL,
                "partial",
                &encrypted_types::jobs::JobOptions::default(),
                |_| {},
            );
            assert_eq!(job.err(), Some(Error::PartialKeyring));

            // Tenant 1's KMS key is disabled when it is first needed: unavailable, and asked
            // again by the next ensure_loaded, once it is back.
            one.set_mode(1);
            assert_eq!(store.ensure_loaded(conn, &["1".into()]).unwrap(), 1);
            let unavailable = Error::TenantUnavailable { tenant: "1".into(), kek: "fake:one".into() };
            assert_eq!(lib_error(&read(conn, &rows[0]).unwrap_err()), Some(&unavailable));
            one.set_mode(0);

            // Tenants 1 and 3 added outside any query: one call to tenant 1's own KEK.
            let added = store.ensure_loaded(conn, &["1".into(), "3".into(), "2".into()]).unwrap();
            assert_eq!((added, one.calls()), (2, asked + 2));
            for p in &rows {
                assert_eq!(&read(conn, p).unwrap(), p);
            }
            assert_eq!(store.ensure_loaded(conn, &["3".into()]).unwrap(), 0);

            // A bad record of a tenant stops exactly the processes that load that tenant.
            let mut bad = record(conn, keys3.data);
            bad.generation += 5;
            put(conn, &bad);
            store.load_tenants(conn, &["2".into()]).unwrap();
            let (id, _) = refused_naming(store.load_tenants(conn, &["3".into()]).err());
            assert_eq!(id, keys3.data);
            let (id, _) = refused_naming(store.load(conn).err());
            assert_eq!(id, keys3.data);

            // Shredding tenant 2 makes exactly its values unreadable in a partial keyring too.
            store.shred_tenant(conn, &"2".into(), &[]).unwrap();
            let (keyring, _) = store.load_tenants(conn, &["1".into(), "2".into()]).unwrap();
            keyring.install();
            assert!(matches!(lib_error(&read(conn, &rows[1]).unwrap_err()), Some(Error::KeyDestroyed(_))));
            assert_eq!(read(conn, &rows[0]).unwrap(), rows[0]);
        }

        #[test]
        fn rewrap_moves_a_legacy_table_under_a_new_kek_resumes_after_a_crash_and_rotates_again() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            let conn = &mut $connect();
            // A table from before the hierarchy: every key wrapped by the KEK itself, no MACs.
            let old = Faulty::new(&dir, "old");
            let tenants = 30u32;
            for t in 0..tenants {
                let tenant = TenantId::from(format!("{}", 100 + t).as_str());
                for (n, purpose) in [(0, Purpose::Data), (1, Purpose::BlindIndex)] {
                    let r = encrypted_types_tests::keytable::legacy_record(
                        &old, 1_000_000 + t * 2 + n, &tenant, purpose, "active", 1,
                    );
                    diesel::insert_into(k::table).values(&r).execute(conn).unwrap();
                }
            }
            let backup: Vec<KeyRecord> = k::table.select(KeyRecord::as_select()).load(conn).unwrap();
            // Unauthenticated records are read only when the operator says an upgrade is on.
            let (_, why) = refused_naming(KeyStore::new(old.clone()).load(conn).err());
            assert!(why.contains("before the key hierarchy"), "{why}");
            let (_, why) = refused_naming(KeyStore::new(old.clone()).create_tenant(conn, None).err());
            assert!(why.contains("KeyStore::rewrap"), "{why}");
            let legacy = KeyStore::new(old.clone()).allow_legacy_table();
            let report = legacy.load_and_install(conn).unwrap();
            assert_eq!((report.kek_calls, report.unauthenticated), (60, 60));
            let rows: Vec<Patient> = (0..tenants)
                .map(|t| Patient::sample(next_id(), i64::from(100 + t), &format!("r{t}@x.org"), "9"))
                .collect();
            for p in &rows {
                diesel::insert_into(et_patients::table).values(p).execute(conn).unwrap();
            }
            let data_before: Vec<Vec<u8>> = et_patients::table
                .filter(et_patients::id.eq_any(rows.iter().map(|p| p.id)))
                .order(et_patients::id)
                .select(et_patients::name)
                .load(conn)
                .unwrap();

            // The new KEK, with the old one for reading; the old one fails after 25 unwraps.
            old.budget.store(25, Ordering::SeqCst);
            let store = KeyStore::new(Faulty::new(&dir, "new")).with_kek(old.clone());
            let crashed = store.rewrap(conn, RewrapOptions { batch: 8 });
            assert!(matches!(crashed, Err(Error::Provider { .. })), "{crashed:?}");
            let moved: i64 = k::table
                .filter(k::kek_ref.like("key:%"))
                .count()
                .get_result(conn)
                .unwrap();
            assert!(moved > 0 && moved < 60, "committed batches stay done: {moved}");
            // Resumed: it finishes, and a count in SQL agrees.
            old.budget.store(usize::MAX, Ordering::SeqCst);
            let report = store.rewrap(conn, RewrapOptions { batch: 8 }).unwrap();
            assert!(report.finished, "{report:?}");
            assert_eq!(report.rewrapped, 60 - u64::try_from(moved).unwrap());
            let left: i64 = k::table
                .filter(k::purpose.ne("wrapping"))
                .filter(k::kek_ref.not_like("key:%"))
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(left, 0);

            // The old KEK is gone: a process with only the new one loads with one call.
            let only_new = Faulty::new(&dir, "new");
            let report = KeyStore::new(only_new.clone()).load_and_install(conn).unwrap();
            assert_eq!((report.data_keys, report.kek_calls, report.unauthenticated), (30, 1, 0));
            assert_eq!(only_new.calls(), 1, "counted by the provider itself");
            for p in &rows {
                let back: Patient = et_patients::table.find(p.id).select(Patient::as_select()).first(conn).unwrap();
                assert_eq!(&back, p);
            }
            let data_after: Vec<Vec<u8>> = et_patients::table
                .filter(et_patients::id.eq_any(rows.iter().map(|p| p.id)))
                .order(et_patients::id)
                .select(et_patients::name)
                .load(conn)
                .unwrap();
            assert_eq!(data_before, data_after, "not one data value was rewritten");

            // Rotating the KEK again, hierarchy to hierarchy: the old wrapping key is destroyed.
            let newer = KeyStore::new(Faulty::new(&dir, "newer")).with_kek(only_new);
            let report = newer.rewrap(conn, RewrapOptions::default()).unwrap();
            assert!(report.finished && report.rewrapped == 60, "{report:?}");
            assert_eq!(report.destroyed_wrapping_keys.len(), 1);
            let report = KeyStore::new(Faulty::new(&dir, "newer")).load(conn).unwrap().1;
            assert_eq!((report.data_keys, report.kek_calls), (30, 1));
            // Run again, it finds nothing to do.
            let again = newer.rewrap(conn, RewrapOptions::default()).unwrap();
            assert!(again.finished && again.rewrapped == 0 && again.reauthenticated == 0, "{again:?}");

            // The table put back as it was before the hierarchy (a downgrade to unauthenticated
            // records, where an old key could be active again): a process that loaded it
            // authenticated refuses it.
            let watching = KeyStore::new(Faulty::new(&dir, "newer")).with_kek(old.clone());
            watching.load(conn).unwrap();
            diesel::delete(k::table).execute(conn).unwrap();
            for r in &backup {
                diesel::insert_into(k::table).values(r).execute(conn).unwrap();
            }
            let (_, why) = refused_naming(watching.load(conn).err());
            assert!(why.contains("lost its deployment wrapping keys"), "{why}");
            // A fresh process refuses it too, unless told an upgrade is on.
            let (_, why) = refused_naming(KeyStore::new(old.clone()).load(conn).err());
            assert!(why.contains("before the key hierarchy"), "{why}");
            let upgrading = KeyStore::new(old.clone()).allow_legacy_table();
            assert_eq!(upgrading.load(conn).unwrap().1.unauthenticated, 60);
        }
    };
}

mod sqlite {
    hierarchy_suite!(encrypted_types_tests::keystore::sqlite, SqliteConnection);

    #[test]
    fn a_kek_that_returns_wrong_bytes_is_refused_by_the_check_value() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Faulty::new(&dir, "hsm");
        let store = KeyStore::new(kek.clone());
        let conn = &mut encrypted_types_tests::keystore::sqlite();
        for t in 0..200 {
            store
                .create_tenant(conn, Some(&TenantId::from(format!("t{t}").as_str())))
                .unwrap();
        }
        let counted = Faulty::new(&dir, "hsm");
        let report = KeyStore::new(counted.clone()).load(conn).unwrap().1;
        assert_eq!(
            (report.data_keys, report.kek_calls, counted.calls()),
            (200, 1, 1)
        );

        kek.set_mode(2);
        let wrapping: i64 = k::table
            .filter(k::purpose.eq("wrapping"))
            .select(k::key_id)
            .first(conn)
            .unwrap();
        let err = KeyStore::new(kek).load(conn).err();
        assert_eq!(
            err,
            Some(Error::KeyCheck {
                key_id: KeyId::from(u32::try_from(wrapping).unwrap())
            })
        );
    }
}

mod postgres {
    hierarchy_suite!(encrypted_types_tests::keystore::pg, PgConnection);
}

mod mysql {
    hierarchy_suite!(encrypted_types_tests::keystore::mysql, MysqlConnection);
}
