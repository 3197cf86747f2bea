//! The suites on SQLite: in-process, sync and through diesel-async's `SyncConnectionWrapper`.

mod sync {
    encrypted_types_tests::sync_suite!(diesel::sqlite::Sqlite, sqlite);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_sqlite);
}
