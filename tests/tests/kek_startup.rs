//! Opening a KEK never creates one: the toolkit mounted in a binary of its own (`toolkit`),
//! run as a fresh process in an empty directory. `--help` touches nothing, a command other than
//! `keys init` with no KEK file fails naming the file and creates nothing, `keys init` creates
//! it, and a KEK file lost afterwards is an error, never a new KEK.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

fn toolkit(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_toolkit"))
        .current_dir(dir)
        .env_remove("TOOLKIT_KEK")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("app.db").display()),
        )
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_command_but_keys_init_creates_a_kek_file() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("app.kek");

    for help in [
        &["--help"][..],
        &["keys", "--help"],
        &["keys", "list", "--help"],
    ] {
        let out = toolkit(dir.path(), help);
        assert_eq!(out.status.code(), Some(0), "{help:?}: {}", stderr(&out));
        assert!(!kek.exists(), "{help:?} created a KEK file");
    }

    // Any command that needs keys, before `keys init`: refused, naming the file.
    let out = toolkit(dir.path(), &["keys", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("local KEK file app.kek: no such file; opening never creates a KEK"),
        "{err}"
    );
    assert!(!kek.exists(), "keys list created a KEK file");

    let out = toolkit(dir.path(), &["keys", "init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(kek.exists(), "keys init creates the KEK file");
    let out = toolkit(dir.path(), &["keys", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listed.matches("\"key_id\"").count(),
        3,
        "wrapping, data, blind-index: {listed}"
    );
    // The application's table does not exist here: the list says so instead of failing.
    assert!(
        stderr(&out).contains("note: table et_patients does not exist"),
        "{}",
        stderr(&out)
    );

    // The KEK is lost: every command, `verify` and `keys init` included, fails naming it; none
    // replaces it (the key table holds keys only the lost KEK unwraps).
    std::fs::rename(&kek, dir.path().join("moved.kek")).unwrap();
    for args in [
        &["keys", "list"][..],
        &["verify"],
        &["check", "--max-key-age", "90d"],
        &["keys", "init"],
    ] {
        let out = toolkit(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("local KEK file app.kek: no such file"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!kek.exists(), "{args:?} created a KEK file");
    }
}
