//! Key bytes in freed memory (review L1): a global allocator that, while armed, scans every
//! block the program frees for the bytes of any key of the table (the KEK, the wrapping key,
//! every data key and blind-index root) before handing it back. A copy found there is one the
//! library moved or copied and did not wipe: it stays in the heap until the allocator reuses
//! the block, and is in a core dump or a swapped page meanwhile.
//!
//! One `KeyStore::load` of a 200-key table (100 tenants), dropping the keyring, then loading the
//! tenants in chunks merged into the installed keyring (`load_tenants`, `ensure_loaded`), then
//! shredding a tenant (which installs a copy of the keyring without it) must leave no such copy. Runs in a process of its own (no test harness): every allocation is the probe's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use diesel::prelude::*;
use encrypted_types::TenantId;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyRecord, KeyStore, encrypted_types_keys};

struct Probe;

static ARMED: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// The needles, sorted by their first 8 bytes (set before arming, never freed while armed).
static NEEDLES: OnceLock<Vec<[u8; 32]>> = OnceLock::new();
/// Sizes of the blocks found holding a key (the first few), to say where to look.
static SIZES: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

fn prefix(b: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&b[..8]);
    u64::from_le_bytes(p)
}

/// How many needles `block` holds (any alignment).
fn scan(block: &[u8], needles: &[[u8; 32]]) -> usize {
    let mut hits = 0;
    if block.len() < 32 {
        return 0;
    }
    for i in 0..=block.len() - 32 {
        let p = prefix(&block[i..]);
        if let Ok(at) = needles.binary_search_by_key(&p, |n| prefix(n)) {
            // Prefixes are random 64-bit values: one candidate is enough to compare.
            if needles[at] == block[i..i + 32] {
                hits += 1;
            }
        }
    }
    hits
}

// SAFETY: every call goes to the system allocator with the caller's arguments; the scan reads
// the block being freed, which is still allocated and `layout.size()` bytes long.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::Relaxed)
            && let Some(needles) = NEEDLES.get()
        {
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let found = scan(block, needles);
            if found > 0 {
                HITS.fetch_add(found, Ordering::Relaxed);
                if let Some(slot) = SIZES.get(BLOCKS.fetch_add(1, Ordering::Relaxed)) {
                    slot.store(layout.size(), Ordering::Relaxed);
                }
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    // `realloc` is the trait's default: alloc, copy, dealloc, so a moved block is scanned too.
}

#[global_allocator]
static GLOBAL: Probe = Probe;

const TENANTS: usize = 100;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kek_path = dir.path().join("probe.kek");
    let db = dir.path().join("keys.db");
    let conn = &mut SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    KeyStore::<LocalKek>::run_migrations(conn).unwrap();
    {
        let store = KeyStore::new(LocalKek::create(&kek_path).unwrap());
        for t in 0..TENANTS {
            store
                .create_tenant(conn, Some(&TenantId::from(format!("clinic-{t}"))))
                .unwrap();
        }
    }

    // The needles, read independently of the library's loader (docs/KEYTABLE.md).
    let records: Vec<KeyRecord> = encrypted_types_keys::table
        .select(KeyRecord::as_select())
        .load(conn)
        .unwrap();
    let kek = LocalKek::open(&kek_path).unwrap();
    let wrapping = records
        .iter()
        .find(|r| r.purpose == "wrapping" && r.tenant.is_none())
        .unwrap();
    let mut needles: Vec<[u8; 32]> = records
        .iter()
        .filter(|r| r.wrapped_key.is_some())
        .map(|r| {
            let w = (r.purpose != "wrapping").then_some(wrapping);
            encrypted_types_tests::keytable::unwrap(r, w, &kek)
        })
        .collect();
    let mut kek_bytes = [0u8; 32];
    kek_bytes.copy_from_slice(&std::fs::read(&kek_path).unwrap());
    needles.push(kek_bytes);
    assert_eq!(needles.len(), 2 * TENANTS + 2, "the table holds 200 keys");
    needles.sort_by_key(|n| prefix(n));
    NEEDLES.set(needles).unwrap();
    drop(records);
    drop(kek);

    // Armed: a fresh store opening the KEK file, one load, and dropping all of it.
    let store = KeyStore::new(LocalKek::open(&kek_path).unwrap());
    ARMED.store(true, Ordering::SeqCst);
    let (keyring, report) = store.load(conn).unwrap();
    let during_load = HITS.load(Ordering::SeqCst);
    drop(keyring);
    // Tenants loaded as requests need them, merged into the installed keyring each time.
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|t| TenantId::from(format!("clinic-{t}")))
        .collect();
    store
        .load_tenants(conn, &tenants[..10])
        .unwrap()
        .0
        .install();
    for chunk in tenants[10..].chunks(30) {
        store.ensure_loaded(conn, chunk).unwrap();
    }
    // Shredding a tenant installs a copy of the keyring without it.
    store.load_and_install(conn).unwrap();
    store.shred_tenant(conn, &tenants[0], &[]).unwrap();
    drop(store);
    ARMED.store(false, Ordering::SeqCst);
    let total = HITS.load(Ordering::SeqCst);
    assert_eq!(report.data_keys + report.blind_index_keys, 2 * TENANTS);
    let sizes: Vec<usize> = SIZES
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .take(BLOCKS.load(Ordering::SeqCst).min(SIZES.len()))
        .collect();
    println!(
        "freed copies of key bytes: {during_load} during the load, {} while dropping it, merging tenants and shredding one, in {} blocks; sizes of the first: {sizes:?}",
        total - during_load,
        BLOCKS.load(Ordering::SeqCst)
    );
    assert_eq!(total, 0, "key bytes left in freed memory");
    println!("freed_key_bytes: ok");
}
