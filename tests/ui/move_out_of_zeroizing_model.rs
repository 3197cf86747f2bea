use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users, zeroize)]
struct User {
    id: i32,
    #[encrypted]
    email: String,
}

// A model that wipes itself on drop cannot give a field away: clone it, or `std::mem::take`.
fn email(user: User) -> String {
    user.email
}

fn main() {}
