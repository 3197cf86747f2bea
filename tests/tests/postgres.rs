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
    encrypted_types_tests::derive_async_batch_suite!(async_pg);
}
