//! The model's redacted `Debug`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Model;

/// `Debug` for the model: clear fields as they are, encrypted ones as `<redacted>` (`None` too:
/// whether a note exists is the database's to tell, not a log line's).
pub(super) fn debug_impl(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let ident = model.ident;
    let (impl_generics, ty_generics, where_clause) = model.input.generics.split_for_impl();
    let name = ident.to_string();
    let fields = model.fields.iter().map(|f| {
        let field = f.ident;
        let label = crate::ast::sql_name(field);
        if f.encrypted.is_some() {
            quote! { .field(#label, &#et::Redacted) }
        } else {
            quote! { .field(#label, &self.#field) }
        }
    });
    quote! {
        impl #impl_generics ::core::fmt::Debug for #ident #ty_generics #where_clause {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#name) #(#fields)* .finish()
            }
        }
    }
}
