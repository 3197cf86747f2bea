use encrypted_types::Encrypted;

diesel::table! {
    clinic_a.charts (id) {
        id -> Integer,
        diagnosis -> Binary,
    }
}

// A schema name binds the values to their schema: it is a non-empty string.
#[derive(Encrypted)]
#[encrypted(table = charts, schema = "")]
struct Empty {
    id: i32,
    #[encrypted]
    diagnosis: String,
}

#[derive(Encrypted)]
#[encrypted(table = charts, schema = clinic_a)]
struct NotAString {
    id: i32,
    #[encrypted]
    diagnosis: String,
}

// Adopting reads values sealed before the model named its schema: it needs the schema.
#[derive(Encrypted)]
#[encrypted(table = charts, adopt_schema)]
struct AdoptsNothing {
    id: i32,
    #[encrypted]
    diagnosis: String,
}

#[derive(Encrypted)]
#[encrypted(table = charts, schema = "clinic_a", schema = "clinic_b")]
struct Twice {
    id: i32,
    #[encrypted]
    diagnosis: String,
}

#[derive(Encrypted)]
#[encrypted(table = charts, schema = "clinic_a", adopt_schema(later))]
struct UnknownStage {
    id: i32,
    #[encrypted]
    diagnosis: String,
}

fn main() {}
