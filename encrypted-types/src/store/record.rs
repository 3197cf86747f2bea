//! The key records' own cryptography (`docs/KEYTABLE.md`): a key wrapped locally under a
//! wrapping key, the key check value, and the MAC that authenticates every record.
//!
//! All three are pure functions of their inputs, so the Python reference in `tests/vectors/`
//! reproduces them byte for byte.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::Mac;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::KeyRecord;
use crate::Error;
use crate::format::key::{KeyId, KeyMaterial};
use crate::kek::WrapContext;

type HmacSha256 = hmac::Hmac<Sha256>;

/// `nonce (12) ‖ ciphertext (32) ‖ tag (16)`: the local KEK's layout and the wrapping key's.
pub(crate) const WRAPPED_LEN: usize = 12 + 32 + 16;

const WRAP_DOMAIN: &[u8] = b"encrypted-types/keytable/wrap/v1";
const CHECK_LABEL: &[u8] = b"encrypted-types/keytable/check/v1";
#[cfg(feature = "local-kek")]
const KEK_CHECK_LABEL: &[u8] = b"encrypted-types/kek/check/v1";
const MAC_INFO: &[u8] = b"encrypted-types/keytable/mac/v1";
const RECORD_DOMAIN: &[u8] = b"encrypted-types/keytable/record/v1";
const RECORD_DOMAIN_V2: &[u8] = b"encrypted-types/keytable/record/v2";
const MANIFEST_GROUP: &[u8] = b"encrypted-types/keytable/manifest/group/v1";
const MANIFEST_ROW: &[u8] = b"encrypted-types/keytable/manifest/row/v1";
const MANIFEST_ENTRY: &[u8] = b"encrypted-types/keytable/manifest/entry/v1";
/// The first byte of a version 2 record MAC (33 bytes); a version 1 MAC is the bare 32-byte tag.
const MAC_V2: u8 = 0x02;

/// Bytes of a check value: enough that 32 random bytes pass with probability 2⁻¹²⁸.
pub(crate) const CHECK_LEN: usize = 16;

/// AES-256-GCM-seals a 32-byte key under `cipher` with `aad` and `nonce`.
pub(crate) fn seal_key_with_nonce(
    cipher: &Aes256Gcm,
    aad: &[u8],
    nonce: [u8; 12],
    key: &KeyMaterial,
    key_id: KeyId,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(key.expose());
    let body = out.get_mut(12..).ok_or(Error::KeyUnwrap { key_id })?;
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), aad, body.into())
        .map_err(|_| Error::KeyUnwrap { key_id })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// [`seal_key_with_nonce`] with a fresh nonce from the OS.
pub(crate) fn seal_key(
    cipher: &Aes256Gcm,
    aad: &[u8],
    key: &KeyMaterial,
    key_id: KeyId,
) -> Result<Vec<u8>, Error> {
    seal_key_with_nonce(cipher, aad, crate::format::nonce::from_os()?, key, key_id)
}

/// Opens what [`seal_key`] made; any other length, tag or AAD is [`Error::KeyUnwrap`].
pub(crate) fn open_key(
    cipher: &Aes256Gcm,
    aad: &[u8],
    wrapped: &[u8],
    key_id: KeyId,
) -> Result<KeyMaterial, Error> {
    let fail = || Error::KeyUnwrap { key_id };
    if wrapped.len() != WRAPPED_LEN {
        return Err(fail());
    }
    let nonce: [u8; 12] = wrapped
        .get(..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(fail)?;
    let tag = wrapped
        .get(44..)
        .and_then(|b| Tag::try_from(b).ok())
        .ok_or_else(fail)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(wrapped.get(12..44).ok_or_else(fail)?);
    cipher
        .decrypt_inout_detached(&Nonce::from(nonce), aad, (&mut key[..]).into(), &tag)
        .map_err(|_| fail())?;
    KeyMaterial::from_slice(&*key)
}

/// The AAD of a key wrapped by wrapping key `wrapping`: the domain, the wrapping key's id and
/// the same context a KEK binds ([`WrapContext::aad`]).
pub(crate) fn local_aad(ctx: &WrapContext<'_>, wrapping: KeyId) -> Vec<u8> {
    let mut aad = WRAP_DOMAIN.to_vec();
    aad.extend_from_slice(&wrapping.get().to_be_bytes());
    aad.extend_from_slice(&ctx.aad());
    aad
}

/// A key wrapping other keys locally: an unwrapped wrapping key, with its id.
pub(crate) struct Wrapper {
    pub(crate) id: KeyId,
    cipher: Aes256Gcm,
    mac: HmacSha256,
    /// Its own record carries a version 2 MAC, so every record it authenticates must too: a
    /// version 1 tag of a record that was since re-authenticated (restored from a backup,
    /// with other timestamps) is refused, not accepted as a downgrade.
    v2_only: bool,
}

impl Wrapper {
    pub(crate) fn new(id: KeyId, key: &KeyMaterial) -> Result<Self, Error> {
        let mut okm = Zeroizing::new([0u8; 32]);
        let mut info = MAC_INFO.to_vec();
        info.extend_from_slice(&id.get().to_be_bytes());
        hkdf::Hkdf::<Sha256>::new(None, key.expose())
            .expand(&info, &mut okm[..])
            .map_err(|_| Error::KeyRecord {
                key_id: id,
                reason: "cannot derive its MAC key",
            })?;
        let mac =
            <HmacSha256 as KeyInit>::new_from_slice(&okm[..]).map_err(|_| Error::KeyRecord {
                key_id: id,
                reason: "cannot derive its MAC key",
            })?;
        Ok(Self {
            id,
            cipher: Aes256Gcm::new(key.expose().into()),
            mac,
            v2_only: false,
        })
    }

    /// This wrapping key, accepting only version 2 record MACs when `own` (its own record)
    /// carries one.
    pub(crate) fn for_record(mut self, own: &KeyRecord) -> Self {
        self.v2_only = timestamps_authenticated(own);
        self
    }

    /// Wraps `key` for `ctx` under this wrapping key.
    pub(crate) fn wrap(&self, ctx: &WrapContext<'_>, key: &KeyMaterial) -> Result<Vec<u8>, Error> {
        seal_key(&self.cipher, &local_aad(ctx, self.id), key, ctx.key_id)
    }

    /// Unwraps a key wrapped for `ctx` under this wrapping key.
    pub(crate) fn unwrap(
        &self,
        ctx: &WrapContext<'_>,
        wrapped: &[u8],
    ) -> Result<KeyMaterial, Error> {
        open_key(&self.cipher, &local_aad(ctx, self.id), wrapped, ctx.key_id)
    }

    /// Sets `r.mac_key_id` to this key and `r.record_mac` to the version 2 MAC of the record's
    /// fields, timestamps included.
    pub(crate) fn authenticate(&self, r: &mut KeyRecord) {
        r.mac_key_id = Some(i64::from(self.id.get()));
        let mut tag = Vec::with_capacity(33);
        tag.push(MAC_V2);
        tag.extend_from_slice(&self.record_mac(&mac_input_v2(r)));
        r.record_mac = Some(tag);
    }

    /// Whether `r.record_mac` is this key's MAC of `r` (in constant time): a version 2 MAC
    /// (33 bytes, timestamps covered), or a version 1 MAC (32 bytes, written before 0.2) while
    /// this key's own record is still version 1.
    pub(crate) fn verifies(&self, r: &KeyRecord) -> bool {
        if r.mac_key_id != Some(i64::from(self.id.get())) {
            return false;
        }
        let mut mac = self.mac.clone();
        match r.record_mac.as_deref() {
            Some([MAC_V2, tag @ ..]) if tag.len() == 32 => {
                mac.update(&mac_input_v2(r));
                mac.verify_slice(tag).is_ok()
            }
            Some(tag) if tag.len() == 32 && !self.v2_only => {
                mac.update(&mac_input(r));
                mac.verify_slice(tag).is_ok()
            }
            _ => false,
        }
    }

    /// The MAC of a manifest row (`docs/KEYTABLE.md` §6) under this key's MAC key.
    pub(crate) fn manifest_mac(&self, scope: &str, epoch: i64, digest: &[u8]) -> Vec<u8> {
        self.record_mac(&manifest_row_input(scope, epoch, digest, self.id))
            .to_vec()
    }

    /// Whether `mac` is this key's MAC of the manifest row (in constant time).
    pub(crate) fn manifest_verifies(
        &self,
        scope: &str,
        epoch: i64,
        digest: &[u8],
        mac_key_id: i64,
        tag: &[u8],
    ) -> bool {
        if mac_key_id != i64::from(self.id.get()) {
            return false;
        }
        let mut mac = self.mac.clone();
        mac.update(&manifest_row_input(scope, epoch, digest, self.id));
        mac.verify_slice(tag).is_ok()
    }

    /// A group row's share of the deployment row's digest: a keyed hash, never stored, so a
    /// database writer cannot combine old rows into a set that adds up to a stored digest.
    pub(crate) fn manifest_entry(&self, scope: &str, epoch: i64, digest: &[u8]) -> [u8; 32] {
        let mut input = MANIFEST_ENTRY.to_vec();
        lp(&mut input, scope.as_bytes());
        input.extend_from_slice(&epoch.to_be_bytes());
        lp(&mut input, digest);
        self.record_mac(&input)
    }

    fn record_mac(&self, input: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(input);
        mac.finalize().into_bytes().into()
    }
}

fn manifest_row_input(scope: &str, epoch: i64, digest: &[u8], mac_key_id: KeyId) -> Vec<u8> {
    let mut input = MANIFEST_ROW.to_vec();
    lp(&mut input, scope.as_bytes());
    input.extend_from_slice(&epoch.to_be_bytes());
    lp(&mut input, digest);
    input.extend_from_slice(&i64::from(mac_key_id.get()).to_be_bytes());
    input
}

/// The digest of a group's records (`docs/KEYTABLE.md` §6), given in key-id order: each
/// record's id and MAC, which covers every authenticated field of the record.
pub(crate) fn group_digest<'a>(records: impl IntoIterator<Item = &'a KeyRecord>) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(MANIFEST_GROUP);
    let mut buf = Vec::with_capacity(48);
    for r in records {
        buf.clear();
        buf.extend_from_slice(&r.key_id.to_be_bytes());
        opt(&mut buf, r.record_mac.as_deref());
        h.update(&buf);
    }
    h.finalize().into()
}

/// Whether `r`'s MAC is of version 2, so that (once it verifies) its `created_at` and
/// `state_changed_at` are authenticated too.
pub(crate) fn timestamps_authenticated(r: &KeyRecord) -> bool {
    matches!(r.record_mac.as_deref(), Some([MAC_V2, tag @ ..]) if tag.len() == 32)
}

/// `HMAC-SHA256(key, label)`, truncated: a fingerprint of a key that reveals nothing of it.
pub(crate) fn check_value(key: &KeyMaterial) -> [u8; CHECK_LEN] {
    fingerprint(key, CHECK_LABEL)
}

/// A local KEK's check value (docs/KEYTABLE.md, `kek_check`): the same construction under its
/// own label, so it never equals the check value of a key the KEK wraps.
#[cfg(feature = "local-kek")]
pub(crate) fn kek_check_value(kek: &KeyMaterial) -> [u8; CHECK_LEN] {
    fingerprint(kek, KEK_CHECK_LABEL)
}

fn fingerprint(key: &KeyMaterial, label: &[u8]) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    if let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key.expose()) {
        mac.update(label);
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(full.get(..CHECK_LEN).unwrap_or(&[0; CHECK_LEN]));
    }
    out
}

/// Whether `key` matches the stored check value (in constant time).
pub(crate) fn check_matches(key: &KeyMaterial, stored: &[u8]) -> bool {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key.expose()) else {
        return false;
    };
    mac.update(CHECK_LABEL);
    stored.len() == CHECK_LEN && mac.verify_truncated_left(stored).is_ok()
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            lp(out, b);
        }
    }
}

/// What a version 1 record MAC covers: every field but the timestamps and the MAC itself.
pub(crate) fn mac_input(r: &KeyRecord) -> Vec<u8> {
    fields(RECORD_DOMAIN, r)
}

/// What a version 2 record MAC covers: version 1's fields under its own domain, then the
/// timestamps, so that `check`'s key ages and the destroy grace period read authenticated
/// values.
pub(crate) fn mac_input_v2(r: &KeyRecord) -> Vec<u8> {
    let mut out = fields(RECORD_DOMAIN_V2, r);
    out.extend_from_slice(&r.created_at.to_be_bytes());
    out.extend_from_slice(&r.state_changed_at.to_be_bytes());
    out
}

fn fields(domain: &[u8], r: &KeyRecord) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend_from_slice(&r.key_id.to_be_bytes());
    opt(&mut out, r.tenant.as_deref().map(str::as_bytes));
    lp(&mut out, r.purpose.as_bytes());
    lp(&mut out, r.state.as_bytes());
    out.extend_from_slice(&r.generation.to_be_bytes());
    lp(&mut out, r.kek_ref.as_bytes());
    opt(&mut out, r.wrapped_key.as_deref());
    opt(&mut out, r.check_value.as_deref());
    out.extend_from_slice(&r.mac_key_id.unwrap_or(-1).to_be_bytes());
    out
}
