use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        email_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(blind_index(version = 2, previous(version = 1, root = current)))]
    email: String,
}

fn main() {}
