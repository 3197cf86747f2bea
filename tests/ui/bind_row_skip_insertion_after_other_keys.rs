use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Binary,
    }
}

// `skip_insertion` after another diesel key is found all the same.
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = id)]
struct Note {
    #[diesel(column_name = id, skip_insertion)]
    id: i32,
    #[encrypted]
    body: String,
}

fn main() {}
