use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> Integer,
        last_name -> Binary,
        name3_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = patients, compound_index(name = name3, fields(last_name(casefold, prefix(0)))))]
struct Patient {
    id: i32,
    #[encrypted]
    last_name: String,
}

fn main() {}
