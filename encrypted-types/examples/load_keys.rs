//! Startup cost of the key hierarchy: creates N tenants (a data key and a blind-index root key
//! each, wrapped by a local KEK file) in an in-memory SQLite key table, then times
//! `KeyStore::load`, which unwraps every key and self-tests every data key.
//!
//! `cargo run --release -p encrypted-types --example load_keys --features sqlite,migrations,local-kek -- 1000`
#![allow(clippy::expect_used, clippy::indexing_slicing)] // an example that cannot set up should stop loudly; `runs` has 5 entries

use std::time::Instant;

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;

fn main() {
    let tenants: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("et-load-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let conn = &mut SqliteConnection::establish(":memory:").expect("sqlite");
    KeyStore::<LocalKek>::run_migrations(conn).expect("key table");
    let store = KeyStore::new(LocalKek::create(dir.join("bench.kek")).expect("kek"));

    let started = Instant::now();
    for t in 0..tenants {
        store
            .create_tenant(conn, Some(&format!("tenant-{t}").into()))
            .expect("tenant");
    }
    let created = started.elapsed();

    let mut runs = Vec::new();
    // What a loaded keyring holds resident: the first load's growth of the process (later
    // loads reuse the memory the allocator got back).
    let before = resident_kib("VmRSS");
    let mut held = None;
    for _ in 0..5 {
        let started = Instant::now();
        let (keyring, report) = store.load(conn).expect("load");
        runs.push(started.elapsed());
        assert_eq!(report.data_keys, tenants);
        held.get_or_insert_with(|| (keyring, resident_kib("VmRSS")));
    }
    if let (Some(before), Some((_, Some(after)))) = (before, &held) {
        println!(
            "keyring of {} keys resident: {:.1} MB (process peak {:.1} MB)",
            tenants * 2,
            after.saturating_sub(before) as f64 / 1024.0,
            resident_kib("VmHWM").unwrap_or(0) as f64 / 1024.0
        );
    }
    runs.sort();
    println!(
        "{tenants} tenants ({} keys): created in {:.1} ms; load + unwrap + self-test: median {:.1} ms (min {:.1}, max {:.1}) over 5 runs",
        tenants * 2,
        created.as_secs_f64() * 1e3,
        runs[2].as_secs_f64() * 1e3,
        runs[0].as_secs_f64() * 1e3,
        runs[4].as_secs_f64() * 1e3,
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A field of `/proc/self/status` in KiB (Linux; `None` elsewhere).
fn resident_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}
