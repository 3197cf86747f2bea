//! The suites on the MySQL/MariaDB server (`MYSQL_DATABASE_URL`), sync and with
//! `AsyncMysqlConnection`.

mod sync {
    encrypted_types_tests::sync_suite!(diesel::mysql::Mysql, mysql);
}

mod via_async {
    encrypted_types_tests::async_suite!(async_mysql);
}
