use encrypted_types::Encrypted;

diesel::table! {
    notes (id) {
        id -> Double,
        body -> Binary,
    }
}

// A key type that is not a row identity (a `Uuid` key without the crate feature `uuid` reads
// the same): the error lists the types that are, and names the feature.
#[derive(Encrypted)]
#[encrypted(table = notes, bind_row = id)]
struct Note {
    id: f64,
    #[encrypted]
    body: String,
}

fn main() {}
