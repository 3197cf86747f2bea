use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Integer,
        row_id -> Binary,
        body -> Binary,
    }
}

// A separate row-id column is stored in clear: a writer would copy it along with the value.
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = row_id)]
struct Note {
    id: i32,
    row_id: Vec<u8>,
    #[encrypted]
    body: String,
}

fn main() {}
