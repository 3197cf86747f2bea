//! The test suites every backend runs, as macros: Diesel's types differ per backend, so each
//! backend's test file instantiates the same tests with its own connection.

/// One codec case through a sync connection: write it, read it back, and the same through the
/// nullable column, NULL included.
#[macro_export]
macro_rules! roundtrip_sync {
    ($conn:expr, $t:ty, $v:expr) => {{
        use diesel::prelude::*;
        use encrypted_types::Encrypted;
        use $crate::Same;
        use $crate::schema::et_codec;
        let conn = &mut *$conn;
        let value: $t = $v;
        let id = $crate::next_id();
        diesel::insert_into(et_codec::table)
            .values((
                et_codec::id.eq(id),
                et_codec::v.eq(Encrypted::<$t, $crate::CodecV>::new(value.clone())),
                et_codec::v_null.eq(None::<Encrypted<$t, $crate::CodecVNull>>),
            ))
            .execute(conn)
            .unwrap();
        let (v, n): (
            Encrypted<$t, $crate::CodecV>,
            Option<Encrypted<$t, $crate::CodecVNull>>,
        ) = et_codec::table
            .find(id)
            .select((et_codec::v, et_codec::v_null))
            .first(conn)
            .unwrap();
        assert!((*v).same(&value), "{} did not round-trip", stringify!($v));
        assert!(n.is_none());
        diesel::update(et_codec::table.find(id))
            .set(
                et_codec::v_null.eq(Some(Encrypted::<$t, $crate::CodecVNull>::new(
                    value.clone(),
                ))),
            )
            .execute(conn)
            .unwrap();
        let n: Option<Encrypted<$t, $crate::CodecVNull>> = et_codec::table
            .find(id)
            .select(et_codec::v_null)
            .first(conn)
            .unwrap();
        assert!(
            (*n.unwrap()).same(&value),
            "{} did not round-trip as nullable",
            stringify!($v)
        );
    }};
}

/// [`roundtrip_sync!`] through a diesel-async connection.
#[macro_export]
macro_rules! roundtrip_async {
    ($conn:expr, $t:ty, $v:expr) => {{
        use diesel::{ExpressionMethods, QueryDsl};
        use diesel_async::RunQueryDsl;
        use encrypted_types::Encrypted;
        use $crate::Same;
        use $crate::schema::et_codec;
        let conn = &mut *$conn;
        let value: $t = $v;
        let id = $crate::next_id();
        diesel::insert_into(et_codec::table)
            .values((
                et_codec::id.eq(id),
                et_codec::v.eq(Encrypted::<$t, $crate::CodecV>::new(value.clone())),
                et_codec::v_null.eq(Some(Encrypted::<$t, $crate::CodecVNull>::new(
                    value.clone(),
                ))),
            ))
            .execute(conn)
            .await
            .unwrap();
        let (v, n): (
            Encrypted<$t, $crate::CodecV>,
            Option<Encrypted<$t, $crate::CodecVNull>>,
        ) = et_codec::table
            .find(id)
            .select((et_codec::v, et_codec::v_null))
            .first(conn)
            .await
            .unwrap();
        assert!((*v).same(&value), "{} did not round-trip", stringify!($v));
        assert!(
            (*n.unwrap()).same(&value),
            "{} did not round-trip as nullable",
            stringify!($v)
        );
        diesel::update(et_codec::table.find(id))
            .set(et_codec::v_null.eq(None::<Encrypted<$t, $crate::CodecVNull>>))
            .execute(conn)
            .await
            .unwrap();
        let n: Option<Encrypted<$t, $crate::CodecVNull>> = et_codec::table
            .find(id)
            .select(et_codec::v_null)
            .first(conn)
            .await
            .unwrap();
        assert!(n.is_none());
    }};
}

/// The synchronous suite for one backend.
#[macro_export]
macro_rules! sync_suite {
    ($backend:ty, $connect:path) => {
        use diesel::prelude::*;
        use encrypted_types::{Encrypted, Error, KeyId};
        use $crate::schema::{et_people, et_people_copy};
        use $crate::*;

        fn person(id: i32) -> Person {
            Person {
                id,
                email: Encrypted::new(CANARY_EMAIL.to_owned()),
                name: Encrypted::new(CANARY_NAME.to_owned()),
            }
        }

        #[test]
        fn every_codec_round_trips_with_null() {
            let conn = &mut $connect();
            $crate::codec_cases!(roundtrip_sync, conn);
        }

        #[test]
        fn stored_bytes_are_a_v1_suite_2_header_and_no_plaintext() {
            let conn = &mut $connect();
            let id = next_id();
            diesel::insert_into(et_people::table).values(&person(id)).execute(conn).unwrap();
            let raw: Vec<u8> =
                et_people::table.find(id).select(et_people::email).first(conn).unwrap();
            assert!(!contains(&raw, CANARY_EMAIL.as_bytes()));
            assert_eq!(raw.len(), CANARY_EMAIL.len() + encrypted_types::format::OVERHEAD);
            // Version 1, suite 2 (AES-256-GCM-SIV), the default key's id.
            assert_eq!(&raw[..6], &[1, 2, 0, 0, 0, keys::DEFAULT as u8]);
            let back: Person = et_people::table.find(id).first(conn).unwrap();
            assert_eq!(back.email.as_str(), CANARY_EMAIL);
            assert_eq!(back.name.as_str(), CANARY_NAME);
        }

        #[test]
        fn ciphertext_copied_into_another_column_fails_to_open() {
            let conn = &mut $connect();
            let id = next_id();
            diesel::insert_into(et_people::table).values(&person(id)).execute(conn).unwrap();
            diesel::sql_query(format!("UPDATE et_people SET name = email WHERE id = {id}"))
                .execute(conn)
                .unwrap();
            let err = et_people::table
                .find(id)
                .select(et_people::name)
                .first::<Encrypted<String, PeopleName>>(conn)
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::AuthenticationFailed), "{err}");
            // The original column still opens: the copy failed, not the keyring.
            let email: Encrypted<String, PeopleEmail> =
                et_people::table.find(id).select(et_people::email).first(conn).unwrap();
            assert_eq!(email.as_str(), CANARY_EMAIL);
        }

        #[test]
        fn ciphertext_copied_into_another_table_fails_to_open() {
            let conn = &mut $connect();
            let id = next_id();
            diesel::insert_into(et_people::table).values(&person(id)).execute(conn).unwrap();
            diesel::sql_query(format!(
                "INSERT INTO et_people_copy (id, email) SELECT id, email FROM et_people WHERE id = {id}"
            ))
            .execute(conn)
            .unwrap();
            let err = et_people_copy::table
                .find(id)
                .select(et_people_copy::email)
                .first::<Encrypted<String, PeopleCopyEmail>>(conn)
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::AuthenticationFailed), "{err}");
        }

        #[test]
        fn tenant_values_use_the_tenant_key_and_come_back_with_their_tenant() {
            let conn = &mut $connect();
            let id = next_id();
            let row = Person {
                id,
                email: Encrypted::for_tenant(CANARY_EMAIL.to_owned(), "clinic-a"),
                name: Encrypted::for_tenant(CANARY_NAME.to_owned(), "clinic-b"),
            };
            diesel::insert_into(et_people::table).values(&row).execute(conn).unwrap();
            let (e, n): (Vec<u8>, Vec<u8>) = et_people::table
                .find(id)
                .select((et_people::email, et_people::name))
                .first(conn)
                .unwrap();
            assert_eq!(&e[2..6], &keys::CLINIC_A.to_be_bytes());
            assert_eq!(&n[2..6], &keys::CLINIC_B.to_be_bytes());
            let back: Person = et_people::table.find(id).first(conn).unwrap();
            assert_eq!(back.email.tenant().map(|t| t.as_str()), Some("clinic-a"));
            assert_eq!(back.name.tenant().map(|t| t.as_str()), Some("clinic-b"));
            assert_eq!(back.name.as_str(), CANARY_NAME);
        }

        #[test]
        fn retired_destroyed_unknown_and_garbage_values_from_the_database() {
            let conn = &mut $connect();
            // Sealed under key 2, which the installed keyring holds but no longer seals with.
            let old = encrypted_types::Keyring::builder()
                .data_key(keys::RETIRED, None, encrypted_types::KeyMaterial::from_bytes(key_bytes(keys::RETIRED)))
                .primary(None, keys::RETIRED)
                .build()
                .unwrap();
            let sealed = Encrypted::<String, PeopleEmail>::new(CANARY_EMAIL.into()).seal_with(&old).unwrap();
            let mut with_id = |key_id: u32| {
                let mut v = sealed.clone();
                v[2..6].copy_from_slice(&key_id.to_be_bytes());
                v
            };
            let cases: Vec<(Vec<u8>, Option<Error>)> = vec![
                (sealed.clone(), None),
                (with_id(keys::DESTROYED), Some(Error::KeyDestroyed(KeyId::from(keys::DESTROYED)))),
                (with_id(4242), Some(Error::UnknownKeyId(KeyId::from(4242)))),
                (with_id(keys::DEFAULT), Some(Error::AuthenticationFailed)),
                (Vec::new(), Some(Error::Truncated { len: 0, min: 34 })),
                (b"\x02not a sealed value at all, just some bytes".to_vec(), Some(Error::UnsupportedVersion(2))),
                (CANARY_EMAIL.as_bytes().to_vec(), Some(Error::UnsupportedVersion(b'c'))),
            ];
            for (bytes, expected) in cases {
                let id = next_id();
                diesel::insert_into(et_people::table)
                    .values((et_people::id.eq(id), et_people::email.eq(&bytes), et_people::name.eq(&bytes)))
                    .execute(conn)
                    .unwrap();
                let got = et_people::table
                    .find(id)
                    .select(et_people::email)
                    .first::<Encrypted<String, PeopleEmail>>(conn);
                match (got, expected) {
                    (Ok(v), None) => assert_eq!(v.as_str(), CANARY_EMAIL),
                    (Err(e), Some(want)) => assert_eq!(lib_error(&e), Some(&want), "{e}"),
                    (got, want) => panic!("expected {want:?}, got {:?}", got.map(|_| "a value")),
                }
            }
        }

        #[test]
        fn debug_and_debug_query_show_no_plaintext() {
            let conn = &mut $connect();
            let id = next_id();
            let row = person(id);
            let insert = diesel::insert_into(et_people::table).values(&row);
            let shown = diesel::debug_query::<$backend, _>(&insert).to_string();
            assert!(shown.contains("Encrypted<string>(<redacted>)"), "{shown}");
            insert.execute(conn).unwrap();
            let update = diesel::update(et_people::table.find(id))
                .set(et_people::name.eq(Encrypted::<String, PeopleName>::new(CANARY_NAME.into())));
            let shown_update = diesel::debug_query::<$backend, _>(&update).to_string();
            let back: Person = et_people::table.find(id).first(conn).unwrap();
            assert_eq!(back.email.as_str(), CANARY_EMAIL);
            let debug = format!("{back:?} {row:?} {:#?}", back.email);
            for text in [&shown, &shown_update, &debug] {
                assert!(!text.contains(CANARY_EMAIL) && !text.contains(CANARY_NAME), "leak: {text}");
            }
        }
    };
}

/// The diesel-async suite for one backend.
#[macro_export]
macro_rules! async_suite {
    ($connect:path) => {
        use diesel::{ExpressionMethods, QueryDsl};
        use diesel_async::RunQueryDsl;
        use encrypted_types::{Encrypted, Error};
        use $crate::schema::{et_people, et_people_copy};
        use $crate::*;

        fn person(id: i32) -> Person {
            Person {
                id,
                email: Encrypted::for_tenant(CANARY_EMAIL.to_owned(), "clinic-a"),
                name: Encrypted::new(CANARY_NAME.to_owned()),
            }
        }

        #[tokio::test]
        async fn every_codec_round_trips_with_null() {
            let conn = &mut $connect().await;
            $crate::codec_cases!(roundtrip_async, conn);
        }

        #[tokio::test]
        async fn rows_round_trip_and_copies_fail_to_open() {
            let conn = &mut $connect().await;
            let id = next_id();
            diesel::insert_into(et_people::table).values(&person(id)).execute(conn).await.unwrap();
            let back: Person = et_people::table.find(id).first(conn).await.unwrap();
            assert_eq!(back.email.as_str(), CANARY_EMAIL);
            assert_eq!(back.email.tenant().map(|t| t.as_str()), Some("clinic-a"));
            let raw: Vec<u8> = et_people::table.find(id).select(et_people::email).first(conn).await.unwrap();
            assert!(!contains(&raw, CANARY_EMAIL.as_bytes()));

            diesel::sql_query(format!("UPDATE et_people SET name = email WHERE id = {id}"))
                .execute(conn)
                .await
                .unwrap();
            let err = et_people::table
                .find(id)
                .select(et_people::name)
                .first::<Encrypted<String, PeopleName>>(conn)
                .await
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::AuthenticationFailed), "{err}");

            diesel::sql_query(format!(
                "INSERT INTO et_people_copy (id, email) SELECT id, email FROM et_people WHERE id = {id}"
            ))
            .execute(conn)
            .await
            .unwrap();
            let err = et_people_copy::table
                .find(id)
                .select(et_people_copy::email)
                .first::<Encrypted<String, PeopleCopyEmail>>(conn)
                .await
                .unwrap_err();
            assert_eq!(lib_error(&err), Some(&Error::AuthenticationFailed), "{err}");
        }
    };
}
