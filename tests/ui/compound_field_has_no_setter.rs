use encrypted_types::Encrypted;

diesel::table! {
    patients (id) {
        id -> Integer,
        last_name -> Binary,
        dob -> Binary,
        notes -> Binary,
        name_dob_bidx -> Binary,
    }
}

// A changeset of one field of a compound index cannot compute the index without the other
// fields: that field has no `set_<field>`; update through the whole model.
#[derive(Encrypted)]
#[encrypted(table = patients, compound_index(name = name_dob, fields(last_name(casefold), dob)))]
struct Patient {
    id: i32,
    #[encrypted]
    last_name: String,
    #[encrypted]
    dob: chrono::NaiveDate,
    #[encrypted]
    notes: String,
}

fn main() {
    // A field outside every compound index keeps its setter.
    let _notes = Patient::set_notes("fine");
    let _name = Patient::set_last_name("Müller");
}
