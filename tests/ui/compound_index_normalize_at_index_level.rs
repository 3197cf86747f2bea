use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> Integer,
        last_name -> Binary,
        dob -> Binary,
        name_dob_bidx -> Binary,
    }
}

#[derive(Encrypted)]
#[encrypted(table = patients, compound_index(name = name_dob, normalize = casefold, fields(last_name, dob)))]
struct Patient {
    id: i32,
    #[encrypted]
    last_name: String,
    #[encrypted]
    dob: chrono::NaiveDate,
}

fn main() {}
