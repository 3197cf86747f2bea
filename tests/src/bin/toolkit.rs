//! The operator's toolkit mounted as `encrypted_types::cli`'s docs show, for tests that need a
//! process of its own: what `--help`, `keys init` and a missing KEK file do. The KEK file is
//! `$TOOLKIT_KEK`, or `app.kek` in the working directory.

use encrypted_types::EncryptedModel;
use encrypted_types::store::KeyStore;
use encrypted_types_tests::models::Patient;

fn main() -> std::process::ExitCode {
    let kek = std::env::var_os("TOOLKIT_KEK").unwrap_or_else(|| "app.kek".into());
    encrypted_types::cli::run(&[Patient::MODEL], |start| {
        Ok(KeyStore::new(start.local_kek(&kek)?))
    })
}
