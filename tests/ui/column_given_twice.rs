use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email_sealed -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(column = email_sealed)]
    #[diesel(column_name = email_sealed)]
    email: String,
}

fn main() {}
