//! README.md's Rust blocks, compiled and run. Each block sits below between `// README block N`
//! and `// end of README block N`, exactly as README.md shows it (rustfmt leaves these lines
//! alone), and `readme_shows_this_code` checks that README.md holds the same lines, so a block
//! that stops compiling, or a README edit that is not made here, fails the suite.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use diesel::connection::SimpleConnection;
use diesel::{Connection, QueryDsl, RunQueryDsl, SqliteConnection};
use encrypted_types::{KeyMaterial, Keyring};

mod schema {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            clinic_id -> BigInt,
            name -> Binary,
            email -> Binary,
            email_bidx -> Binary,
            ssn -> Binary,
            ssn_bidx -> Binary,
            date_of_birth -> Binary,
            notes -> Nullable<Binary>,
        }
    }
}
use schema::patients;

// The README's model derives nothing else: no `Debug`, which would print plaintext.
#[allow(missing_debug_implementations)]
#[rustfmt::skip]
mod block_1 {
    use super::patients;
// README block 1
use encrypted_types::Encrypted;

#[derive(Encrypted)]
#[encrypted(table = patients, tenant = clinic_id)]
pub struct Patient {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email, bits = 12))]   // sized for ~10,000 patients
    pub email: String,                                        // per clinic: index::plan
    #[encrypted(blind_index(normalize = digits, bits = 12))]
    pub ssn: String,
    #[encrypted]
    pub date_of_birth: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
}
// end of README block 1
}
use block_1::Patient;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[rustfmt::skip]
fn block_2(conn: &mut SqliteConnection, patient: Patient, many: Vec<Patient>) -> Res<(usize, usize)> {
// README block 2
use diesel::prelude::*;

diesel::insert_into(patients::table).values(&patient).execute(conn)?;
diesel::insert_into(patients::table).values(Patient::batch(&many)).execute(conn)?;
let clinic: i64 = 7;                                                        // the tenant column's value
let rows = Patient::find_by_email(conn, &clinic, " Ann@Example.ORG ")?;      // sync; `_async` too
let some = Patient::find_by_email_in(conn, &clinic, ["p2@example.org", "p3@example.org"])?; // one query
let query = patients::table
    .select(Patient::as_select())
    .filter(Patient::email_eq(&clinic, "ann@example.org"));                  // sync or async
// end of README block 2
    assert_eq!(some.len(), 2);
    Ok((rows.len(), query.load::<Patient>(conn)?.len()))
}

#[rustfmt::skip]
fn block_3(conn: &mut SqliteConnection) -> Res<()> {
// README block 3
use encrypted_types::kek::local::LocalKek;          // aws::AwsKms, pkcs11::Pkcs11Kek in production
use encrypted_types::store::KeyStore;
use encrypted_types::{EncryptedModel, TenantId};

KeyStore::<LocalKek>::run_migrations(conn)?;         // or copy migrations/<backend>/ into yours
let store = KeyStore::new(LocalKek::open_or_create_dev("dev.kek")?);
let tenant = TenantId::from(7i64);                   // Patient's tenant: clinic_id = 7
let keys = store.create_tenant(conn, Some(&tenant))?; // its data key and blind-index key
store.load_and_install(conn)?;                       // at startup: unwrap, self-test, install
// ... write and read patients of clinic 7 ...
store.rotate_data_key(conn, Some(&tenant))?;         // a new data key for new writes,
store.load_and_install(conn)?;                       // in use once the keyring is reloaded
// Re-seal old rows in the background: found by key id in SQL, walked by the table's own
// primary key (any type, composite too), compare-and-swap updates, checkpointed batches (a
// killed job resumes); Scope::Parts(n) lets any number of worker processes share the job.
let options = encrypted_types::jobs::JobOptions { batch: 500, ..Default::default() };
let report = encrypted_types::jobs::rotate_data_keys(conn, &Patient::MODEL, "rotate-2026-11", &options, |p| {
    println!("{}: {} values re-sealed", p.column, p.rows_done);
})?;
assert!(report.finished); // every value verified off the old key, counted in SQL
// Read-only: every stored value opened as the application reads it (its tenant's key, its
// row); each one that does not open is named by row key, column and reason.
let check = encrypted_types::jobs::verify(conn, &Patient::MODEL, None)?;
assert!(check.ok(), "{:?}", check.unopenable);
// Destroying the old key is refused while rows still use it, and for a grace period after its
// retirement (a day; with KeyStore::with_seal_max_age, that age plus 5 minutes): a process
// that has not reloaded may still seal with it. Poll with store.refresh(conn) meanwhile.
let early = store.destroy_key(conn, keys.data, &[Patient::MODEL]);
assert!(matches!(early, Err(encrypted_types::Error::DestroyTooSoon { .. })));
let report = store.shred_tenant(conn, &tenant, &[Patient::MODEL])?;
println!("{} rows can never be read again", report.rows_unreadable);
// end of README block 3
    Ok(())
}

#[rustfmt::skip]
async fn block_4(
    conn: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection>,
) -> Res<()> {
// README block 4
// On diesel-async (AsyncPgConnection, AsyncMysqlConnection, SyncConnectionWrapper), feature
// "async": the same operations and jobs, awaited, with no spawn_blocking.
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types::{EncryptedModel, TenantId};

let store = KeyStore::new(LocalKek::open_or_create_dev("dev.kek")?);
store.create_tenant_async(conn, Some(&TenantId::from(7i64))).await?;
let seen = store.generation_async(conn).await?; // one cheap query over the key table
store.load_and_install_async(conn).await?;
let options = encrypted_types::jobs::JobOptions::default();
encrypted_types::jobs::rotate_data_keys_async(conn, &Patient::MODEL, "rotate", &options, |_| {}).await?;
// Every few seconds, in every process: reload when another process changed keys.
if store.generation_async(conn).await? != seen {
    store.load_and_install_async(conn).await?;
}
// end of README block 4
    Ok(())
}

fn database() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute(
        "CREATE TABLE patients (id BIGINT PRIMARY KEY NOT NULL, clinic_id BIGINT NOT NULL, \
         name BLOB NOT NULL, email BLOB NOT NULL, email_bidx BLOB NOT NULL, ssn BLOB NOT NULL, \
         ssn_bidx BLOB NOT NULL, date_of_birth BLOB NOT NULL, notes BLOB)",
    )
    .unwrap();
    conn
}

fn patient(id: i64, email: &str) -> Patient {
    Patient {
        id,
        clinic_id: 7,
        name: format!("Patient {id}"),
        email: email.to_owned(),
        ssn: format!("{id:09}"),
        date_of_birth: chrono::NaiveDate::from_ymd_opt(1990, 1, 2).unwrap(),
        notes: None,
    }
}

#[test]
fn the_write_and_find_block_runs() {
    let _g = encrypted_types_tests::serial();
    Keyring::builder()
        .data_key(70, Some("7".into()), KeyMaterial::generate().unwrap())
        .primary(Some("7".into()), 70)
        .blind_index_root(Some("7".into()), KeyMaterial::generate().unwrap())
        .build()
        .unwrap()
        .install();
    let conn = &mut database();
    let many = (2..6)
        .map(|i| patient(i, &format!("p{i}@example.org")))
        .collect();
    let (found, filtered) = block_2(conn, patient(1, "ann@example.org"), many).unwrap();
    assert_eq!((found, filtered), (1, 1));
    let rows: i64 = patients::table.count().get_result(conn).unwrap();
    assert_eq!(rows, 5);
}

#[test]
fn the_key_management_block_runs() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    // The block creates `dev.kek` in the working directory.
    std::env::set_current_dir(dir.path()).unwrap();
    block_3(&mut database()).unwrap();
    assert!(dir.path().join("dev.kek").exists());
}

#[test]
fn the_async_block_runs() {
    let _g = encrypted_types_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let mut sync = database();
    encrypted_types::store::KeyStore::<encrypted_types::kek::local::LocalKek>::run_migrations(
        &mut sync,
    )
    .unwrap();
    let conn = &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper::new(sync);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(block_4(conn)).unwrap();
    let keys: i64 = runtime
        .block_on(diesel_async::RunQueryDsl::get_result(
            encrypted_types::store::encrypted_types_keys::table
                .filter(diesel::ExpressionMethods::ne(
                    encrypted_types::store::encrypted_types_keys::purpose,
                    "wrapping",
                ))
                .count(),
            conn,
        ))
        .unwrap();
    assert_eq!(keys, 2, "the block created the tenant's two keys");
}

/// The lines between `start` and `end` markers of this file, or between the `rust` fences of
/// README.md, trimmed.
fn blocks(text: &str, readme: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in text.lines() {
        let t = line.trim_end();
        let (open, close) = if readme {
            (t == "```rust", t == "```")
        } else {
            (
                t.starts_with("// README block "),
                t.starts_with("// end of README block "),
            )
        };
        if open && cur.is_none() {
            cur = Some(Vec::new());
        } else if close && cur.is_some() {
            out.extend(cur.take());
        } else if let Some(c) = &mut cur {
            c.push(t.to_owned());
        }
    }
    out
}

#[test]
fn readme_shows_this_code() {
    let readme = include_str!("../../README.md");
    let here = include_str!("readme.rs");
    let want = blocks(here, false);
    let have = blocks(readme, true);
    assert_eq!(want.len(), 4);
    assert_eq!(
        have.len(),
        want.len(),
        "README.md has another number of rust blocks"
    );
    for (i, (h, w)) in have.iter().zip(&want).enumerate() {
        assert_eq!(
            h,
            w,
            "README block {} differs from tests/tests/readme.rs",
            i + 1
        );
    }
}
