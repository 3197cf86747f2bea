//! What a plaintext migration leaves on disk, read from PostgreSQL's own table file
//! (`pg_read_binary_file(pg_relation_filepath(..))`, which the test's superuser may call):
//! overwriting the legacy values with NULL, dropping their column and a plain `VACUUM` leave
//! the old bytes in the heap file; `VACUUM FULL` writes a new file without them. docs/KEYS.md
//! ("What stays on disk") says the same, and this test keeps it true.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

#[derive(QueryableByName)]
struct File {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    bytes: Vec<u8>,
}

/// How many of the 50 markers the table's main heap file holds, after a checkpoint.
fn markers_on_disk(conn: &mut PgConnection) -> usize {
    conn.batch_execute("CHECKPOINT").unwrap();
    let file: File = diesel::sql_query(
        "SELECT pg_read_binary_file(pg_relation_filepath('et_residue')) AS bytes",
    )
    .get_result(conn)
    .unwrap();
    (0..50)
        .filter(|i| {
            let marker = format!("residue-marker-{i:03}");
            encrypted_types_tests::contains(&file.bytes, marker.as_bytes())
        })
        .count()
}

#[test]
fn plain_vacuum_leaves_overwritten_plaintext_in_the_table_file_and_vacuum_full_does_not() {
    let url = encrypted_types_tests::pg_url();
    let conn = &mut PgConnection::establish(&url)
        .unwrap_or_else(|e| encrypted_types_tests::unreachable("PostgreSQL", &url, &e));
    conn.batch_execute(
        "DROP TABLE IF EXISTS et_residue; \
         CREATE TABLE et_residue (id INTEGER PRIMARY KEY, email_plain TEXT, email BYTEA) \
         WITH (autovacuum_enabled = false)",
    )
    .unwrap();
    for i in 0..50 {
        diesel::sql_query(format!(
            "INSERT INTO et_residue (id, email_plain) VALUES ({i}, 'residue-marker-{i:03}')"
        ))
        .execute(conn)
        .unwrap();
    }
    assert_eq!(markers_on_disk(conn), 50, "the plaintext is in the file");

    // The backfill: every row's sealed value written and its legacy value cleared.
    conn.batch_execute("UPDATE et_residue SET email = '\\x0102', email_plain = NULL")
        .unwrap();
    assert_eq!(
        markers_on_disk(conn),
        50,
        "dead row versions keep every old value"
    );

    // The contract step, then the VACUUM KEYS.md once said was enough.
    // One statement per call: several in one string run as one transaction, which VACUUM
    // refuses.
    conn.batch_execute("ALTER TABLE et_residue DROP COLUMN email_plain")
        .unwrap();
    conn.batch_execute("VACUUM et_residue").unwrap();
    let after_vacuum = markers_on_disk(conn);
    eprintln!("after DROP COLUMN and VACUUM: {after_vacuum} of 50 plaintext values in the file");
    assert!(
        after_vacuum > 0,
        "plain VACUUM frees dead versions without zeroing them (if a PostgreSQL release \
         starts zeroing, update docs/KEYS.md): {after_vacuum} left"
    );

    conn.batch_execute("VACUUM FULL et_residue").unwrap();
    assert_eq!(
        markers_on_disk(conn),
        0,
        "VACUUM FULL rewrote the table without them"
    );
    conn.batch_execute("DROP TABLE et_residue").unwrap();
}
