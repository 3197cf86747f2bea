use encrypted_types::Encrypted;

diesel::table! {
    users (id) {
        id -> Integer,
        age_plain -> Nullable<Integer>,
        age -> Nullable<Binary>,
    }
}

#[derive(Encrypted)]
#[encrypted(table = users)]
struct User {
    id: i32,
    #[encrypted(migrate_from = age_plain)]
    age: i32,
}

fn main() {}
