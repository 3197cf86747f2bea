use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Integer,
        body -> Nullable<Binary>,
        body_plain -> Nullable<Text>,
    }
}

// Plaintext in a legacy column is bound to nothing.
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = id)]
struct Note {
    id: i32,
    #[encrypted(migrate_from = body_plain)]
    body: Option<String>,
}

fn main() {}
