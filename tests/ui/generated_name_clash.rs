use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Nullable<Text>,
        email_sealed -> Nullable<Binary>,
        __legacy_email -> Nullable<Text>,
    }
}

// `migrate_from = email` reads the legacy column through a generated field `__legacy_email`:
// a field of that name would be declared twice.
#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(column = email_sealed, migrate_from = email)]
    email: Option<String>,
    __legacy_email: Option<String>,
}

fn main() {}
