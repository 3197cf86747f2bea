//! A model's derived `Debug` prints every encrypted field as `<redacted>`: `{:?}` is how
//! plaintext reaches logs, so a model has no other `Debug` unless it opts out.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use encrypted_types_tests::models::{Patient, PatientPatch};

#[test]
fn debug_of_a_model_holds_none_of_its_encrypted_values() {
    let mut p = Patient::sample(7, 3, "canary.email@example.org", "987-65-4321");
    p.phone = Some("555-0199".into());
    let secrets = [
        p.name.clone(),
        p.email.clone(),
        p.ssn.clone(),
        "1980-02-29".to_owned(),
        p.notes.clone().unwrap(),
        "canary".to_owned(),
        "555-0199".to_owned(),
        "987".to_owned(),
    ];
    for text in [format!("{p:?}"), format!("{p:#?}")] {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s:?} in {text}");
        }
        // Clear fields are printed, so the line still says which row it is.
        assert!(
            text.contains("id: 7") && text.contains("clinic_id: 3"),
            "{text}"
        );
        assert_eq!(text.matches("<redacted>").count(), 6, "{text}");
    }
    let patch = PatientPatch {
        id: 7,
        clinic_id: 3,
        email: Some("patch.canary@example.org".into()),
        notes: None,
    };
    let text = format!("{patch:?}");
    assert_eq!(
        text,
        "PatientPatch { id: 7, clinic_id: 3, email: <redacted>, notes: <redacted> }"
    );
}

/// `debug = none`: the model writes its own `Debug`, and the derive writes none.
#[derive(encrypted_types::Encrypted)]
#[encrypted(
    table = encrypted_types_tests::schema::et_patients,
    tenant = clinic_id,
    derive(AsChangeset),
    none = skip,
    debug = none
)]
struct OwnDebug {
    id: i32,
    clinic_id: i64,
    #[encrypted]
    notes: Option<String>,
}

impl std::fmt::Debug for OwnDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnDebug #{} of clinic {}", self.id, self.clinic_id)
    }
}

#[test]
fn a_model_that_opts_out_keeps_its_own_debug() {
    let own = OwnDebug {
        id: 1,
        clinic_id: 2,
        notes: Some("x".into()),
    };
    assert_eq!(format!("{own:?}"), "OwnDebug #1 of clinic 2");
}

/// `zeroize`: the model wipes its plaintext when dropped (through `wipe_plaintext`).
#[derive(encrypted_types::Encrypted)]
#[encrypted(
    table = encrypted_types_tests::schema::et_patients,
    tenant = clinic_id,
    derive(Queryable, Selectable, Insertable),
    zeroize
)]
struct Wiped {
    id: i32,
    clinic_id: i64,
    #[encrypted]
    name: String,
    #[encrypted(blind_index(normalize = email))]
    email: String,
    #[encrypted(blind_index(normalize = digits, bits = 16))]
    ssn: String,
    #[encrypted]
    dob: chrono::NaiveDate,
    #[encrypted]
    notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    phone: Option<String>,
}

#[test]
fn a_zeroizing_model_wipes_every_encrypted_field_and_still_round_trips() {
    use diesel::prelude::*;
    let conn = &mut encrypted_types_tests::sqlite();
    let w = Wiped {
        id: 4242,
        clinic_id: 1,
        name: "canary name".into(),
        email: "canary@example.org".into(),
        ssn: "123-45-6789".into(),
        dob: chrono::NaiveDate::from_ymd_opt(1970, 3, 4).unwrap(),
        notes: Some("canary notes".into()),
        phone: Some("555-0100".into()),
    };
    // Written from a reference and read back: the generated code never moves fields out.
    diesel::insert_into(encrypted_types_tests::schema::et_patients::table)
        .values(&w)
        .execute(conn)
        .unwrap();
    let mut back: Wiped = encrypted_types_tests::schema::et_patients::table
        .find(4242)
        .select(Wiped::as_select())
        .first(conn)
        .unwrap();
    assert_eq!(back.notes.as_deref(), Some("canary notes"));
    back.wipe_plaintext();
    assert!(back.name.is_empty() && back.email.is_empty() && back.ssn.is_empty());
    assert_eq!(back.notes.as_deref(), Some(""));
    assert_eq!(back.phone.as_deref(), Some(""));
    assert_eq!(
        back.dob,
        chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
    );
    assert_eq!(
        (back.id, back.clinic_id),
        (4242, 1),
        "clear fields are left"
    );
}
