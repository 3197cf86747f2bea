//! A wrong KEK is told apart from tampering: the key store keeps the check value of the KEK
//! that wrapped each wrapping key (`kek_check`, docs/KEYTABLE.md §3.1) and compares it after a
//! failed unwrap. A KEK file replaced under the same name is `WrongKek` naming it; altered wrap
//! bytes under the right KEK stay `KeyUnwrap`; a record without a check value (written before
//! 0.2) keeps `KeyUnwrap`; an edited check value changes nothing when the KEK is right.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::Error;
use encrypted_types::kek::KekProvider;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, encrypted_types_keys};
use encrypted_types_tests::{connect, database};

macro_rules! wrong_kek_test {
    ($name:ident, $conn:ty, $admin:expr) => {
        #[test]
        fn $name() {
            let _g = encrypted_types_tests::serial();
            let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let url = database::<$conn>($admin, concat!("et_", stringify!($name)), &dir);
            let conn = &mut connect::<$conn>(&url);
            KeyStore::<LocalKek>::run_migrations(conn).unwrap();
            let path = dir.path().join("app.kek");
            let kek = LocalKek::create(&path).unwrap();
            let own = kek.kek_check().unwrap();
            let store = KeyStore::new(kek);
            store.create_tenant(conn, Some(&"7".into())).unwrap();
            store.load(conn).unwrap();
            // Counted in SQL: the check value sits beside the one record the KEK wrapped.
            let checks: Vec<(String, Option<Vec<u8>>)> = encrypted_types_keys::table
                .select((encrypted_types_keys::purpose, encrypted_types_keys::kek_check))
                .order(encrypted_types_keys::key_id)
                .load(conn)
                .unwrap();
            assert_eq!(checks.iter().filter(|(_, c)| c.is_some()).count(), 1, "{checks:?}");
            assert!(checks.iter().any(|(p, c)| p == "wrapping" && *c == own));

            // Another KEK file under the same name: what a lost, regenerated or wrongly
            // restored file looks like.
            let other = LocalKek::create(elsewhere.path().join("app.kek")).unwrap();
            assert_eq!(other.kek_ref(), "local:app.kek");
            let wrong = KeyStore::new(other);
            let refused = Some(Error::WrongKek { kek_ref: "local:app.kek".into() });
            assert_eq!(wrong.load(conn).err(), refused);
            let message = wrong.load(conn).unwrap_err().to_string();
            assert!(message.contains("local:app.kek") && message.contains("not the one"), "{message}");
            assert_eq!(wrong.load(conn).unwrap_err().reason(), "wrong_kek");

            // An edited check value decides nothing while the KEK is right.
            conn.batch_execute("UPDATE encrypted_types_keys SET kek_check = wrapped_key WHERE purpose = 'wrapping'")
                .unwrap();
            store.load(conn).unwrap();

            // A record from before check values: a wrong KEK reads as a failed unwrap.
            conn.batch_execute("UPDATE encrypted_types_keys SET kek_check = NULL").unwrap();
            assert!(matches!(wrong.load(conn).err(), Some(Error::KeyUnwrap { .. })));

            // Altered wrap bytes under the right KEK, with the right check value: tampering.
            diesel::update(encrypted_types_keys::table.filter(encrypted_types_keys::purpose.eq("wrapping")))
                .set(encrypted_types_keys::kek_check.eq(own.clone()))
                .execute(conn)
                .unwrap();
            let wrapped: Vec<u8> = encrypted_types_keys::table
                .filter(encrypted_types_keys::purpose.eq("wrapping"))
                .select(encrypted_types_keys::wrapped_key.assume_not_null())
                .first(conn)
                .unwrap();
            let mut flipped = wrapped.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            diesel::update(encrypted_types_keys::table.filter(encrypted_types_keys::purpose.eq("wrapping")))
                .set(encrypted_types_keys::wrapped_key.eq(Some(flipped)))
                .execute(conn)
                .unwrap();
            assert!(matches!(store.load(conn).err(), Some(Error::KeyUnwrap { .. })));
            assert_eq!(wrong.load(conn).err(), refused);
        }
    };
}

wrong_kek_test!(a_wrong_kek_is_named_on_sqlite, SqliteConnection, None);
wrong_kek_test!(
    a_wrong_kek_is_named_on_postgres,
    PgConnection,
    Some(encrypted_types_tests::pg_url())
);
wrong_kek_test!(
    a_wrong_kek_is_named_on_mysql,
    MysqlConnection,
    Some(encrypted_types_tests::mysql_url())
);

/// `tests/vectors/kek_check_v1.json` (written by the Python reference): a local KEK's check value.
#[test]
fn local_kek_check_values_match_the_vectors() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    #[derive(serde::Deserialize)]
    struct V {
        kek: String,
        kek_check: String,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/kek_check_v1.json");
    let vectors: Vec<V> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(vectors.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in vectors.iter().enumerate() {
        let file = dir.path().join(format!("{i}.kek"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .unwrap()
            .write_all(&hex::decode(&v.kek).unwrap())
            .unwrap();
        let kek = LocalKek::open(&file).unwrap();
        assert_eq!(
            kek.kek_check().unwrap(),
            Some(hex::decode(&v.kek_check).unwrap()),
            "{}",
            v.kek
        );
    }
}
