use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        check -> Binary,
        check_bidx -> Binary,
        check_in -> Binary,
        check_in_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(blind_index)]
    check: String,
    #[encrypted(blind_index)]
    check_in: String,
}

fn main() {}
