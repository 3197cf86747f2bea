//! The suites on the PostgreSQL server (`PG_DATABASE_URL`), sync and with `AsyncPgConnection`.

mod sync {
    encrypted_types_tests::sync_suite!(diesel::pg::Pg, pg);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_pg);
}
