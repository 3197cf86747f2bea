//! The nonce pool's memory: one page per thread, which the kernel zeroes in a forked child.
//!
//! This is the crate's only `unsafe`, and why: a pool of random nonces copied into a child
//! by `fork()` would hand parent and child the same nonces. Linux (4.14 and later) zeroes a
//! private anonymous mapping marked `MADV_WIPEONFORK` in the child, so the page is mapped and
//! marked here, with `mmap` and `madvise`, which only `unsafe` reaches. The pool keeps its
//! "nonces left" count inside the page, so a wiped page reads as empty and is refilled from
//! the OS: never as a page of zero nonces. Where the mapping or the advice fails (an older
//! kernel, a sandbox), [`Page::new`] returns `None` and the caller draws every nonce from the OS.
//! Other systems get an ordinary heap block (safe code), with the limit ADR 0004 states.
#![allow(unsafe_code)]

use zeroize::Zeroize;

/// Bytes in the page: 341 nonces and a 4-byte count.
pub(super) const SIZE: usize = 4096;

#[cfg(target_os = "linux")]
pub(super) use linux::Page;
#[cfg(not(target_os = "linux"))]
pub(super) use other::Page;

#[cfg(target_os = "linux")]
mod linux {
    use core::ptr::NonNull;

    use super::{SIZE, Zeroize};

    /// A private anonymous mapping of [`SIZE`] bytes marked `MADV_WIPEONFORK`. Neither `Send`
    /// nor `Clone` (it holds a raw pointer): it lives and dies in the thread-local that made it.
    pub(in crate::format::nonce) struct Page(NonNull<[u8; SIZE]>);

    impl Page {
        /// The page, or `None` when the kernel refuses the mapping or the advice.
        pub(in crate::format::nonce) fn new() -> Option<Self> {
            // SAFETY: asks for a fresh private anonymous mapping at an address the kernel
            // chooses; no existing memory is named or touched.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            // SAFETY: `p` is the start of the mapping just made, which is `SIZE` bytes long.
            if unsafe { libc::madvise(p, SIZE, libc::MADV_WIPEONFORK) } != 0 {
                // SAFETY: unmaps exactly that mapping, to which no reference exists.
                unsafe { libc::munmap(p, SIZE) };
                return None;
            }
            NonNull::new(p.cast::<[u8; SIZE]>()).map(Self)
        }

        /// The page's bytes (zero until written: the kernel zero-fills anonymous mappings).
        pub(in crate::format::nonce) fn bytes(&mut self) -> &mut [u8; SIZE] {
            // SAFETY: the pointer is the start of a live, readable and writable, initialized
            // (zero-filled) mapping of exactly `SIZE` bytes, aligned for `u8`; this `Page` owns
            // it alone, and `&mut self` makes the returned borrow unique until it ends.
            unsafe { self.0.as_mut() }
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            self.bytes().zeroize();
            // SAFETY: unmaps exactly the mapping `new` made; the borrow above has ended and no
            // other reference to it exists.
            unsafe { libc::munmap(self.0.as_ptr().cast(), SIZE) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use super::{SIZE, Zeroize};

    /// A heap block: not wiped on fork (ADR 0004 states the limit).
    pub(in crate::format::nonce) struct Page(Box<[u8; SIZE]>);

    impl Page {
        pub(in crate::format::nonce) fn new() -> Option<Self> {
            Some(Self(Box::new([0; SIZE])))
        }

        pub(in crate::format::nonce) fn bytes(&mut self) -> &mut [u8; SIZE] {
            &mut self.0
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            self.0.zeroize();
        }
    }
}
