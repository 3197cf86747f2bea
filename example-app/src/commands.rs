//! The subcommands.

use std::path::Path;

use diesel::prelude::*;
use encrypted_types::kek::local::LocalKek;
use encrypted_types::store::{KeyStore, encrypted_types_keys};
use encrypted_types::{EncryptedModel, TenantId};

use crate::AppResult;
use crate::db::{Db, with_conn};
use crate::model::{Patient, patients};

/// The demo's patients: two clinics, each with its own keys.
fn samples() -> Vec<Patient> {
    let d = |y, m, day| chrono::NaiveDate::from_ymd_opt(y, m, day).unwrap_or_default();
    let p = |id, clinic_id, name: &str, email: &str, ssn: &str, dob, notes: Option<&str>| Patient {
        id,
        clinic_id,
        name: name.into(),
        email: email.into(),
        ssn: ssn.into(),
        date_of_birth: dob,
        notes: notes.map(Into::into),
    };
    vec![
        p(
            1,
            1,
            "Ann Smith",
            "ann.smith@example.org",
            "123-45-6789",
            d(1980, 2, 29),
            Some("Penicillin allergy. Asthma, well controlled."),
        ),
        p(
            2,
            1,
            "Bob Jones",
            "bob.jones@example.org",
            "987-65-4321",
            d(1975, 7, 4),
            None,
        ),
        p(
            3,
            2,
            "Chen Wei",
            "chen.wei@example.com",
            "555-12-3456",
            d(1992, 11, 30),
            Some("Type 1 diabetes; insulin pump since 2019."),
        ),
        p(
            4,
            2,
            "Dolores Ortega",
            "d.ortega@example.com",
            "222-33-4444",
            d(1964, 1, 15),
            Some("Post-op follow-up in 6 weeks."),
        ),
    ]
}

/// The key store over the development KEK file. A missing file is created only while the key
/// table holds no keys: keys wrapped by a lost KEK can never be unwrapped by a new one, so that
/// case is an explicit error and nothing is created.
fn key_store(db: &mut Db, kek: &Path) -> AppResult<(KeyStore<LocalKek>, bool)> {
    let created = !kek.exists();
    if created {
        // No key table yet (a fresh database) counts as no keys.
        let wrapped: i64 = with_conn!(db, conn => encrypted_types_keys::table
            .count()
            .get_result(conn))
        .unwrap_or(0);
        if wrapped > 0 {
            return Err(format!(
                "the KEK file {} is missing, but the key table holds {wrapped} keys wrapped by a \
                 KEK: restore the file (a new KEK cannot unwrap them); nothing was created",
                kek.display()
            )
            .into());
        }
    }
    // The demo's own rule stands in for `keys init`: create only what cannot hide a lost KEK.
    let provider = if created {
        LocalKek::create(kek)?
    } else {
        LocalKek::open(kek)?
    };
    Ok((KeyStore::new(provider), created))
}

/// Loads the key table, unwraps and self-tests every key, and installs the keyring.
fn load_keys(db: &mut Db, kek: &Path) -> AppResult<KeyStore<LocalKek>> {
    let (store, _) = key_store(db, kek)?;
    with_conn!(db, conn => store.load_and_install(conn))?;
    Ok(store)
}

/// Creates a clinic's keys unless it has some.
fn ensure_clinic(db: &mut Db, store: &KeyStore<LocalKek>, clinic: i64) -> AppResult<bool> {
    let tenant = clinic.to_string();
    let existing: i64 = with_conn!(db, conn => encrypted_types_keys::table
        .filter(encrypted_types_keys::tenant.eq(&tenant))
        .count()
        .get_result(conn))?;
    if existing > 0 {
        return Ok(false);
    }
    with_conn!(db, conn => store.create_tenant(conn, Some(&TenantId::from(clinic))))?;
    Ok(true)
}

fn hex_short(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    if h.len() > 72 {
        format!("{}… ({} bytes)", &h[..72], bytes.len())
    } else {
        format!("{h} ({} bytes)", bytes.len())
    }
}

pub(crate) fn demo(db: &mut Db, url: &str, kek: &Path) -> AppResult<()> {
    out!(
        "== clinic demo on {} ({})",
        db.backend(),
        encrypted_types::cli::redact_url(url)
    );
    let (store, created) = key_store(db, kek)?;
    out!(
        "development KEK: {} ({})",
        kek.display(),
        if created {
            "created now, mode 0600"
        } else {
            "found"
        }
    );
    for clinic in [1, 2] {
        let new = ensure_clinic(db, &store, clinic)?;
        out!(
            "clinic {clinic}: {}",
            if new {
                "created its data key and blind-index key"
            } else {
                "keys already exist"
            }
        );
    }
    let report = with_conn!(db, conn => store.load_and_install(conn))?;
    out!(
        "keyring loaded: {} data keys and {} blind-index keys unwrapped and self-tested",
        report.data_keys,
        report.blind_index_keys
    );

    let mut inserted = 0;
    for p in samples() {
        let exists: i64 = with_conn!(db, conn => patients::table.filter(patients::id.eq(p.id)).count().get_result(conn))?;
        if exists == 0 {
            with_conn!(db, conn => diesel::insert_into(patients::table).values(&p).execute(conn))?;
            inserted += 1;
        }
    }
    out!(
        "sample patients: {inserted} inserted, {} already present",
        samples().len() - inserted
    );

    let query = "  ANN.Smith@Example.org ";
    let found = with_conn!(db, conn => Patient::find_by_email(conn, &1, query))?;
    out!(
        "\nfind --clinic 1 --email {query:?}: {} match through the email's blind index",
        found.len()
    );
    let Some(ann) = found.first() else {
        return Err("the demo patient was not found".into());
    };
    let found =
        with_conn!(db, conn => Patient::find_by_ssn4_dob(conn, &1, ("6789", &ann.date_of_birth)))?;
    out!(
        "find --clinic 1 --ssn4 <her last four SSN digits> --dob {}: {} match through the \
         compound index of the SSN's last four digits and the date of birth",
        ann.date_of_birth,
        found.len()
    );
    print_stored(db, ann.id)?;
    // The application reads plaintext field by field; the model's own `Debug` (what a log
    // line would print) redacts every encrypted field, and so does this output for the SSN
    // and the notes, which a demo has no reason to show.
    out!("\nWhat the application reads:");
    print_read(ann, false);
    out!("\nWhat `{{:?}}` of the model prints (a log line):\n  {ann:?}");
    out!("\nNo name, email or SSN above is stored in clear: try `grep -a 'Ann Smith' clinic.db`.");
    swap_demo(db)
}

/// What a database writer who swaps values between rows gets: Bob's row with Ann's name
/// copied in does not open, because every value is bound to its patient's id. The row is
/// restored afterwards, so the demo can run again.
fn swap_demo(db: &mut Db) -> AppResult<()> {
    let (ann, bob) = (1_i64, 2_i64);
    let name_of = |db: &mut Db, id: i64| -> AppResult<Vec<u8>> {
        Ok(with_conn!(db, conn => patients::table.find(id).select(patients::name).first(conn))?)
    };
    let (ann_name, bob_name) = (name_of(db, ann)?, name_of(db, bob)?);
    with_conn!(db, conn => diesel::update(patients::table.find(bob)).set(patients::name.eq(&ann_name)).execute(conn))?;
    let read: QueryResult<Patient> =
        with_conn!(db, conn => patients::table.find(bob).select(Patient::as_select()).first(conn));
    with_conn!(db, conn => diesel::update(patients::table.find(bob)).set(patients::name.eq(&bob_name)).execute(conn))?;
    out!("\nTamper test: patient {ann}'s sealed name copied into patient {bob}'s row, then read:");
    match read {
        Err(e) => match encrypted_types::Error::from_diesel(&e) {
            Some(err @ encrypted_types::Error::AuthenticationFailed) => out!(
                "  refused: {err} (the value is bound to patient {ann}'s row; restored afterwards)"
            ),
            _ => return Err(format!("the swapped row failed for another reason: {e}").into()),
        },
        Ok(_) => return Err("the swapped row opened: row binding is broken".into()),
    }
    Ok(())
}

/// Prints the bytes the database holds for one patient.
fn print_stored(db: &mut Db, id: i64) -> AppResult<()> {
    type Raw = (
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let raw: Raw = with_conn!(db, conn => patients::table
        .find(id)
        .select((
            patients::name,
            patients::email,
            patients::email_bidx,
            patients::ssn,
            patients::ssn_bidx,
            patients::date_of_birth,
            patients::notes,
            patients::ssn4_dob_bidx,
        ))
        .first(conn))?;
    out!(
        "\nWhat the database stores for patient {id} (version ‖ suite ‖ key id ‖ nonce ‖ ciphertext ‖ tag):"
    );
    out!("  name           {}", hex_short(&raw.0));
    out!("  email          {}", hex_short(&raw.1));
    out!("  email_bidx     {}", hex_short(&raw.2));
    out!("  ssn            {}", hex_short(&raw.3));
    out!("  ssn_bidx       {}", hex_short(&raw.4));
    out!("  date_of_birth  {}", hex_short(&raw.5));
    out!(
        "  notes          {}",
        raw.6
            .as_deref()
            .map_or_else(|| "NULL".to_owned(), hex_short)
    );
    out!(
        "  ssn4_dob_bidx  {}",
        raw.7
            .as_deref()
            .map_or_else(|| "NULL".to_owned(), hex_short)
    );
    Ok(())
}

pub(crate) fn add(db: &mut Db, kek: &Path, mut patient: Patient) -> AppResult<()> {
    let (store, _) = key_store(db, kek)?;
    ensure_clinic(db, &store, patient.clinic_id)?;
    with_conn!(db, conn => store.load_and_install(conn))?;
    let max: Option<i64> =
        with_conn!(db, conn => patients::table.select(diesel::dsl::max(patients::id)).first(conn))?;
    patient.id = max.unwrap_or(0) + 1;
    with_conn!(db, conn => diesel::insert_into(patients::table).values(&patient).execute(conn))?;
    out!(
        "added patient {} to clinic {}",
        patient.id,
        patient.clinic_id
    );
    Ok(())
}

/// What `find` looks a patient up by.
pub(crate) enum By {
    Email(String),
    /// The last four SSN digits (or a whole SSN) and the date of birth.
    Ssn4Dob(String, chrono::NaiveDate),
}

pub(crate) fn find(db: &mut Db, kek: &Path, clinic: i64, by: &By) -> AppResult<()> {
    load_keys(db, kek)?;
    let (found, what) = match by {
        By::Email(email) => (
            with_conn!(db, conn => Patient::find_by_email(conn, &clinic, email.as_str()))?,
            format!("email {email:?}"),
        ),
        // The digits are not echoed: they are part of an SSN.
        By::Ssn4Dob(ssn4, dob) => (
            with_conn!(db, conn => Patient::find_by_ssn4_dob(conn, &clinic, (ssn4.as_str(), dob)))?,
            format!("those last four SSN digits and date of birth {dob}"),
        ),
    };
    out!("{} patient(s) of clinic {clinic} with {what}", found.len());
    for p in found {
        print_read(&p, false);
    }
    Ok(())
}

/// Prints what the application reads, field by field: printed on purpose, never through the
/// model's `Debug` (which redacts every encrypted field). `show` asks for everything; other
/// commands keep the SSN and notes to themselves.
fn print_read(p: &Patient, everything: bool) {
    let withheld = |s: &str| format!("({} characters, not printed)", s.chars().count());
    out!("  id             {}  (clinic {})", p.id, p.clinic_id);
    out!("  name           {}", p.name);
    out!("  email          {}", p.email);
    out!(
        "  ssn            {}",
        if everything {
            p.ssn.clone()
        } else {
            withheld(&p.ssn)
        }
    );
    out!("  date_of_birth  {}", p.date_of_birth);
    out!(
        "  notes          {}",
        match &p.notes {
            None => "NULL".to_owned(),
            Some(n) if everything => n.clone(),
            Some(n) => withheld(n),
        }
    );
}

pub(crate) fn show(db: &mut Db, kek: &Path, id: i64) -> AppResult<()> {
    load_keys(db, kek)?;
    let p: Patient =
        with_conn!(db, conn => patients::table.find(id).select(Patient::as_select()).first(conn))?;
    print_stored(db, id)?;
    out!("\nDecrypted:");
    print_read(&p, true);
    Ok(())
}

pub(crate) fn list(db: &mut Db, kek: &Path) -> AppResult<()> {
    load_keys(db, kek)?;
    let ids: Vec<i64> = with_conn!(db, conn => patients::table.select(patients::id).order(patients::id).load(conn))?;
    for id in ids {
        // One at a time, so a shredded clinic's rows are reported rather than failing the list.
        let row: QueryResult<Patient> = with_conn!(db, conn => patients::table.find(id).select(Patient::as_select()).first(conn));
        match row {
            Ok(p) => out!(
                "{:>4}  clinic {:<3} {:<20} {:<28} {}",
                p.id,
                p.clinic_id,
                p.name,
                p.email,
                p.date_of_birth
            ),
            Err(e) => out!(
                "{id:>4}  unreadable: {}",
                encrypted_types::Error::from_diesel(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string)
            ),
        }
    }
    Ok(())
}

/// The library's operator toolkit (`keys`, `jobs`, `inventory`, `verify`, `check`, `schema`),
/// mounted for the patients model over the development KEK.
pub(crate) fn toolkit(
    db: &mut Db,
    kek: &Path,
    command: &encrypted_types::cli::Command,
) -> AppResult<std::process::ExitCode> {
    let (store, _) = key_store(db, kek)?;
    let result = with_conn!(db, conn => encrypted_types::cli::execute(conn, &store, &[Patient::MODEL], command));
    Ok(match result {
        Ok(outcome) => std::process::ExitCode::from(outcome.code()),
        Err(e) => {
            // The toolkit's exit codes: 2 for arguments that do not fit, 1 otherwise.
            encrypted_types::cli::fail(&e);
            std::process::ExitCode::from(e.exit_code())
        }
    })
}
