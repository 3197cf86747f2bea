use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
    }
}

// The derive writes a redacted `Debug`; a second one conflicts. Remove `Debug`, or write
// `#[encrypted(debug = none)]` and a `Debug` of your own.
#[derive(Debug, Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted]
    email: String,
}

fn main() {}
