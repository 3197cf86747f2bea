//! Shared support for the integration tests: the test keyring, the test schema and connections
//! to the three backends.
//!
//! PostgreSQL and MySQL/MariaDB are real servers (URLs from `PG_DATABASE_URL` and
//! `MYSQL_DATABASE_URL`, defaulting to this machine's). A server that cannot be reached fails
//! the test with instructions; nothing is ever skipped.
// Test support: panicking with a clear message is how a test reports a broken environment.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

use encrypted_types::{KeyMaterial, Keyring};

pub mod schema {
    diesel::table! {
        /// One sealed value per row, of any codec type.
        et_codec (id) {
            id -> Integer,
            v -> Binary,
            v_null -> Nullable<Binary>,
        }
    }
    diesel::table! {
        et_people (id) {
            id -> Integer,
            email -> Binary,
            name -> Binary,
        }
    }
    diesel::table! {
        et_people_copy (id) {
            id -> Integer,
            email -> Binary,
        }
    }
    diesel::table! {
        et_frontdesk (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            last_name -> Binary,
            date_of_birth -> Binary,
            ssn -> Binary,
            ssn_bidx -> Binary,
            phone -> Nullable<Binary>,
            name_dob_bidx -> Binary,
            ssn4_dob_bidx -> Binary,
            name_phone_bidx -> Nullable<Binary>,
        }
    }
    diesel::table! {
        et_patients (id) {
            id -> Integer,
            clinic_id -> BigInt,
            name -> Binary,
            email -> Binary,
            email_bidx -> Binary,
            ssn -> Binary,
            ssn_bidx -> Binary,
            dob -> Binary,
            notes -> Nullable<Binary>,
            phone -> Nullable<Binary>,
            phone_bidx -> Nullable<Binary>,
        }
    }
}

/// Tables keyed the ways real schemas are: by UUID (PostgreSQL `uuid`, or 16 bytes in a
/// binary column) and by a composite `(clinic_id, patient_no)` key with a text part.
pub mod real_schema {
    diesel::table! {
        et_uuid_pg (id) {
            id -> Uuid,
            clinic_id -> BigInt,
            name -> Binary,
            email -> Binary,
            email_bidx -> Binary,
        }
    }
    diesel::table! {
        et_uuid_bin (id) {
            id -> Binary,
            clinic_id -> BigInt,
            name -> Binary,
            email -> Binary,
            email_bidx -> Binary,
        }
    }
    diesel::table! {
        et_visits (clinic_id, patient_no) {
            clinic_id -> BigInt,
            patient_no -> Text,
            note -> Binary,
            code -> Binary,
            ref_id -> Nullable<Binary>,
        }
    }

    // Values bound to their row (`bind_row = id`): the id is the application's, not SERIAL.
    diesel::table! {
        et_bound (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            ssn -> Binary,
            ssn_bidx -> Binary,
            notes -> Nullable<Binary>,
        }
    }

    // A table in the middle of an expand/contract migration: `email_plain` and `note_plain`
    // are the legacy TEXT columns, `email`, `email_bidx` and `note` the columns added beside
    // them (nullable: rows not migrated yet have none).
    diesel::table! {
        et_contacts (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            email_plain -> Nullable<Text>,
            note_plain -> Nullable<Text>,
            email -> Nullable<Binary>,
            email_bidx -> Nullable<Binary>,
            note -> Nullable<Binary>,
        }
    }

    // A rolling deploy (KEYS.md, "Encrypting a column that held plaintext"): the legacy
    // columns keep their names, which the old application version still writes; the sealed
    // columns are added under new ones, so no old write can land in them.
    diesel::table! {
        et_staff (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            email -> Nullable<Text>,
            note -> Nullable<Text>,
            email_sealed -> Nullable<Binary>,
            email_sealed_bidx -> Nullable<Binary>,
            note_sealed -> Nullable<Binary>,
        }
    }

    /// `et_staff` as the old application version was compiled against it.
    pub mod old {
        diesel::table! {
            et_staff (id) {
                id -> BigInt,
                clinic_id -> BigInt,
                email -> Text,
                note -> Nullable<Text>,
            }
        }
    }

    /// `et_staff` after the contract step, its sealed columns renamed to the fields' names.
    pub mod contracted {
        diesel::table! {
            et_staff (id) {
                id -> BigInt,
                clinic_id -> BigInt,
                email -> Binary,
                email_bidx -> Binary,
                note -> Nullable<Binary>,
            }
        }
    }

    /// The legacy table, before the migration: plaintext in `TEXT`/`VARCHAR` columns.
    pub fn legacy_contacts_ddl(backend: &str) -> Vec<String> {
        let (email, note) = match backend {
            "mysql" => ("VARCHAR(255)", "TEXT"),
            _ => ("TEXT", "TEXT"),
        };
        vec![
            "DROP TABLE IF EXISTS et_contacts".into(),
            format!(
                "CREATE TABLE et_contacts (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, \
                 email_plain {email}, note_plain {note})"
            ),
        ]
    }

    /// The expand step: the encrypted columns added beside the legacy ones, as the library
    /// writes them (`schema::expand`): nullable and without a default, so no backend rewrites
    /// the table to add them.
    pub fn expand_contacts_ddl(backend: &str) -> Vec<String> {
        contacts_migration(backend).up
    }

    /// [`expand_contacts_ddl`] with its `down` step.
    pub fn contacts_migration(backend: &str) -> encrypted_types::schema::Migration {
        use encrypted_types::EncryptedModel;
        let dialect = match backend {
            "postgres" => encrypted_types::schema::Dialect::Postgres,
            "mysql" => encrypted_types::schema::Dialect::Mysql,
            _ => encrypted_types::schema::Dialect::Sqlite,
        };
        encrypted_types::schema::expand(&[crate::models::Contact::MODEL], dialect)
    }

    /// The DDL of these tables on `backend` (`sqlite`, `postgres`, `mysql`).
    pub fn ddl(backend: &str) -> Vec<String> {
        let (blob, text_key, uuid_table) = match backend {
            "postgres" => (
                "BYTEA",
                "TEXT",
                "CREATE TABLE et_uuid_pg (id UUID PRIMARY KEY, clinic_id BIGINT NOT NULL, \
                 name BYTEA NOT NULL, email BYTEA NOT NULL, email_bidx BYTEA NOT NULL)",
            ),
            "mysql" => (
                "LONGBLOB",
                "VARCHAR(32)",
                "CREATE TABLE et_uuid_bin (id BINARY(16) PRIMARY KEY, clinic_id BIGINT NOT NULL, \
                 name LONGBLOB NOT NULL, email LONGBLOB NOT NULL, email_bidx VARBINARY(32) NOT NULL)",
            ),
            _ => (
                "BLOB",
                "TEXT",
                "CREATE TABLE et_uuid_bin (id BLOB PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, \
                 name BLOB NOT NULL, email BLOB NOT NULL, email_bidx BLOB NOT NULL)",
            ),
        };
        let bidx = if backend == "mysql" {
            "VARBINARY(32)"
        } else {
            blob
        };
        vec![
            "DROP TABLE IF EXISTS et_uuid_pg".into(),
            "DROP TABLE IF EXISTS et_uuid_bin".into(),
            "DROP TABLE IF EXISTS et_visits".into(),
            "DROP TABLE IF EXISTS et_bound".into(),
            format!(
                "CREATE TABLE et_bound (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, \
                 ssn {blob} NOT NULL, ssn_bidx {bidx} NOT NULL, notes {blob})"
            ),
            uuid_table.into(),
            format!(
                "CREATE TABLE et_visits (clinic_id BIGINT NOT NULL, patient_no {text_key} NOT NULL, \
                 note {blob} NOT NULL, code {blob} NOT NULL, ref_id {blob}, \
                 PRIMARY KEY (clinic_id, patient_no))"
            ),
        ]
    }
}

pub mod models;

encrypted_types::column_context!(pub CodecV = "et_codec"."v");
encrypted_types::column_context!(pub CodecVNull = "et_codec"."v_null");
encrypted_types::column_context!(pub PeopleEmail = "et_people"."email");
encrypted_types::column_context!(pub PeopleName = "et_people"."name");
encrypted_types::column_context!(pub PeopleCopyEmail = "et_people_copy"."email");

/// Canary plaintexts: a test that finds one of these in a log, a `Debug` string or stored bytes
/// has found a leak.
pub const CANARY_EMAIL: &str = "canary.ann@example.org";
pub const CANARY_NAME: &str = "Canary Annabelle Zoë";

/// The key ids of the test keyring.
pub mod keys {
    pub const DEFAULT: u32 = 1;
    pub const RETIRED: u32 = 2;
    pub const CLINIC_A: u32 = 10;
    pub const CLINIC_B: u32 = 20;
    pub const DESTROYED: u32 = 99;
    /// Tenants `1` and `2`, the `clinic_id`s of the derive tests.
    pub const TENANT_1: u32 = 31;
    pub const TENANT_2: u32 = 32;
}

pub fn key_bytes(id: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (id as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    k
}

/// The keyring every test in a process uses: one default primary key, one retired key, a
/// primary key for each of two tenants, and a destroyed key id.
pub fn test_keyring() -> Keyring {
    Keyring::builder()
        .data_key(
            keys::DEFAULT,
            None,
            KeyMaterial::from_bytes(key_bytes(keys::DEFAULT)),
        )
        .data_key(
            keys::RETIRED,
            None,
            KeyMaterial::from_bytes(key_bytes(keys::RETIRED)),
        )
        .data_key(
            keys::CLINIC_A,
            Some("clinic-a".into()),
            KeyMaterial::from_bytes(key_bytes(10)),
        )
        .data_key(
            keys::CLINIC_B,
            Some("clinic-b".into()),
            KeyMaterial::from_bytes(key_bytes(20)),
        )
        .data_key(
            keys::TENANT_1,
            Some("1".into()),
            KeyMaterial::from_bytes(key_bytes(31)),
        )
        .data_key(
            keys::TENANT_2,
            Some("2".into()),
            KeyMaterial::from_bytes(key_bytes(32)),
        )
        .destroyed_key(keys::DESTROYED)
        .primary(None, keys::DEFAULT)
        .primary(Some("clinic-a".into()), keys::CLINIC_A)
        .primary(Some("clinic-b".into()), keys::CLINIC_B)
        .primary(Some("1".into()), keys::TENANT_1)
        .primary(Some("2".into()), keys::TENANT_2)
        .blind_index_root(None, KeyMaterial::from_bytes(key_bytes(200)))
        .blind_index_root(Some("1".into()), KeyMaterial::from_bytes(key_bytes(201)))
        .blind_index_root(Some("2".into()), KeyMaterial::from_bytes(key_bytes(202)))
        .build()
        .expect("test keyring is valid")
}

/// Installs [`test_keyring`] once per process.
pub fn install_keyring() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| test_keyring().install());
}

/// A row id no other test in this process uses, so tests can run in parallel against one
/// table (each inside its own rolled-back transaction).
pub fn next_id() -> i32 {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Does `haystack` contain `needle` anywhere?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The library error inside a Diesel error, if any.
pub fn lib_error(e: &diesel::result::Error) -> Option<&encrypted_types::Error> {
    encrypted_types::Error::from_diesel(e)
}

/// The test tables' DDL for one backend. `blob` is the backend's binary type.
pub fn ddl(blob: &str) -> Vec<String> {
    // MySQL cannot index a BLOB without a prefix length; the fixed-size index fits VARBINARY.
    let bidx = if blob == "LONGBLOB" {
        "VARBINARY(32)"
    } else {
        blob
    };
    vec![
        "DROP TABLE IF EXISTS et_patients".into(),
        format!(
            "CREATE TABLE et_patients (id INTEGER PRIMARY KEY, clinic_id BIGINT NOT NULL, \
             name {blob} NOT NULL, email {blob} NOT NULL, email_bidx {bidx} NOT NULL, \
             ssn {blob} NOT NULL, ssn_bidx {bidx} NOT NULL, dob {blob} NOT NULL, notes {blob}, \
             phone {blob}, phone_bidx {bidx})"
        ),
        "CREATE INDEX et_patients_email ON et_patients (clinic_id, email_bidx)".into(),
        "CREATE INDEX et_patients_ssn ON et_patients (clinic_id, ssn_bidx)".into(),
        "CREATE INDEX et_patients_phone ON et_patients (clinic_id, phone_bidx)".into(),
        "DROP TABLE IF EXISTS et_codec".into(),
        "DROP TABLE IF EXISTS et_people".into(),
        "DROP TABLE IF EXISTS et_people_copy".into(),
        format!("CREATE TABLE et_codec (id INTEGER PRIMARY KEY, v {blob} NOT NULL, v_null {blob})"),
        format!(
            "CREATE TABLE et_people (id INTEGER PRIMARY KEY, email {blob} NOT NULL, name {blob} NOT NULL)"
        ),
        format!("CREATE TABLE et_people_copy (id INTEGER PRIMARY KEY, email {blob} NOT NULL)"),
        "DROP TABLE IF EXISTS et_frontdesk".into(),
    ]
    .into_iter()
    .chain(frontdesk_ddl(blob))
    .collect()
}

/// The front desk's table as `schema::create` writes it for the backend whose binary type is
/// `blob`: its compound-index columns, and an index on (clinic_id, index) for each.
pub fn frontdesk_ddl(blob: &str) -> Vec<String> {
    use encrypted_types::EncryptedModel;
    use encrypted_types::schema::{Dialect, create};
    let dialect = match blob {
        "BYTEA" => Dialect::Postgres,
        "LONGBLOB" => Dialect::Mysql,
        _ => Dialect::Sqlite,
    };
    create(&[models::FrontDesk::MODEL], dialect)
        .expect("the front desk's table has known types")
        .up
}

pub fn pg_url() -> String {
    std::env::var("PG_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

pub fn unreachable(backend: &str, url: &str, err: &dyn std::fmt::Display) -> ! {
    let how = match backend {
        "PostgreSQL" => {
            "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or set PG_DATABASE_URL"
        }
        _ => {
            "start it with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`, or set MYSQL_DATABASE_URL"
        }
    };
    panic!("{backend} is not reachable at {url}: {err}\n{how}")
}

mod connect;
pub mod derive_suite;
pub mod keytable;
pub mod kms;
mod suite;
pub mod vector_table;

pub use connect::*;

/// Value equality that treats two NaNs with the same bits as equal, so codec round trips can
/// be checked bit for bit.
pub trait Same {
    fn same(&self, other: &Self) -> bool;
}

macro_rules! same_by_eq {
    ($($t:ty),*) => {$(impl Same for $t { fn same(&self, other: &Self) -> bool { self == other } })*};
}
same_by_eq!(
    String,
    Vec<u8>,
    bool,
    i16,
    i32,
    i64,
    chrono::NaiveDate,
    chrono::NaiveDateTime,
    chrono::DateTime<chrono::Utc>,
    uuid::Uuid,
    serde_json::Value,
    encrypted_types::Json<Allergy>
);

impl Same for f64 {
    fn same(&self, other: &Self) -> bool {
        self.to_bits() == other.to_bits()
    }
}

/// A row of `et_people`, read and written with Diesel's own derives.
#[derive(Debug, diesel::Queryable, diesel::Insertable)]
#[diesel(table_name = schema::et_people)]
pub struct Person {
    pub id: i32,
    pub email: encrypted_types::Encrypted<String, PeopleEmail>,
    pub name: encrypted_types::Encrypted<String, PeopleName>,
}

/// A serde type for the `Json<T>` codec.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Allergy {
    pub substance: String,
    pub severe: bool,
}

/// Calls `$m!(Type, value)` for every codec case: each type's extremes, empty and non-ASCII
/// values, and 1 MiB values.
#[macro_export]
macro_rules! codec_cases {
    ($m:ident $(, $arg:expr)*) => {{
        use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
        $m!($($arg,)* String, String::new());
        $m!($($arg,)* String, "plain ascii".to_owned());
        $m!($($arg,)* String, "Zoë Ångström 患者 🩺 \u{0}".to_owned());
        $m!($($arg,)* String, "é".repeat(1 << 19));
        $m!($($arg,)* Vec<u8>, Vec::new());
        $m!($($arg,)* Vec<u8>, (0..=255u8).collect::<Vec<u8>>());
        $m!($($arg,)* Vec<u8>, vec![0xA5u8; 1 << 20]);
        $m!($($arg,)* bool, true);
        $m!($($arg,)* bool, false);
        $m!($($arg,)* i16, i16::MIN);
        $m!($($arg,)* i16, i16::MAX);
        $m!($($arg,)* i32, i32::MIN);
        $m!($($arg,)* i32, i32::MAX);
        $m!($($arg,)* i64, i64::MIN);
        $m!($($arg,)* i64, i64::MAX);
        $m!($($arg,)* i64, 0);
        $m!($($arg,)* f64, f64::NAN);
        $m!($($arg,)* f64, f64::from_bits(0x7ff8_0000_0000_0001));
        $m!($($arg,)* f64, -0.0);
        $m!($($arg,)* f64, f64::INFINITY);
        $m!($($arg,)* f64, f64::NEG_INFINITY);
        $m!($($arg,)* f64, f64::MIN_POSITIVE);
        $m!($($arg,)* f64, -1.5e300);
        $m!($($arg,)* NaiveDate, NaiveDate::MIN);
        $m!($($arg,)* NaiveDate, NaiveDate::MAX);
        $m!($($arg,)* NaiveDate, NaiveDate::from_ymd_opt(1969, 12, 31).unwrap());
        $m!($($arg,)* NaiveDateTime, NaiveDateTime::MIN);
        $m!($($arg,)* NaiveDateTime, NaiveDateTime::MAX);
        $m!($($arg,)* NaiveDateTime, DateTime::from_timestamp(-1, 999_999_999).unwrap().naive_utc());
        $m!($($arg,)* DateTime<Utc>, DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap());
        $m!($($arg,)* uuid::Uuid, uuid::Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8));
        $m!($($arg,)* uuid::Uuid, uuid::Uuid::nil());
        $m!($($arg,)* serde_json::Value, serde_json::json!({"b": [1, 2.5, null], "a": "Zoë", "c": {"d": true}}));
        $m!($($arg,)* serde_json::Value, serde_json::Value::Null);
        $m!($($arg,)*
            encrypted_types::Json<$crate::Allergy>,
            encrypted_types::Json($crate::Allergy { substance: "penicillin".into(), severe: true })
        );
    }};
}

/// Runs the `#[ignore]`d test `name` of the current test binary in a fresh process, with
/// `envs`, and fails unless it passed: "a fresh process" for the key-provider tests.
pub fn run_in_fresh_process(name: &str, envs: &[(&str, String)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("spawn the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "fresh process {name} failed:\n{text}"
    );
}

/// `SELECT COUNT(*) AS n ...` on any Diesel connection: the independent SQL counts the tests
/// check the library's own reports against.
#[macro_export]
macro_rules! sql_count {
    ($conn:expr, $sql:expr) => {{
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::RunQueryDsl::get_result::<N>(diesel::sql_query($sql), $conn)
            .unwrap()
            .n
    }};
}

/// Serializes the tests of one binary that install keyrings or share files: take it first.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection to `url` (a server URL, or an SQLite file that other processes share: it
/// waits for their locks).
pub fn connect<C: diesel::Connection + diesel::connection::SimpleConnection>(url: &str) -> C {
    let mut c = C::establish(url).unwrap();
    if !url.contains("://") {
        c.batch_execute("PRAGMA busy_timeout = 20000").unwrap();
    }
    c
}

/// A database of the test's own (committed data): on a server a fresh database, on SQLite a
/// file in `dir`.
pub fn database<C: diesel::Connection + diesel::connection::SimpleConnection>(
    admin_url: Option<String>,
    name: &str,
    dir: &tempfile::TempDir,
) -> String {
    let Some(admin_url) = admin_url else {
        return dir.path().join("real.db").to_str().unwrap().to_owned();
    };
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    let mut admin = C::establish(&admin_url).unwrap();
    if base.starts_with("mysql") {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
            ))
            .unwrap();
    } else {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
    }
    url
}
