//! The process-wide keyring: missing keyring, atomic swap under concurrent readers, builder
//! validation, and key types that never show their bytes.
//!
//! This binary owns the global keyring: only `install_swap_and_uninstall` changes it.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use encrypted_types::{Encrypted, Error, KeyMaterial, Keyring};
use encrypted_types_tests::{PeopleEmail, key_bytes};

fn keyring_with_primary(primary: u32) -> Keyring {
    Keyring::builder()
        .data_key(1, None, KeyMaterial::from_bytes(key_bytes(1)))
        .data_key(2, None, KeyMaterial::from_bytes(key_bytes(2)))
        .primary(None, primary)
        .build()
        .unwrap()
}

#[test]
fn install_swap_and_uninstall() {
    let v = Encrypted::<String, PeopleEmail>::new("swap me".into());
    Keyring::uninstall();
    assert_eq!(v.seal().err(), Some(Error::NoKeyring));

    keyring_with_primary(1).install();
    let before = v.seal().unwrap();
    assert_eq!(before[5], 1);

    // Readers seal and open without pause while the keyring is swapped under them.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, opened, before) = (stop.clone(), opened.clone(), before.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let o = Encrypted::<String, PeopleEmail>::open(&before).unwrap();
                    assert_eq!(o.as_str(), "swap me");
                    let s = Encrypted::<String, PeopleEmail>::new("x".into())
                        .seal()
                        .unwrap();
                    assert!(s[5] == 1 || s[5] == 2);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..200 {
        keyring_with_primary(if i % 2 == 0 { 2 } else { 1 }).install();
        // Let the readers run on this keyring before the next swap.
        let seen = opened.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while opened.load(Ordering::Relaxed) == seen {
            assert!(std::time::Instant::now() < deadline, "readers stalled");
            std::thread::yield_now();
        }
    }
    keyring_with_primary(2).install();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader failed during the swap");
    }
    assert!(opened.load(Ordering::Relaxed) > 0);

    // The new primary seals at once; the old key still opens.
    assert_eq!(v.seal().unwrap()[5], 2);
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open(&before)
            .unwrap()
            .as_str(),
        "swap me"
    );

    Keyring::uninstall();
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open(&before).err(),
        Some(Error::NoKeyring)
    );
}

#[test]
fn the_builder_rejects_inconsistent_keyrings() {
    let k = |id| KeyMaterial::from_bytes(key_bytes(id));
    let cases = [
        (
            Keyring::builder()
                .data_key(1, None, k(1))
                .data_key(1, None, k(2)),
            "duplicate key id",
        ),
        (
            Keyring::builder().data_key(1, None, k(1)).destroyed_key(1),
            "a destroyed key id is also present",
        ),
        (
            Keyring::builder().primary(None, 3),
            "primary key id not present",
        ),
        (
            Keyring::builder()
                .data_key(1, Some("a".into()), k(1))
                .primary(None, 1),
            "primary key belongs to another tenant",
        ),
        (
            Keyring::builder()
                .data_key(1, None, k(1))
                .data_key(2, None, k(2))
                .primary(None, 1)
                .primary(None, 2),
            "two primary keys for one tenant",
        ),
        (
            Keyring::builder()
                .blind_index_root(None, k(1))
                .blind_index_root(None, k(2)),
            "two blind-index root keys for one tenant",
        ),
        (
            Keyring::builder()
                .blind_index_root(None, k(1))
                .retired_blind_index_root(None, k(2))
                .retired_blind_index_root(None, k(3)),
            "two retired blind-index root keys for one tenant",
        ),
    ];
    for (builder, why) in cases {
        assert_eq!(builder.build().err(), Some(Error::InvalidKeyring(why)));
    }
    assert_eq!(
        KeyMaterial::from_slice(&[0; 31]).err(),
        Some(Error::InvalidKeyring("key material must be 32 bytes"))
    );
}

#[test]
fn a_tenant_without_a_primary_key_cannot_seal() {
    let keyring = keyring_with_primary(1);
    let v = Encrypted::<String, PeopleEmail>::for_tenant("x".into(), "clinic-z");
    assert_eq!(
        v.seal_with(&keyring).err(),
        Some(Error::NoPrimaryKey {
            tenant: "clinic-z".into()
        })
    );
}

#[test]
fn key_types_never_show_their_bytes() {
    let bytes = [0xABu8; 32];
    let keyring = Keyring::builder()
        .data_key(7, Some("t".into()), KeyMaterial::from_bytes(bytes))
        .blind_index_root(None, KeyMaterial::from_bytes(bytes))
        .primary(Some("t".into()), 7)
        .build()
        .unwrap();
    let shown = format!(
        "{:?} {:?} {:?} {:?} {:?}",
        KeyMaterial::from_bytes(bytes),
        keyring,
        keyring.key(7.into()).unwrap(),
        keyring.blind_index_root(None).unwrap(),
        Keyring::builder().data_key(1, None, KeyMaterial::from_bytes(bytes)),
    );
    for leak in ["171", "ab, ab", "AB, AB", "abab", "ABAB", "[171"] {
        assert!(!shown.contains(leak), "key bytes in Debug output: {shown}");
    }
    assert!(shown.contains("<redacted>"));
}
