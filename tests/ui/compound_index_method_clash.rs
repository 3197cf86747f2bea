use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        email_bidx -> Binary,
        email_async_bidx -> Binary,
    }
}

// `find_by_email_async` would be both the email index's async lookup and this compound
// index's sync one.
#[derive(Encrypted)]
#[encrypted(table = users, compound_index(name = email_async, fields(email(email))))]
struct User {
    id: i32,
    #[encrypted(blind_index(normalize = email))]
    email: String,
}

fn main() {}
