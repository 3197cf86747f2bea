//! Nonce generation: nonces are cut from blocks of the operating system's CSPRNG output, one
//! block per thread, refilled with one `getrandom` call per [`PER_FILL`] nonces.
//!
//! Suite 2 (AES-256-GCM-SIV) is nonce-misuse resistant: if a nonce ever repeats, the only thing
//! revealed is whether two values sealed under the same key, nonce and context have the same
//! plaintext. That is what lets its nonce come from a per-thread buffer rather than one system
//! call per seal. The buffer lives in a page the kernel wipes in a forked child ([`page`]), with
//! its count of nonces left inside the page, so a child refills from the OS instead of repeating
//! its parent's nonces. A restored VM snapshot is not a fork: a snapshot restored twice may
//! repeat up to one block per thread (ADR 0004). Every byte is the kernel's; nothing is
//! stretched in user space, and each nonce is wiped from the buffer as it is handed out.
//!
//! AES-GCM, which a repeated nonce breaks (key wraps, suite 1), never uses the pool: it takes
//! [`from_os`], one `getrandom` call per nonce. See `docs/adr/0004-suite-2.md`.

use std::cell::RefCell;

use zeroize::Zeroize;

use crate::Error;

mod page;

/// Nonces drawn from one `getrandom` call.
const PER_FILL: usize = 341;
const BLOCK: usize = 12 * PER_FILL;
// The page: `BLOCK` bytes of nonces, then the number of nonces left (u32, little-endian). A page
// wiped on fork reads 0 left: empty.
const _: () = assert!(BLOCK + 4 == page::SIZE);

enum Pool {
    /// Not set up yet in this thread.
    Unset,
    Page(page::Page),
    /// No fork-safe page could be mapped: every nonce from the OS.
    Direct,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool::Unset) };
}

/// A fresh 96-bit nonce for suites 2 and 3 (GCM-SIV), from this thread's pool.
pub(crate) fn generate() -> Result<[u8; 12], Error> {
    // `try_with`: a seal during thread-local teardown gets an error, not a panic.
    POOL.try_with(|pool| {
        let mut pool = pool.try_borrow_mut().map_err(|_| Error::Rng)?;
        if matches!(*pool, Pool::Unset) {
            *pool = page::Page::new().map_or(Pool::Direct, Pool::Page);
        }
        match &mut *pool {
            Pool::Page(p) => draw(p.bytes()),
            Pool::Unset | Pool::Direct => from_os(),
        }
    })
    .map_err(|_| Error::Rng)?
}

/// A fresh 96-bit nonce straight from the OS: for AES-GCM (key wraps, suite 1), where a
/// repeated nonce would reveal the XOR of two plaintexts.
pub(crate) fn from_os() -> Result<[u8; 12], Error> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| Error::Rng)?;
    Ok(nonce)
}

/// The next nonce of the page, refilling it when it reads empty (first use, used up, or wiped
/// by the kernel in a forked child).
fn draw(page: &mut [u8; page::SIZE]) -> Result<[u8; 12], Error> {
    let (nonces, count) = page.split_at_mut(BLOCK);
    let count: &mut [u8; 4] = count.try_into().map_err(|_| Error::Rng)?;
    let mut left = usize::try_from(u32::from_le_bytes(*count)).map_err(|_| Error::Rng)?;
    if left == 0 || left > PER_FILL {
        getrandom::fill(nonces).map_err(|_| Error::Rng)?;
        left = PER_FILL;
    }
    let at = (PER_FILL - left) * 12;
    let used = nonces.get_mut(at..at + 12).ok_or(Error::Rng)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(used);
    used.zeroize();
    *count = u32::try_from(left - 1)
        .map_err(|_| Error::Rng)?
        .to_le_bytes();
    Ok(nonce)
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
    fn a_wiped_page_reads_empty_and_is_refilled_never_zero_nonces() {
        let mut page = [0u8; page::SIZE];
        let first = draw(&mut page).unwrap();
        assert_ne!(first, [0; 12]);
        // What the kernel does to the page in a forked child.
        page.zeroize();
        let after = draw(&mut page).unwrap();
        assert_ne!(after, [0; 12]);
        assert_ne!(after, first);
        assert_eq!(u32::from_le_bytes(page[BLOCK..].try_into().unwrap()), 340);
    }

    #[test]
    fn os_nonces_differ() {
        assert_ne!(from_os().unwrap(), from_os().unwrap());
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
