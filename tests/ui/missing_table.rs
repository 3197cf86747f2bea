use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        email_bidx -> Binary,
        age -> Binary,
    }
}

#[derive(Encrypted)]
struct User {
    id: i32,
    #[encrypted]
    email: String,
}

fn main() {}
