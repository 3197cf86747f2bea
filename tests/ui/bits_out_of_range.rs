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
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(blind_index(bits = 0))]
    email: String,
    #[encrypted(blind_index(bits = 300))]
    age: i32,
}

fn main() {}
