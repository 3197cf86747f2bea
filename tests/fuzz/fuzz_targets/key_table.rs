//! Key-record parsing and MAC checking: a valid key table (two tenants, a rotation, a destroyed
//! key, under one local KEK), changed field by field as the input says, then loaded by a fresh
//! store. Never a panic; and a table that differs from the valid one in any authenticated field
//! (everything but `kek_check`) never loads.
#![no_main]

use std::sync::{Mutex, OnceLock};

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyRecord, KeyStore, encrypted_types_keys as k};
use encrypted_types::{KeyId, TenantId};
use libfuzzer_sys::fuzz_target;

struct Table {
    _dir: tempfile::TempDir,
    kek: std::path::PathBuf,
    conn: SqliteConnection,
    records: Vec<KeyRecord>,
}

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
        let kek = dir.path().join("fuzz.kek");
        let mut conn =
            SqliteConnection::establish(":memory:").unwrap_or_else(|_| std::process::abort());
        let ok = (|| -> Result<Vec<KeyRecord>, encrypted_types::Error> {
            KeyStore::<LocalKek>::run_migrations(&mut conn)?;
            let store = KeyStore::new(LocalKek::create(&kek)?)
                .with_destroy_grace(std::time::Duration::ZERO);
            store.create_tenant(&mut conn, Some(&TenantId::from("a")))?;
            store.create_tenant(&mut conn, Some(&TenantId::from("b")))?;
            let old = store.create_tenant(&mut conn, None)?.data;
            store.rotate_data_key(&mut conn, None)?;
            store.destroy_key(&mut conn, old, &[])?;
            store.rotate_data_key(&mut conn, Some(&TenantId::from("a")))?;
            k::table
                .order(k::key_id)
                .select(KeyRecord::as_select())
                .load(&mut conn)
                .map_err(|e| encrypted_types::Error::Store(e.to_string()))
        })();
        let records = ok.unwrap_or_else(|_| std::process::abort());
        Mutex::new(Table {
            _dir: dir,
            kek,
            conn,
            records,
        })
    })
}

fn bytes(v: &mut Option<Vec<u8>>, op: u8, arg: &[u8]) {
    match (op % 4, v.as_mut()) {
        (0, Some(b)) if !b.is_empty() => {
            let i = usize::from(arg.first().copied().unwrap_or(0)) % b.len();
            b[i] ^= arg.get(1).copied().unwrap_or(1) | 1;
        }
        (1, Some(b)) => b.truncate(usize::from(arg.first().copied().unwrap_or(0)) % (b.len() + 1)),
        (2, _) => *v = None,
        _ => *v = Some(arg.to_vec()),
    }
}

fn text(arg: &[u8]) -> String {
    const WORDS: [&str; 10] = [
        "active", "retired", "destroyed", "data", "blind_index", "wrapping", "a", "b", "key:1", "",
    ];
    match arg.first() {
        Some(i) if usize::from(*i) < WORDS.len() * 20 => WORDS[usize::from(*i) % WORDS.len()].into(),
        _ => String::from_utf8_lossy(arg).into_owned(),
    }
}

fn int(arg: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(arg) {
        *d = *s;
    }
    i64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut guard = table().lock().unwrap_or_else(|e| e.into_inner());
    let t = &mut *guard;
    let mut records = t.records.clone();
    // Each change: [record, field, op, len, arg...].
    let mut rest = data;
    while let [r, field, op, len, tail @ ..] = rest {
        let n = usize::from(*len % 40).min(tail.len());
        let (arg, next) = tail.split_at(n);
        rest = next;
        let i = usize::from(*r) % records.len();
        let rec = &mut records[i];
        match field % 13 {
            0 => rec.key_id = i64::from(u32::from_le_bytes([arg.first().copied().unwrap_or(0), *op, 0, 0])),
            1 => rec.tenant = if *op % 3 == 0 { None } else { Some(text(arg)) },
            2 => rec.purpose = text(arg),
            3 => rec.state = text(arg),
            4 => rec.generation = int(arg),
            5 => rec.kek_ref = text(arg),
            6 => bytes(&mut rec.wrapped_key, *op, arg),
            7 => bytes(&mut rec.check_value, *op, arg),
            8 => rec.mac_key_id = if *op % 5 == 0 { None } else { Some(int(arg)) },
            9 => bytes(&mut rec.record_mac, *op, arg),
            10 => rec.created_at = int(arg),
            11 => rec.state_changed_at = int(arg),
            _ => bytes(&mut rec.kek_check, *op, arg),
        }
    }
    let authenticated = |r: &KeyRecord| {
        (
            r.key_id,
            r.tenant.clone(),
            r.purpose.clone(),
            r.state.clone(),
            r.generation,
            r.kek_ref.clone(),
            r.wrapped_key.clone(),
            r.check_value.clone(),
            r.mac_key_id,
            r.record_mac.clone(),
            r.created_at,
            r.state_changed_at,
        )
    };
    let changed = records
        .iter()
        .zip(&t.records)
        .any(|(a, b)| authenticated(a) != authenticated(b));
    let conn = &mut t.conn;
    let written = conn.transaction::<_, diesel::result::Error, _>(|conn| {
        diesel::delete(k::table).execute(conn)?;
        diesel::insert_into(k::table).values(&records).execute(conn)?;
        Ok(())
    });
    if written.is_err() {
        return; // the table's own constraints refused it
    }
    let store = match LocalKek::open(&t.kek) {
        Ok(kek) => KeyStore::new(kek),
        Err(_) => std::process::abort(),
    };
    let loaded = store.load(conn);
    if changed && loaded.is_ok() {
        // An authenticated field changed and the table still loaded.
        std::process::abort();
    }
    if let Ok((keyring, _)) = loaded {
        let _ = keyring.key(KeyId::from(1));
    }
});
