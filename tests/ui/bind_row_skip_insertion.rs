use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Binary,
    }
}

// The insert leaves `id` to the database (AUTO_INCREMENT).
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = id)]
struct Note {
    #[diesel(skip_insertion)]
    id: i32,
    #[encrypted]
    body: String,
}

fn main() {}
