use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> Integer,
        last_name -> Binary,
        age -> Binary,
        chart -> Binary,
        email -> Nullable<Binary>,
        email_plain -> Nullable<Text>,
        a_bidx -> Binary,
        email_bidx -> Binary,
    }
}

// Every field of a compound index must be an encrypted field the index can hash, named once,
// and not still migrated from a legacy column; every compound index needs a name.
#[derive(Encrypted)]
#[encrypted(
    table = patients,
    compound_index(name = a, fields(last_name(casefold), missing, age(digits), chart)),
    compound_index(fields(last_name)),
    compound_index(name = email, fields(email, last_name, last_name))
)]
struct Patient {
    id: i32,
    #[encrypted]
    last_name: String,
    #[encrypted]
    age: i32,
    #[encrypted]
    chart: serde_json::Value,
    #[encrypted(migrate_from = email_plain)]
    email: Option<String>,
}

fn main() {}
