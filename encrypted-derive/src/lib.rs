//! `#[derive(Encrypted)]` for `encrypted-types`; use it through `encrypted_types::Encrypted`.
//!
//! The macro runs in four steps, one module each: `attr` parses the `#[encrypted(...)]`
//! attributes, `ast` builds the model, `valid` checks it, `expand` writes the code. Every
//! problem becomes a `compile_error!` spanned at the offending token with a `help:` line; the
//! macro itself never panics.
#![forbid(unsafe_code)]

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// See `encrypted_types::Encrypted` (the derive) for the attributes and what is generated.
#[proc_macro_derive(Encrypted, attributes(encrypted, blind_index, diesel))]
pub fn derive_encrypted(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The whole derive on `proc_macro2` tokens, so it can be unit- and snapshot-tested.
fn derive(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let model = ast::Model::from_input(input)?;
    valid::check(&model)?;
    Ok(expand::expand(&model))
}

#[cfg(test)]
mod tests;
