//! The suites on SQLite: in-process, sync and through diesel-async's `SyncConnectionWrapper`.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sync {
    encrypted_types_tests::sync_suite!(diesel::sqlite::Sqlite, sqlite);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_sqlite);
}

mod derive_sync {
    encrypted_types_tests::derive_suite!(diesel::sqlite::Sqlite, sqlite);
}

mod derive_async {
    encrypted_types_tests::derive_async_suite!(async_sqlite);
    encrypted_types_tests::derive_async_lookup_suite!(async_sqlite);
}
