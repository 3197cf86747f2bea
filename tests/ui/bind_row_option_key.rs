use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Nullable<Integer>,
        body -> Binary,
    }
}

// `id` is SERIAL: the database assigns it after the values were sealed.
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = id)]
struct Note {
    id: Option<i32>,
    #[encrypted]
    body: String,
}

fn main() {}
