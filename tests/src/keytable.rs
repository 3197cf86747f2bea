//! An independent reading of the key table, written from `docs/KEYTABLE.md` rather than from
//! the library's code: what the tests use to get at a key's bytes and to tamper with records.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
use encrypted_types::store::KeyRecord;
use encrypted_types::{KeyId, TenantId};

/// The context a record's key is wrapped for.
fn ctx_of<'a>(r: &KeyRecord, tenant: &'a Option<TenantId>) -> WrapContext<'a> {
    WrapContext {
        tenant: tenant.as_ref(),
        purpose: Purpose::parse(&r.purpose).expect("a known purpose"),
        key_id: KeyId::from(u32::try_from(r.key_id).expect("a u32 key id")),
    }
}

/// The 32 bytes of the key in `r`: through `kek` for a key it wraps itself, or, for a key
/// wrapped by a wrapping key (`kek_ref` `key:<id>`, whose record is `wrapping`), by opening
/// AES-256-GCM with AAD `"encrypted-types/keytable/wrap/v1" ‖ BE32(wrapping id) ‖ KEK AAD`.
pub fn unwrap(r: &KeyRecord, wrapping: Option<&KeyRecord>, kek: &dyn KekProvider) -> [u8; 32] {
    let tenant = r.tenant.as_deref().map(TenantId::from);
    let ctx = ctx_of(r, &tenant);
    let wrapped = r.wrapped_key.as_deref().expect("live key");
    let Some(id) = r.kek_ref.strip_prefix("key:") else {
        return *kek.unwrap(&ctx, wrapped).expect("KEK unwrap").expose();
    };
    let w = wrapping.expect("the wrapping key's record");
    assert_eq!(
        id,
        w.key_id.to_string(),
        "the record names its wrapping key"
    );
    let wk = unwrap(w, None, kek);
    let mut aad = b"encrypted-types/keytable/wrap/v1".to_vec();
    aad.extend_from_slice(&u32::try_from(w.key_id).unwrap().to_be_bytes());
    aad.extend_from_slice(&ctx.aad());
    assert_eq!(wrapped.len(), 60);
    let mut key = [0u8; 32];
    key.copy_from_slice(&wrapped[12..44]);
    Aes256Gcm::new((&wk).into())
        .decrypt_inout_detached(
            &Nonce::try_from(&wrapped[..12]).unwrap(),
            &aad,
            (&mut key[..]).into(),
            &Tag::try_from(&wrapped[44..]).unwrap(),
        )
        .expect("local unwrap");
    key
}

/// What someone holding wrapping key `w` (record id `w_id`) can write: `key` wrapped under it
/// for `ctx` (AES-256-GCM, random nonce, AAD as in [`unwrap`]).
pub fn wrap_under(w_id: u32, w: &[u8; 32], ctx: &WrapContext<'_>, key: &[u8; 32]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    let mut aad = b"encrypted-types/keytable/wrap/v1".to_vec();
    aad.extend_from_slice(&w_id.to_be_bytes());
    aad.extend_from_slice(&ctx.aad());
    let mut body = *key;
    let tag = Aes256Gcm::new(w.into())
        .encrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut body[..]).into())
        .unwrap();
    [&nonce[..], &body[..], &tag[..]].concat()
}

/// A key's check value: HMAC-SHA256(key, "encrypted-types/keytable/check/v1"), first 16 bytes.
pub fn check_value(key: &[u8; 32]) -> Vec<u8> {
    use hmac::{KeyInit as _, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(b"encrypted-types/keytable/check/v1");
    mac.finalize().into_bytes()[..16].to_vec()
}

/// Authenticates `r` as wrapping key `w` (record id `w_id`) would: MAC key
/// HKDF-SHA256(W, info "encrypted-types/keytable/mac/v1" ‖ BE32(id)), HMAC over the record's
/// fields as docs/KEYTABLE.md lists them.
pub fn authenticate(r: &mut KeyRecord, w_id: u32, w: &[u8; 32]) {
    use hmac::{KeyInit as _, Mac};
    fn lp(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
        out.extend_from_slice(b);
    }
    fn opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                lp(out, b);
            }
        }
    }
    r.mac_key_id = Some(i64::from(w_id));
    let mut info = b"encrypted-types/keytable/mac/v1".to_vec();
    info.extend_from_slice(&w_id.to_be_bytes());
    let mut mac_key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, w)
        .expand(&info, &mut mac_key)
        .unwrap();
    let mut m = b"encrypted-types/keytable/record/v1".to_vec();
    m.extend_from_slice(&r.key_id.to_be_bytes());
    opt(&mut m, r.tenant.as_deref().map(str::as_bytes));
    lp(&mut m, r.purpose.as_bytes());
    lp(&mut m, r.state.as_bytes());
    m.extend_from_slice(&r.generation.to_be_bytes());
    lp(&mut m, r.kek_ref.as_bytes());
    opt(&mut m, r.wrapped_key.as_deref());
    opt(&mut m, r.check_value.as_deref());
    m.extend_from_slice(&r.mac_key_id.unwrap_or(-1).to_be_bytes());
    let mut h = hmac::Hmac::<sha2::Sha256>::new_from_slice(&mac_key).unwrap();
    h.update(&m);
    r.record_mac = Some(h.finalize().into_bytes().to_vec());
}

/// A record of a key table from before the key hierarchy (KEYTABLE.md §2.5): a fresh key of
/// `tenant` and `purpose` wrapped by `kek` itself, generation 0, no check value and no MAC.
pub fn legacy_record(
    kek: &dyn KekProvider,
    key_id: u32,
    tenant: &TenantId,
    purpose: Purpose,
    state: &str,
    created_at: i64,
) -> KeyRecord {
    let ctx = WrapContext {
        tenant: Some(tenant),
        purpose,
        key_id: KeyId::from(key_id),
    };
    let key = encrypted_types::KeyMaterial::generate().expect("a random key");
    KeyRecord {
        key_id: i64::from(key_id),
        tenant: Some(tenant.as_str().to_owned()),
        purpose: purpose.as_str().to_owned(),
        state: state.to_owned(),
        wrapped_key: Some(kek.wrap(&ctx, &key).expect("a KEK wrap")),
        kek_ref: kek.kek_ref(),
        created_at,
        state_changed_at: created_at,
        generation: 0,
        check_value: None,
        mac_key_id: None,
        record_mac: None,
        kek_check: None,
    }
}
