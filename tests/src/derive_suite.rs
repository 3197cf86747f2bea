//! The `#[derive(Encrypted)]` suites, instantiated per backend like the others.

/// A 16-bit index collision: a value whose truncated `ssn` index for `tenant` equals
/// `target`'s, found by search under the installed keyring.
pub fn ssn_collision(tenant: &str, target: &str) -> String {
    use encrypted_types::{EncryptedModel, Keyring, TenantId};
    let keyring = Keyring::current().expect("keyring installed");
    let params = crate::models::Patient::MODEL
        .columns
        .iter()
        .find(|c| c.column == "ssn")
        .expect("ssn column")
        .indexes[0];
    assert_eq!(params.bits, 16);
    let tenant = TenantId::from(tenant);
    let want = params
        .compute(&keyring, Some(&tenant), &target.to_owned())
        .unwrap();
    (0..2_000_000u32)
        .map(|n| format!("{n:09}"))
        .find(|s| s != target && params.compute(&keyring, Some(&tenant), s).unwrap() == want)
        .expect("a 16-bit collision within 2 million tries")
}

/// The sync derive suite for one backend.
#[macro_export]
macro_rules! derive_suite {
    ($backend:ty, $connect:path) => {
        use diesel::prelude::*;
        use encrypted_types::Error;
        use $crate::models::{Patient, PatientPatch};
        use $crate::schema::et_patients;
        use $crate::*;

        fn raw(
            conn: &mut impl diesel::connection::LoadConnection<Backend = $backend>,
            id: i32,
        ) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
            et_patients::table
                .find(id)
                .select((
                    et_patients::email,
                    et_patients::email_bidx,
                    et_patients::phone_bidx,
                ))
                .first(conn)
                .unwrap()
        }

        #[test]
        fn insert_then_find_by_email_written_differently() {
            let conn = &mut $connect();
            let p = Patient::sample(next_id(), 1, "Ann.Smith@Example.org", "123-45-6789");
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();

            let found = Patient::find_by_email(conn, &1, "  ann.smith@EXAMPLE.ORG ").unwrap();
            assert_eq!(found, vec![p.clone()]);
            // The filter composes with ordinary Diesel filters.
            let n: i64 = et_patients::table
                .filter(Patient::email_eq(&1, "ANN.SMITH@example.org"))
                .filter(et_patients::id.eq(p.id))
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(n, 1);
            let loaded: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .filter(Patient::email_eq(&1, "ann.smith@example.org"))
                .load(conn)
                .unwrap();
            assert_eq!(loaded, vec![p.clone()]);
            // Another tenant's index key finds nothing.
            assert!(
                Patient::find_by_email(conn, &2, "ann.smith@example.org")
                    .unwrap()
                    .is_empty()
            );
            assert!(
                Patient::find_by_email(conn, &1, "ann.smith@example.com")
                    .unwrap()
                    .is_empty()
            );

            let (email, _, _) = raw(conn, p.id);
            assert!(!contains(&email, b"Ann.Smith"));
            assert_eq!(&email[2..6], &keys::TENANT_1.to_be_bytes());
        }

        #[test]
        fn batch_insert_writes_every_value_and_index() {
            let conn = &mut $connect();
            let ps: Vec<Patient> = (0..25)
                .map(|i| {
                    let mut p = Patient::sample(
                        next_id(),
                        1 + i64::from(i % 2),
                        &format!("Batch{i}@X.org"),
                        &format!("{i:09}"),
                    );
                    p.phone = (i % 3 == 0).then(|| format!("+1 (555) 000-{i:04}"));
                    p.notes = (i % 4 != 0).then(|| format!("note {i}"));
                    p
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .unwrap();
            for p in &ps {
                assert_eq!(
                    Patient::find_by_email(conn, &p.clinic_id, p.email.to_lowercase()).unwrap(),
                    vec![p.clone()]
                );
                assert_eq!(
                    Patient::find_by_ssn(conn, &p.clinic_id, p.ssn.clone()).unwrap(),
                    vec![p.clone()]
                );
                if let Some(phone) = &p.phone {
                    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
                    assert_eq!(
                        Patient::find_by_phone(conn, &p.clinic_id, digits).unwrap(),
                        vec![p.clone()]
                    );
                }
                let (_, _, phone_bidx) = raw(conn, p.id);
                assert_eq!(
                    phone_bidx.is_some(),
                    p.phone.is_some(),
                    "a NULL value has a NULL index"
                );
            }
        }

        #[test]
        fn update_keeps_the_index_in_step() {
            let conn = &mut $connect();
            let mut p = Patient::sample(next_id(), 1, "old@example.org", "111-11-1111");
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            p.email = "New@Example.org".into();
            p.phone = Some("555 0100".into());
            diesel::update(et_patients::table.find(p.id))
                .set(&p)
                .execute(conn)
                .unwrap();
            assert!(
                Patient::find_by_email(conn, &1, "old@example.org")
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                Patient::find_by_email(conn, &1, "new@example.org").unwrap(),
                vec![p.clone()]
            );
            assert_eq!(
                Patient::find_by_phone(conn, &1, "5550100").unwrap(),
                vec![p.clone()]
            );
        }

        #[test]
        fn saving_none_removes_the_value_and_its_index() {
            let conn = &mut $connect();
            let mut p = Patient::sample(next_id(), 2, "none@example.org", "333-33-3333");
            p.notes = Some("confidential review note 1600".into());
            p.phone = Some("555-0100".into());
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            // A deletion request: the model saved with the note and the phone gone.
            p.notes = None;
            p.phone = None;
            diesel::update(et_patients::table.find(p.id))
                .set(&p)
                .execute(conn)
                .unwrap();
            let stored: (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>) = et_patients::table
                .find(p.id)
                .select((
                    et_patients::notes,
                    et_patients::phone,
                    et_patients::phone_bidx,
                ))
                .first(conn)
                .unwrap();
            assert_eq!(stored, (None, None, None), "a value or index survived None");
            let back: Patient = et_patients::table
                .find(p.id)
                .select(Patient::as_select())
                .first(conn)
                .unwrap();
            assert_eq!(back, p);
        }

        #[test]
        fn one_field_updates_write_the_value_and_its_index() {
            let conn = &mut $connect();
            let p = Patient::sample(next_id(), 2, "one@example.org", "444-44-4444");
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            diesel::update(et_patients::table.find(p.id))
                .set(Patient::set_email(&2, "Moved.One@Example.org"))
                .execute(conn)
                .unwrap();
            assert!(
                Patient::find_by_email(conn, &2, "one@example.org")
                    .unwrap()
                    .is_empty()
            );
            let got = Patient::find_by_email(conn, &2, "moved.one@example.org").unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].email, "Moved.One@Example.org");
            assert_eq!(
                (&got[0].name, &got[0].ssn),
                (&p.name, &p.ssn),
                "other fields kept"
            );
            // Sealed for the row's tenant: under another tenant's key the row would not open.
            diesel::update(et_patients::table.find(p.id))
                .set(Patient::set_phone(&2, Some("555-0199".into())))
                .execute(conn)
                .unwrap();
            assert_eq!(
                Patient::find_by_phone(conn, &2, "5550199").unwrap()[0]
                    .phone
                    .as_deref(),
                Some("555-0199")
            );
            diesel::update(et_patients::table.find(p.id))
                .set(Patient::set_phone(&2, None))
                .execute(conn)
                .unwrap();
            let stored: (Option<Vec<u8>>, Option<Vec<u8>>) = et_patients::table
                .find(p.id)
                .select((et_patients::phone, et_patients::phone_bidx))
                .first(conn)
                .unwrap();
            assert_eq!(stored, (None, None));
            diesel::update(et_patients::table.find(p.id))
                .set(Patient::set_dob(&2, p.dob))
                .execute(conn)
                .unwrap();
        }

        #[test]
        fn partial_update_skips_value_and_index_together() {
            let conn = &mut $connect();
            let p = Patient::sample(next_id(), 2, "keep@example.org", "222-22-2222");
            diesel::insert_into(et_patients::table)
                .values(&p)
                .execute(conn)
                .unwrap();
            let before = raw(conn, p.id);

            let notes_only = PatientPatch {
                id: p.id,
                clinic_id: 2,
                email: None,
                notes: Some("patched".into()),
            };
            diesel::update(et_patients::table.find(p.id))
                .set(&notes_only)
                .execute(conn)
                .unwrap();
            let after = raw(conn, p.id);
            assert_eq!(before.0, after.0, "email untouched");
            assert_eq!(before.1, after.1, "email index untouched");
            let got = Patient::find_by_email(conn, &2, "keep@example.org").unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].notes.as_deref(), Some("patched"));

            let email_too = PatientPatch {
                id: p.id,
                clinic_id: 2,
                email: Some("Moved@Example.org".into()),
                notes: None,
            };
            diesel::update(et_patients::table.find(p.id))
                .set(&email_too)
                .execute(conn)
                .unwrap();
            assert_ne!(
                raw(conn, p.id).1,
                before.1,
                "email index rewritten with the email"
            );
            assert!(
                Patient::find_by_email(conn, &2, "keep@example.org")
                    .unwrap()
                    .is_empty()
            );
            let got = Patient::find_by_email(conn, &2, "moved@example.org").unwrap();
            assert_eq!(got[0].notes.as_deref(), Some("patched"));
        }

        #[test]
        fn a_truncated_index_with_forced_collisions_returns_only_the_right_rows() {
            let conn = &mut $connect();
            let target = "900-00-0001";
            let collider = $crate::derive_suite::ssn_collision("1", target);
            let right = Patient::sample(next_id(), 1, "right@example.org", target);
            let wrong = Patient::sample(next_id(), 1, "wrong@example.org", &collider);
            let other_tenant = Patient::sample(next_id(), 2, "other@example.org", target);
            for p in [&right, &wrong, &other_tenant] {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            // The index alone cannot tell the two tenant-1 rows apart...
            let candidates: Vec<i32> = et_patients::table
                .filter(Patient::ssn_eq(&1, target))
                .select(et_patients::id)
                .order(et_patients::id)
                .load(conn)
                .unwrap();
            assert_eq!(candidates, vec![right.id, wrong.id]);
            // ...the query helper checks each candidate by decrypted equality.
            assert_eq!(
                Patient::find_by_ssn(conn, &1, "900000001").unwrap(),
                vec![right.clone()]
            );
            assert_eq!(
                Patient::find_by_ssn(conn, &1, collider.clone()).unwrap(),
                vec![wrong.clone()]
            );
            assert_eq!(
                Patient::find_by_ssn(conn, &2, target).unwrap(),
                vec![other_tenant.clone()]
            );
        }

        #[test]
        fn five_hundred_values_are_looked_up_in_one_query() {
            use std::sync::Arc;
            use std::sync::atomic::{AtomicUsize, Ordering};
            let conn = &mut $connect();
            let tag = next_id();
            let ps = Patient::several(30, "In");
            for p in &ps {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            // Every email written differently, both tenants' among them, and 470 that match
            // nothing: 500 values.
            let mut values: Vec<String> = ps
                .iter()
                .map(|p| format!(" {} ", p.email.to_uppercase()))
                .collect();
            values.extend((0..470).map(|i| format!("nobody{i}-{tag}@example.org")));
            assert_eq!(values.len(), 500);
            let queries = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&queries);
            conn.set_instrumentation(move |event: diesel::connection::InstrumentationEvent<'_>| {
                if matches!(
                    event,
                    diesel::connection::InstrumentationEvent::StartQuery { .. }
                ) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            let mut found = Patient::find_by_email_in(conn, &1, values.clone()).unwrap();
            assert_eq!(queries.load(Ordering::Relaxed), 1, "one statement");
            found.sort_by_key(|p| p.id);
            let want: Vec<Patient> = ps.iter().filter(|p| p.clinic_id == 1).cloned().collect();
            assert_eq!(found, want);
            // The filter composes like `email_eq`, and an empty list matches nothing.
            let n: i64 = et_patients::table
                .filter(Patient::email_in(&2, values.clone()))
                .count()
                .get_result(conn)
                .unwrap();
            assert_eq!(n, 15);
            assert!(
                Patient::find_by_email_in(conn, &1, Vec::<String>::new())
                    .unwrap()
                    .is_empty()
            );
            // A truncated index: forced collisions are candidates, never results.
            let collider = $crate::derive_suite::ssn_collision("1", &ps[0].ssn);
            let wrong =
                Patient::sample(next_id(), 1, &format!("wrong-{tag}@example.org"), &collider);
            diesel::insert_into(et_patients::table)
                .values(&wrong)
                .execute(conn)
                .unwrap();
            let by_ssn =
                Patient::find_by_ssn_in(conn, &1, [ps[0].ssn.clone(), ps[2].ssn.clone()]).unwrap();
            let mut ids: Vec<i32> = by_ssn.iter().map(|p| p.id).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![ps[0].id, ps[2].id]);
            // During a blind-index rotation both versions match: a row written by the rotating
            // model (version 2) and the rest (version 1).
            let v2 = $crate::models::PatientRotating {
                id: next_id(),
                clinic_id: 1,
                name: "v2".into(),
                email: format!("v2-{tag}@example.org"),
                ssn: "1".into(),
                dob: ps[0].dob,
                notes: None,
                phone: None,
            };
            diesel::insert_into(et_patients::table)
                .values(&v2)
                .execute(conn)
                .unwrap();
            let mut both = values.clone();
            both.push(v2.email.to_uppercase());
            let found = $crate::models::PatientRotating::find_by_email_in(conn, &1, both).unwrap();
            assert_eq!(found.len(), 16, "15 rows on version 1 and one on version 2");
            assert!(found.iter().any(|p| p.id == v2.id));
        }

        #[test]
        fn one_value_in_two_columns_or_two_tenants_indexes_differently() {
            let conn = &mut $connect();
            let mut a = Patient::sample(next_id(), 1, "5550123", "333-33-3333");
            a.phone = Some("555-0123".into());
            let mut b = a.clone();
            b.id = next_id();
            b.clinic_id = 2;
            for p in [&a, &b] {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            let (_, email_a, phone_a) = raw(conn, a.id);
            let (_, email_b, _) = raw(conn, b.id);
            assert_eq!(email_a.len(), 32);
            assert_ne!(
                Some(email_a.clone()),
                phone_a,
                "same normalized value, two columns"
            );
            assert_ne!(email_a, email_b, "same value, two tenants");
        }

        #[test]
        fn a_value_copied_from_another_tenants_row_is_refused() {
            let conn = &mut $connect();
            let a = Patient::sample(next_id(), 1, "a@example.org", "444-44-4444");
            let b = Patient::sample(next_id(), 2, "b@example.org", "555-55-5555");
            for p in [&a, &b] {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .unwrap();
            }
            let b_name: Vec<u8> = et_patients::table
                .find(b.id)
                .select(et_patients::name)
                .first(conn)
                .unwrap();
            diesel::update(et_patients::table.find(a.id))
                .set(et_patients::name.eq(&b_name))
                .execute(conn)
                .unwrap();
            let err = et_patients::table
                .find(a.id)
                .select(Patient::as_select())
                .first::<Patient>(conn)
                .unwrap_err();
            assert_eq!(
                lib_error(&err),
                Some(&Error::TenantMismatch { column: "name" }),
                "{err}"
            );
            // The same bytes still open in their own row.
            let b_back: Patient = et_patients::table
                .find(b.id)
                .select(Patient::as_select())
                .first(conn)
                .unwrap();
            assert_eq!(b_back, b);
        }

        #[test]
        fn generated_writes_show_no_plaintext_in_debug_query() {
            let p = Patient::sample(1, 1, CANARY_EMAIL, "666-66-6666");
            let insert = diesel::insert_into(et_patients::table).values(&p);
            let update = diesel::update(et_patients::table.find(1)).set(&p);
            let batch_rows = Patient::batch(std::slice::from_ref(&p));
            let batch = diesel::insert_into(et_patients::table).values(&batch_rows);
            let filter = et_patients::table.filter(Patient::email_eq(&1, CANARY_EMAIL));
            let shown = [
                diesel::debug_query::<$backend, _>(&insert).to_string(),
                diesel::debug_query::<$backend, _>(&update).to_string(),
                diesel::debug_query::<$backend, _>(&batch).to_string(),
                diesel::debug_query::<$backend, _>(&filter).to_string(),
            ];
            for text in &shown {
                // Writes bind bytes sealed when the write was built (`Written`), lookups a
                // redacted value: either way no plaintext.
                assert!(
                    text.contains("<redacted>") || text.contains("Written("),
                    "{text}"
                );
                for canary in [CANARY_EMAIL, CANARY_NAME, "666-66-6666", "canary-notes"] {
                    assert!(!text.contains(canary), "leak of {canary}: {text}");
                }
            }
        }
    };
}

/// The diesel-async derive suite for one backend.
#[macro_export]
macro_rules! derive_async_suite {
    ($connect:path) => {
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        use diesel_async::RunQueryDsl;
        use encrypted_types::Error;
        use $crate::models::Patient;
        use $crate::schema::et_patients;
        use $crate::*;

        #[tokio::test]
        async fn insert_batch_filter_and_refuse_a_tenant_swap() {
            let conn = &mut $connect().await;
            let ps: Vec<Patient> = (0..6)
                .map(|i| {
                    Patient::sample(
                        next_id(),
                        1 + (i % 2),
                        &format!("Async{i}@Example.org"),
                        "123456789",
                    )
                })
                .collect();
            for p in &ps {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            for p in &ps {
                let email = p.email.to_uppercase();
                let rows: Vec<Patient> = et_patients::table
                    .select(Patient::as_select())
                    .filter(Patient::email_eq(&p.clinic_id, email.clone()))
                    .load(conn)
                    .await
                    .unwrap();
                let rows: Vec<Patient> = rows
                    .into_iter()
                    .filter(|r| r.email_matches(&email))
                    .collect();
                assert_eq!(rows, vec![p.clone()]);
            }
            // All six share an SSN; the truncated index plus the decrypted check finds the tenant's three.
            let rows: Vec<Patient> = et_patients::table
                .select(Patient::as_select())
                .filter(Patient::ssn_eq(&1, "123-45-6789"))
                .load(conn)
                .await
                .unwrap();
            assert_eq!(
                rows.iter().filter(|r| r.ssn_matches("123-45-6789")).count(),
                3
            );

            let b_name: Vec<u8> = et_patients::table
                .find(ps[1].id)
                .select(et_patients::name)
                .first(conn)
                .await
                .unwrap();
            diesel::update(et_patients::table.find(ps[0].id))
                .set(et_patients::name.eq(&b_name))
                .execute(conn)
                .await
                .unwrap();
            let err = et_patients::table
                .find(ps[0].id)
                .select(Patient::as_select())
                .first::<Patient>(conn)
                .await
                .unwrap_err();
            assert_eq!(
                lib_error(&err),
                Some(&Error::TenantMismatch { column: "name" }),
                "{err}"
            );
        }
    };
}

/// `find_by_*_async` and `find_by_*_in_async` for one backend.
#[macro_export]
macro_rules! derive_async_lookup_suite {
    ($connect:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lookups_on_an_async_connection_recheck_like_the_sync_ones() {
            // Spawned: the lookups' futures must be `Send`.
            tokio::spawn(async { lookups().await }).await.unwrap();
        }

        async fn lookups() {
            use diesel_async::RunQueryDsl;
            use $crate::models::Patient;
            use $crate::schema::et_patients;
            let conn = &mut $connect().await;
            let tag = $crate::next_id();
            let ps = Patient::several(6, "AsyncIn");
            for p in &ps {
                diesel::insert_into(et_patients::table)
                    .values(p)
                    .execute(conn)
                    .await
                    .unwrap();
            }
            let one = Patient::find_by_email_async(conn, &1, ps[0].email.to_lowercase())
                .await
                .unwrap();
            assert_eq!(one, vec![ps[0].clone()]);
            assert!(
                Patient::find_by_email_async(conn, &2, ps[0].email.clone())
                    .await
                    .unwrap()
                    .is_empty(),
                "another tenant's row"
            );
            let mut many = Patient::find_by_email_in_async(
                conn,
                &2,
                ps.iter().map(|p| p.email.to_uppercase()),
            )
            .await
            .unwrap();
            many.sort_by_key(|p| p.id);
            let want: Vec<Patient> = ps.iter().filter(|p| p.clinic_id == 2).cloned().collect();
            assert_eq!(many, want);
            // The truncated SSN index, re-checked by decrypted equality.
            let collider = $crate::derive_suite::ssn_collision("1", &ps[0].ssn);
            let wrong = Patient::sample(
                $crate::next_id(),
                1,
                &format!("w-{tag}@example.org"),
                &collider,
            );
            diesel::insert_into(et_patients::table)
                .values(&wrong)
                .execute(conn)
                .await
                .unwrap();
            let by_ssn = Patient::find_by_ssn_async(conn, &1, ps[0].ssn.clone())
                .await
                .unwrap();
            assert_eq!(by_ssn, vec![ps[0].clone()]);
            let by_ssn = Patient::find_by_ssn_in_async(conn, &1, [collider.clone()])
                .await
                .unwrap();
            assert_eq!(
                by_ssn.iter().map(|p| p.id).collect::<Vec<_>>(),
                vec![wrong.id]
            );
        }
    };
}

/// Batch insert through diesel-async (PostgreSQL and MySQL: diesel-async's SQLite wrapper has
/// no batch insert of rows with optional columns).
#[macro_export]
macro_rules! derive_async_batch_suite {
    ($connect:path) => {
        #[tokio::test]
        async fn batch_insert_through_diesel_async() {
            use diesel_async::RunQueryDsl;
            use $crate::models::Patient;
            use $crate::schema::et_patients;
            let conn = &mut $connect().await;
            let ps: Vec<Patient> = (0..10)
                .map(|i| {
                    Patient::sample(
                        $crate::next_id(),
                        1,
                        &format!("AsyncBatch{i}@Example.org"),
                        &format!("{i:09}"),
                    )
                })
                .collect();
            diesel::insert_into(et_patients::table)
                .values(Patient::batch(&ps))
                .execute(conn)
                .await
                .unwrap();
            for p in &ps {
                let rows: Vec<Patient> = diesel::QueryDsl::filter(
                    diesel::QueryDsl::select(
                        et_patients::table,
                        <Patient as diesel::SelectableHelper<_>>::as_select(),
                    ),
                    Patient::ssn_eq(&1, p.ssn.clone()),
                )
                .load(conn)
                .await
                .unwrap();
                let rows: Vec<Patient> =
                    rows.into_iter().filter(|r| r.ssn_matches(&p.ssn)).collect();
                assert_eq!(rows, vec![p.clone()]);
            }
        }
    };
}
