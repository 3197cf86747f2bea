//! Nonces after `fork()`: a child must never draw a nonce its parent draws (ADR 0004).
//!
//! The parent seals a value first, so its thread's nonce pool is filled; it then forks before
//! any other thread exists (no test harness). Parent and child each seal values and wrap keys
//! and the child sends its nonces through a pipe: no nonce may appear on both sides. Before the
//! pool was wiped on fork, the child drew exactly the parent's next nonces, and two key wraps
//! (AES-GCM) made after a fork shared key and nonce: the XOR of the ciphertexts was the XOR of
//! the keys.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

use encrypted_types::kek::local::LocalKek;
use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
use encrypted_types::{Encrypted, KeyId, KeyMaterial, Keyring};

encrypted_types::column_context!(Notes = "patients"."notes");

const VALUES: usize = 400;
const WRAPS: usize = 8;

/// The nonces of `WRAPS` key wraps (the first 12 bytes of a local KEK's wrap) and `VALUES`
/// sealed values (header bytes 6..18), in that order.
fn draw(keyring: &Keyring, kek: &LocalKek) -> Vec<[u8; 12]> {
    let mut out = Vec::new();
    for i in 0..WRAPS {
        let ctx = WrapContext {
            tenant: None,
            purpose: Purpose::Data,
            key_id: KeyId::from(100 + i as u32),
        };
        let wrapped = kek.wrap(&ctx, &KeyMaterial::generate().unwrap()).unwrap();
        out.push(wrapped[..12].try_into().unwrap());
    }
    for i in 0..VALUES {
        let sealed = Encrypted::<String, Notes>::new(format!("note {i}"))
            .seal_with(keyring)
            .unwrap();
        out.push(sealed[6..18].try_into().unwrap());
    }
    out
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kek = LocalKek::create(dir.path().join("fork.kek")).unwrap();
    let keyring = Keyring::builder()
        .data_key(1, None, KeyMaterial::generate().unwrap())
        .primary(None, 1)
        .build()
        .unwrap();
    // Fill this thread's pool, and use the wrap path once, before the fork.
    let before = draw(&keyring, &kek);

    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe { libc::close(fds[0]) };
        let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let nonces = draw(&keyring, &kek);
        let bytes: Vec<u8> = nonces.iter().flatten().copied().collect();
        let ok = w.write_all(&bytes).is_ok();
        drop(w);
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    unsafe { libc::close(fds[1]) };
    let parent = draw(&keyring, &kek);
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).unwrap();
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed"
    );
    let child: Vec<[u8; 12]> = bytes
        .chunks_exact(12)
        .map(|c| c.try_into().unwrap())
        .collect();
    assert_eq!(child.len(), VALUES + WRAPS);

    let seen: HashSet<[u8; 12]> = before.iter().chain(&parent).copied().collect();
    let values_shared = child[WRAPS..].iter().filter(|n| seen.contains(*n)).count();
    let wraps_shared = child[..WRAPS].iter().filter(|n| seen.contains(*n)).count();
    println!(
        "fork: parent drew {} nonces, child {}; shared: {values_shared} value nonces, {wraps_shared} key-wrap nonces",
        before.len() + parent.len(),
        child.len()
    );
    assert_eq!(wraps_shared, 0, "a key wrap reused a nonce across fork()");
    assert_eq!(
        values_shared, 0,
        "a sealed value reused a nonce across fork()"
    );
    assert_eq!(
        child.iter().collect::<HashSet<_>>().len(),
        child.len(),
        "the child repeated a nonce"
    );
    println!("test result: ok. 1 passed; 0 failed");
}
