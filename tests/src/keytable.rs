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
