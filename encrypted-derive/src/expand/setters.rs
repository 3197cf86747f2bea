//! Setters: the `set_<field>` changesets for one encrypted field.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::ast::Model;

use super::{bound_to, index_ty, sealed_ty};

/// `Model::set_<field>(tenant, value)`: a changeset of one encrypted field that writes its
/// value, its blind index and (during a migration) NULL into its legacy column, together.
pub(super) fn setters(model: &Model<'_>, et: &TokenStream, diesel: &TokenStream) -> TokenStream {
    let ident = model.ident;
    let vis = model.vis;
    let table = &model.table;
    let (tenant_param, tenant_id) = match model.tenant_field() {
        Some(t) => {
            let tty = t.ty;
            (
                quote!(tenant: &#tty,),
                quote!(::core::option::Option::Some(#et::TenantId::from(::core::clone::Clone::clone(tenant)))),
            )
        }
        None => (quote!(), quote!(::core::option::Option::None)),
    };
    // A `bind_row` model's values are bound to the row they are written to: the setter takes
    // that row's identity after the tenant.
    let bind_params = model.bind_fields().map(|f| {
        let (n, ty) = (f.ident, f.ty);
        quote!(#n: &#ty,)
    });
    let bind_params = quote!(#(#bind_params)*);
    let bind_let = (!model.bind_row.is_empty()).then(|| {
        let parts = model
            .bind_row
            .iter()
            .map(|b| quote!(#et::RowIdentity::row_part(#b)));
        quote!(let __row = #et::RowBinding::of(&[#(#parts),*]);)
    });
    let bound = bound_to(model);
    let mut methods = TokenStream::new();
    for (f, e) in model.encrypted_fields() {
        let name = f.ident;
        let inner = e.inner;
        let set = format_ident!("set_{}", crate::ast::sql_name(name));
        // A field of a compound index has no setter of its own: the index needs every field,
        // so it is written by the whole model's changeset. The stand-in's bound says so.
        if model.in_compound(f.ident) {
            methods.extend(quote! {
                #[doc(hidden)]
                #[allow(dead_code)]
                #vis fn #set<__V: #et::CompoundFieldHasNoSetter>(#tenant_param #bind_params value: __V) {
                    match #et::CompoundFieldHasNoSetter::refuse(value) {}
                }
            });
            continue;
        }
        let value_ty = sealed_ty(model, f, e, et);
        let (param_ty, convert) = if e.optional {
            (quote!(::core::option::Option<#inner>), quote!())
        } else {
            (
                quote!(impl ::core::convert::Into<#inner>),
                quote!(let value: #inner = ::core::convert::Into::into(value);),
            )
        };
        let wrap = |w: TokenStream, then: &TokenStream| {
            if e.optional {
                quote!(value.as_ref().map(|v| #w(::core::clone::Clone::clone(v), ::core::clone::Clone::clone(&__tenant)) #then))
            } else {
                quote!(#w(::core::clone::Clone::clone(&value), ::core::clone::Clone::clone(&__tenant)) #then)
            }
        };
        let col = &f.column;
        let mut tys = vec![quote!(#diesel::dsl::Eq<#table::#col, #value_ty>)];
        let sealed = wrap(quote!(#et::Encrypted::with_tenant), &bound);
        let mut exprs = vec![quote!(#diesel::ExpressionMethods::eq(#table::#col, #sealed))];
        if let Some(index) = &e.index {
            let column = &index.column;
            let ty = index_ty(model, f, e, et);
            tys.push(quote!(#diesel::dsl::Eq<#table::#column, #ty>));
            let bidx = wrap(quote!(#et::BlindIndex::for_tenant), &TokenStream::new());
            exprs.push(quote!(#diesel::ExpressionMethods::eq(#table::#column, #bidx)));
        }
        if let Some(legacy) = &e.migrate_from {
            tys.push(quote!(#diesel::dsl::Eq<#table::#legacy, ::core::option::Option<#inner>>));
            exprs.push(quote!(#diesel::ExpressionMethods::eq(#table::#legacy, ::core::option::Option::<#inner>::None)));
        }
        let (ty, expr) = if tys.len() == 1 {
            (quote!(#(#tys)*), quote!(#(#exprs)*))
        } else {
            (quote!((#(#tys,)*)), quote!((#(#exprs,)*)))
        };
        let doc = format!(
            "A changeset of `{name}` alone, for `diesel::update(..).set(..)`: the value sealed for \
             the row's tenant{index}{legacy}.{none}",
            index = if e.index.is_some() {
                ", with its blind index"
            } else {
                ""
            },
            legacy = if e.migrate_from.is_some() {
                ", and its legacy column set to NULL"
            } else {
                ""
            },
            none = if e.optional {
                " `None` writes NULL (and a NULL index): the value is gone."
            } else {
                ""
            },
        );
        methods.extend(quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #vis fn #set(#tenant_param #bind_params value: #param_ty) -> #ty {
                #convert
                let __tenant: ::core::option::Option<#et::TenantId> = #tenant_id;
                #bind_let
                #expr
            }
        });
    }
    quote! {
        impl #ident { #methods }
    }
}
