//! The key-table and job-table migrations exist twice: in `encrypted-types/migrations/`, where
//! the published crate embeds them (`KeyStore::run_migrations`), and at the top level, where
//! Diesel CLI users copy them from. The two trees must be identical, file for file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_embedded_migrations_are_the_ones_users_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let embedded = tree(&root.join("encrypted-types/migrations"));
    let copied = tree(&root.join("migrations"));
    assert!(embedded.len() >= 18, "{:?}", embedded.keys());
    assert_eq!(
        embedded.keys().collect::<Vec<_>>(),
        copied.keys().collect::<Vec<_>>(),
        "the same migrations in both places"
    );
    for (name, sql) in &embedded {
        assert!(
            copied.get(name) == Some(sql),
            "{name} differs between the two copies"
        );
    }
}
