//! The bounded cache of the data keys' GCM-SIV state.
//!
//! A data key's state for suites 2 to 5 is its expanded AES key: about a kilobyte with the
//! pure-Rust `aes` crate (its union also holds the software schedule), less with AWS-LC. A
//! keyring of 100,000 tenants holds 200,001 keys, and building every schedule at load kept
//! 210 MB resident for them. So a key keeps its 32 bytes of material, and its state is built on
//! first use into a slot the cache counts: past [`capacity`] built states, the oldest built is
//! dropped (first in, first out) and built again if it is used again. A dropped state wipes its
//! round keys (the `zeroize` feature of `aes`; AWS-LC cleanses what it frees); a schedule built
//! on a miss may leave a stack copy until overwritten, as any key expansion does. Reading a
//! cached state is a lock-free `ArcSwap` load; only a miss takes the cache's lock.
//!
//! First in, first out has a cliff: a working set of keys that cycles and is larger than the
//! capacity misses on nearly every use. Set the capacity above the working set
//! ([`set_capacity`], as `format::set_cipher_cache_capacity`).

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
/// process whose working set of keys is larger raises it with
/// `format::set_cipher_cache_capacity`.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// A capacity and the order in which states were built.
pub(crate) struct Cache {
    capacity: AtomicUsize,
    /// Slots whose state was built, oldest first: one entry per build that won its slot
    /// (`Slot::get`), so entries are never fewer than built states.
    built: Mutex<VecDeque<Weak<Slot>>>,
}

/// The process's cache, which every keyring's keys use.
pub(crate) static CACHE: Cache = Cache::new(DEFAULT_CAPACITY);

/// A cache that keeps nothing: keys made for one use (the load's self-test).
pub(crate) static UNCACHED: Cache = Cache::new(0);

/// How many keys' state the cache keeps.
///
/// ```
/// assert_eq!(encrypted_types::format::cipher_cache_capacity(), encrypted_types::format::DEFAULT_CIPHER_CACHE_CAPACITY);
/// ```
pub fn capacity() -> usize {
    CACHE.capacity()
}

/// Sets how many keys' state the cache keeps, and drops the oldest states over it now (0:
/// keep none, build the state for every use).
///
/// ```
/// use encrypted_types::format::{cipher_cache_capacity, set_cipher_cache_capacity};
/// let before = cipher_cache_capacity();
/// set_cipher_cache_capacity(100_000);
/// assert_eq!(cipher_cache_capacity(), 100_000);
/// set_cipher_cache_capacity(before);
/// ```
pub fn set_capacity(n: usize) {
    CACHE.set_capacity(n);
}

impl Cache {
    pub(crate) const fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            built: Mutex::new(VecDeque::new()),
        }
    }

    fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    fn set_capacity(&self, n: usize) {
        self.capacity.store(n, Ordering::Relaxed);
        self.record(None);
    }

    /// Records a newly built slot, if any, and drops the oldest states over the capacity.
    /// The states are dropped (and wiped) after the lock is released.
    fn record(&self, slot: Option<&Arc<Slot>>) {
        let mut evicted = Vec::new();
        {
            let mut order = self.built.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(slot) = slot {
                order.push_back(Arc::downgrade(slot));
            }
            let capacity = self.capacity();
            while order.len() > capacity {
                match order.pop_front() {
                    Some(w) => evicted.extend(w.upgrade()),
                    None => break,
                }
            }
        }
        for slot in evicted {
            // Readers holding it finish with it; it is wiped when the last one drops.
            slot.state.store(None);
        }
    }
}

/// One key's place in a cache, shared by every handle on the key (a keyring rebuilt from
/// another keeps its keys' slots).
pub(crate) struct Slot {
    state: ArcSwapOption<Siv>,
    cache: &'static Cache,
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
    /// An empty slot counted by `cache`.
    pub(crate) fn new(cache: &'static Cache) -> Arc<Self> {
        Arc::new(Self {
            state: ArcSwapOption::empty(),
            cache,
        })
    }

    /// The state of the key whose material is `material`, built if it is not cached.
    pub(crate) fn get(self: &Arc<Self>, material: &KeyMaterial) -> Cipher {
        let cached = self.state.load();
        if cached.is_some() {
            return Cipher::Cached(cached);
        }
        let built = Arc::new(Siv::new(material.expose()));
        if self.cache.capacity() == 0 {
            return Cipher::Built(built);
        }
        // Only the build that fills the empty slot is recorded; one that lost the race uses
        // the winner's state, so a slot is never recorded twice for one build.
        let previous = self
            .state
            .compare_and_swap(&cached, Some(Arc::clone(&built)));
        if previous.is_some() {
            return Cipher::Cached(previous);
        }
        drop(previous);
        self.cache.record(Some(self));
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
    /// on its next use, to the same cipher; lowering the capacity drops states at once, and 0
    /// keeps none. On a cache of its own: other tests seal through the process's meanwhile.
    #[test]
    fn the_cache_keeps_at_most_its_capacity_oldest_out_first() {
        static OWN: Cache = Cache::new(3);
        let slots: Vec<Arc<Slot>> = (0..5).map(|_| Slot::new(&OWN)).collect();
        let materials: Vec<KeyMaterial> =
            (0..5u8).map(|i| KeyMaterial::from_bytes([i; 32])).collect();
        let seal = |slot: &Arc<Slot>, m: &KeyMaterial| {
            let mut body = *b"sixteen bytes!!!";
            slot.get(m).seal(&[0; 12], b"aad", &mut body).unwrap()
        };
        let tags: Vec<_> = slots
            .iter()
            .zip(&materials)
            .map(|(s, m)| seal(s, m))
            .collect();
        let built = || slots.iter().map(|s| s.is_built()).collect::<Vec<bool>>();
        assert_eq!(built(), [false, false, true, true, true]);
        // A hit, then the first key again: built anew, same tag; the oldest of the rest goes.
        assert_eq!(seal(&slots[4], &materials[4]), tags[4]);
        assert_eq!(seal(&slots[0], &materials[0]), tags[0]);
        assert_eq!(built(), [true, false, false, true, true]);
        OWN.set_capacity(1);
        assert_eq!(built(), [true, false, false, false, false]);
        OWN.set_capacity(0);
        assert_eq!(built(), [false; 5]);
        assert_eq!(seal(&slots[1], &materials[1]), tags[1]);
        assert_eq!(built(), [false; 5]);
    }
}
