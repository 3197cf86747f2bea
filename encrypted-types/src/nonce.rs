//! Nonce generation.
//!
//! A getrandom system call per value would cost more than the AES-GCM work for short values,
//! so each thread keeps a ChaCha20 CSPRNG seeded from the operating system. It reseeds from the
//! OS every `RESEED_AFTER` nonces and whenever the process id changes, so a forked child never
//! replays its parent's stream.

use std::cell::RefCell;

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};

use crate::Error;

const RESEED_AFTER: u32 = 1 << 16;

struct ThreadRng {
    rng: ChaCha20Rng,
    pid: u32,
    remaining: u32,
}

thread_local! {
    static RNG: RefCell<Option<ThreadRng>> = const { RefCell::new(None) };
}

fn reseed() -> Result<ThreadRng, Error> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *seed).map_err(|_| Error::Rng)?;
    Ok(ThreadRng {
        rng: ChaCha20Rng::from_seed(*seed),
        pid: std::process::id(),
        remaining: RESEED_AFTER,
    })
}

/// A fresh 96-bit nonce.
pub(crate) fn generate() -> Result<[u8; 12], Error> {
    RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = match slot.as_ref() {
            Some(t) => t.remaining == 0 || t.pid != std::process::id(),
            None => true,
        };
        if stale {
            *slot = Some(reseed()?);
        }
        let t = slot.as_mut().ok_or(Error::Rng)?;
        t.remaining -= 1;
        let mut nonce = [0u8; 12];
        t.rng.fill_bytes(&mut nonce);
        Ok(nonce)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ_and_survive_reseed() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(RESEED_AFTER as usize + 10) {
            assert!(seen.insert(generate().unwrap()), "nonce repeated");
        }
    }
}
