use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> Integer,
        last_name -> Nullable<Binary>,
        dob -> Binary,
        name_dob_bidx -> Nullable<Binary>,
    }
}

// A patch that may skip one field of a compound index would leave the index computed from
// the other field alone.
#[derive(Encrypted)]
#[encrypted(
    table = patients,
    derive(AsChangeset),
    none = skip,
    compound_index(name = name_dob, fields(last_name(casefold), dob))
)]
struct PatientPatch {
    id: i32,
    #[encrypted]
    last_name: Option<String>,
    #[encrypted]
    dob: chrono::NaiveDate,
}

fn main() {}
