//! Keys at production scale, against a real KMS protocol (the emulator of `tests/kms/`):
//! readiness of a fresh process with N tenants, and the KEK rotation job (`rewrap`) from a local
//! KEK file to KMS. Driven by `tests/scale/keys.sh`, which counts KMS requests from the
//! emulator's own log; the numbers are in README.
//!
//! ```text
//! keys_at_scale setup  DB N (--kms URL KEY | --local FILE)   N tenants, one sealed row each
//! keys_at_scale ready  DB --kms URL KEY [--served]            load (all, or the served tenant's), read one random tenant's row
//! keys_at_scale rewrap DB --kms URL KEY --local FILE          move every key under the KMS key
//! keys_at_scale verify DB --kms URL KEY                       open every row with the KMS key alone
//! ```
//!
//! `cargo run --release -p encrypted-types --example keys_at_scale --features sqlite,migrations,local-kek,aws-kms -- ...`
// An example that cannot set up should stop loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Binary, Text};
use encrypted_types::Encrypted;
use encrypted_types::kek::KekProvider;
use encrypted_types::kek::aws::{AwsKms, AwsKmsConfig};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, RewrapOptions};

// The sealed column: bound to table `notes`, column `body`.
encrypted_types::column_context!(NoteBody = "notes"."body");

#[derive(QueryableByName)]
struct Note {
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Binary)]
    body: Vec<u8>,
}

fn arg(args: &[String], flag: &str, n: usize) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + n))
        .cloned()
}

fn kms(args: &[String]) -> Option<AwsKms> {
    let url = arg(args, "--kms", 1)?;
    let key = arg(args, "--kms", 2).expect("--kms URL KEY");
    Some(
        AwsKms::new(AwsKmsConfig {
            key_id: key,
            region: "us-east-1".into(),
            endpoint_url: Some(url),
            credentials: Some(("testing".into(), "testing".into())),
            timeout: Duration::from_secs(10),
        })
        .expect("KMS client"),
    )
}

fn open_db(path: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::establish(path).expect("sqlite");
    KeyStore::<LocalKek>::run_migrations(&mut conn).expect("key table");
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS notes (tenant TEXT PRIMARY KEY NOT NULL, body BLOB NOT NULL)",
    )
    .execute(&mut conn)
    .expect("notes table");
    conn
}

fn setup<P: KekProvider>(conn: &mut SqliteConnection, store: &KeyStore<P>, n: usize) {
    let started = Instant::now();
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for t in 0..n {
            store
                .create_tenant(conn, Some(&format!("tenant-{t}").as_str().into()))
                .expect("tenant");
        }
        Ok(())
    })
    .expect("tenants");
    let created = started.elapsed();
    let (keyring, _) = store.load(conn).expect("load");
    conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for t in 0..n {
            let tenant = format!("tenant-{t}");
            let sealed = Encrypted::<String, NoteBody>::for_tenant(
                format!("note of {tenant}"),
                tenant.as_str(),
            )
            .seal_with(&keyring)
            .expect("seal");
            diesel::sql_query("INSERT INTO notes (tenant, body) VALUES (?, ?)")
                .bind::<Text, _>(&tenant)
                .bind::<Binary, _>(sealed)
                .execute(conn)?;
        }
        Ok(())
    })
    .expect("rows");
    println!(
        "setup: {n} tenants created in {:.1} s, {n} rows sealed",
        created.as_secs_f64()
    );
}

fn random_tenant(n: usize) -> usize {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS randomness");
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().cloned().unwrap_or_default();
    let db = args.get(1).cloned().expect("DB path");
    let conn = &mut open_db(&db);
    match cmd.as_str() {
        "setup" => {
            let n: usize = args.get(2).and_then(|n| n.parse().ok()).expect("N");
            match (kms(&args), arg(&args, "--local", 1)) {
                (Some(k), _) => setup(conn, &KeyStore::new(k), n),
                (None, Some(f)) => setup(
                    conn,
                    &KeyStore::new(LocalKek::open_or_create_dev(f).expect("kek")),
                    n,
                ),
                _ => panic!("--kms URL KEY or --local FILE"),
            }
        }
        "ready" => {
            let store = KeyStore::new(kms(&args).expect("--kms URL KEY"));
            // --served: load only the tenant this request is for (`ensure_loaded`), not the table.
            let (t, report) = if args.iter().any(|a| a == "--served") {
                let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "(SELECT COUNT(*) FROM notes)",
                ))
                .get_result(conn)
                .expect("count");
                let t = random_tenant(usize::try_from(n).expect("count"));
                let tenant = format!("tenant-{t}").as_str().into();
                let (keyring, report) = store.load_tenants(conn, &[tenant]).expect("load");
                keyring.install();
                (t, report)
            } else {
                let report = store.load_and_install(conn).expect("load");
                (random_tenant(report.data_keys), report)
            };
            let note: Vec<Note> =
                diesel::sql_query("SELECT tenant, body FROM notes WHERE tenant = ?")
                    .bind::<Text, _>(format!("tenant-{t}"))
                    .load(conn)
                    .expect("row");
            let note = note.first().expect("the tenant's row");
            let opened = Encrypted::<String, NoteBody>::open_with(
                &encrypted_types::Keyring::current().expect("installed"),
                &note.body,
            )
            .expect("open");
            assert_eq!(opened.as_str(), format!("note of {}", note.tenant));
            println!(
                "ready: {} tenants, first query served {:.0} ms after start, {} KEK calls",
                report.data_keys,
                started.elapsed().as_secs_f64() * 1e3,
                report.kek_calls
            );
        }
        "rewrap" => {
            let local =
                LocalKek::open(arg(&args, "--local", 1).expect("--local FILE")).expect("local KEK");
            let store = KeyStore::new(kms(&args).expect("--kms URL KEY")).with_kek(local);
            let report = store
                .rewrap(conn, RewrapOptions { batch: 200 })
                .expect("rewrap");
            println!(
                "rewrap: {} keys re-wrapped, {} records re-authenticated, {} KEK calls, finished: {} ({:.1} s)",
                report.rewrapped,
                report.reauthenticated,
                report.kek_calls,
                report.finished,
                started.elapsed().as_secs_f64()
            );
        }
        "verify" => {
            let store = KeyStore::new(kms(&args).expect("--kms URL KEY"));
            let (keyring, report) = store.load(conn).expect("load");
            let notes: Vec<Note> = diesel::sql_query("SELECT tenant, body FROM notes")
                .load(conn)
                .expect("rows");
            let mut opened = 0;
            for n in &notes {
                let v = Encrypted::<String, NoteBody>::open_with(&keyring, &n.body).expect("open");
                assert_eq!(v.as_str(), format!("note of {}", n.tenant));
                opened += 1;
            }
            println!(
                "verify: {opened} of {} rows opened with the KMS key alone ({} KEK calls)",
                notes.len(),
                report.kek_calls
            );
        }
        _ => panic!("setup | ready | rewrap | verify"),
    }
}
