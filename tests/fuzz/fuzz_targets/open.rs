//! The open path and the header parser on arbitrary bytes: only typed errors, never a panic,
//! never an over-read, never an allocation beyond the input. The keyring holds key ids 1 and 2
//! so inputs that name them reach AES-GCM and the plaintext decoders.
#![no_main]

use std::sync::OnceLock;

use encrypted_types::format::Header;
use encrypted_types::{Encrypted, KeyMaterial, Keyring};
use libfuzzer_sys::fuzz_target;

encrypted_types::column_context!(Col = "fuzz"."value");

fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| {
        Keyring::builder()
            .data_key(1, None, KeyMaterial::from_bytes([1; 32]))
            .data_key(2, Some("t".into()), KeyMaterial::from_bytes([2; 32]))
            .destroyed_key(3)
            .primary(None, 1)
            .build()
            .unwrap_or_else(|_| std::process::abort())
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keyring();
    let _ = Header::parse(data);
    let _ = Encrypted::<String, Col>::open_with(k, data);
    let _ = Encrypted::<Vec<u8>, Col>::open_with(k, data);
    let _ = Encrypted::<i64, Col>::open_with(k, data);
    let _ = Encrypted::<f64, Col>::open_with(k, data);
    let _ = Encrypted::<bool, Col>::open_with(k, data);
    let _ = Encrypted::<chrono::NaiveDateTime, Col>::open_with(k, data);
    let _ = Encrypted::<serde_json::Value, Col>::open_with(k, data);
    let _ = Encrypted::<uuid::Uuid, Col>::open_with(k, data);
    // Sealed by the library and then handed back whole: must round-trip.
    if let Ok(s) = std::str::from_utf8(data) {
        let sealed = Encrypted::<String, Col>::new(s.to_owned())
            .seal_with(k)
            .unwrap_or_else(|_| std::process::abort());
        match Encrypted::<String, Col>::open_with(k, &sealed) {
            Ok(v) if v.as_str() == s => {}
            _ => std::process::abort(),
        }
    }
});
