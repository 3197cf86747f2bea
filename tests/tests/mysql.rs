//! The suites on the MySQL/MariaDB server (`MYSQL_DATABASE_URL`), sync and with
//! `AsyncMysqlConnection`.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sync {
    encrypted_types_tests::sync_suite!(diesel::mysql::Mysql, mysql);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_mysql);
}

mod derive_sync {
    encrypted_types_tests::derive_suite!(diesel::mysql::Mysql, mysql);
}

mod derive_async {
    encrypted_types_tests::derive_async_suite!(async_mysql);
    encrypted_types_tests::derive_async_lookup_suite!(async_mysql);
    encrypted_types_tests::derive_async_batch_suite!(async_mysql);
}
