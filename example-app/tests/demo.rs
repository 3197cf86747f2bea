//! The demo a new user runs first: in an empty directory, with no server and no configuration,
//! twice in a row; and the SQLite file it leaves holds none of the demo's plaintext.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

/// Runs `clinic` in `dir` (stdin closed: no terminal): exit code, stdout, stderr.
fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clinic"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `clinic` and asserts it succeeded; its stdout.
fn clinic(dir: &std::path::Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(dir, args);
    assert_eq!(code, 0, "clinic {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The `sqlite3` shell on the directory's `clinic.db`, as a database writer would use it.
fn sqlite3(dir: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(dir.join("clinic.db"))
        .arg(sql)
        .output()
        .expect("the sqlite3 shell (Debian package sqlite3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
    assert!(
        first.contains("1 match through the compound index of the SSN's last four digits"),
        "{first}"
    );
    // What the demo prints reads as the application reads, field by field; the model's
    // `Debug` (what a log line would hold) and the output carry no SSN and no note text.
    assert!(
        first.contains("Ann Smith") && first.contains("<redacted>"),
        "{first}"
    );
    // (Not "6789" alone over the whole output: four hex digits of a ciphertext may be that.)
    assert!(
        first
            .lines()
            .filter(|l| l.contains("--ssn4"))
            .all(|l| !l.contains("6789")),
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
    // By the last four SSN digits (given whole, or alone) and the date of birth: the compound
    // index. The digits are not echoed.
    let found = clinic(
        dir.path(),
        &[
            "find",
            "--clinic",
            "1",
            "--ssn4",
            "6789",
            "--dob",
            "1980-02-29",
        ],
    );
    assert!(
        found.contains("1 patient(s)") && found.contains("Ann Smith") && !found.contains("6789"),
        "{found}"
    );
    let none = clinic(
        dir.path(),
        &[
            "find",
            "--clinic",
            "1",
            "--ssn4",
            "6789",
            "--dob",
            "1980-03-01",
        ],
    );
    assert!(none.contains("0 patient(s)"), "{none}");
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
    let stats = clinic(dir.path(), &["keys", "list"]);
    assert!(stats.contains("active"), "{stats}");
    // Rotation: new keys, every value re-sealed, the retired keys hold no values.
    let rotated = clinic(dir.path(), &["keys", "rotate"]);
    assert!(rotated.contains("2 key(s) rotated"), "{rotated}");
    let resealed = clinic(dir.path(), &["jobs", "rotate", "--batch", "2"]);
    assert!(
        resealed.contains("wrote 23 values") && resealed.contains("finished: true"),
        "{resealed}"
    );
    let stats = clinic(dir.path(), &["keys", "list"]);
    let retired: Vec<&str> = stats.lines().filter(|l| l.contains(" retired ")).collect();
    assert_eq!(retired.len(), 2, "{stats}");
    assert!(
        retired.iter().all(|l| l.trim_end().ends_with(" 0")),
        "values left on a retired key:\n{stats}"
    );
    let reindexed = clinic(dir.path(), &["jobs", "reindex"]);
    assert!(
        reindexed.contains("wrote 0 values") && reindexed.contains("finished: true"),
        "{reindexed}"
    );
    let encrypted = clinic(dir.path(), &["jobs", "encrypt-column", "--column", "notes"]);
    assert!(
        encrypted.contains("wrote 0 values") && encrypted.contains("0 left"),
        "{encrypted}"
    );
    // Destructive commands ask at a terminal; without one they need --yes.
    let (code, _, stderr) = run(dir.path(), &["keys", "shred-tenant", "--tenant", "1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    let shred = clinic(
        dir.path(),
        &["keys", "shred-tenant", "--tenant", "1", "--yes"],
    );
    assert!(
        shred.contains("2 row(s) can never be read again"),
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

/// The operator's day in an empty directory, through the toolkit the app mounts: keys, a
/// tenant, patients, a rotation and its job, the inventory, verify; then one byte flipped with
/// the `sqlite3` shell, as a database writer would, and verify names the row, the column and
/// the reason, and exits 4.
#[test]
fn the_toolkit_rotates_inventories_and_verifies_then_names_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = clinic(d, &["keys", "init"]);
    assert!(init.contains("key table ready"), "{init}");
    clinic(d, &["keys", "create-tenant", "--tenant", "7"]);
    let (code, _, stderr) = run(d, &["keys", "create-tenant", "--tenant", "7"]);
    assert_eq!(code, 2, "a second create-tenant must refuse: {stderr}");
    assert!(stderr.contains("already has keys"), "{stderr}");
    for (name, email) in [("Ann Lee", "ann@clinic.test"), ("Bo Kim", "bo@clinic.test")] {
        clinic(
            d,
            &[
                "add",
                "--clinic",
                "7",
                "--name",
                name,
                "--email",
                email,
                "--ssn",
                "123-45-6789",
                "--dob",
                "1990-01-02",
            ],
        );
    }
    let before = clinic(d, &["keys", "list", "--json"]);
    let tenant_key = |json: &str, state: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["tenant"] == "7" && k["purpose"] == "data" && k["state"] == state)
            .map(|k| k["key_id"].as_u64().unwrap())
            .collect()
    };
    let old = tenant_key(&before, "active");
    assert_eq!(old.len(), 1, "{before}");
    clinic(d, &["keys", "rotate", "--tenant", "7"]);
    // Without a terminal: one JSON line per committed batch, then the summary.
    let job = clinic(d, &["jobs", "rotate", "--batch", "1"]);
    let batches: Vec<serde_json::Value> = job
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        batches.len(),
        8,
        "2 rows x 4 columns (notes NULL), one per batch:\n{job}"
    );
    assert!(batches.iter().all(|b| b["event"] == "batch"), "{job}");
    assert!(job.contains("finished: true"), "{job}");
    // The inventory, counted in SQL: every value on the new key, none on the retired one.
    let inv: serde_json::Value =
        serde_json::from_str(&clinic(d, &["inventory", "--json"])).unwrap();
    let rows = inv["inventory"].as_array().unwrap();
    let on = |key: u64| -> u64 {
        rows.iter()
            .filter(|r| r["key_id"] == key)
            .map(|r| r["values"].as_u64().unwrap())
            .sum()
    };
    let after = clinic(d, &["keys", "list", "--json"]);
    let new = tenant_key(&after, "active");
    assert_eq!(tenant_key(&after, "retired"), old, "{after}");
    assert_eq!(on(old[0]), 0, "{inv}");
    assert_eq!(on(new[0]), 8, "2 rows x 4 columns: {inv}");
    let status = clinic(d, &["jobs", "status"]);
    assert!(
        status.contains("rotate") && status.contains("5/5"),
        "{status}"
    );
    let clean = clinic(d, &["verify"]);
    assert!(
        clean.contains("8 values stored, 8 opened and checked, 0 do not open"),
        "{clean}"
    );
    // A sealed SQLite count, independent of the library: the retired key's id bytes appear in
    // no stored header.
    let old_hex = format!("{:08X}", old[0]);
    let n = sqlite3(
        d,
        &format!(
            "SELECT COUNT(*) FROM patients WHERE hex(substr(name, 3, 4)) = '{old_hex}' OR hex(substr(email, 3, 4)) = '{old_hex}'"
        ),
    );
    assert_eq!(n, "0");

    let hex = sqlite3(d, "SELECT hex(email) FROM patients WHERE id = 2");
    assert!(hex.len() > 68, "{hex}");
    // Flip the lowest bit of the last byte (the tag's).
    let (head, last) = hex.split_at(hex.len() - 2);
    let flipped = format!("{head}{:02X}", u8::from_str_radix(last, 16).unwrap() ^ 1);
    sqlite3(
        d,
        &format!("UPDATE patients SET email = X'{flipped}' WHERE id = 2"),
    );
    let (code, stdout, _) = run(d, &["verify"]);
    assert_eq!(code, 4, "verify passed a tampered value:\n{stdout}");
    assert!(
        stdout.contains("patients row 2, column email: does not authenticate (tampered or copied) (AuthenticationFailed)"),
        "{stdout}"
    );
    assert!(stdout.contains(", 1 do not open"), "{stdout}");
    assert!(
        !stdout.contains("@clinic"),
        "no plaintext in the report:\n{stdout}"
    );
}

/// `check --max-key-age` for cron: exits 4 naming a data key older than the policy, and exits 0
/// again after a rotation. A key made to look older or younger by SQL is not believed: its
/// timestamps are under the record's MAC, so `check` reports that the keys do not load.
#[test]
fn check_flags_a_data_key_older_than_the_policy_until_it_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    clinic(d, &["keys", "init", "--tenants-only"]);
    clinic(d, &["keys", "create-tenant", "--tenant", "3"]);
    let ok = clinic(d, &["check", "--max-key-age", "90d"]);
    assert!(ok.starts_with("ok:"), "{ok}");
    let id = sqlite3(
        d,
        "SELECT key_id FROM encrypted_types_keys WHERE tenant = '3' AND purpose = 'data'",
    );
    let shift = |days: i64| {
        sqlite3(
            d,
            &format!(
                "UPDATE encrypted_types_keys SET created_at = created_at + {days} * 86400 WHERE key_id = {id}"
            ),
        )
    };
    shift(-91);
    let (code, stdout, stderr) = run(d, &["check", "--max-key-age", "90d"]);
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("the keys do not load: key {id} in the key table is unusable: its record does not authenticate")),
        "{stdout}"
    );
    shift(91);
    clinic(d, &["check", "--max-key-age", "90d"]);
    // Genuinely older than a policy of one second.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let (code, stdout, stderr) = run(d, &["check", "--max-key-age", "1s"]);
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("data key {id} (tenant 3) is ")),
        "{stdout}"
    );
    // A longer policy is met.
    clinic(d, &["check", "--max-key-age", "100d"]);
    clinic(d, &["keys", "rotate", "--tenant", "3"]);
    let (code, stdout, _) = run(d, &["check", "--max-key-age", "90d", "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], true, "{stdout}");
    // A KEK that cannot unwrap the keys (the wrong one, an unreachable KMS) is a finding.
    use std::os::unix::fs::PermissionsExt as _;
    let other = d.join("other.kek");
    std::fs::write(&other, [7u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stdout, stderr) = run(d, &["--kek", "other.kek", "check", "--max-key-age", "90d"]);
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(stdout.contains("the keys do not load"), "{stdout}");
}

/// Under a pseudo-terminal (`script`), `jobs rotate` draws a progress display instead of
/// printing JSON lines.
#[test]
fn jobs_draw_progress_at_a_terminal_and_json_lines_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    clinic(d, &["keys", "create-tenant", "--tenant", "1"]);
    for i in 0..3 {
        let email = format!("p{i}@clinic.test");
        clinic(
            d,
            &[
                "add",
                "--clinic",
                "1",
                "--name",
                "P",
                "--email",
                &email,
                "--ssn",
                "1",
                "--dob",
                "2000-01-01",
            ],
        );
    }
    clinic(d, &["keys", "rotate"]);
    let cmd = format!("{} jobs rotate --batch 1", env!("CARGO_BIN_EXE_clinic"));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(d)
        .env_remove("DATABASE_URL")
        .output()
        .expect("script(1), from util-linux");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        !tty.contains("\"event\":\"batch\""),
        "JSON lines at a terminal:\n{tty}"
    );
    assert!(tty.contains("values written"), "no progress drawn:\n{tty}");
    assert!(tty.contains("finished: true"), "{tty}");
}
