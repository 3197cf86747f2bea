//! Compound indexes through a replacement of a tenant's blind-index root key, on every backend:
//! while it runs, lookups match version 1 under the retired root and version 2 under the new
//! one; the reindex job moves every row (reading each row's fields); once the retired root is
//! destroyed, version 2 alone finds every row. Its own test binary: it installs keyrings.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrono::NaiveDate;
use diesel::prelude::*;
use encrypted_types::EncryptedModel;
use encrypted_types::jobs::{JobOptions, reindex};
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::KeyStore;
use encrypted_types_tests::models::{FrontDesk, FrontDeskRootReplaced, FrontDeskRootReplacing};
use encrypted_types_tests::schema::et_frontdesk;

const SURNAMES: [&str; 5] = ["Nakamura", "Adeyemi", "Ó Briain", "Kovač", "Lindqvist"];

fn rows() -> Vec<FrontDesk> {
    (0..20i64)
        .map(|i| FrontDesk {
            id: 9_000 + i,
            clinic_id: 1 + i % 2,
            last_name: format!("{} {i}", SURNAMES[(i % 5) as usize]),
            date_of_birth: NaiveDate::from_ymd_opt(1950 + i as i32, 1 + (i % 12) as u32, 1)
                .unwrap(),
            ssn: format!("{:03}-{:02}-{:04}", 100 + i, i, 1000 + i),
            phone: (i % 3 == 0).then(|| format!("+1 555 01{i:02}")),
        })
        .collect()
}

fn ids<T>(found: &[T], id: impl Fn(&T) -> i64) -> Vec<i64> {
    found.iter().map(id).collect()
}

macro_rules! suite {
    ($connect:path, $ct:ty) => {
        use super::*;

        #[test]
        fn a_replaced_root_moves_compound_indexes_through_the_reindex_job() {
            let _g = encrypted_types_tests::serial();
            let dir = tempfile::tempdir().unwrap();
            // No grace period: this test destroys right after the replacement it runs itself.
            let store = KeyStore::new(LocalKek::create(dir.path().join("k.kek")).unwrap())
                .with_destroy_grace(std::time::Duration::ZERO);
            let conn = &mut $connect();
            for t in ["1", "2"] {
                store.create_tenant(conn, Some(&t.into())).unwrap();
            }
            store.load_and_install(conn).unwrap();
            let ps = rows();
            for p in &ps {
                diesel::insert_into(et_frontdesk::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            let stored = |conn: &mut $ct| -> Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)> {
                et_frontdesk::table
                    .filter(et_frontdesk::id.ge(9_000))
                    .order(et_frontdesk::id)
                    .select((
                        et_frontdesk::name_dob_bidx,
                        et_frontdesk::ssn4_dob_bidx,
                        et_frontdesk::name_phone_bidx,
                    ))
                    .load(conn)
                    .unwrap()
            };
            let before = stored(conn);
            let first = &ps[0]; // clinic 1
            assert_eq!(
                ids(
                    &FrontDesk::find_by_name_dob(
                        conn,
                        &1,
                        (&first.last_name, &first.date_of_birth)
                    )
                    .unwrap(),
                    |f| f.id
                ),
                [first.id]
            );

            // Tenant 1's root is replaced, and every process reloads.
            let (_new, old) = store
                .replace_blind_index_root(conn, Some(&"1".into()))
                .unwrap();
            store.load_and_install(conn).unwrap();
            // Version 1 under the new root finds nothing of tenant 1 ...
            assert!(
                FrontDesk::find_by_name_dob(conn, &1, (&first.last_name, &first.date_of_birth))
                    .unwrap()
                    .is_empty()
            );
            // ... while the replacing model finds every row, of both tenants, by every index.
            for p in &ps {
                let found = FrontDeskRootReplacing::find_by_name_dob(
                    conn,
                    &p.clinic_id,
                    (&p.last_name.to_uppercase(), &p.date_of_birth),
                )
                .unwrap();
                assert_eq!(ids(&found, |f| f.id), [p.id], "{}", p.id);
                let found = FrontDeskRootReplacing::find_by_ssn4_dob(
                    conn,
                    &p.clinic_id,
                    (&p.ssn, &p.date_of_birth),
                )
                .unwrap();
                assert_eq!(ids(&found, |f| f.id), [p.id], "{}", p.id);
            }
            let r = reindex(
                conn,
                &FrontDeskRootReplacing::MODEL,
                "root-compound",
                &JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(r.finished, "{r:?}");
            assert_eq!(r.skipped_total(), 0, "{r:?}");
            let after = stored(conn);
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                assert_ne!(b.0, a.0, "row {i}: name_dob kept its old bytes");
                assert_ne!(b.1, a.1, "row {i}: ssn4_dob kept its old bytes");
                assert_eq!(
                    b.2.is_some(),
                    a.2.is_some(),
                    "row {i}: a NULL index stays NULL"
                );
                if b.2.is_some() {
                    assert_ne!(b.2, a.2, "row {i}: name_phone kept its old bytes");
                }
            }

            // The retired root is destroyed; version 2 alone finds every row.
            store.destroy_key(conn, old, &[]).unwrap();
            store.load_and_install(conn).unwrap();
            for p in &ps {
                let found = FrontDeskRootReplaced::find_by_name_dob(
                    conn,
                    &p.clinic_id,
                    (&p.last_name, &p.date_of_birth),
                )
                .unwrap();
                assert_eq!(ids(&found, |f| f.id), [p.id], "{}", p.id);
                if let Some(phone) = &p.phone {
                    let found = FrontDeskRootReplaced::find_by_name_phone(
                        conn,
                        &p.clinic_id,
                        (&p.last_name.chars().take(3).collect::<String>(), phone),
                    )
                    .unwrap();
                    assert!(found.iter().any(|f| f.id == p.id), "{}", p.id);
                }
            }
        }
    };
}

mod sqlite {
    suite!(encrypted_types_tests::keystore::sqlite, SqliteConnection);
}
mod postgres {
    suite!(encrypted_types_tests::keystore::pg, PgConnection);
}
mod mysql {
    suite!(encrypted_types_tests::keystore::mysql, MysqlConnection);
}
