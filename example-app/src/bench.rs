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
use crate::model::{
    BenchControl, BenchEncrypted, BenchPlain, bench_control, bench_encrypted, bench_plain,
    sealed_widths,
};

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

fn is_mysql(db: &Db) -> bool {
    match db {
        #[cfg(feature = "mysql")]
        Db::Mysql(_) => true,
        _ => false,
    }
}

fn ddl(db: &Db) -> Vec<&'static str> {
    let (blob, bidx, text) = match db {
        Db::Sqlite(_) => ("BLOB", "BLOB", "TEXT"),
        #[cfg(feature = "postgres")]
        Db::Pg(_) => ("BYTEA", "BYTEA", "TEXT"),
        #[cfg(feature = "mysql")]
        Db::Mysql(_) => ("VARBINARY(1024)", "VARBINARY(32)", "VARCHAR(1024)"),
    };
    let enc = format!(
        "CREATE TABLE bench_encrypted (id BIGINT PRIMARY KEY, clinic_id BIGINT NOT NULL, name {blob} NOT NULL, \
         email {blob} NOT NULL, email_bidx {bidx} NOT NULL, ssn {blob} NOT NULL, ssn_bidx {bidx} NOT NULL, notes {blob} NOT NULL)"
    );
    let control = format!(
        "CREATE TABLE bench_control (id BIGINT PRIMARY KEY, clinic_id BIGINT NOT NULL, name {blob} NOT NULL, \
         email {blob} NOT NULL, email_bidx {bidx} NOT NULL, ssn {blob} NOT NULL, ssn_bidx {bidx} NOT NULL, notes {blob} NOT NULL)"
    );
    let plain = format!(
        "CREATE TABLE bench_plain (id BIGINT PRIMARY KEY, clinic_id BIGINT NOT NULL, name {text} NOT NULL, \
         email {} NOT NULL, ssn {} NOT NULL, notes {text} NOT NULL)",
        if is_mysql(db) { "VARCHAR(255)" } else { text },
        if is_mysql(db) { "VARCHAR(64)" } else { text },
    );
    vec![
        "DROP TABLE IF EXISTS bench_encrypted",
        "DROP TABLE IF EXISTS bench_control",
        "DROP TABLE IF EXISTS bench_plain",
        Box::leak(enc.into_boxed_str()),
        Box::leak(control.into_boxed_str()),
        Box::leak(plain.into_boxed_str()),
        "CREATE INDEX bench_encrypted_email ON bench_encrypted (clinic_id, email_bidx)",
        "CREATE INDEX bench_encrypted_ssn ON bench_encrypted (clinic_id, ssn_bidx)",
        "CREATE INDEX bench_control_email ON bench_control (clinic_id, email_bidx)",
        "CREATE INDEX bench_control_ssn ON bench_control (clinic_id, ssn_bidx)",
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
        #[cfg(feature = "postgres")]
        Db::Pg(c) => {
            diesel::sql_query(format!("VACUUM ANALYZE {table}")).execute(c)?;
            diesel::sql_query(format!(
                "SELECT pg_total_relation_size('{table}')::BIGINT AS n"
            ))
            .get_result(c)?
        }
        #[cfg(feature = "mysql")]
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

/// One phase's timings over the repetitions: plaintext, the control (random bytes of the
/// encrypted widths, no cryptography) and encrypted.
struct Phase {
    name: &'static str,
    ops: usize,
    times: [Vec<f64>; 3],
}

/// What the control's select and lookup read: the columns the encrypted model's read selects
/// (its blind indexes are not read back), so both sides move the same bytes.
type ControlRead = (i64, i64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
const CONTROL_READ: (
    bench_control::id,
    bench_control::clinic_id,
    bench_control::name,
    bench_control::email,
    bench_control::ssn,
    bench_control::notes,
) = (
    bench_control::id,
    bench_control::clinic_id,
    bench_control::name,
    bench_control::email,
    bench_control::ssn,
    bench_control::notes,
);

/// The three tables a phase runs on, in the order of `Phase::times`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Plain,
    Control,
    Encrypted,
}

const SIDES: [Side; 3] = [Side::Plain, Side::Control, Side::Encrypted];

/// The control rows: each encrypted row's columns at their sealed widths, random bytes.
fn control_rows(rng: &mut Lcg, encrypted: &[BenchEncrypted]) -> Vec<BenchControl> {
    let mut bytes = |n: usize| -> Vec<u8> { (0..n).map(|_| rng.next() as u8).collect() };
    encrypted
        .iter()
        .zip(sealed_widths(encrypted))
        .map(
            |(e, [name, email, email_bidx, ssn, ssn_bidx, notes])| BenchControl {
                id: e.id,
                clinic_id: e.clinic_id,
                name: bytes(name),
                email: bytes(email),
                email_bidx: bytes(email_bidx),
                ssn: bytes(ssn),
                ssn_bidx: bytes(ssn_bidx),
                notes: bytes(notes),
            },
        )
        .collect()
}

/// Checks, outside the timer, that a select read back exactly the rows written.
fn same_rows<T: PartialEq>(got: &[T], want: &[T], id: impl Fn(&T) -> i64) -> AppResult<()> {
    let mut want: std::collections::HashMap<i64, &T> = want.iter().map(|w| (id(w), w)).collect();
    if got.len() != want.len()
        || got
            .iter()
            .any(|g| want.remove(&id(g)).is_none_or(|w| w != g))
    {
        return Err("the benchmark read back other rows than it wrote".into());
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(f64::NAN),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(f64::NAN)
                + v.get(n / 2).copied().unwrap_or(f64::NAN))
                / 2.0
        }
    }
}

/// Random-looking people: names from syllables, emails with random local parts and domains,
/// random SSNs, so that neither B-tree indexes nor the blind indexes see sequential keys.
fn people(rng: &mut Lcg, rows: usize) -> Vec<BenchPlain> {
    const SYL: &[&str] = &[
        "an", "bel", "cor", "da", "el", "fio", "gra", "hel", "is", "jo", "ka", "lu", "mar", "no",
        "ol", "pe", "qui", "ro", "sa", "ti", "ur", "vi", "wen", "xa", "yo", "ze",
    ];
    const DOMAINS: &[&str] = &["example.org", "mail.test", "clinic.example", "post.invalid"];
    let word = |rng: &mut Lcg, n: usize| {
        let mut w = String::new();
        for _ in 0..n {
            w.push_str(SYL.get((rng.next() as usize) % SYL.len()).unwrap_or(&"x"));
        }
        w
    };
    (0..rows)
        .map(|i| {
            let (first, last) = (word(rng, 2), word(rng, 3));
            let domain = DOMAINS
                .get((rng.next() as usize) % DOMAINS.len())
                .unwrap_or(&"x");
            BenchPlain {
                id: i as i64,
                clinic_id: 1 + (rng.next() % 2) as i64,
                // The row number keeps emails unique, after random text so it sorts randomly.
                email: format!(
                    "{first}.{last}{}@{domain}",
                    rng.next() % 1000 * 100_000 + i as u64
                ),
                name: format!("{first} {last}"),
                ssn: format!(
                    "{:03}-{:02}-{:04}",
                    rng.next() % 1000,
                    rng.next() % 100,
                    rng.next() % 10_000
                ),
                notes: rng.text(200),
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)] // the command's options, passed through
pub(crate) fn run(
    db: &mut Db,
    url: &str,
    kek: &Path,
    rows: usize,
    batch: usize,
    lookups: usize,
    reps: usize,
) -> AppResult<()> {
    let store = KeyStore::new(LocalKek::open_or_create_dev(kek)?);
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

    let mut rng = Lcg(42);
    let plain = people(&mut rng, rows);
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
    let control = control_rows(&mut rng, &encrypted);
    let control_read: Vec<ControlRead> = control
        .iter()
        .map(|c| {
            (
                c.id,
                c.clinic_id,
                c.name.clone(),
                c.email.clone(),
                c.ssn.clone(),
                c.notes.clone(),
            )
        })
        .collect();
    let probes: Vec<usize> = (0..lookups)
        .map(|_| (rng.next() as usize) % rows.max(1))
        .collect();

    let reps = reps.max(1);
    out!(
        "== clinic bench on {} ({url}): {rows} rows, batches of {batch}, {lookups} lookups, \
         {reps} repetitions (median)",
        db.backend()
    );
    let phase = |name, ops| Phase {
        name,
        ops,
        times: [vec![], vec![], vec![]],
    };
    let mut phases = [
        phase("insert", rows),
        phase("select", rows),
        phase("lookup", lookups),
    ];
    for rep in 0..reps {
        for stmt in ddl(db) {
            with_conn!(db, conn => diesel::sql_query(stmt).execute(conn))?;
        }
        // Interleaved: each side runs first, second and third in turn, so none always runs
        // on a warmer cache or a fuller table file.
        let mut order = SIDES;
        order.rotate_left(rep % 3);
        for (i, phase) in phases.iter_mut().enumerate() {
            for &side in &order {
                let t = Instant::now();
                // What a select read, checked after the timer stops.
                let mut read_plain = Vec::new();
                let mut read_control = Vec::new();
                let mut read_encrypted = Vec::new();
                match (i, side) {
                    (0, Side::Plain) => {
                        for chunk in plain.chunks(batch) {
                            with_conn!(db, conn => conn.transaction(|c| diesel::insert_into(bench_plain::table).values(chunk).execute(c)))?;
                        }
                    }
                    (0, Side::Control) => {
                        for chunk in control.chunks(batch) {
                            with_conn!(db, conn => conn.transaction(|c| diesel::insert_into(bench_control::table).values(chunk).execute(c)))?;
                        }
                    }
                    (0, Side::Encrypted) => {
                        for chunk in encrypted.chunks(batch) {
                            let rows = BenchEncrypted::batch(chunk);
                            with_conn!(db, conn => conn.transaction(|c| diesel::insert_into(bench_encrypted::table).values(&rows).execute(c)))?;
                        }
                    }
                    (1, Side::Plain) => {
                        read_plain = with_conn!(db, conn => bench_plain::table.select(BenchPlain::as_select()).load(conn))?;
                    }
                    (1, Side::Control) => {
                        read_control = with_conn!(db, conn => bench_control::table.select(CONTROL_READ).load(conn))?;
                    }
                    (1, Side::Encrypted) => {
                        read_encrypted = with_conn!(db, conn => bench_encrypted::table.select(BenchEncrypted::as_select()).load(conn))?;
                    }
                    (_, Side::Plain) => {
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
                    }
                    (_, Side::Control) => {
                        for p in probes.iter().filter_map(|&i| control.get(i)) {
                            let found: Vec<ControlRead> = with_conn!(db, conn => bench_control::table
                                .select(CONTROL_READ)
                                .filter(bench_control::clinic_id.eq(p.clinic_id))
                                .filter(bench_control::email_bidx.eq(&p.email_bidx))
                                .load(conn))?;
                            if found.len() != 1 {
                                return Err("control lookup missed".into());
                            }
                        }
                    }
                    (_, Side::Encrypted) => {
                        for p in probes.iter().filter_map(|&i| encrypted.get(i)) {
                            let found = with_conn!(db, conn => BenchEncrypted::find_by_email(conn, &p.clinic_id, p.email.as_str()))?;
                            if found.len() != 1 {
                                return Err("encrypted lookup missed".into());
                            }
                        }
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                if i == 1 {
                    match side {
                        Side::Plain => same_rows(&read_plain, &plain, |r| r.id)?,
                        Side::Control => same_rows(&read_control, &control_read, |r| r.0)?,
                        Side::Encrypted => same_rows(&read_encrypted, &encrypted, |r| r.id)?,
                    }
                }
                if let Some(times) = phase.times.get_mut(side as usize) {
                    times.push(secs);
                }
            }
        }
    }

    out!(
        "| phase  | plaintext rows/s | control rows/s | encrypted rows/s | encrypted/control | per row µs: plaintext | control | encrypted | crypto and glue (encrypted - control) |"
    );
    out!(
        "|--------|-----------------:|---------------:|-----------------:|------------------:|------:|------:|------:|------:|"
    );
    for p in &phases {
        let [pm, cm, em] = [0, 1, 2].map(|i| p.times.get(i).map_or(f64::NAN, |t| median(t)));
        let ops = p.ops.max(1) as f64;
        out!(
            "| {:<6} | {:>16.0} | {:>14.0} | {:>16.0} | {:>17.2} | {:>5.2} | {:>5.2} | {:>5.2} | {:>5.2} |",
            p.name,
            ops / pm,
            ops / cm,
            ops / em,
            cm / em,
            pm / ops * 1e6,
            cm / ops * 1e6,
            em / ops * 1e6,
            (em - cm) / ops * 1e6
        );
    }
    let (enc_size, control_size, plain_size) = (
        table_bytes(db, "bench_encrypted")?,
        table_bytes(db, "bench_control")?,
        table_bytes(db, "bench_plain")?,
    );
    out!(
        "table sizes (with indexes): plaintext {:.1} MiB, control {:.1} MiB, encrypted {:.1} MiB ({:.2}x plaintext)",
        plain_size as f64 / 1048576.0,
        control_size as f64 / 1048576.0,
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
    // One repetition fills both tables; the rotation then runs on them.
    run(db, url, kek, rows, batch, 0, 1)?;
    let store = KeyStore::new(LocalKek::open_or_create_dev(kek)?);
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
