//! Values bound to their row (`bind_row`, suite 3) on every backend, sync and async: a value
//! copied into another row of the same tenant and column fails with `AuthenticationFailed`;
//! a value bound to no row is refused in a bound column. (The rotation job on a `bind_row`
//! model is in `jobs.rs`, whose tests replace the installed keyring one at a time.)
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types::Error;
use encrypted_types_tests::models::BoundPatient;

fn patient(id: i64, ssn: &str) -> BoundPatient {
    BoundPatient {
        id,
        clinic_id: 1,
        ssn: ssn.to_owned(),
        notes: Some(format!("notes of patient {id}")),
    }
}

/// The error a failed read carries, looked up through Diesel's wrapping.
fn read_error(e: &diesel::result::Error) -> Error {
    Error::from_diesel(e)
        .cloned()
        .unwrap_or_else(|| panic!("not a library error: {e}"))
}

macro_rules! sync_suite {
    ($connect:path) => {
        use super::*;
        use diesel::prelude::*;
        use encrypted_types_tests::real_schema::et_bound;

        #[test]
        fn a_value_copied_into_another_row_fails_and_its_own_row_opens() {
            let conn = &mut $connect();
            let (a, b) = (patient(501, "111-11-1111"), patient(502, "222-22-2222"));
            diesel::insert_into(et_bound::table)
                .values(BoundPatient::batch(&[a.clone(), b.clone()]))
                .execute(conn)
                .unwrap();
            let raw_a: Vec<u8> = et_bound::table.find(501).select(et_bound::ssn).first(conn).unwrap();
            assert_eq!(raw_a[1], encrypted_types::format::SUITE_AES256GCMSIV_ROW);
            let back: Vec<BoundPatient> = et_bound::table
                .select(BoundPatient::as_select())
                .order(et_bound::id)
                .load(conn)
                .unwrap();
            assert!(back == vec![a.clone(), b.clone()]);

            // A database writer copies patient 501's SSN (and its index) into patient 502.
            let idx_a: Vec<u8> =
                et_bound::table.find(501).select(et_bound::ssn_bidx).first(conn).unwrap();
            diesel::update(et_bound::table.find(502))
                .set((et_bound::ssn.eq(&raw_a), et_bound::ssn_bidx.eq(&idx_a)))
                .execute(conn)
                .unwrap();
            let err = et_bound::table
                .find(502)
                .select(BoundPatient::as_select())
                .first(conn)
                .err()
                .unwrap();
            assert_eq!(read_error(&err), Error::AuthenticationFailed);
            // The lookup by the copied SSN finds row 502 by its index, and refuses it too.
            let found = BoundPatient::find_by_ssn(conn, &1, "111-11-1111");
            assert!(found.is_err(), "the swapped row was returned");
            // Row 501 still opens; a setter writes a value bound to its row.
            let one: BoundPatient = et_bound::table.find(501).select(BoundPatient::as_select()).first(conn).unwrap();
            assert!(one == a);
            diesel::update(et_bound::table.find(502))
                .set(BoundPatient::set_ssn(&1, &502, "333-33-3333"))
                .execute(conn)
                .unwrap();
            let two: BoundPatient = et_bound::table.find(502).select(BoundPatient::as_select()).first(conn).unwrap();
            assert_eq!(two.ssn, "333-33-3333");
        }

        #[test]
        fn a_value_bound_to_no_row_is_refused_in_a_bound_column() {
            let conn = &mut $connect();
            let a = patient(511, "444-44-4444");
            diesel::insert_into(et_bound::table).values(&a).execute(conn).unwrap();
            // Sealed for the same table, column and tenant, but not bound to a row: as a value
            // written before the model declared `bind_row`.
            encrypted_types::column_context!(Ssn = "et_bound"."ssn");
            let unbound = encrypted_types::Encrypted::<String, Ssn>::for_tenant("444-44-4444".into(), 1_i64)
                .seal()
                .unwrap();
            assert_eq!(unbound[1], encrypted_types::format::SUITE_AES256GCMSIV);
            diesel::update(et_bound::table.find(511)).set(et_bound::ssn.eq(&unbound)).execute(conn).unwrap();
            let err = et_bound::table.find(511).select(BoundPatient::as_select()).first(conn).err().unwrap();
            assert_eq!(read_error(&err), Error::RowBinding);
        }

        #[test]
        fn planted_plaintext_is_not_read_from_a_bound_column_even_in_fallback() {
            let conn = &mut $connect();
            let a = patient(521, "777-77-7777");
            diesel::insert_into(et_bound::table).values(&a).execute(conn).unwrap();
            // The fallback of a plaintext migration is on for this column (in this process),
            // and a writer plants plaintext in the bound cell.
            encrypted_types::migration::allow_plaintext("et_bound", "notes");
            diesel::update(et_bound::table.find(521))
                .set(et_bound::notes.eq(Some(b"planted by the writer".to_vec())))
                .execute(conn)
                .unwrap();
            let read = et_bound::table.find(521).select(BoundPatient::as_select()).first(conn);
            encrypted_types::migration::stop_plaintext("et_bound", "notes");
            // Refused as what it is (not a sealed value), never read as the row's plaintext.
            let err = read.err().expect("planted plaintext was read as the row's value");
            assert!(matches!(read_error(&err), Error::UnsupportedVersion(_)), "{err}");
        }
    };
}

macro_rules! async_suite {
    ($connect:path) => {
        use super::*;
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        use diesel_async::RunQueryDsl;
        use encrypted_types_tests::real_schema::et_bound;

        #[tokio::test]
        async fn a_value_copied_into_another_row_fails() {
            let conn = &mut $connect().await;
            let (a, b) = (patient(601, "555-55-5555"), patient(602, "666-66-6666"));
            // One row at a time: SQLite's batch insert cannot leave a nullable column out.
            for p in [&a, &b] {
                diesel::insert_into(et_bound::table)
                    .values(p)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            let raw_a: Vec<u8> = et_bound::table
                .find(601)
                .select(et_bound::ssn)
                .first(conn)
                .await
                .unwrap();
            diesel::update(et_bound::table.find(602))
                .set(et_bound::ssn.eq(&raw_a))
                .execute(conn)
                .await
                .unwrap();
            let err = et_bound::table
                .find(602)
                .select(BoundPatient::as_select())
                .first(conn)
                .await
                .err()
                .unwrap();
            assert_eq!(read_error(&err), Error::AuthenticationFailed);
            let one: BoundPatient = et_bound::table
                .find(601)
                .select(BoundPatient::as_select())
                .first(conn)
                .await
                .unwrap();
            assert!(one == a);
        }
    };
}

mod sqlite {
    sync_suite!(encrypted_types_tests::sqlite);
}
mod postgres {
    sync_suite!(encrypted_types_tests::pg);
}
mod mysql {
    sync_suite!(encrypted_types_tests::mysql);
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
