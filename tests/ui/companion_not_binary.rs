use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        email_bidx -> Text,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users, derive(Queryable, Selectable))]
struct User {
    id: i32,
    #[encrypted(blind_index)]
    email: String,
}

fn main() {}
