//! The bounded cache of the data keys' GCM-SIV state.
//!
//! A data key's state for suites 2 to 5 is its expanded AES key: about a kilobyte with the
//! pure-Rust `aes` crate (its union also holds the software schedule), less with AWS-LC. A
//! keyring of 100,000 tenants holds 200,001 keys, and building every schedule at load made that
//! process 314 MB resident. So a key keeps its 32 bytes of material, and its state is built on
//! first use into a slot the cache counts: past [`capacity`] built states, the oldest built is
//! dropped (first in, first out) and built again if it is used again. A dropped state wipes its
//! round keys (the `zeroize` feature of `aes`; AWS-LC cleanses what it frees). Reading a cached
//! state is a lock-free `ArcSwap` load; only a miss takes the cache's lock.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::{ArcSwapOption, Guard};

#[cfg(feature = "aws-lc")]
use super::awslc::Siv;
use super::key::KeyMaterial;
#[cfg(not(feature = "aws-lc"))]
use super::siv::Siv;

/// Built states kept by default: 16,384 keys, about 16 MB with the pure-Rust `aes` crate. A
/// process whose working set of tenants is larger raises it with [`set_capacity`].
pub const DEFAULT_CAPACITY: usize = 16_384;

static CAPACITY: AtomicUsize = AtomicUsize::new(DEFAULT_CAPACITY);

/// The slots whose state is built, oldest first. A slot may appear twice (two threads built it
/// at once); the count then overstates what is cached, never understates it.
static BUILT: Mutex<VecDeque<Weak<Slot>>> = Mutex::new(VecDeque::new());

/// How many keys' state the cache keeps.
///
/// ```
/// assert_eq!(encrypted_types::format::cipher_cache_capacity(), encrypted_types::format::DEFAULT_CIPHER_CACHE_CAPACITY);
/// ```
pub fn capacity() -> usize {
    CAPACITY.load(Ordering::Relaxed)
}

/// Sets how many keys' state the cache keeps (0: build it for every use and keep none). States
/// over the new capacity are dropped on the next miss.
///
/// ```
/// use encrypted_types::format::{cipher_cache_capacity, set_cipher_cache_capacity};
/// let before = cipher_cache_capacity();
/// set_cipher_cache_capacity(100_000);
/// assert_eq!(cipher_cache_capacity(), 100_000);
/// set_cipher_cache_capacity(before);
/// ```
pub fn set_capacity(n: usize) {
    CAPACITY.store(n, Ordering::Relaxed);
}

/// One key's place in the cache, shared by every handle on the key (a keyring rebuilt from
/// another keeps its keys' slots).
#[derive(Default)]
pub(crate) struct Slot {
    state: ArcSwapOption<Siv>,
}

/// A key's state, cached or built for this use only.
pub(crate) enum Cipher {
    Cached(Guard<Option<Arc<Siv>>>),
    Built(Arc<Siv>),
}

impl Deref for Cipher {
    type Target = Siv;

    fn deref(&self) -> &Siv {
        match self {
            // `Cached` is made only from a guard that holds a state.
            Self::Cached(g) => g
                .as_deref()
                .unwrap_or_else(|| unreachable!("an empty guard")),
            Self::Built(s) => s,
        }
    }
}

impl Slot {
    /// The state of the key whose material is `material`, built if it is not cached.
    pub(crate) fn get(self: &Arc<Self>, material: &KeyMaterial) -> Cipher {
        let cached = self.state.load();
        if cached.is_some() {
            return Cipher::Cached(cached);
        }
        drop(cached);
        let built = Arc::new(Siv::new(material.expose()));
        let capacity = capacity();
        if capacity > 0 {
            self.state.store(Some(Arc::clone(&built)));
            let mut order = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
            order.push_back(Arc::downgrade(self));
            while order.len() > capacity {
                if let Some(slot) = order.pop_front().and_then(|w| w.upgrade()) {
                    // Readers holding it finish with it; it is wiped when the last one drops.
                    slot.state.store(None);
                }
            }
        }
        Cipher::Built(built)
    }

    /// Whether the state is built (tests).
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.state.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Past the capacity the oldest built state is dropped, and a dropped one is built again
    /// on its next use, to the same cipher.
    #[test]
    fn the_cache_keeps_at_most_its_capacity_oldest_out_first() {
        // Other tests sealing meanwhile only miss more often: a miss rebuilds the same state.
        let before = capacity();
        set_capacity(3);
        let slots: Vec<Arc<Slot>> = (0..5).map(|_| Arc::new(Slot::default())).collect();
        let materials: Vec<KeyMaterial> =
            (0..5u8).map(|i| KeyMaterial::from_bytes([i; 32])).collect();
        let mut tags = Vec::new();
        for (slot, m) in slots.iter().zip(&materials) {
            let mut body = *b"sixteen bytes!!!";
            tags.push(slot.get(m).seal(&[0; 12], b"aad", &mut body).unwrap());
        }
        let built: Vec<bool> = slots.iter().map(|s| s.is_built()).collect();
        assert_eq!(built, [false, false, true, true, true]);
        // The first key again: built anew, same tag; the oldest of the rest goes.
        let mut body = *b"sixteen bytes!!!";
        assert_eq!(
            slots[0]
                .get(&materials[0])
                .seal(&[0; 12], b"aad", &mut body)
                .unwrap(),
            tags[0]
        );
        let built: Vec<bool> = slots.iter().map(|s| s.is_built()).collect();
        assert_eq!(built, [true, false, false, true, true]);
        // Capacity 0 keeps nothing and still works.
        set_capacity(0);
        let fresh = Arc::new(Slot::default());
        let mut body = *b"sixteen bytes!!!";
        assert_eq!(
            fresh
                .get(&materials[1])
                .seal(&[0; 12], b"aad", &mut body)
                .unwrap(),
            tags[1]
        );
        assert!(!fresh.is_built());
        set_capacity(before);
    }
}
