//! `bind_row` on a UUID key, on the PostgreSQL server, with the documented features only: rows
//! round-trip, and a value copied into another row does not open.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use encrypted_types::{KeyMaterial, Keyring};
use encrypted_types_uuid_app::Employee;
use encrypted_types_uuid_app::schema::et_uuid_app;

#[test]
fn a_uuid_keyed_model_binds_its_values_to_its_rows() {
    let url = std::env::var("PG_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let conn = &mut PgConnection::establish(&url)
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is not reachable: {e}"));
    conn.batch_execute(
        "DROP TABLE IF EXISTS et_uuid_app; \
         CREATE TABLE et_uuid_app (id UUID PRIMARY KEY, clinic_id BIGINT NOT NULL, name BYTEA NOT NULL)",
    )
    .unwrap();
    Keyring::builder()
        .data_key(1, Some("7".into()), KeyMaterial::generate().unwrap())
        .primary(Some("7".into()), 1)
        .build()
        .unwrap()
        .install();
    let (a, b) = (
        Employee {
            id: uuid::Uuid::new_v4(),
            clinic_id: 7,
            name: "Ann".into(),
        },
        Employee {
            id: uuid::Uuid::new_v4(),
            clinic_id: 7,
            name: "Bob".into(),
        },
    );
    diesel::insert_into(et_uuid_app::table)
        .values(&[a.clone(), b.clone()])
        .execute(conn)
        .unwrap();
    let back: Employee = et_uuid_app::table
        .find(a.id)
        .select(Employee::as_select())
        .first(conn)
        .unwrap();
    assert!(back == a, "row a did not round-trip");
    // A database writer copies Ann's sealed name into Bob's row: it does not open there.
    let sealed: Vec<u8> = et_uuid_app::table
        .find(a.id)
        .select(et_uuid_app::name)
        .first(conn)
        .unwrap();
    diesel::update(et_uuid_app::table.find(b.id))
        .set(et_uuid_app::name.eq(sealed))
        .execute(conn)
        .unwrap();
    let copied = et_uuid_app::table
        .find(b.id)
        .select(Employee::as_select())
        .first::<Employee>(conn);
    assert!(copied.is_err(), "a value copied into another row opened");
    conn.batch_execute("DROP TABLE et_uuid_app").unwrap();
}
