//! Checks: compile-time checks that the model's columns match the Diesel table.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Ident;

use crate::ast::Model;

/// Checks that `table!` declares every column the model writes, binary where it holds sealed
/// bytes, with the error at the field. Each name resolves to the table's column through the
/// inner block's glob import, or, when `table!` lacks it, to the local stand-in declared
/// outside it, which is no column: the bound then fails with `ColumnOf`'s message.
pub(super) fn column_checks(
    model: &Model<'_>,
    et: &TokenStream,
    diesel: &TokenStream,
) -> TokenStream {
    let Some(table) = &model.table else {
        return TokenStream::new();
    };
    let mut standins = Vec::new();
    let mut checks = Vec::new();
    for (f, e) in model.encrypted_fields() {
        let span = f.ident.span();
        let mut cols = vec![(f.column.clone(), true)];
        if let Some(index) = &e.index {
            cols.push((index.column.clone(), true));
        }
        if let Some(legacy) = &e.migrate_from {
            cols.push((legacy.clone(), false));
        }
        for (col, binary) in cols {
            standins.push(quote! {
                struct #col;
                impl #diesel::Expression for #col {
                    type SqlType = #diesel::sql_types::Binary;
                }
            });
            let check = if binary {
                quote::quote_spanned!(span=> #et::binary_column::<#table::table, #col>();)
            } else {
                quote::quote_spanned!(span=> #et::column::<#table::table, #col>();)
            };
            checks.push(check);
        }
    }
    for c in &model.compounds {
        let col = &c.index.column;
        let span = c.name.as_ref().map_or(col.span(), Ident::span);
        standins.push(quote! {
            struct #col;
            impl #diesel::Expression for #col {
                type SqlType = #diesel::sql_types::Binary;
            }
        });
        checks.push(quote::quote_spanned!(span=> #et::binary_column::<#table::table, #col>();));
    }
    quote! {
        #[allow(dead_code, non_camel_case_types, unused_imports)]
        fn __columns() {
            #(#standins)*
            {
                use #table::*;
                #(#checks)*
            }
        }
    }
}
