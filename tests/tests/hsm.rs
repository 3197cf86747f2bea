//! The PKCS#11 provider against SoftHSM2 (Debian's `softhsm2`, installed by `.ci/run`): the
//! test creates its own token, makes a non-extractable KEK on it, creates keys, unwraps them in
//! a fresh process, and seals and opens through them.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use diesel::prelude::*;
use encrypted_types::kek::pkcs11::Pkcs11Kek;
use encrypted_types::kek::{KekProvider, Purpose, WrapContext};
use encrypted_types::store::KeyStore;
use encrypted_types::{Encrypted, Error, KeyId, KeyMaterial, TenantId};
use encrypted_types_tests::{PeopleEmail, run_in_fresh_process};

const PIN: &str = "5678";
const KEY_LABEL: &str = "encrypted-types-kek";

fn module() -> String {
    std::env::var("SOFTHSM2_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

/// A SoftHSM2 token of this test run, deleted when dropped.
struct Token(String);

impl Token {
    fn create() -> Self {
        let label = format!(
            "et-{}-{}",
            std::process::id(),
            encrypted_types_tests::next_id()
        );
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                &label,
                "--so-pin",
                "1234",
                "--pin",
                PIN,
            ])
            .output()
            .expect("softhsm2-util is not installed: apt-get install softhsm2 (.ci/run does)");
        assert!(
            out.status.success(),
            "softhsm2-util failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(label)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.0])
            .output();
    }
}

#[test]
fn keys_wrapped_by_an_hsm_key_unwrap_in_a_fresh_process() {
    let _serial = encrypted_types_tests::serial();
    let token = Token::create();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("hsm.db");
    let sealed_value;
    {
        let kek = Pkcs11Kek::open(module(), &token.0, PIN, KEY_LABEL, true).unwrap();
        assert_eq!(kek.kek_ref(), format!("pkcs11:{KEY_LABEL}"));

        // Wrapping is bound to its context, and altered bytes are refused.
        let a = TenantId::from("a");
        let ctx = WrapContext {
            tenant: Some(&a),
            purpose: Purpose::Data,
            key_id: KeyId::from(9),
        };
        let dek = KeyMaterial::generate().unwrap();
        let wrapped = kek.wrap(&ctx, &dek).unwrap();
        assert_eq!(wrapped.len(), 60);
        assert_eq!(kek.unwrap(&ctx, &wrapped).unwrap().expose(), dek.expose());
        let b = TenantId::from("b");
        let refused = Some(Error::KeyUnwrap {
            key_id: KeyId::from(9),
        });
        assert_eq!(
            kek.unwrap(
                &WrapContext {
                    tenant: Some(&b),
                    ..ctx
                },
                &wrapped
            )
            .err(),
            refused
        );
        assert_eq!(
            kek.unwrap(
                &WrapContext {
                    purpose: Purpose::BlindIndex,
                    ..ctx
                },
                &wrapped
            )
            .err(),
            refused
        );
        let mut flipped = wrapped.clone();
        flipped[30] ^= 0x10;
        assert_eq!(kek.unwrap(&ctx, &flipped).err(), refused);

        // A key table whose keys the HSM wraps.
        let conn = &mut SqliteConnection::establish(db_path.to_str().unwrap()).unwrap();
        KeyStore::<Pkcs11Kek>::run_migrations(conn).unwrap();
        let store = KeyStore::new(kek);
        store.create_tenant(conn, Some(&"clinic-h".into())).unwrap();
        let (keyring, report) = store.load(conn).unwrap();
        assert_eq!((report.data_keys, report.blind_index_keys), (1, 1));
        sealed_value =
            Encrypted::<String, PeopleEmail>::for_tenant("hsm@example.org".into(), "clinic-h")
                .seal_with(&keyring)
                .unwrap();
    }
    // Another process: only the token, the PIN and the key table.
    run_in_fresh_process(
        "open_in_a_fresh_process",
        &[
            ("ET_HSM_TOKEN", token.0.clone()),
            ("ET_HSM_DB", db_path.to_string_lossy().into_owned()),
            ("ET_HSM_SEALED", hex::encode(&sealed_value)),
        ],
    );
}

/// The fresh-process half of the test above (run by it, with its environment).
#[test]
#[ignore = "run by keys_wrapped_by_an_hsm_key_unwrap_in_a_fresh_process in its own process"]
fn open_in_a_fresh_process() {
    let token = std::env::var("ET_HSM_TOKEN").expect("run by the parent test");
    let db = std::env::var("ET_HSM_DB").unwrap();
    let sealed = hex::decode(std::env::var("ET_HSM_SEALED").unwrap()).unwrap();
    let kek = Pkcs11Kek::open(module(), &token, PIN, KEY_LABEL, false).unwrap();
    let conn = &mut SqliteConnection::establish(&db).unwrap();
    let (keyring, _) = KeyStore::new(kek).load(conn).unwrap();
    let opened = Encrypted::<String, PeopleEmail>::open_with(&keyring, &sealed).unwrap();
    assert_eq!(opened.as_str(), "hsm@example.org");
    let again = Encrypted::<String, PeopleEmail>::for_tenant("second".into(), "clinic-h")
        .seal_with(&keyring)
        .unwrap();
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open_with(&keyring, &again)
            .unwrap()
            .as_str(),
        "second"
    );
}

#[test]
fn a_missing_token_or_key_is_a_typed_error() {
    let _serial = encrypted_types_tests::serial();
    let token = Token::create();
    let err = Pkcs11Kek::open(module(), &token.0, PIN, "no-such-key", false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("no AES key labelled"), "{err}");
    let err = Pkcs11Kek::open(module(), &token.0, "0000", KEY_LABEL, true)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Provider { .. }), "wrong PIN: {err}");
    let err = Pkcs11Kek::open(module(), "no-such-token", PIN, KEY_LABEL, false)
        .err()
        .unwrap();
    assert!(matches!(err, Error::Provider { .. }), "{err}");
    assert!(err.to_string().contains("no token labelled"), "{err}");
}

/// The KEK moves out of the HSM into KMS (`KeyStore::rewrap`): afterwards the token is not
/// needed, and a load makes one KMS request.
#[test]
fn rewrap_moves_keys_from_an_hsm_key_to_kms() {
    use encrypted_types::kek::aws::AwsKms;
    use encrypted_types::store::RewrapOptions;
    use encrypted_types_tests::kms::{Emulator, config, create_key};

    let _serial = encrypted_types_tests::serial();
    let token = Token::create();
    let kms = Emulator::start();
    let kms_key = create_key(&kms.url);
    let aws = || {
        AwsKms::new(config(
            &kms.url,
            &kms_key,
            std::time::Duration::from_secs(10),
        ))
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let conn = &mut SqliteConnection::establish(dir.path().join("k.db").to_str().unwrap()).unwrap();
    KeyStore::<Pkcs11Kek>::run_migrations(conn).unwrap();
    let hsm = KeyStore::new(Pkcs11Kek::open(module(), &token.0, PIN, KEY_LABEL, true).unwrap());
    for t in ["h1", "h2", "h3"] {
        hsm.create_tenant(conn, Some(&t.into())).unwrap();
    }
    let (keyring, _) = hsm.load(conn).unwrap();
    let sealed = Encrypted::<String, PeopleEmail>::for_tenant("moved@example.org".into(), "h2")
        .seal_with(&keyring)
        .unwrap();
    drop(hsm); // one session on the token at a time

    let store = KeyStore::new(aws())
        .with_kek(Pkcs11Kek::open(module(), &token.0, PIN, KEY_LABEL, false).unwrap());
    let report = store.rewrap(conn, RewrapOptions::default()).unwrap();
    assert!(report.finished, "{report:?}");
    assert_eq!(
        (report.rewrapped, report.destroyed_wrapping_keys.len()),
        (6, 1)
    );
    drop(store);
    drop(token); // the token is deleted
    let before = kms.requests();
    let (keyring, report) = KeyStore::new(aws()).load(conn).unwrap();
    assert_eq!((report.data_keys, report.kek_calls), (3, 1));
    assert_eq!(kms.requests() - before, 1);
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open_with(&keyring, &sealed)
            .unwrap()
            .as_str(),
        "moved@example.org"
    );
}

/// A key of the same label on another token (a re-initialized HSM, a key regenerated under the
/// old name) is `WrongKek` by its `CKA_CHECK_VALUE`; the right key with altered wrap bytes
/// stays `KeyUnwrap`.
#[test]
fn another_hsm_key_under_the_same_label_is_a_wrong_kek() {
    let _serial = encrypted_types_tests::serial();
    let (first, second) = (Token::create(), Token::create());
    let conn = &mut SqliteConnection::establish(":memory:").unwrap();
    KeyStore::<Pkcs11Kek>::run_migrations(conn).unwrap();
    let kek = Pkcs11Kek::open(module(), &first.0, PIN, KEY_LABEL, true).unwrap();
    let own = kek.kek_check().unwrap();
    assert!(
        own.as_ref().is_some_and(|c| !c.is_empty()),
        "SoftHSM2 gives CKA_CHECK_VALUE"
    );
    let store = KeyStore::new(kek);
    store.create_tenant(conn, Some(&"clinic-h".into())).unwrap();
    let stored: Vec<Option<Vec<u8>>> = encrypted_types::store::encrypted_types_keys::table
        .filter(encrypted_types::store::encrypted_types_keys::purpose.eq("wrapping"))
        .select(encrypted_types::store::encrypted_types_keys::kek_check)
        .load(conn)
        .unwrap();
    assert_eq!(stored, [own]);

    let other = Pkcs11Kek::open(module(), &second.0, PIN, KEY_LABEL, true).unwrap();
    assert_eq!(other.kek_ref(), format!("pkcs11:{KEY_LABEL}"));
    assert_eq!(
        KeyStore::new(other).load(conn).err(),
        Some(Error::WrongKek {
            kek_ref: format!("pkcs11:{KEY_LABEL}")
        })
    );
    diesel::sql_query(
        "UPDATE encrypted_types_keys SET wrapped_key = zeroblob(60) WHERE purpose = 'wrapping'",
    )
    .execute(conn)
    .unwrap();
    assert!(matches!(
        store.load(conn).err(),
        Some(Error::KeyUnwrap { .. })
    ));
}

/// Imports the AES key `value` into `token` under `label` (non-extractable, sensitive), as an
/// operator importing a KEK into an HSM does, and closes the session (the library opens its own).
fn import_key(token: &str, label: &str, value: &[u8]) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let context = Pkcs11::new(module()).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| context.get_token_info(*s).unwrap().label().trim() == token)
        .unwrap();
    let session = context.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap();
}

#[derive(serde::Deserialize)]
struct Pkcs11Vectors {
    kek: String,
    kek_label: String,
    kek_check: String,
    data_key: String,
    records: Vec<encrypted_types_tests::vector_table::KeyTableRec>,
}

/// `keytable_v1_pkcs11.json` (KEYTABLE.md §2.3 and §3.1), written by the Python reference with
/// ordinary AES-GCM: its KEK imported into a SoftHSM2 token under its label, the library loads
/// the table through the token (CKM_AES_GCM, the IV in front), the token's own
/// `CKA_CHECK_VALUE` is the vector's, and the data key recovered is the vector's.
#[test]
fn the_pkcs11_vector_table_loads_through_a_token_holding_its_key() {
    let _serial = encrypted_types_tests::serial();
    let doc: Pkcs11Vectors =
        serde_json::from_str(include_str!("../vectors/keytable_v1_pkcs11.json")).unwrap();
    let token = Token::create();
    import_key(&token.0, &doc.kek_label, &hex::decode(&doc.kek).unwrap());
    let kek = Pkcs11Kek::open(module(), &token.0, PIN, &doc.kek_label, false).unwrap();
    assert_eq!(kek.kek_ref(), format!("pkcs11:{}", doc.kek_label));
    assert_eq!(
        kek.kek_check().unwrap().map(hex::encode),
        Some(doc.kek_check.clone())
    );
    let conn = &mut encrypted_types_tests::vector_table::key_table(&doc.records);
    // Written before the manifest (KEYTABLE.md §6): loaded as in an upgrade window.
    let (keyring, report) = KeyStore::new(kek)
        .allow_unmanifested_table()
        .load(conn)
        .unwrap();
    assert_eq!(
        (report.data_keys, report.blind_index_keys, report.kek_calls),
        (1, 1, 1)
    );
    let data = doc.records.iter().find(|r| r.purpose == "data").unwrap();
    let id = KeyId::from(u32::try_from(data.key_id).unwrap());
    let tenant = TenantId::from(data.tenant.as_deref().unwrap());
    let reference = encrypted_types::Keyring::builder()
        .data_key(
            id.get(),
            Some(tenant.clone()),
            KeyMaterial::from_slice(&hex::decode(&doc.data_key).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let ctx = encrypted_types::format::Context::new("t", "c", Some(&tenant), "bytes");
    let sealed =
        encrypted_types::format::seal(reference.key(id).unwrap(), &ctx, &b"hsm".to_vec()).unwrap();
    let opened: Vec<u8> =
        encrypted_types::format::open(keyring.key(id).unwrap(), &ctx, sealed).unwrap();
    assert_eq!(opened, b"hsm");
}
