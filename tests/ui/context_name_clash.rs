use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        email_sealed -> Binary,
        backup_email -> Binary,
    }
}

// Two fields bound to one context name: a value of one would open as the other.
#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(column = email_sealed)]
    email: String,
    #[encrypted(context = "email")]
    backup_email: String,
}

fn main() {}
