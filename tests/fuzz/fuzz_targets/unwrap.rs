//! Hostile wrapped-key bytes for the local and PKCS#11 providers (the same layout, KEYTABLE.md
//! §2.2 and §2.3): any bytes under any context. Never a panic, and nothing unwraps but the one
//! real wrap under its own context.
#![no_main]

use std::process::Command;
use std::sync::OnceLock;

use encrypted_types::kek::local::LocalKek;
use encrypted_types::kek::pkcs11::Pkcs11Kek;
use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
use encrypted_types::{KeyId, KeyMaterial, TenantId};
use libfuzzer_sys::fuzz_target;

struct Keks {
    _dir: tempfile::TempDir,
    local: LocalKek,
    hsm: Pkcs11Kek,
    /// A real wrap by each, of key id 7 of tenant "t", purpose data.
    local_wrap: Vec<u8>,
    hsm_wrap: Vec<u8>,
}

fn keks() -> &'static Keks {
    static K: OnceLock<Keks> = OnceLock::new();
    K.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
        let local = LocalKek::create(dir.path().join("fuzz.kek")).unwrap_or_else(|_| std::process::abort());
        let label = format!("fuzz-{}", std::process::id());
        let ok = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", &label, "--so-pin", "1234", "--pin", "5678"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            std::process::abort();
        }
        let module = std::env::var("SOFTHSM2_MODULE")
            .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
        let hsm = Pkcs11Kek::open(module, &label, "5678", "fuzz-kek", true)
            .unwrap_or_else(|_| std::process::abort());
        let t = TenantId::from("t");
        let ctx = WrapContext { tenant: Some(&t), purpose: Purpose::Data, key_id: KeyId::from(7) };
        let key = KeyMaterial::from_bytes([7; 32]);
        let local_wrap = local.wrap(&ctx, &key).unwrap_or_else(|_| std::process::abort());
        let hsm_wrap = hsm.wrap(&ctx, &key).unwrap_or_else(|_| std::process::abort());
        Keks { _dir: dir, local, hsm, local_wrap, hsm_wrap }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keks();
    let [sel, purpose, id, tlen, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*tlen % 8).min(rest.len());
    let (tenant, bytes) = rest.split_at(n);
    let tenant = (*sel & 2 == 0).then(|| TenantId::from(String::from_utf8_lossy(tenant).as_ref()));
    let purpose = match purpose % 3 {
        0 => Purpose::Data,
        1 => Purpose::BlindIndex,
        _ => Purpose::Wrapping,
    };
    let ctx = WrapContext { tenant: tenant.as_ref(), purpose, key_id: KeyId::from(u32::from(*id)) };
    let real = tenant.as_ref().is_some_and(|t| t.as_str() == "t")
        && purpose == Purpose::Data
        && *id == 7;
    // Half the inputs start from the real wrap with the input's bytes over its end.
    let (kek, wrap): (&dyn KekProvider, &[u8]) = if sel & 1 == 0 {
        (&k.local, &k.local_wrap)
    } else {
        (&k.hsm, &k.hsm_wrap)
    };
    let candidate: Vec<u8> = if sel & 4 == 0 {
        bytes.to_vec()
    } else {
        let mut c = wrap.to_vec();
        for (i, b) in bytes.iter().enumerate() {
            if let Some(x) = c.get_mut(i % 60) {
                *x ^= b;
            }
        }
        c
    };
    if let Ok(key) = kek.unwrap(&ctx, &candidate) {
        if !(real && candidate == wrap && key.expose() == &[7; 32]) {
            std::process::abort();
        }
    }
});
