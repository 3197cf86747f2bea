use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        email -> Binary,
        name -> Binary,
        nickname -> Binary,
    }
}

// An empty context name binds nothing; two fields may not share one SQL column.
#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(context = "")]
    email: String,
    #[encrypted]
    name: String,
    #[encrypted(column = name)]
    nickname: String,
}

fn main() {}
