//! A model of the key lifecycle (review 3, item 12): random sequences of key operations
//! (create a tenant, rotate, seal, destroy a retired key, shred, replace the blind-index root,
//! rewrap, tamper with a record) run against the real key store on SQLite and against a small
//! reference model. After every step a second store, as a fresh process would, loads the table
//! and must agree with the model: which keys load, which key seals for each tenant, which values
//! open and which are refused, and that a tampered record is refused naming it.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyRecord, KeyStore, RewrapOptions, encrypted_types_keys as k};
use encrypted_types::{Encrypted, Error, KeyId, TenantId};
use encrypted_types_tests::PeopleEmail;
use proptest::prelude::*;

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Rotate(usize),
    Seal(usize),
    Destroy(usize),
    Shred(usize),
    ReplaceRoot(usize),
    Rewrap,
    /// Which record (modulo their number), and which change.
    Tamper(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TENANTS.len();
    prop_oneof![
        3 => t.clone().prop_map(Op::Create),
        3 => t.clone().prop_map(Op::Rotate),
        4 => t.clone().prop_map(Op::Seal),
        2 => t.clone().prop_map(Op::Destroy),
        1 => t.clone().prop_map(Op::Shred),
        1 => t.prop_map(Op::ReplaceRoot),
        1 => Just(Op::Rewrap),
        2 => (any::<usize>(), 0..3u8).prop_map(|(i, c)| Op::Tamper(i, c)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Retired,
    Destroyed,
}

#[derive(Debug, Default)]
struct Tenant {
    /// Data keys and blind-index roots, oldest first.
    data: Vec<(u32, State)>,
    roots: Vec<(u32, State)>,
}

impl Tenant {
    fn live(&self) -> bool {
        self.data.iter().any(|(_, s)| *s != State::Destroyed)
    }
    fn active(&self) -> Option<u32> {
        self.data
            .iter()
            .find(|(_, s)| *s == State::Active)
            .map(|(id, _)| *id)
    }
    fn state_of(&self, id: u32) -> Option<State> {
        self.data
            .iter()
            .chain(&self.roots)
            .find(|(k, _)| *k == id)
            .map(|(_, s)| *s)
    }
}

#[derive(Debug, Default)]
struct Model {
    tenants: [Tenant; 3],
    /// (tenant, plaintext, sealed bytes, key id).
    values: Vec<(usize, String, Vec<u8>, u32)>,
}

fn header_key(sealed: &[u8]) -> u32 {
    u32::from_be_bytes(sealed[2..6].try_into().unwrap())
}

struct World {
    _dir: tempfile::TempDir,
    kek: std::path::PathBuf,
    conn: SqliteConnection,
    /// The store every operation goes through (it remembers what it loaded).
    store: KeyStore<LocalKek>,
    model: Model,
    sealed: usize,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("model.kek");
        let store =
            KeyStore::new(LocalKek::create(&kek).unwrap()).with_destroy_grace(Duration::ZERO);
        Self {
            conn: encrypted_types_tests::keystore::sqlite(),
            kek,
            _dir: dir,
            store,
            model: Model::default(),
            sealed: 0,
        }
    }
}

/// A store as a freshly started process builds it.
fn fresh(kek: &std::path::Path) -> KeyStore<LocalKek> {
    KeyStore::new(LocalKek::open(kek).unwrap())
}

impl World {
    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let conn = &mut self.conn;
        match *op {
            Op::Create(t) => {
                let tenant = TenantId::from(TENANTS[t]);
                let m = &mut self.model.tenants[t];
                let got = self.store.create_tenant(conn, Some(&tenant));
                if m.live() {
                    prop_assert!(got.is_err(), "{op:?}: a live tenant created again");
                } else {
                    let keys = got.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                    m.data.push((keys.data.get(), State::Active));
                    m.roots.push((keys.blind_index.get(), State::Active));
                }
            }
            Op::Rotate(t) => {
                let tenant = TenantId::from(TENANTS[t]);
                let m = &mut self.model.tenants[t];
                let got = self.store.rotate_data_key(conn, Some(&tenant));
                match m.active() {
                    None => prop_assert!(got.is_err(), "{op:?}: rotated a tenant with no key"),
                    Some(old) => {
                        let new = got.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                        for k in &mut m.data {
                            if k.0 == old {
                                k.1 = State::Retired;
                            }
                        }
                        m.data.push((new.get(), State::Active));
                    }
                }
            }
            Op::Seal(t) => {
                let (keyring, _) = self.store.load(conn).unwrap();
                let value = format!("v{}@example.org", self.sealed);
                self.sealed += 1;
                let got = Encrypted::<String, PeopleEmail>::for_tenant(value.clone(), TENANTS[t])
                    .seal_with(&keyring);
                let m = &self.model.tenants[t];
                match (m.active(), m.data.is_empty()) {
                    (Some(active), _) => {
                        let sealed =
                            got.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                        prop_assert_eq!(header_key(&sealed), active, "sealed under the active key");
                        self.model.values.push((t, value, sealed, active));
                    }
                    (None, false) => prop_assert!(
                        matches!(got, Err(Error::TenantShredded { .. })),
                        "{op:?}: {got:?}"
                    ),
                    (None, true) => prop_assert!(got.is_err(), "{op:?}: sealed for no tenant"),
                }
            }
            Op::Destroy(t) => {
                let m = &mut self.model.tenants[t];
                // A retired data key first, else a retired blind-index root.
                let retired = m
                    .data
                    .iter_mut()
                    .find(|(_, s)| *s == State::Retired)
                    .or_else(|| m.roots.iter_mut().find(|(_, s)| *s == State::Retired));
                if let Some(k) = retired {
                    self.store
                        .destroy_key(conn, KeyId::from(k.0), &[])
                        .map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                    k.1 = State::Destroyed;
                } else if let Some(active) = self.model.tenants[t].active() {
                    let got = self.store.destroy_key(conn, KeyId::from(active), &[]);
                    prop_assert!(
                        matches!(got, Err(Error::NotDestroyable { .. })),
                        "{op:?}: an active key: {got:?}"
                    );
                }
            }
            Op::Shred(t) => {
                let m = &mut self.model.tenants[t];
                if m.live() {
                    self.store
                        .shred_tenant(conn, &TenantId::from(TENANTS[t]), &[])
                        .map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                    for k in m.data.iter_mut().chain(m.roots.iter_mut()) {
                        k.1 = State::Destroyed;
                    }
                }
            }
            Op::ReplaceRoot(t) => {
                let m = &mut self.model.tenants[t];
                let got = self
                    .store
                    .replace_blind_index_root(conn, Some(&TenantId::from(TENANTS[t])));
                let under_way = m.roots.iter().any(|(_, s)| *s == State::Retired);
                if m.live() && !under_way {
                    let (new, old) =
                        got.map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                    for k in &mut m.roots {
                        if k.0 == old.get() {
                            k.1 = State::Retired;
                        }
                    }
                    m.roots.push((new.get(), State::Active));
                } else {
                    prop_assert!(got.is_err(), "{op:?}: {got:?}");
                }
            }
            Op::Rewrap => {
                let r = self
                    .store
                    .rewrap(conn, RewrapOptions::default())
                    .map_err(|e| TestCaseError::fail(format!("{op:?}: {e}")))?;
                prop_assert!(r.finished, "{r:?}");
            }
            Op::Tamper(i, change) => {
                let records: Vec<KeyRecord> = k::table
                    .order(k::key_id)
                    .select(KeyRecord::as_select())
                    .load(conn)
                    .unwrap();
                if records.is_empty() {
                    return Ok(());
                }
                let original = records[i % records.len()].clone();
                let mut bad = original.clone();
                match change {
                    0 => {
                        bad.state = if bad.state == "active" {
                            "retired".into()
                        } else {
                            "active".into()
                        };
                    }
                    1 => bad.generation += 1,
                    _ => {
                        bad.tenant = Some(match bad.tenant.as_deref() {
                            Some("t0") => "t1".into(),
                            _ => "t0".into(),
                        });
                    }
                }
                // The table's own constraints refuse some changes (a second active key of a
                // tenant and purpose): nothing to load then.
                if !replace(conn, &original, &bad) {
                    return Ok(());
                }
                let got = fresh(&self.kek).load(conn).err();
                assert!(replace(conn, &bad, &original));
                // A deployment wrapping key moved to a tenant leaves a table without one: it is
                // refused as a table from before the hierarchy, naming its first record.
                let stripped = original.purpose == "wrapping" && bad.tenant != original.tenant;
                match got {
                    Some(Error::KeyRecord { key_id, .. }) if !stripped => {
                        prop_assert_eq!(i64::from(key_id.get()), original.key_id, "{:?}", op);
                    }
                    Some(Error::KeyRecord { .. }) => {}
                    other => prop_assert!(false, "{op:?} on {original:?}: {other:?}"),
                }
            }
        }
        Ok(())
    }

    /// A fresh process agrees with the model.
    fn check(&mut self, after: &Op) -> Result<(), TestCaseError> {
        let conn = &mut self.conn;
        let (keyring, report) = fresh(&self.kek)
            .load(conn)
            .map_err(|e| TestCaseError::fail(format!("after {after:?}: load: {e}")))?;
        let live = |v: &[(u32, State)]| v.iter().filter(|(_, s)| *s != State::Destroyed).count();
        let tenants = &self.model.tenants;
        prop_assert_eq!(
            report.data_keys,
            tenants.iter().map(|t| live(&t.data)).sum::<usize>(),
            "after {:?}: data keys",
            after
        );
        prop_assert_eq!(
            report.blind_index_keys,
            tenants.iter().map(|t| live(&t.roots)).sum::<usize>(),
            "after {:?}: blind-index roots",
            after
        );
        // Which keys, not only how many: every data key the model has loads, or is destroyed.
        for m in tenants {
            for (id, state) in &m.data {
                let got = keyring.key(KeyId::from(*id));
                match state {
                    State::Destroyed => prop_assert!(
                        matches!(got, Err(Error::KeyDestroyed(_))),
                        "after {after:?}: destroyed key {id}"
                    ),
                    _ => prop_assert!(got.is_ok(), "after {after:?}: key {id}: {:?}", got.err()),
                }
            }
        }
        for (t, value, sealed, key) in &self.model.values {
            let got = Encrypted::<String, PeopleEmail>::open_with(&keyring, sealed);
            match tenants[*t].state_of(*key) {
                Some(State::Destroyed) => prop_assert!(
                    matches!(got, Err(Error::KeyDestroyed(_))),
                    "after {after:?}: a value under destroyed key {key}: {got:?}"
                ),
                _ => {
                    let opened = got.map_err(|e| {
                        TestCaseError::fail(format!("after {after:?}: key {key}: {e}"))
                    })?;
                    prop_assert_eq!(opened.into_inner(), value.clone());
                }
            }
        }
        // Each live tenant seals under the model's active key, in a fresh process too.
        for (t, m) in tenants.iter().enumerate() {
            if let Some(active) = m.active() {
                let sealed =
                    Encrypted::<String, PeopleEmail>::for_tenant("probe".into(), TENANTS[t])
                        .seal_with(&keyring)
                        .map_err(|e| TestCaseError::fail(format!("after {after:?}: seal: {e}")))?;
                prop_assert_eq!(header_key(&sealed), active);
            }
        }
        Ok(())
    }
}

/// Replaces record `old` by `new`; `false` (and `old` kept) when the table's constraints refuse
/// `new`.
fn replace(conn: &mut SqliteConnection, old: &KeyRecord, new: &KeyRecord) -> bool {
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        diesel::delete(k::table.find(old.key_id)).execute(conn)?;
        diesel::insert_into(k::table).values(new).execute(conn)?;
        Ok(())
    })
    .is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_key_store_agrees_with_its_model(ops in proptest::collection::vec(op(), 1..16)) {
        encrypted_types_tests::install_keyring();
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
            world.check(op)?;
        }
    }
}
