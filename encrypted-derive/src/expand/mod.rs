//! Code generation. Everything lands in `const _: () = { ... };` and reaches its dependencies
//! through `::encrypted_types::__private`, so user code sees only the trait impls and the
//! inherent methods on the model.
//!
//! Split by what is generated, as serde_derive splits `ser` and `de`: `markers` (context and
//! index types, the model's metadata), `rows` (the stored row and the write struct), `lookups`
//! (blind-index queries), `setters`, `checks` (columns against `table!`), `debug` and `wipe`.
//! The naming and typing helpers they share live here.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use crate::ast::{Encrypted, Field, Model};
use crate::attr::DeriveKind;

mod checks;
mod debug;
mod lookups;
mod markers;
mod rows;
mod setters;
mod wipe;

struct Names {
    read: Ident,
    write: Ident,
}

pub(crate) fn expand(model: &Model<'_>) -> TokenStream {
    let et = quote!(::encrypted_types::__private);
    let diesel = quote!(#et::diesel);
    let ident = model.ident;
    let names = Names {
        read: format_ident!("__{}Read", ident),
        write: format_ident!("__{}Write", ident),
    };

    let markers = markers::markers(model, &et);
    let meta = markers::metadata(model, &et);
    let read = if model.wants(DeriveKind::Queryable) || model.wants(DeriveKind::Selectable) {
        rows::read_side(model, &names, &et, &diesel)
    } else {
        TokenStream::new()
    };
    let write = if model.wants(DeriveKind::Insertable) || model.wants(DeriveKind::AsChangeset) {
        rows::write_side(model, &names, &et, &diesel)
    } else {
        TokenStream::new()
    };
    let queries = lookups::queries(model, &names, &et, &diesel);
    // A `none = skip` struct is a patch already, and its `Option` may stand for a NOT NULL
    // column: no setters there.
    let columns = checks::column_checks(model, &et, &diesel);
    let wipe = if model.zeroize {
        wipe::wipe_impl(model, &et)
    } else {
        TokenStream::new()
    };
    let debug = if model.redacted_debug {
        debug::debug_impl(model, &et)
    } else {
        TokenStream::new()
    };
    let setters = if model.wants(DeriveKind::AsChangeset) && model.treat_none_as_null {
        setters::setters(model, &et, &diesel)
    } else {
        TokenStream::new()
    };

    quote! {
        #[allow(non_camel_case_types, non_snake_case, unused_qualifications, unused_variables, unreachable_pub, dead_code, clippy::all)]
        const _: () = {
            #markers
            #meta
            #read
            #write
            #queries
            #setters
            #columns
            #debug
            #wipe
        };
    }
}

fn ctx_ident(model: &Model<'_>, f: &Field<'_>) -> Ident {
    format_ident!("__{}Column_{}", model.ident, f.ident)
}

fn idx_ident(model: &Model<'_>, f: &Field<'_>) -> Ident {
    format_ident!("__{}Index_{}", model.ident, f.ident)
}

fn prev_idx_ident(model: &Model<'_>, f: &Field<'_>) -> Ident {
    format_ident!("__{}PreviousIndex_{}", model.ident, f.ident)
}

/// `Encrypted<T, Ctx>` or `Option<Encrypted<T, Ctx>>`.
fn sealed_ty(model: &Model<'_>, f: &Field<'_>, e: &Encrypted<'_>, et: &TokenStream) -> TokenStream {
    let inner = e.inner;
    let ctx = ctx_ident(model, f);
    let ty = quote!(#et::Encrypted<#inner, #ctx>);
    if e.optional {
        quote!(::core::option::Option<#ty>)
    } else {
        ty
    }
}

/// `BlindIndex<T, Idx>` or `Option<BlindIndex<T, Idx>>`.
fn index_ty(model: &Model<'_>, f: &Field<'_>, e: &Encrypted<'_>, et: &TokenStream) -> TokenStream {
    let inner = e.inner;
    let idx = idx_ident(model, f);
    let ty = quote!(#et::BlindIndex<#inner, #idx>);
    if e.optional {
        quote!(::core::option::Option<#ty>)
    } else {
        ty
    }
}

/// An expression of the row's tenant, `Option<TenantId>`, from `base.tenant_field`.
fn tenant_of(model: &Model<'_>, base: &TokenStream, et: &TokenStream) -> TokenStream {
    match &model.tenant {
        Some(t) => {
            quote!(::core::option::Option::Some(#et::TenantId::from(::core::clone::Clone::clone(&#base.#t))))
        }
        None => quote!(::core::option::Option::None),
    }
}

fn compound_ident(model: &Model<'_>, name: &Ident) -> Ident {
    format_ident!("__{}Compound_{}", model.ident, name)
}

fn prev_compound_ident(model: &Model<'_>, name: &Ident) -> Ident {
    format_ident!("__{}PreviousCompound_{}", model.ident, name)
}

/// `CompoundIndex::<spec>::new(tenant).part(..)...`: one call per field, in order, on an
/// expression of a reference to its value (`part_str` where the flag says it is a `&str`).
fn compound_value(
    spec: &Ident,
    tenant: &TokenStream,
    parts: &[(TokenStream, bool)],
    et: &TokenStream,
) -> TokenStream {
    let calls = parts.iter().map(|(v, text)| {
        if *text {
            quote!(.part_str(#v))
        } else {
            quote!(.part(#v))
        }
    });
    quote!(#et::CompoundIndex::<#spec>::new(#tenant) #(#calls)*)
}

/// The row identity of `base` (a model or its stored row), for a `bind_row` model.
fn row_of(model: &Model<'_>, base: &TokenStream, et: &TokenStream) -> Option<TokenStream> {
    if model.bind_row.is_empty() {
        return None;
    }
    let parts = model
        .bind_row
        .iter()
        .map(|b| quote!(#et::RowIdentity::row_part(&#base.#b)));
    Some(quote!(#et::RowBinding::of(&[#(#parts),*])))
}

/// `.bound_to(__row)` after a value's constructor, for a `bind_row` model.
fn bound_to(model: &Model<'_>) -> TokenStream {
    if model.bind_row.is_empty() {
        TokenStream::new()
    } else {
        quote!(.bound_to(::core::clone::Clone::clone(&__row)))
    }
}

/// `target: wrap(&m.field)`, through `Option::map` for an optional field: the value and its
/// index are built from the same field the same way, so both are `None` together.
fn field_init(
    target: &Ident,
    field: &Ident,
    optional: bool,
    wrap: impl Fn(TokenStream) -> TokenStream,
) -> TokenStream {
    if optional {
        let w = wrap(quote!(v));
        quote!(#target: m.#field.as_ref().map(|v| #w))
    } else {
        let w = wrap(quote!(&m.#field));
        quote!(#target: #w)
    }
}
