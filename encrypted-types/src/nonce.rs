//! Nonce generation: every nonce comes straight from the operating system's CSPRNG.
//!
//! A user-space generator (a per-thread ChaCha stream) would be faster on older C libraries,
//! but its state is copied by `fork()`, by VM snapshot restores (Firecracker, Lambda SnapStart)
//! and by checkpoint/restore, and two copies would then emit the same nonces under the same
//! key, which breaks AES-GCM outright. The kernel's generator is reseeded on those events, and
//! glibc 2.41+ serves `getrandom` from the vDSO without a system call. See
//! `docs/adr/0002-nonces.md`.

use crate::Error;

/// A fresh 96-bit nonce.
pub(crate) fn generate() -> Result<[u8; 12], Error> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| Error::Rng)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(generate().unwrap()), "nonce repeated");
        }
    }
}
