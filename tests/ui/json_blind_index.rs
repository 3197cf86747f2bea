use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        profile -> Binary,
        profile_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(blind_index)]
    profile: serde_json::Value,
}

fn main() {}
