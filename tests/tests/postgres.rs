//! The suites on the PostgreSQL server (`PG_DATABASE_URL`), sync and with `AsyncPgConnection`.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sync {
    encrypted_types_tests::sync_suite!(diesel::pg::Pg, pg);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_pg);
}

mod derive_sync {
    encrypted_types_tests::derive_suite!(diesel::pg::Pg, pg);
}

mod derive_async {
    encrypted_types_tests::derive_async_suite!(async_pg);
    encrypted_types_tests::derive_async_lookup_suite!(async_pg);
    encrypted_types_tests::derive_async_batch_suite!(async_pg);
}

mod explain {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    use encrypted_types_tests::models::Patient;
    use encrypted_types_tests::schema::et_patients;
    use encrypted_types_tests::{next_id, pg};

    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }

    /// A blind-index lookup on 10,000 rows uses the index on `(clinic_id, email_bidx)`.
    #[test]
    fn a_blind_index_lookup_on_10000_rows_is_an_index_scan() {
        let conn = &mut pg();
        let ps: Vec<Patient> = (0..10_000)
            .map(|i| {
                Patient::sample(
                    next_id(),
                    1 + (i % 2),
                    &format!("p{i}@example.org"),
                    &format!("{i:09}"),
                )
            })
            .collect();
        for chunk in ps.chunks(1000) {
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(chunk))
                .execute(conn)
                .unwrap();
        }
        diesel::sql_query("ANALYZE et_patients")
            .execute(conn)
            .unwrap();
        let wanted = &ps[4321];
        let query = et_patients::table
            .select(et_patients::id)
            .filter(Patient::email_eq(&wanted.clinic_id, wanted.email.clone()));
        let sql = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
        let sql = sql.split(" -- binds").next().unwrap().to_owned();
        // EXPLAIN the exact statement Diesel sends, with the same bind values.
        let index = wanted_index(wanted);
        let plan: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {sql}"))
            .bind::<diesel::sql_types::BigInt, _>(wanted.clinic_id)
            .bind::<diesel::sql_types::Binary, _>(index)
            .load(conn)
            .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
        let text = plan.join("\n");
        assert!(
            text.contains("Index Scan")
                || text.contains("Index Only Scan")
                || text.contains("Bitmap Index Scan"),
            "{text}"
        );
        assert!(text.contains("et_patients_email"), "{text}");
        assert!(!text.contains("Seq Scan"), "{text}");
        let ids: Vec<i32> = query.load(conn).unwrap();
        assert_eq!(ids, vec![wanted.id]);
        println!("EXPLAIN of the email lookup on 10,000 rows:\n{text}");
    }

    fn wanted_index(p: &Patient) -> Vec<u8> {
        use encrypted_types::{EncryptedModel, Keyring, TenantId};
        let params = Patient::MODEL
            .columns
            .iter()
            .find(|c| c.column == "email")
            .unwrap()
            .indexes[0];
        params
            .compute(
                &Keyring::current().unwrap(),
                Some(&TenantId::from(p.clinic_id)),
                &p.email,
            )
            .unwrap()
    }
}
