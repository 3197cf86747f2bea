//! Key-table vector files (docs/KEYTABLE.md §6, written by `tests/vectors/reference.py`) as rows
//! of a real key table: shared by the vector tests and the PKCS#11 test, which loads a vector
//! table through SoftHSM.

use std::path::{Path, PathBuf};

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyRecord, KeyStore, encrypted_types_keys};
use serde::Deserialize;

/// One record of a vector file, bytes as hex.
#[derive(Deserialize, Clone, Debug)]
pub struct KeyTableRec {
    pub key_id: i64,
    pub tenant: Option<String>,
    pub purpose: String,
    pub state: String,
    pub generation: i64,
    pub kek_ref: String,
    pub wrapped_key: Option<String>,
    pub check_value: Option<String>,
    /// `None` in the tables from before the hierarchy.
    pub mac_key_id: Option<i64>,
    pub record_mac: Option<String>,
    /// Absent from `keytable_v1.json`, whose version 1 MACs do not cover them.
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub state_changed_at: i64,
    /// Only where a file gives it (not under the MAC).
    #[serde(default)]
    pub kek_check: Option<String>,
}

impl KeyTableRec {
    /// The record as the library's row.
    pub fn row(&self) -> KeyRecord {
        let hex = |s: &str| hex::decode(s).unwrap();
        KeyRecord {
            key_id: self.key_id,
            tenant: self.tenant.clone(),
            purpose: self.purpose.clone(),
            state: self.state.clone(),
            wrapped_key: self.wrapped_key.as_deref().map(hex),
            kek_ref: self.kek_ref.clone(),
            created_at: self.created_at,
            state_changed_at: self.state_changed_at,
            generation: self.generation,
            check_value: self.check_value.as_deref().map(hex),
            mac_key_id: self.mac_key_id,
            record_mac: self.record_mac.as_deref().map(hex),
            kek_check: self.kek_check.as_deref().map(hex),
        }
    }
}

/// Writes the KEK `hex` as file `name` in `dir` (mode 0600, as `LocalKek` requires).
pub fn kek_file(dir: &Path, name: &str, hex: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all(&hex::decode(hex).unwrap())
        .unwrap();
    path
}

/// An in-memory SQLite key table holding `records`.
pub fn key_table(records: &[KeyTableRec]) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    KeyStore::<LocalKek>::run_migrations(&mut conn).unwrap();
    for r in records {
        diesel::insert_into(encrypted_types_keys::table)
            .values(&r.row())
            .execute(&mut conn)
            .unwrap();
    }
    conn
}
