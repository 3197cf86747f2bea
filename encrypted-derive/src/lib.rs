//! `#[derive(Encrypted)]` for `encrypted-types`.
//!
//! The derive is being built (parse → model → validate → expand); until it lands, declare
//! column contexts with `encrypted_types::column_context!` and use `Encrypted<T, C>` fields with
//! Diesel's own derives.
#![forbid(unsafe_code)]
