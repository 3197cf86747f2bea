use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users, debug = plain)]
struct User {
    id: i32,
    #[encrypted]
    email: String,
}

fn main() {}
