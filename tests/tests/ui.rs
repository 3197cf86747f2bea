//! Compile-fail tests: every misuse the derive rejects, with the exact message and span
//! (`tests/ui/*.stderr`). The messages depend on the compiler version, so these run on the
//! toolchain pinned in `rust-toolchain.toml`; regenerate with `TRYBUILD=overwrite`.

#[test]
fn misuse_is_a_spanned_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
