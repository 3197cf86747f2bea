//! The demo a new user runs first: in an empty directory, with no server and no configuration,
//! twice in a row; and the SQLite file it leaves holds none of the demo's plaintext.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

fn clinic(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clinic"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "clinic {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_demo_runs_twice_and_stores_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let first = clinic(dir.path(), &["demo"]);
    assert!(first.contains("created now"), "{first}");
    assert!(first.contains("4 inserted"), "{first}");
    assert!(
        first.contains("1 match through the email's blind index"),
        "{first}"
    );
    // What the demo prints reads as the application reads, field by field; the model's
    // `Debug` (what a log line would hold) and the output carry no SSN and no note text.
    assert!(
        first.contains("Ann Smith") && first.contains("<redacted>"),
        "{first}"
    );
    for secret in ["123-45-6789", "123456789", "Penicillin", "Asthma"] {
        assert!(
            !first.contains(secret),
            "the demo printed {secret:?}:\n{first}"
        );
    }
    let debug_line = first
        .lines()
        .find(|l| l.contains("Patient {"))
        .unwrap_or_else(|| panic!("no Debug line:\n{first}"));
    assert!(!debug_line.contains("Ann"), "{debug_line}");
    // The tamper test: a name copied into another patient's row is refused, and restored.
    assert!(
        first.contains("refused: authentication failed (the value is bound to patient 1's row"),
        "{first}"
    );
    let second = clinic(dir.path(), &["demo"]);
    assert!(second.contains("0 inserted, 4 already present"), "{second}");
    assert!(
        second.contains("refused: authentication failed"),
        "{second}"
    );
    assert!(second.contains("1 match"), "{second}");

    let db = std::fs::read(dir.path().join("clinic.db")).unwrap();
    assert!(db.len() > 4096);
    for plaintext in [
        "Ann Smith",
        "ann.smith@example.org",
        "123-45-6789",
        "123456789",
        "Bob Jones",
        "bob.jones@example.org",
        "987-65-4321",
        "Chen Wei",
        "chen.wei@example.com",
        "555-12-3456",
        "Dolores Ortega",
        "d.ortega@example.com",
        "222-33-4444",
        "Penicillin",
        "diabetes",
        "Post-op",
    ] {
        assert!(
            !db.windows(plaintext.len())
                .any(|w| w == plaintext.as_bytes()),
            "{plaintext:?} is in clinic.db"
        );
    }
    // The other commands on the same database.
    let found = clinic(
        dir.path(),
        &["find", "--clinic", "2", "--email", " Chen.Wei@EXAMPLE.com"],
    );
    assert!(
        found.contains("1 patient(s)") && found.contains("Chen Wei"),
        "{found}"
    );
    let added = clinic(
        dir.path(),
        &[
            "add",
            "--clinic",
            "2",
            "--name",
            "Eve Adams",
            "--email",
            "eve@example.net",
            "--ssn",
            "111-22-3333",
            "--dob",
            "2001-09-09",
        ],
    );
    assert!(added.contains("added patient 5"), "{added}");
    let list = clinic(dir.path(), &["list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    let stats = clinic(dir.path(), &["key-stats"]);
    assert!(stats.contains("active"), "{stats}");
    // Rotation: new keys, every value re-sealed, the retired keys hold no rows.
    let rotated = clinic(dir.path(), &["rotate", "--batch", "2"]);
    assert!(
        rotated.contains("re-sealed 2") && rotated.contains("finished: true"),
        "{rotated}"
    );
    let retired: Vec<&str> = rotated
        .lines()
        // The key-stats table rows: they start with the key id.
        .filter(|l| {
            l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(" retired ")
        })
        .collect();
    assert_eq!(retired.len(), 2, "{rotated}");
    assert!(
        retired.iter().all(|l| l.trim_end().ends_with(" 0")),
        "rows left on a retired key:\n{rotated}"
    );
    let reindexed = clinic(dir.path(), &["rotate-index"]);
    assert!(
        reindexed.contains("rewrote 0 blind indexes") && reindexed.contains("finished: true"),
        "{reindexed}"
    );
    let encrypted = clinic(dir.path(), &["encrypt-column", "--column", "notes"]);
    assert!(
        encrypted.contains("0 plaintext values before") && encrypted.contains("0 left"),
        "{encrypted}"
    );
    let shred = clinic(dir.path(), &["shred-clinic", "--clinic", "1"]);
    assert!(
        shred.contains("2 patient row(s) can never be read again"),
        "{shred}"
    );
    let list = clinic(dir.path(), &["list"]);
    assert_eq!(list.matches("unreadable").count(), 2, "{list}");
    assert!(list.contains("destroyed"), "{list}");
    assert!(list.contains("Eve Adams"), "{list}");
}

/// A missing KEK file with a key table that holds keys wrapped by it: an explicit error, and no
/// new KEK is created (one could never unwrap those keys).
#[test]
fn a_missing_kek_file_is_an_error_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    clinic(dir.path(), &["demo"]);
    let kek = dir.path().join("clinic.kek");
    std::fs::remove_file(&kek).unwrap();
    for args in [&["demo"][..], &["list"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_clinic"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded without its KEK");
        assert!(
            stderr.contains("KEK file") && stderr.contains("missing") && stderr.contains("restore"),
            "{stderr}"
        );
        assert!(!kek.exists(), "a new KEK was created by {args:?}");
    }
}

/// `clinic verify` after one byte of a stored value is flipped with the `sqlite3` shell, as a
/// database writer would: it exits non-zero and names the row, the column and the reason.
#[test]
fn verify_names_a_byte_flipped_with_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    clinic(dir.path(), &["demo"]);
    let clean = clinic(dir.path(), &["verify"]);
    assert!(
        clean.contains("opened and checked, 0 do not open"),
        "{clean}"
    );

    let sqlite3 = |sql: &str| {
        let out = Command::new("sqlite3")
            .arg(dir.path().join("clinic.db"))
            .arg(sql)
            .output()
            .expect("the sqlite3 shell (Debian package sqlite3)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let hex = sqlite3("SELECT hex(email) FROM patients WHERE id = 2");
    assert!(hex.len() > 68, "{hex}");
    // Flip the lowest bit of the last byte (the tag's).
    let (head, last) = hex.split_at(hex.len() - 2);
    let flipped = format!("{head}{:02X}", u8::from_str_radix(last, 16).unwrap() ^ 1);
    sqlite3(&format!(
        "UPDATE patients SET email = X'{flipped}' WHERE id = 2"
    ));

    let out = Command::new(env!("CARGO_BIN_EXE_clinic"))
        .arg("verify")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !out.status.success(),
        "verify passed a tampered value:\n{stdout}"
    );
    assert!(
        stdout.contains("patients row 2, column email: does not open (AuthenticationFailed)"),
        "{stdout}"
    );
    assert!(stdout.contains(", 1 do not open"), "{stdout}");
    assert!(
        !stdout.contains("@example"),
        "no plaintext in the report:\n{stdout}"
    );
}
