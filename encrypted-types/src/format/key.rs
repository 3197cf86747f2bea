//! Key material: data keys (DEKs) and the blind-index root key.
//!
//! Neither type is `Clone`; both redact themselves in `Debug` and wipe their bytes on drop.
//! A [`DataKey`] holds its 32 bytes of material; the expanded AES key schedules are built on
//! first use, suite 2's into a bounded cache (`format::cache`), suite 1's once.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;

use crate::format::cache::{CACHE, Cache, Cipher, Slot, UNCACHED};
use std::fmt;
use std::sync::Arc;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::tenant::TenantId;

/// The 32-bit identifier written in every sealed value's header.
///
/// Key ids are unique across the whole keyring, across tenants, so a header names exactly one
/// key and decryption never has to try several.
///
/// ```
/// use encrypted_types::KeyId;
/// assert_eq!(KeyId::from(5).get(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u32);

impl KeyId {
    /// The raw number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl From<u32> for KeyId {
    fn from(id: u32) -> Self {
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// 32 bytes of secret key material, wiped on drop.
///
/// This is the seam for key providers: a KMS or HSM unwraps a data key into a `KeyMaterial`,
/// and the keyring takes it from there.
///
/// ```
/// use encrypted_types::KeyMaterial;
/// let k = KeyMaterial::generate().unwrap();
/// assert_eq!(format!("{k:?}"), "KeyMaterial(<redacted>)");
/// ```
///
/// Key material cannot be copied by accident:
///
/// ```compile_fail
/// let k = encrypted_types::KeyMaterial::generate().unwrap();
/// let copy = k.clone();
/// ```
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyMaterial([u8; 32]);

impl KeyMaterial {
    /// Wraps raw key bytes. The caller's array is a copy this type cannot wipe: prefer
    /// [`KeyMaterial::generate`] or [`KeyMaterial::from_slice`] on a buffer you wipe.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Copies key bytes from a slice, which must be exactly 32 bytes long.
    ///
    /// # Errors
    /// [`crate::Error::InvalidKeyring`] if the slice has another length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, crate::Error> {
        if bytes.len() != 32 {
            return Err(crate::Error::InvalidKeyring(
                "key material must be 32 bytes",
            ));
        }
        let mut k = Self([0; 32]);
        k.0.copy_from_slice(bytes);
        Ok(k)
    }

    /// A fresh random key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`crate::Error::Rng`] if the operating system's generator fails.
    pub fn generate() -> Result<Self, crate::Error> {
        let mut k = Self([0; 32]);
        getrandom::fill(&mut k.0).map_err(|_| crate::Error::Rng)?;
        Ok(k)
    }

    /// The raw bytes, for a key provider that has to wrap them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// A data-encryption key (DEK) ready for use: its id, its tenant and its key schedules, for
/// suite 2 (AES-256-GCM-SIV, every new value) and, built on first use, suite 1 (AES-256-GCM,
/// values sealed before suite 2).
///
/// Built by [`crate::KeyringBuilder`]; the key schedules and the material are wiped on drop
/// (the `zeroize` features of aes-gcm and aes). Not `Clone`:
///
/// ```compile_fail
/// fn copy(k: &encrypted_types::DataKey) -> encrypted_types::DataKey { k.clone() }
/// ```
pub struct DataKey {
    pub(crate) id: KeyId,
    pub(crate) tenant: Option<TenantId>,
    /// Suite 2 to 5's state (the expanded key-generating key), built on first use into the
    /// bounded cache of `format::cache`, so a keyring of many keys keeps only those in use.
    siv: Arc<Slot>,
    /// Suite 1's AES-256-GCM state (two AES schedules and the GHASH key, most of a key's
    /// memory), built when the key first meets a suite-1 value: a keyring of many keys whose
    /// values were all sealed in suite 2 never builds it. Boxed, so it stays where it was built.
    gcm: std::sync::OnceLock<Box<Aes256Gcm>>,
    /// The material suite 1's state is built from; boxed and wiped on drop.
    material: Box<KeyMaterial>,
}

impl DataKey {
    pub(crate) fn new(id: KeyId, tenant: Option<TenantId>, material: &KeyMaterial) -> Self {
        Self::in_cache(id, tenant, material, &CACHE)
    }

    /// A key for one use (the load's self-test): its state is built per use and never enters
    /// the process's cache, where it would push out a key in use.
    pub(crate) fn transient(id: KeyId, tenant: Option<TenantId>, material: &KeyMaterial) -> Self {
        Self::in_cache(id, tenant, material, &UNCACHED)
    }

    fn in_cache(
        id: KeyId,
        tenant: Option<TenantId>,
        material: &KeyMaterial,
        cache: &'static Cache,
    ) -> Self {
        Self {
            id,
            tenant,
            siv: Slot::new(cache),
            gcm: std::sync::OnceLock::new(),
            material: Box::new(KeyMaterial(material.0)),
        }
    }

    /// Suites 2 to 5's cipher, from the cache or built now.
    pub(crate) fn siv(&self) -> Cipher {
        self.siv.get(&self.material)
    }

    /// Suite 1's cipher, built on first use.
    pub(crate) fn gcm(&self) -> &Aes256Gcm {
        self.gcm
            .get_or_init(|| Box::new(Aes256Gcm::new(self.material.expose().into())))
    }

    /// A second handle on the same key, for a keyring rebuilt from this one. Deliberately not
    /// `Clone`: copies of key material are made only where the library needs them.
    #[cfg(feature = "keystore")]
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            id: self.id,
            tenant: self.tenant.clone(),
            siv: Arc::clone(&self.siv),
            gcm: std::sync::OnceLock::new(),
            material: Box::new(KeyMaterial(self.material.0)),
        }
    }

    /// The key's id, as written in headers.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The tenant the key belongs to, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The root key from which blind-index keys are derived (HKDF per tenant, table, column and
/// index version). Kept apart from the data keys: it never encrypts anything.
pub struct BlindIndexRootKey {
    pub(crate) tenant: Option<TenantId>,
    // Only ever an HKDF input for blind-index keys; never used to encrypt.
    // Boxed: the bytes stay where they were unwrapped, however the keyring's maps grow.
    pub(crate) material: Box<KeyMaterial>,
}

impl BlindIndexRootKey {
    pub(crate) fn new(tenant: Option<TenantId>, material: Box<KeyMaterial>) -> Self {
        Self { tenant, material }
    }

    /// The tenant the key belongs to, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    #[cfg(feature = "keystore")]
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            tenant: self.tenant.clone(),
            material: Box::new(KeyMaterial(self.material.0)),
        }
    }
}

impl fmt::Debug for BlindIndexRootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindIndexRootKey")
            .field("tenant", &self.tenant)
            .field("key", &"<redacted>")
            .finish()
    }
}
