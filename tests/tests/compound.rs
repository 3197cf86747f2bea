//! Compound and partial blind indexes on every backend, sync and async: patients found by
//! (surname in another case and with spaces, date of birth) and by (last four SSN digits, date
//! of birth); a forced collision on the truncated index returns exactly the right row; a change
//! of one field keeps the index in step; a NULL field gives a NULL index; the reindex job
//! recomputes them from several columns per row; PostgreSQL uses the index on 10,000 rows.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use chrono::NaiveDate;
use encrypted_types::index::CompoundParams;
use encrypted_types::{EncryptedModel, Keyring, Plaintext, SecretBuf, TenantId};
use encrypted_types_tests::models::FrontDesk;

fn dob(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn patient(id: i64, clinic: i64, last: &str, born: NaiveDate, ssn: &str) -> FrontDesk {
    FrontDesk {
        id,
        clinic_id: clinic,
        last_name: last.to_owned(),
        date_of_birth: born,
        ssn: ssn.to_owned(),
        phone: None,
    }
}

/// The compound index named `name`, as the model declares it.
fn params(name: &str) -> &'static CompoundParams {
    FrontDesk::MODEL
        .compound
        .iter()
        .find(|p| p.name == name)
        .unwrap()
}

fn encoded(v: &impl Plaintext) -> Vec<u8> {
    let mut buf = SecretBuf::default();
    v.encode(&mut buf).unwrap();
    buf.as_slice().to_vec()
}

/// What the index of (text, date) is for clinic `clinic`, computed from the plaintexts by the
/// jobs' path (`compute_raw`), not by the write path under test.
fn expected(name: &str, clinic: i64, text: &str, born: NaiveDate) -> Vec<u8> {
    let keyring = Keyring::current().unwrap();
    params(name)
        .compute_raw(
            &*keyring,
            Some(&TenantId::from(clinic)),
            &[Some(text.as_bytes()), Some(&encoded(&born))],
        )
        .unwrap()
        .unwrap()
}

/// A surname whose truncated `name_dob` index for (it, `born`) in clinic 1 equals Müller's
/// (searched once per process: the keyring is the same for every test).
fn colliding_surname(born: NaiveDate) -> String {
    static FOUND: std::sync::OnceLock<(NaiveDate, String)> = std::sync::OnceLock::new();
    let (day, name) = FOUND.get_or_init(|| {
        let target = expected("name_dob", 1, "müller", born);
        let name = (0..2_000_000)
            .map(|i| format!("collider{i}"))
            .find(|s| expected("name_dob", 1, s, born) == target)
            .expect("a 16-bit collision within 2,000,000 tries");
        (born, name)
    });
    assert_eq!(*day, born);
    name.clone()
}

fn ids(rows: &[FrontDesk]) -> Vec<i64> {
    let mut v: Vec<i64> = rows.iter().map(|r| r.id).collect();
    v.sort_unstable();
    v
}

/// The rows every suite starts from: clinic 1 and clinic 2 both have a Müller born on the
/// same day; other patients share the date of birth or the last four SSN digits.
fn seed(base: i64) -> (Vec<FrontDesk>, NaiveDate) {
    let born = dob(1985, 3, 14);
    let mut collider = patient(base + 5, 1, &colliding_surname(born), born, "555-55-0005");
    collider.phone = Some("(030) 555-0199".into());
    let rows = vec![
        patient(base + 1, 1, "Müller", born, "123-45-6789"),
        patient(base + 2, 2, "Müller", born, "987-65-6789"),
        patient(base + 3, 1, "Schmidt", born, "111-22-3333"),
        patient(base + 4, 1, "Müller", dob(1990, 1, 1), "222-33-6789"),
        collider,
    ];
    (rows, born)
}

/// Inserts `rows` one by one (SQLite's batch insert cannot leave a nullable column out).
macro_rules! insert_all {
    ($conn:expr, $rows:expr) => {
        for r in $rows {
            diesel::insert_into(encrypted_types_tests::schema::et_frontdesk::table)
                .values(r)
                .execute($conn)
                .unwrap();
        }
    };
}

/// Every row's compound indexes, by id, as stored.
macro_rules! indexes {
    ($conn:expr) => {{
        let rows: Vec<(i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>)> = et_frontdesk::table
            .select((
                et_frontdesk::id,
                et_frontdesk::name_dob_bidx,
                et_frontdesk::ssn4_dob_bidx,
                et_frontdesk::name_phone_bidx,
            ))
            .order(et_frontdesk::id)
            .load($conn)
            .unwrap();
        rows
    }};
}

macro_rules! sync_suite {
    ($connect:path, $keystore:path) => {
        use super::*;
        use diesel::prelude::*;
        use encrypted_types_tests::schema::et_frontdesk;

        #[test]
        fn found_by_surname_and_birth_date_and_by_last_four_and_birth_date() {
            let conn = &mut $connect();
            // The table `schema::create` wrote has every compound column, binary, with an index
            // led by the tenant column.
            let found = encrypted_types::schema::check(conn, &[FrontDesk::MODEL]).unwrap();
            assert!(found.is_empty(), "{found:?}");
            let (rows, born) = seed(7_000);
            insert_all!(&mut *conn, &rows);
            // Another case, spaces around it: the index normalizes as declared.
            let found = FrontDesk::find_by_name_dob(conn, &1, ("  MÜLLER ", &born)).unwrap();
            assert_eq!(
                ids(&found),
                [7_001],
                "clinic 1's Müller born that day, no other"
            );
            let found = FrontDesk::find_by_name_dob(conn, &2, ("müller", &born)).unwrap();
            assert_eq!(ids(&found), [7_002]);
            // Last four digits: of an SSN written any way, or the four digits alone.
            let found = FrontDesk::find_by_ssn4_dob(conn, &1, ("6789", &born)).unwrap();
            assert_eq!(ids(&found), [7_001]);
            let found =
                FrontDesk::find_by_ssn4_dob(conn, &1, ("000-00-6789", &dob(1990, 1, 1))).unwrap();
            assert_eq!(ids(&found), [7_004]);
            assert!(
                FrontDesk::find_by_ssn4_dob(conn, &1, ("6788", &born))
                    .unwrap()
                    .is_empty()
            );

            // The stored bytes are what the plaintexts give, computed independently.
            let idx: Vec<u8> = et_frontdesk::table
                .find(7_001)
                .select(et_frontdesk::name_dob_bidx)
                .first(conn)
                .unwrap();
            assert_eq!(idx, expected("name_dob", 1, "müller", born));
            assert_eq!(idx.len(), 2);

            // The collider shares Müller's 16-bit index: the filter alone returns both rows,
            // the lookup's decrypted re-check only Müller.
            let both: Vec<FrontDesk> = et_frontdesk::table
                .filter(FrontDesk::name_dob_eq(&1, ("Müller", &born)))
                .select(FrontDesk::as_select())
                .load(conn)
                .unwrap();
            assert_eq!(ids(&both), [7_001, 7_005], "the forced collision is real");
            let found = FrontDesk::find_by_name_dob(conn, &1, ("Müller", &born)).unwrap();
            assert_eq!(ids(&found), [7_001]);
            let collider = rows[4].last_name.clone();
            let found = FrontDesk::find_by_name_dob(conn, &1, (collider.as_str(), &born)).unwrap();
            assert_eq!(ids(&found), [7_005]);

            // A NULL field gives a NULL index, counted in SQL; a value gives one.
            let nulls: i64 = et_frontdesk::table
                .filter(et_frontdesk::id.between(7_001, 7_005))
                .filter(et_frontdesk::name_phone_bidx.is_null())
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(nulls, 4);
            // `prefix(3)` after `casefold`: the collider's first three letters, any phone format.
            let found =
                FrontDesk::find_by_name_phone(conn, &1, ("COLxyz", "030 555 0199")).unwrap();
            assert_eq!(ids(&found), [7_005]);
        }

        #[test]
        fn a_change_of_one_field_keeps_the_compound_indexes_in_step() {
            let conn = &mut $connect();
            let born = dob(1971, 7, 7);
            let p = patient(7_101, 1, "Okafor", born, "321-54-9876");
            diesel::insert_into(et_frontdesk::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            let mut changed = p.clone();
            changed.last_name = "Okafor-Lind".into();
            diesel::update(et_frontdesk::table.find(7_101))
                .set(&changed)
                .execute(conn)
                .unwrap();
            assert!(
                FrontDesk::find_by_name_dob(conn, &1, ("okafor", &born))
                    .unwrap()
                    .is_empty()
            );
            let found = FrontDesk::find_by_name_dob(conn, &1, ("OKAFOR-LIND", &born)).unwrap();
            assert_eq!(ids(&found), [7_101]);
            // The other index over the date of birth moves with it.
            changed.date_of_birth = dob(1971, 7, 8);
            diesel::update(et_frontdesk::table.find(7_101))
                .set(&changed)
                .execute(conn)
                .unwrap();
            assert!(
                FrontDesk::find_by_ssn4_dob(conn, &1, ("9876", &born))
                    .unwrap()
                    .is_empty()
            );
            let found = FrontDesk::find_by_ssn4_dob(conn, &1, ("9876", &dob(1971, 7, 8))).unwrap();
            assert_eq!(ids(&found), [7_101]);
            let idx: Vec<u8> = et_frontdesk::table
                .find(7_101)
                .select(et_frontdesk::name_dob_bidx)
                .first(conn)
                .unwrap();
            assert_eq!(idx, expected("name_dob", 1, "okafor-lind", dob(1971, 7, 8)));
        }

        #[test]
        fn the_reindex_job_recomputes_compound_indexes_from_every_field() {
            let _g = encrypted_types_tests::serial();
            let conn = &mut $keystore();
            let (rows, born) = seed(7_200);
            insert_all!(&mut *conn, &rows);
            let before = indexes!(conn);
            // A writer (or an old build) leaves every compound index wrong, one of them set
            // where it must be NULL.
            diesel::update(et_frontdesk::table.filter(et_frontdesk::id.between(7_201, 7_205)))
                .set((
                    et_frontdesk::name_dob_bidx.eq(vec![0u8, 0]),
                    et_frontdesk::ssn4_dob_bidx.eq(vec![0u8, 0, 0]),
                    et_frontdesk::name_phone_bidx.eq(Some(vec![1u8; 32])),
                ))
                .execute(conn)
                .unwrap();
            assert!(
                FrontDesk::find_by_name_dob(conn, &1, ("Müller", &born))
                    .unwrap()
                    .is_empty()
            );
            let report = encrypted_types::jobs::reindex(
                conn,
                &FrontDesk::MODEL,
                "compound-reindex",
                &encrypted_types::jobs::JobOptions {
                    batch: 2,
                    ..Default::default()
                },
                |_| {},
            )
            .unwrap();
            assert!(report.finished, "{report:?}");
            assert_eq!(report.skipped_total(), 0, "{report:?}");
            // Three compound indexes on five rows; the SSN's own index was right already.
            assert_eq!(report.written, 15, "{report:?}");
            let after = indexes!(conn);
            assert_eq!(after, before, "the job wrote what the application writes");
            let found = FrontDesk::find_by_name_dob(conn, &1, ("Müller", &born)).unwrap();
            assert_eq!(ids(&found), [7_201]);
            // A second run finds nothing to do.
            let again = encrypted_types::jobs::reindex(
                conn,
                &FrontDesk::MODEL,
                "compound-reindex-2",
                &encrypted_types::jobs::JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(again.finished && again.written == 0, "{again:?}");

            // The leakage report sizes compound indexes by distinct tuples: clinic 1 has four
            // rows with four distinct (surname, birth date) tuples, and the forced collision
            // leaves three distinct 16-bit index values; one row has a phone.
            let leakage = encrypted_types::jobs::index_leakage(conn, &FrontDesk::MODEL).unwrap();
            let of = |column: &str| {
                leakage
                    .iter()
                    .find(|l| l.index_column == column && l.tenant.as_deref() == Some("1"))
                    .unwrap_or_else(|| panic!("no leakage entry for {column}"))
            };
            let name_dob = of("name_dob_bidx");
            assert_eq!(
                (
                    name_dob.rows,
                    name_dob.distinct_values,
                    name_dob.distinct_index_values
                ),
                (4, 4, 3)
            );
            assert_eq!(of("name_phone_bidx").rows, 1);
            assert_eq!(of("ssn4_dob_bidx").distinct_values, 4);
        }
    };
}

/// `encrypt_column` of a field of compound indexes that held plaintext in place: once the field
/// is sealed, its second phase recomputes every compound index over it, and the report says
/// `finished` only when both are done.
macro_rules! encrypt_suite {
    ($keystore:path) => {
        #[test]
        fn encrypting_a_field_in_place_recomputes_its_compound_indexes() {
            use diesel::prelude::*;
            use encrypted_types_tests::schema::et_frontdesk;
            let _g = encrypted_types_tests::serial();
            let conn = &mut $keystore();
            let (rows, born) = seed(7_400);
            insert_all!(&mut *conn, &rows);
            // An older build stored the surname in clear, and no compound index.
            for r in &rows {
                diesel::update(et_frontdesk::table.find(r.id))
                    .set((
                        et_frontdesk::last_name.eq(r.last_name.as_bytes().to_vec()),
                        et_frontdesk::name_dob_bidx.eq(vec![0u8, 0]),
                        et_frontdesk::name_phone_bidx.eq(None::<Vec<u8>>),
                    ))
                    .execute(conn)
                    .unwrap();
            }
            let report = encrypted_types::jobs::encrypt_column(
                conn,
                &FrontDesk::MODEL,
                "last_name",
                "encrypt-surnames",
                &encrypted_types::jobs::JobOptions::default(),
                |_| {},
            )
            .unwrap();
            assert!(report.finished, "{report:?}");
            // Five surnames sealed, then two compound indexes over the surname: five
            // `name_dob`, and the collider's `name_phone` (the only row with a phone).
            assert_eq!(report.written, 5 + 5 + 1, "{report:?}");
            let stored: Vec<(Vec<u8>, Vec<u8>)> = et_frontdesk::table
                .filter(et_frontdesk::id.between(7_401, 7_405))
                .order(et_frontdesk::id)
                .select((et_frontdesk::last_name, et_frontdesk::name_dob_bidx))
                .load(conn)
                .unwrap();
            for ((sealed, idx), r) in stored.iter().zip(&rows) {
                assert!(!encrypted_types_tests::contains(
                    sealed,
                    r.last_name.as_bytes()
                ));
                assert_eq!(
                    *idx,
                    expected(
                        "name_dob",
                        r.clinic_id,
                        &r.last_name.to_lowercase(),
                        r.date_of_birth
                    )
                );
            }
            let found = FrontDesk::find_by_name_dob(conn, &1, ("Müller", &born)).unwrap();
            assert_eq!(ids(&found), [7_401]);
            // A job name whose index phase would be too long is refused before any write.
            let long = "j".repeat(140);
            let err = encrypted_types::jobs::encrypt_column(
                conn,
                &FrontDesk::MODEL,
                "last_name",
                &long,
                &encrypted_types::jobs::JobOptions::default(),
                |_| {},
            )
            .unwrap_err();
            assert!(err.to_string().contains("over 150 bytes"), "{err}");
        }
    };
}

macro_rules! async_suite {
    ($connect:path) => {
        use super::*;
        use diesel::{QueryDsl, SelectableHelper};
        use diesel_async::RunQueryDsl;
        use encrypted_types_tests::schema::et_frontdesk;

        #[tokio::test]
        async fn found_by_compound_indexes_with_the_same_recheck() {
            let conn = &mut $connect().await;
            let (rows, born) = seed(7_300);
            for r in &rows {
                diesel::insert_into(et_frontdesk::table)
                    .values(r)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            let found = FrontDesk::find_by_name_dob_async(conn, &1, (" müLLER", &born))
                .await
                .unwrap();
            assert_eq!(ids(&found), [7_301]);
            let both: Vec<FrontDesk> = et_frontdesk::table
                .filter(FrontDesk::name_dob_eq(&1, ("Müller", &born)))
                .select(FrontDesk::as_select())
                .load(conn)
                .await
                .unwrap();
            assert_eq!(ids(&both), [7_301, 7_305], "the forced collision is real");
            let found = FrontDesk::find_by_ssn4_dob_async(conn, &2, ("6789", &born))
                .await
                .unwrap();
            assert_eq!(ids(&found), [7_302]);
            // One field changed through the whole model's changeset.
            let mut changed = rows[0].clone();
            changed.last_name = "Meyer".into();
            diesel::update(et_frontdesk::table.find(7_301))
                .set(&changed)
                .execute(conn)
                .await
                .unwrap();
            let found = FrontDesk::find_by_name_dob_async(conn, &1, ("MEYER", &born))
                .await
                .unwrap();
            assert_eq!(ids(&found), [7_301]);
            let found = FrontDesk::find_by_name_dob_async(conn, &1, ("Müller", &born))
                .await
                .unwrap();
            assert!(found.is_empty());
        }
    };
}

mod sqlite {
    sync_suite!(
        encrypted_types_tests::sqlite,
        encrypted_types_tests::keystore::sqlite
    );
    encrypt_suite!(encrypted_types_tests::keystore::sqlite);
}
mod postgres {
    sync_suite!(
        encrypted_types_tests::pg,
        encrypted_types_tests::keystore::pg
    );
    encrypt_suite!(encrypted_types_tests::keystore::pg);

    /// PostgreSQL finds a patient through the (clinic_id, name_dob_bidx) index among 10,000.
    #[test]
    fn a_compound_lookup_uses_the_index_on_ten_thousand_rows() {
        let conn = &mut encrypted_types_tests::pg();
        let born = dob(1960, 1, 1);
        let names = [
            "Garcia", "Nguyen", "Kowalski", "Haddad", "Tanaka", "Okonkwo", "Silva", "Novak",
        ];
        let rows: Vec<FrontDesk> = (0..10_000i64)
            .map(|i| {
                let name = format!("{}{}", names[(i % 8) as usize], i / 8);
                let day = born + chrono::Days::new((i % 9_000) as u64);
                patient(
                    100_000 + i,
                    1 + i % 2,
                    &name,
                    day,
                    &format!("{:03}-{:02}-{:04}", i % 900, i % 97, i),
                )
            })
            .collect();
        for chunk in rows.chunks(2_000) {
            diesel::insert_into(et_frontdesk::table)
                .values(FrontDesk::batch(chunk))
                .execute(conn)
                .unwrap();
        }
        diesel::sql_query("ANALYZE et_frontdesk")
            .execute(conn)
            .unwrap();
        let target = &rows[4_321];
        let idx = expected(
            "name_dob",
            target.clinic_id,
            &target.last_name.to_lowercase(),
            target.date_of_birth,
        );
        let hex: String = idx.iter().map(|b| format!("{b:02x}")).collect();
        #[derive(QueryableByName)]
        struct Plan {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let plan: Vec<Plan> = diesel::sql_query(format!(
            "EXPLAIN SELECT * FROM et_frontdesk WHERE clinic_id = {} AND name_dob_bidx = '\\x{hex}'",
            target.clinic_id
        ))
        .load(conn)
        .unwrap();
        let text: Vec<String> = plan.into_iter().map(|p| p.line).collect();
        let text = text.join("\n");
        assert!(text.contains("et_frontdesk_name_dob_bidx"), "{text}");
        assert!(!text.contains("Seq Scan"), "{text}");
        let found = FrontDesk::find_by_name_dob(
            conn,
            &target.clinic_id,
            (target.last_name.as_str(), &target.date_of_birth),
        )
        .unwrap();
        assert_eq!(ids(&found), [target.id]);
    }
}
mod mysql {
    sync_suite!(
        encrypted_types_tests::mysql,
        encrypted_types_tests::keystore::mysql
    );
    encrypt_suite!(encrypted_types_tests::keystore::mysql);
}
mod async_sqlite {
    async_suite!(encrypted_types_tests::async_sqlite);
}
mod async_postgres {
    async_suite!(encrypted_types_tests::async_pg);
}
mod async_mysql {
    async_suite!(encrypted_types_tests::async_mysql);
}
