//! The clinic benchmark: the same workload on an encrypted table and on a plaintext table of
//! the same shape, in one run, on one backend.

use std::path::Path;
use std::time::Instant;

use diesel::prelude::*;
use encrypted_types::EncryptedModel;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;

use crate::AppResult;
use crate::db::{Db, with_conn};
use crate::model::{BenchEncrypted, BenchPlain, bench_encrypted, bench_plain};

/// A small deterministic generator for the workload's text: the benchmark needs varied data,
/// not secrets.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn text(&mut self, len: usize) -> String {
        const WORDS: &[&str] = &[
            "patient", "reports", "mild", "pain", "since", "visit", "dose", "follow", "up",
            "weeks", "stable", "allergy",
        ];
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            s.push_str(
                WORDS
                    .get((self.next() as usize) % WORDS.len())
                    .unwrap_or(&"x"),
            );
            s.push(' ');
        }
        s.truncate(len);
        s
    }
}

fn ddl(db: &Db) -> Vec<&'static str> {
    let (blob, bidx, text) = match db {
        Db::Sqlite(_) => ("BLOB", "BLOB", "TEXT"),
        Db::Pg(_) => ("BYTEA", "BYTEA", "TEXT"),
        Db::Mysql(_) => ("VARBINARY(1024)", "VARBINARY(32)", "VARCHAR(1024)"),
    };
    let enc = format!(
        "CREATE TABLE bench_encrypted (id BIGINT PRIMARY KEY, clinic_id BIGINT NOT NULL, name {blob} NOT NULL, \
         email {blob} NOT NULL, email_bidx {bidx} NOT NULL, ssn {blob} NOT NULL, ssn_bidx {bidx} NOT NULL, notes {blob} NOT NULL)"
    );
    let plain = format!(
        "CREATE TABLE bench_plain (id BIGINT PRIMARY KEY, clinic_id BIGINT NOT NULL, name {text} NOT NULL, \
         email {} NOT NULL, ssn {} NOT NULL, notes {text} NOT NULL)",
        if matches!(db, Db::Mysql(_)) {
            "VARCHAR(255)"
        } else {
            text
        },
        if matches!(db, Db::Mysql(_)) {
            "VARCHAR(64)"
        } else {
            text
        },
    );
    vec![
        "DROP TABLE IF EXISTS bench_encrypted",
        "DROP TABLE IF EXISTS bench_plain",
        Box::leak(enc.into_boxed_str()),
        Box::leak(plain.into_boxed_str()),
        "CREATE INDEX bench_encrypted_email ON bench_encrypted (clinic_id, email_bidx)",
        "CREATE INDEX bench_encrypted_ssn ON bench_encrypted (clinic_id, ssn_bidx)",
        "CREATE INDEX bench_plain_email ON bench_plain (clinic_id, email)",
        "CREATE INDEX bench_plain_ssn ON bench_plain (clinic_id, ssn)",
    ]
}

fn table_bytes(db: &mut Db, table: &str) -> AppResult<i64> {
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let size: Size = match db {
        Db::Sqlite(c) => diesel::sql_query(format!(
            "SELECT CAST(COALESCE(SUM(pgsize), 0) AS BIGINT) AS n FROM dbstat \
             WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = '{table}')"
        ))
        .get_result(c)?,
        Db::Pg(c) => {
            diesel::sql_query(format!("VACUUM ANALYZE {table}")).execute(c)?;
            diesel::sql_query(format!(
                "SELECT pg_total_relation_size('{table}')::BIGINT AS n"
            ))
            .get_result(c)?
        }
        Db::Mysql(c) => {
            diesel::sql_query(format!("ANALYZE TABLE {table}")).execute(c)?;
            diesel::sql_query(format!(
                "SELECT CAST(data_length + index_length AS SIGNED) AS n FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ))
            .get_result(c)?
        }
    };
    Ok(size.n)
}

struct Phase {
    name: &'static str,
    ops: usize,
    encrypted_secs: f64,
    plain_secs: f64,
}

pub(crate) fn run(
    db: &mut Db,
    url: &str,
    kek: &Path,
    rows: usize,
    batch: usize,
    lookups: usize,
) -> AppResult<()> {
    let store = KeyStore::new(LocalKek::open_or_create(kek)?);
    for clinic in [1i64, 2] {
        let tenant = encrypted_types::TenantId::from(clinic);
        let has: i64 = with_conn!(db, conn => encrypted_types::store::encrypted_types_keys::table
            .filter(encrypted_types::store::encrypted_types_keys::tenant.eq(tenant.as_str()))
            .count()
            .get_result(conn))?;
        if has == 0 {
            with_conn!(db, conn => store.create_tenant(conn, Some(&tenant)))?;
        }
    }
    with_conn!(db, conn => store.load_and_install(conn))?;
    for stmt in ddl(db) {
        with_conn!(db, conn => diesel::sql_query(stmt).execute(conn))?;
    }

    let mut rng = Lcg(42);
    let plain: Vec<BenchPlain> = (0..rows)
        .map(|i| BenchPlain {
            id: i as i64,
            clinic_id: 1 + (i % 2) as i64,
            name: format!("{} {}", rng.text(6), rng.text(9)),
            email: format!("patient{i}@example.org"),
            ssn: format!("{:03}-{:02}-{:04}", i % 1000, i % 100, i % 10_000),
            notes: rng.text(200),
        })
        .collect();
    let encrypted: Vec<BenchEncrypted> = plain
        .iter()
        .map(|p| BenchEncrypted {
            id: p.id,
            clinic_id: p.clinic_id,
            name: p.name.clone(),
            email: p.email.clone(),
            ssn: p.ssn.clone(),
            notes: p.notes.clone(),
        })
        .collect();
    let probes: Vec<usize> = (0..lookups)
        .map(|_| (rng.next() as usize) % rows.max(1))
        .collect();

    out!(
        "== clinic bench on {} ({url}): {rows} rows, batches of {batch}, {lookups} lookups",
        db.backend()
    );
    let mut phases = Vec::new();

    // Insert: each batch in its own transaction.
    let t = Instant::now();
    for chunk in plain.chunks(batch) {
        with_conn!(db, conn => conn.transaction(|c| diesel::insert_into(bench_plain::table).values(chunk).execute(c)))?;
    }
    let plain_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for chunk in encrypted.chunks(batch) {
        let rows = BenchEncrypted::batch(chunk);
        with_conn!(db, conn => conn.transaction(|c| diesel::insert_into(bench_encrypted::table).values(&rows).execute(c)))?;
    }
    phases.push(Phase {
        name: "insert",
        ops: rows,
        encrypted_secs: t.elapsed().as_secs_f64(),
        plain_secs,
    });

    // Select every row and open every field.
    let t = Instant::now();
    let got: Vec<BenchPlain> =
        with_conn!(db, conn => bench_plain::table.select(BenchPlain::as_select()).load(conn))?;
    let plain_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let got_enc: Vec<BenchEncrypted> = with_conn!(db, conn => bench_encrypted::table.select(BenchEncrypted::as_select()).load(conn))?;
    phases.push(Phase {
        name: "select",
        ops: rows,
        encrypted_secs: t.elapsed().as_secs_f64(),
        plain_secs,
    });
    if got.len() != rows
        || got_enc.len() != rows
        || got_enc
            .iter()
            .zip(&encrypted)
            .any(|(a, b)| a.notes.len() != b.notes.len())
    {
        return Err("the benchmark read back other rows than it wrote".into());
    }

    // Equality lookups by email.
    let t = Instant::now();
    for p in probes.iter().filter_map(|&i| plain.get(i)) {
        let found: Vec<BenchPlain> = with_conn!(db, conn => bench_plain::table
            .select(BenchPlain::as_select())
            .filter(bench_plain::clinic_id.eq(p.clinic_id))
            .filter(bench_plain::email.eq(&p.email))
            .load(conn))?;
        if found.len() != 1 {
            return Err("plaintext lookup missed".into());
        }
    }
    let plain_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in probes.iter().filter_map(|&i| encrypted.get(i)) {
        let found = with_conn!(db, conn => BenchEncrypted::find_by_email(conn, &p.clinic_id, p.email.as_str()))?;
        if found.len() != 1 {
            return Err("encrypted lookup missed".into());
        }
    }
    phases.push(Phase {
        name: "lookup",
        ops: lookups,
        encrypted_secs: t.elapsed().as_secs_f64(),
        plain_secs,
    });

    out!("| phase  | plaintext rows/s | encrypted rows/s | encrypted/plaintext |");
    out!("|--------|-----------------:|-----------------:|--------------------:|");
    for p in &phases {
        let plain_rate = p.ops as f64 / p.plain_secs;
        let enc_rate = p.ops as f64 / p.encrypted_secs;
        out!(
            "| {:<6} | {plain_rate:>16.0} | {enc_rate:>16.0} | {:>19.2} |",
            p.name,
            enc_rate / plain_rate
        );
    }
    let (enc_size, plain_size) = (
        table_bytes(db, "bench_encrypted")?,
        table_bytes(db, "bench_plain")?,
    );
    out!(
        "table sizes (with indexes): plaintext {:.1} MiB, encrypted {:.1} MiB ({:.2}x)",
        plain_size as f64 / 1048576.0,
        enc_size as f64 / 1048576.0,
        enc_size as f64 / plain_size.max(1) as f64
    );
    Ok(())
}

/// Rotation throughput: re-sealing every row of `bench_encrypted` after a data-key rotation,
/// beside the same number of compare-and-swap UPDATEs of the same rows of `bench_plain`.
pub(crate) fn rotate(
    db: &mut Db,
    url: &str,
    kek: &Path,
    rows: usize,
    batch: usize,
) -> AppResult<()> {
    run(db, url, kek, rows, batch, 0)?;
    let store = KeyStore::new(LocalKek::open_or_create(kek)?);
    for clinic in [1i64, 2] {
        with_conn!(db, conn => store.rotate_data_key(conn, Some(&encrypted_types::TenantId::from(clinic))))?;
    }
    with_conn!(db, conn => store.load_and_install(conn))?;

    let t = Instant::now();
    let job = format!(
        "bench-rotate-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let options = encrypted_types::jobs::JobOptions {
        batch,
        ..Default::default()
    };
    let report = with_conn!(db, conn => encrypted_types::jobs::rotate_data_keys(conn, &BenchEncrypted::MODEL, &job, &options, |_| {}))?;
    let rotate_secs = t.elapsed().as_secs_f64();
    if !report.finished || report.written != (rows * 4) as u64 {
        return Err(format!(
            "rotation re-sealed {} of {} values",
            report.written,
            rows * 4
        )
        .into());
    }

    // The same shape of work in plaintext: per column, per row, a compare-and-swap UPDATE,
    // `batch` rows per transaction.
    let plain: Vec<BenchPlain> = with_conn!(db, conn => bench_plain::table.select(BenchPlain::as_select()).order(bench_plain::id).load(conn))?;
    let t = Instant::now();
    macro_rules! cas_column {
        ($col:ident) => {
            for chunk in plain.chunks(batch) {
                with_conn!(db, conn => conn.transaction(|c| {
                    for p in chunk {
                        diesel::update(bench_plain::table.find(p.id).filter(bench_plain::$col.eq(&p.$col)))
                            .set(bench_plain::$col.eq(&p.$col))
                            .execute(c)?;
                    }
                    diesel::QueryResult::Ok(())
                }))?;
            }
        };
    }
    cas_column!(name);
    cas_column!(email);
    cas_column!(ssn);
    cas_column!(notes);
    let update_secs = t.elapsed().as_secs_f64();

    let (rot, upd) = (rows as f64 / rotate_secs, rows as f64 / update_secs);
    out!(
        "== rotation on {}: {rows} rows (4 encrypted values each), batches of {batch}",
        db.backend()
    );
    out!("| work | rows/s |");
    out!("|---|---:|");
    out!("| plain UPDATE (compare-and-swap, 4 columns) | {upd:.0} |");
    out!("| rotation job (find by key id, re-seal, CAS, checkpoint) | {rot:.0} |");
    out!("rotation / plain UPDATE: {:.2}", rot / upd);
    Ok(())
}
