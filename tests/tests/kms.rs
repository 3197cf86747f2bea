//! The AWS KMS provider against a local emulator speaking the real KMS API (`moto_server`
//! from PyPI, installed by `.ci/run`), started and stopped by the tests: keys created through
//! GenerateDataKey, unwrapped with Decrypt in a fresh process; a stopped or silent KMS gives a
//! typed error within the configured timeout; altered or moved wrapped keys are refused.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use encrypted_types::kek::aws::{AwsKms, AwsKmsConfig};
use encrypted_types::kek::{KekProvider, Purpose, RetryPolicy, Retrying, WrapContext};
use encrypted_types::store::{KeyStore, encrypted_types_keys};
use encrypted_types::{Encrypted, Error, KeyId, TenantId};
use encrypted_types_tests::{PeopleEmail, run_in_fresh_process};

/// A `moto_server` on a free loopback port, killed when dropped.
struct Emulator {
    child: Child,
    url: String,
}

impl Emulator {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed to run the KMS emulator (moto)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the KMS emulator did not start on port {port}: python3 -m pip install 'moto[server]' (.ci/run does)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, key_id: &str, timeout: Duration) -> AwsKmsConfig {
    AwsKmsConfig {
        key_id: key_id.into(),
        region: "us-east-1".into(),
        endpoint_url: Some(url.into()),
        credentials: Some(("testing".into(), "testing".into())),
        timeout,
    }
}

/// Creates a KMS key in the emulator.
fn create_key(url: &str) -> String {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let client = aws_sdk_kms::Client::from_conf(conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(
            client
                .create_key()
                .description("encrypted-types test KEK")
                .send(),
        )
        .unwrap();
    out.key_metadata().unwrap().key_id().to_owned()
}

#[test]
fn keys_from_kms_unwrap_in_a_fresh_process_and_tampering_is_refused() {
    let kms = Emulator::start();
    let key_id = create_key(&kms.url);
    let provider = AwsKms::new(config(&kms.url, &key_id, Duration::from_secs(10))).unwrap();
    assert_eq!(provider.kek_ref(), format!("aws-kms:{key_id}"));

    // GenerateDataKey and Decrypt, bound to the encryption context.
    let a = TenantId::from("a");
    let ctx = WrapContext {
        tenant: Some(&a),
        purpose: Purpose::Data,
        key_id: KeyId::from(3),
    };
    let (dek, wrapped) = provider.generate_wrapped(&ctx).unwrap();
    assert_eq!(
        provider.unwrap(&ctx, &wrapped).unwrap().expose(),
        dek.expose()
    );
    let b = TenantId::from("b");
    let refused = Some(Error::KeyUnwrap {
        key_id: KeyId::from(3),
    });
    assert_eq!(
        provider
            .unwrap(
                &WrapContext {
                    tenant: Some(&b),
                    ..ctx
                },
                &wrapped
            )
            .err(),
        refused,
        "another tenant's context"
    );
    assert_eq!(
        provider
            .unwrap(
                &WrapContext {
                    purpose: Purpose::BlindIndex,
                    ..ctx
                },
                &wrapped
            )
            .err(),
        refused
    );
    // Encrypt (wrapping a key made here) works too.
    let rewrapped = provider.wrap(&ctx, &dek).unwrap();
    assert_eq!(
        provider.unwrap(&ctx, &rewrapped).unwrap().expose(),
        dek.expose()
    );

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kms.db");
    let conn = &mut SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    KeyStore::<AwsKms>::run_migrations(conn).unwrap();
    let store = KeyStore::new(provider);
    let keys = store.create_tenant(conn, Some(&"clinic-k".into())).unwrap();
    let (keyring, report) = store.load(conn).unwrap();
    assert_eq!((report.data_keys, report.blind_index_keys), (1, 1));
    let sealed = Encrypted::<String, PeopleEmail>::for_tenant("kms@example.org".into(), "clinic-k")
        .seal_with(&keyring)
        .unwrap();

    run_in_fresh_process(
        "open_in_a_fresh_process",
        &[
            ("ET_KMS_URL", kms.url.clone()),
            ("ET_KMS_KEY", key_id.clone()),
            ("ET_KMS_DB", db.to_string_lossy().into_owned()),
            ("ET_KMS_SEALED", hex::encode(&sealed)),
        ],
    );

    // A bit flipped in the stored wrapped key: the load names the key.
    let stored: Option<Vec<u8>> = encrypted_types_keys::table
        .find(i64::from(keys.data.get()))
        .select(encrypted_types_keys::wrapped_key)
        .first(conn)
        .unwrap();
    let mut flipped = stored.clone().unwrap();
    flipped[40] ^= 0x01;
    diesel::update(encrypted_types_keys::table.find(i64::from(keys.data.get())))
        .set(encrypted_types_keys::wrapped_key.eq(Some(flipped)))
        .execute(conn)
        .unwrap();
    assert_eq!(
        store.load(conn).err(),
        Some(Error::KeyUnwrap { key_id: keys.data })
    );
}

/// The fresh-process half of the test above.
#[test]
#[ignore = "run by keys_from_kms_unwrap_in_a_fresh_process_and_tampering_is_refused in its own process"]
fn open_in_a_fresh_process() {
    let url = std::env::var("ET_KMS_URL").expect("run by the parent test");
    let key = std::env::var("ET_KMS_KEY").unwrap();
    let db = std::env::var("ET_KMS_DB").unwrap();
    let sealed = hex::decode(std::env::var("ET_KMS_SEALED").unwrap()).unwrap();
    let store = KeyStore::new(AwsKms::new(config(&url, &key, Duration::from_secs(10))).unwrap());
    let conn = &mut SqliteConnection::establish(&db).unwrap();
    let (keyring, _) = store.load(conn).unwrap();
    assert_eq!(
        Encrypted::<String, PeopleEmail>::open_with(&keyring, &sealed)
            .unwrap()
            .as_str(),
        "kms@example.org"
    );
}

#[test]
fn a_stopped_kms_fails_fast_and_a_silent_one_times_out() {
    let a = TenantId::from("a");
    let ctx = WrapContext {
        tenant: Some(&a),
        purpose: Purpose::Data,
        key_id: KeyId::from(4),
    };

    // Stopped: nothing listens on the port. Refused at once, retried with backoff, then a typed error.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let stopped = Retrying::new(
        AwsKms::new(config(
            &format!("http://127.0.0.1:{port}"),
            "k",
            Duration::from_secs(2),
        ))
        .unwrap(),
        policy,
    );
    let t = Instant::now();
    let err = stopped.unwrap(&ctx, &[0u8; 96]).err().unwrap();
    assert!(
        matches!(err, Error::Provider { .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3 * 2 + 2),
        "took {:?}",
        t.elapsed()
    );

    // Silent: accepts connections and never answers. The operation timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(8) {
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(1500);
    let t = Instant::now();
    let err = AwsKms::new(config(&url, "k", timeout))
        .unwrap()
        .unwrap(&ctx, &[0u8; 96])
        .err()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(
        err,
        Error::Timeout {
            operation: "unwrap",
            key_id: KeyId::from(4)
        }
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "took {took:?}"
    );
}
