use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = notes, bind_row(row_id, body, row_id))]
struct Note {
    id: i32,
    #[encrypted]
    body: String,
}

fn main() {}
