//! Nonce generation: nonces are cut from blocks of the operating system's CSPRNG output, one
//! block per thread, refilled with one `getrandom` call per [`PER_FILL`] nonces.
//!
//! Suite 2 (AES-256-GCM-SIV) is nonce-misuse resistant: if a nonce ever repeats (a `fork()`
//! that copies a half-used block, a VM snapshot restored twice), the only thing revealed is
//! whether two values sealed under the same key, nonce and context have the same plaintext.
//! That is what lets the nonce come from a per-thread buffer rather than one system call per
//! seal, as suite 1 (AES-256-GCM, which a repeated nonce breaks) required. Every byte is still
//! the kernel's; nothing is stretched in user space, and each nonce is wiped from the buffer as
//! it is handed out. See `docs/adr/0004-suite-2.md`.

use std::cell::RefCell;

use zeroize::Zeroize;

use crate::Error;

/// Nonces drawn from one `getrandom` call (a block just under 4 KiB).
const PER_FILL: usize = 341;
const BLOCK: usize = 12 * PER_FILL;

struct Pool {
    bytes: [u8; BLOCK],
    /// Offset of the next unused nonce; `BLOCK` when empty.
    next: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], next: BLOCK }) };
}

/// A fresh 96-bit nonce.
pub(crate) fn generate() -> Result<[u8; 12], Error> {
    // `try_with`: a seal during thread-local teardown gets an error, not a panic.
    POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().map_err(|_| Error::Rng)?;
        let pool = &mut *pool;
        if pool.next >= BLOCK {
            getrandom::fill(&mut pool.bytes).map_err(|_| Error::Rng)?;
            pool.next = 0;
        }
        let mut nonce = [0u8; 12];
        let used = pool
            .bytes
            .get_mut(pool.next..pool.next + 12)
            .ok_or(Error::Rng)?;
        nonce.copy_from_slice(used);
        used.zeroize();
        pool.next += 12;
        Ok(nonce)
    })
    .map_err(|_| Error::Rng)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 * PER_FILL + 7 {
            assert!(seen.insert(generate().unwrap()), "nonce repeated");
        }
    }

    #[test]
    fn threads_draw_from_their_own_pools() {
        let a: Vec<[u8; 12]> = (0..50).map(|_| generate().unwrap()).collect();
        let b = std::thread::spawn(|| (0..50).map(|_| generate().unwrap()).collect::<Vec<_>>())
            .join()
            .unwrap();
        let all: std::collections::HashSet<_> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 100);
    }
}
