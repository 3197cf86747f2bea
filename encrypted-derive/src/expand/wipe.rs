//! `#[encrypted(zeroize)]`: the model wipes its plaintext on drop.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Model;

/// `#[encrypted(zeroize)]`: `wipe_plaintext`, and a `Drop` that calls it. A type with `Drop`
/// cannot have fields moved out of it (E0509): users clone or `std::mem::take` them instead.
pub(super) fn wipe_impl(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let ident = model.ident;
    let vis = model.vis;
    let wipes = model.encrypted_fields().map(|(f, e)| {
        let field = f.ident;
        if e.optional {
            quote! {
                if let ::core::option::Option::Some(v) = &mut self.#field {
                    #et::Plaintext::wipe(v);
                }
            }
        } else {
            quote! { #et::Plaintext::wipe(&mut self.#field); }
        }
    });
    quote! {
        impl #ident {
            /// Overwrites the plaintext of every encrypted field (what `drop` does).
            #[allow(dead_code)]
            #vis fn wipe_plaintext(&mut self) {
                #(#wipes)*
            }
        }
        impl ::core::ops::Drop for #ident {
            fn drop(&mut self) {
                self.wipe_plaintext();
            }
        }
    }
}
