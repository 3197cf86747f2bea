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
