//! Code generation. Everything lands in `const _: () = { ... };` and reaches its dependencies
//! through `::encrypted_types::__private`, so user code sees only the trait impls and the
//! inherent methods on the model.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

use crate::ast::{Compound, Encrypted, Field, Model, ValueKind};
use crate::attr::DeriveKind;

struct Names {
    read: Ident,
    write: Ident,
}

/// `#[encrypted(zeroize)]`: `wipe_plaintext`, and a `Drop` that calls it. A type with `Drop`
/// cannot have fields moved out of it (E0509): users clone or `std::mem::take` them instead.
fn wipe_impl(model: &Model<'_>, et: &TokenStream) -> TokenStream {
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

/// `Debug` for the model: clear fields as they are, encrypted ones as `<redacted>` (`None` too:
/// whether a note exists is the database's to tell, not a log line's).
fn debug_impl(model: &Model<'_>, et: &TokenStream) -> TokenStream {
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

pub(crate) fn expand(model: &Model<'_>) -> TokenStream {
    let et = quote!(::encrypted_types::__private);
    let diesel = quote!(#et::diesel);
    let ident = model.ident;
    let names = Names {
        read: format_ident!("__{}Read", ident),
        write: format_ident!("__{}Write", ident),
    };

    let markers = markers(model, &et);
    let meta = metadata(model, &et);
    let read = if model.wants(DeriveKind::Queryable) || model.wants(DeriveKind::Selectable) {
        read_side(model, &names, &et, &diesel)
    } else {
        TokenStream::new()
    };
    let write = if model.wants(DeriveKind::Insertable) || model.wants(DeriveKind::AsChangeset) {
        write_side(model, &names, &et, &diesel)
    } else {
        TokenStream::new()
    };
    let queries = queries(model, &names, &et, &diesel);
    // A `none = skip` struct is a patch already, and its `Option` may stand for a NOT NULL
    // column: no setters there.
    let columns = column_checks(model, &et, &diesel);
    let wipe = if model.zeroize {
        wipe_impl(model, &et)
    } else {
        TokenStream::new()
    };
    let debug = if model.redacted_debug {
        debug_impl(model, &et)
    } else {
        TokenStream::new()
    };
    let setters = if model.wants(DeriveKind::AsChangeset) && model.treat_none_as_null {
        setters(model, &et, &diesel)
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

fn markers(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let table_name = model.table_name();
    let mut out = TokenStream::new();
    for (f, e) in model.encrypted_fields() {
        let ctx = ctx_ident(model, f);
        let column = crate::ast::sql_name(f.ident);
        out.extend(quote! {
            #[doc(hidden)]
            #[derive(Debug, Clone, Copy)]
            pub struct #ctx;
            impl #et::ColumnContext for #ctx {
                const TABLE: &'static str = #table_name;
                const COLUMN: &'static str = #column;
            }
        });
        if let Some(index) = &e.index {
            let index_column = crate::ast::sql_name(&index.column);
            let steps = |n: &[(crate::attr::Normalizer, proc_macro2::Span)]| -> Vec<_> {
                n.iter().map(|(n, _)| n.variant()).collect()
            };
            // The previous version may have had its own length and normalizers.
            let versions = [
                Some((
                    idx_ident(model, f),
                    index.version_value(),
                    index.bits_value(),
                    steps(&index.normalize),
                    format_ident!("Current"),
                )),
                index.previous_value().map(|v| {
                    (
                        prev_idx_ident(model, f),
                        v,
                        index.previous_bits_value(),
                        steps(index.previous_normalize()),
                        format_ident!(
                            "{}",
                            if index.previous_root_retired {
                                "Retired"
                            } else {
                                "Current"
                            }
                        ),
                    )
                }),
            ];
            for (idx, version, bits, steps, root) in versions.into_iter().flatten() {
                out.extend(quote! {
                    #[doc(hidden)]
                    pub struct #idx;
                    impl #et::IndexSpec for #idx {
                        const PARAMS: #et::IndexParams = #et::IndexParams {
                            table: #table_name,
                            column: #column,
                            index_column: #index_column,
                            version: #version,
                            bits: #bits,
                            normalize: &[#(#et::Normalizer::#steps),*],
                            root: #et::IndexRoot::#root,
                        };
                    }
                });
            }
        }
    }
    for c in &model.compounds {
        out.extend(compound_markers(model, c, et));
    }
    out
}

fn compound_ident(model: &Model<'_>, name: &Ident) -> Ident {
    format_ident!("__{}Compound_{}", model.ident, name)
}

fn prev_compound_ident(model: &Model<'_>, name: &Ident) -> Ident {
    format_ident!("__{}PreviousCompound_{}", model.ident, name)
}

/// The `CompoundSpec` of a compound index, and of its previous version during a rotation.
fn compound_markers(model: &Model<'_>, c: &Compound, et: &TokenStream) -> TokenStream {
    let Some(name) = &c.name else {
        return TokenStream::new();
    };
    let table_name = model.table_name();
    let name_text = crate::ast::sql_name(name);
    let index_column = crate::ast::sql_name(&c.index.column);
    let fields = c.fields.iter().filter_map(|(field, steps)| {
        let (_, e) = model.encrypted_field(field)?;
        let column = crate::ast::sql_name(field);
        let inner = e.inner;
        let steps = steps.iter().map(|(n, _)| n.variant());
        Some(quote! {
            #et::CompoundField {
                column: #column,
                value_type: <#inner as #et::Plaintext>::TYPE,
                normalize: &[#(#et::Normalizer::#steps),*],
            }
        })
    });
    let fields = quote!(&[#(#fields),*]);
    let versions = [
        Some((
            compound_ident(model, name),
            c.index.version_value(),
            c.index.bits_value(),
            format_ident!("Current"),
        )),
        c.index.previous_value().map(|v| {
            (
                prev_compound_ident(model, name),
                v,
                c.index.previous_bits_value(),
                format_ident!(
                    "{}",
                    if c.index.previous_root_retired {
                        "Retired"
                    } else {
                        "Current"
                    }
                ),
            )
        }),
    ];
    let mut out = TokenStream::new();
    for (spec, version, bits, root) in versions.into_iter().flatten() {
        out.extend(quote! {
            #[doc(hidden)]
            pub struct #spec;
            impl #et::CompoundSpec for #spec {
                const PARAMS: #et::CompoundParams = #et::CompoundParams {
                    table: #table_name,
                    name: #name_text,
                    index_column: #index_column,
                    version: #version,
                    bits: #bits,
                    fields: #fields,
                    root: #et::IndexRoot::#root,
                };
            }
        });
    }
    out
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

fn metadata(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let ident = model.ident;
    let table_name = model.table_name();
    let pk = model.primary_key.iter().map(crate::ast::sql_name);
    let tenant = match &model.tenant {
        Some(t) => {
            let t = crate::ast::sql_name(t);
            quote!(::core::option::Option::Some(#t))
        }
        None => quote!(::core::option::Option::None),
    };
    let columns = model.encrypted_fields().map(|(f, e)| {
        let column = crate::ast::sql_name(f.ident);
        let inner = e.inner;
        let nullable = e.optional;
        let indexes = e.index.iter().map(|_| {
            let idx = idx_ident(model, f);
            quote!(<#idx as #et::IndexSpec>::PARAMS)
        });
        let legacy = match &e.migrate_from {
            Some(l) => {
                let l = crate::ast::sql_name(l);
                let text = e.kind == Some(ValueKind::String);
                quote!(::core::option::Option::Some(#et::LegacyColumn { column: #l, text: #text }))
            }
            None => quote!(::core::option::Option::None),
        };
        quote! {
            #et::ColumnInfo {
                column: #column,
                value_type: <#inner as #et::Plaintext>::TYPE,
                nullable: #nullable,
                indexes: &[#(#indexes),*],
                validate: #et::model_validate::<#inner>,
                legacy: #legacy,
            }
        }
    });
    let bind_row = model.bind_fields().map(|f| {
        let column = crate::ast::sql_name(f.ident);
        let ty = f.ty;
        quote!(#et::RowColumn { column: #column, kind: <#ty as #et::RowIdentity>::KIND })
    });
    let table = &model.table;
    let plain = model.fields.iter().filter(|f| f.encrypted.is_none()).map(|f| {
        let column = crate::ast::sql_name(f.ident);
        let col = f.ident;
        // Method resolution picks `SqlKnown` for the SQL types it names and `SqlUnknown`
        // otherwise: an unusual column type never stops the model from compiling.
        quote! {
            #et::PlainColumn {
                column: #column,
                sql_type: || {
                    use #et::{SqlKnown as _, SqlUnknown as _};
                    (&#et::SqlProbe::<<#table::#col as #et::diesel::Expression>::SqlType>::new()).sql()
                },
            }
        }
    });
    let compound = model.compounds.iter().filter_map(|c| {
        let spec = compound_ident(model, c.name.as_ref()?);
        Some(quote!(<#spec as #et::CompoundSpec>::PARAMS))
    });
    quote! {
        impl #et::EncryptedModel for #ident {
            const MODEL: #et::ModelInfo = #et::ModelInfo {
                table: #table_name,
                primary_key: &[#(#pk),*],
                tenant_column: #tenant,
                columns: &[#(#columns),*],
                bind_row: &[#(#bind_row),*],
                plain: &[#(#plain),*],
                compound: &[#(#compound),*],
            };
        }
    }
}

fn read_side(
    model: &Model<'_>,
    names: &Names,
    et: &TokenStream,
    diesel: &TokenStream,
) -> TokenStream {
    let ident = model.ident;
    let read = &names.read;
    let table = &model.table;
    let table_name = model.table_name();
    // The row as stored: ciphertext bytes, opened by `FallibleModel::open` (one place for the
    // plain read and the per-row fallible one).
    let mut fields: Vec<TokenStream> = model
        .fields
        .iter()
        .map(|f| {
            let name = f.ident;
            let ty = match &f.encrypted {
                // Rows not migrated yet have no ciphertext.
                Some(e) if e.optional || e.migrate_from.is_some() => {
                    quote!(::core::option::Option<::std::vec::Vec<u8>>)
                }
                Some(_) => quote!(::std::vec::Vec<u8>),
                None => {
                    let ty = f.ty;
                    quote!(#ty)
                }
            };
            quote!(#name: #ty)
        })
        .collect();
    // The legacy columns last, in the order `queries` selects them.
    for (_, e) in model.encrypted_fields() {
        if let Some(legacy) = &e.migrate_from {
            let inner = e.inner;
            fields.push(quote!(#legacy: ::core::option::Option<#inner>));
        }
    }
    let tenant = tenant_of(model, &quote!(row), et);
    let pk: Vec<_> = model
        .primary_key
        .iter()
        .filter(|pk| model.fields.iter().any(|f| f.ident == *pk))
        .collect();
    let key = match pk.as_slice() {
        [] => quote!(::std::string::String::new()),
        [one] => quote!(::std::format!("{:?}", &row.#one)),
        many => quote!(::std::format!("{:?}", (#(&row.#many,)*))),
    };
    let opens = model.encrypted_fields().map(|(f, e)| {
        let name = f.ident;
        let column = crate::ast::sql_name(name);
        let inner = e.inner;
        let ctx = ctx_ident(model, f);
        // Opened under its header's key (and, for `bind_row`, with the row's identity); the
        // row's tenant must own it.
        // The keyring is read once per row (`__keys`), not once per field.
        let open_call = if model.bind_row.is_empty() {
            quote!(__keys.get().and_then(|__k| #et::Encrypted::<#inner, #ctx>::open_owned_with(__k, bytes)))
        } else {
            quote!(__keys.get().and_then(|__k| #et::Encrypted::<#inner, #ctx>::open_owned_bound_with(__k, bytes, &__row)))
        };
        let open = quote! {
            match #open_call.and_then(|v| {
                v.verify_tenant(__tenant.as_ref(), #column)?;
                ::core::result::Result::Ok(v.into_inner())
            }) {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => {
                    return ::core::result::Result::Err(#et::Unreadable::new(#key, #table_name, #column, e));
                }
            }
        };
        let value = match (&e.migrate_from, e.optional) {
            (None, false) => quote!({ let bytes = row.#name; #open }),
            (None, true) => quote!(match row.#name {
                ::core::option::Option::Some(bytes) => ::core::option::Option::Some(#open),
                ::core::option::Option::None => ::core::option::Option::None,
            }),
            // While the legacy column holds a value it is the row's value: this code sets it
            // to NULL on every write, so a value there is unmigrated, or written since by an
            // application version that knows only the legacy column.
            (Some(legacy), true) => quote!(match (row.#legacy, row.#name) {
                (::core::option::Option::Some(p), _) => ::core::option::Option::Some(p),
                (::core::option::Option::None, ::core::option::Option::Some(bytes)) => ::core::option::Option::Some(#open),
                (::core::option::Option::None, ::core::option::Option::None) => ::core::option::Option::None,
            }),
            (Some(legacy), false) => {
                let legacy_name = crate::ast::sql_name(legacy);
                quote!(match (row.#legacy, row.#name) {
                    (::core::option::Option::Some(p), _) => p,
                    (::core::option::Option::None, ::core::option::Option::Some(bytes)) => #open,
                    (::core::option::Option::None, ::core::option::Option::None) => {
                        return ::core::result::Result::Err(#et::Unreadable::new(
                            #key,
                            #table_name,
                            #column,
                            #et::Error::NoValue { table: #table_name, column: #column, legacy: #legacy_name },
                        ));
                    }
                })
            }
        };
        quote!(let #name = #value;)
    });
    let build = model.fields.iter().map(|f| {
        let name = f.ident;
        if f.encrypted.is_some() {
            quote!(#name)
        } else {
            quote!(#name: row.#name)
        }
    });
    let selectable = model.wants(DeriveKind::Selectable).then(|| {
        quote! {
            impl<__DB: #diesel::backend::Backend> #diesel::prelude::Selectable<__DB> for #ident {
                type SelectExpression = <#read as #diesel::prelude::Selectable<__DB>>::SelectExpression;
                fn construct_selection() -> Self::SelectExpression {
                    <#read as #diesel::prelude::Selectable<__DB>>::construct_selection()
                }
            }
        }
    });
    let read_row = row_of(model, &quote!(row), et).map(|r| quote!(let __row = #r;));
    let queryable = model.wants(DeriveKind::Queryable).then(|| {
        quote! {
            impl #et::FallibleModel for #ident {
                type Raw = #read;
                fn open(row: #read) -> ::core::result::Result<Self, ::std::boxed::Box<#et::Unreadable>> {
                    let __tenant: ::core::option::Option<#et::TenantId> = #tenant;
                    #read_row
                    let __keys = #et::RowKeys::load();
                    #(#opens)*
                    ::core::result::Result::Ok(Self { #(#build),* })
                }
            }
            impl<__ST, __DB: #diesel::backend::Backend> #diesel::prelude::Queryable<__ST, __DB> for #ident
            where
                #read: #diesel::prelude::Queryable<__ST, __DB>,
            {
                type Row = <#read as #diesel::prelude::Queryable<__ST, __DB>>::Row;
                fn build(row: Self::Row) -> #diesel::deserialize::Result<Self> {
                    let row = <#read as #diesel::prelude::Queryable<__ST, __DB>>::build(row)?;
                    ::core::result::Result::Ok(<Self as #et::FallibleModel>::open(row)?)
                }
            }
        }
    });
    quote! {
        #[doc(hidden)]
        #[derive(#diesel::prelude::Queryable, #diesel::prelude::Selectable)]
        #[diesel(table_name = #table)]
        pub struct #read { #(#fields),* }
        #selectable
        #queryable
    }
}

fn write_side(
    model: &Model<'_>,
    names: &Names,
    et: &TokenStream,
    diesel: &TokenStream,
) -> TokenStream {
    let ident = model.ident;
    let write = &names.write;
    let table = &model.table;
    let pk = &model.primary_key;
    let mut fields = Vec::new();
    let mut init = Vec::new();
    for f in &model.fields {
        let name = f.ident;
        match &f.encrypted {
            None => {
                let ty = f.ty;
                fields.push(quote!(#name: #ty));
                init.push(quote!(#name: ::core::clone::Clone::clone(&m.#name)));
            }
            Some(e) => {
                let ty = sealed_ty(model, f, e, et);
                fields.push(quote!(#name: #ty));
                let bound = bound_to(model);
                init.push(field_init(name, name, e.optional, |v| {
                    quote!(#et::Encrypted::with_tenant(::core::clone::Clone::clone(#v), ::core::clone::Clone::clone(&__tenant)) #bound)
                }));
                if let Some(index) = &e.index {
                    let column = &index.column;
                    let ty = index_ty(model, f, e, et);
                    fields.push(quote!(#column: #ty));
                    init.push(field_init(column, name, e.optional, |v| {
                        quote!(#et::BlindIndex::for_tenant(::core::clone::Clone::clone(#v), ::core::clone::Clone::clone(&__tenant)))
                    }));
                }
                // Every write clears the legacy plaintext: the row's value now lives sealed.
                if let Some(legacy) = &e.migrate_from {
                    let inner = e.inner;
                    fields.push(quote!(
                        #[diesel(treat_none_as_null = true)]
                        #legacy: ::core::option::Option<#inner>
                    ));
                    init.push(quote!(#legacy: ::core::option::Option::None));
                }
            }
        }
    }
    // Compound indexes: from every field of the model, NULL when one of them is `None`.
    for c in &model.compounds {
        let Some(name) = &c.name else { continue };
        let spec = compound_ident(model, name);
        let column = &c.index.column;
        let mut optional = false;
        let mut parts = Vec::new();
        for (field, _) in &c.fields {
            let Some((_, e)) = model.encrypted_field(field) else {
                continue;
            };
            if e.optional {
                optional = true;
                parts.push((quote!(m.#field.as_ref()?), false));
            } else {
                parts.push((quote!(&m.#field), false));
            }
        }
        let value = compound_value(
            &spec,
            &quote!(::core::clone::Clone::clone(&__tenant)),
            &parts,
            et,
        );
        if optional {
            fields.push(quote!(#column: ::core::option::Option<#et::CompoundIndex<#spec>>));
            init.push(quote!(#column: (|| ::core::option::Option::Some(#value))()));
        } else {
            fields.push(quote!(#column: #et::CompoundIndex<#spec>));
            init.push(quote!(#column: #value));
        }
    }
    let tenant = tenant_of(model, &quote!(m), et);
    let write_row = row_of(model, &quote!(m), et).map(|r| quote!(let __row = #r;));
    let treat_none = model
        .treat_none_as_null
        .then(|| quote!(#[diesel(treat_none_as_null = true)]));
    let mut derives = Vec::new();
    let mut impls = TokenStream::new();
    if model.wants(DeriveKind::Insertable) {
        derives.push(quote!(#diesel::prelude::Insertable));
        impls.extend(quote! {
            impl<'__a> #diesel::prelude::Insertable<#table::table> for &'__a #ident {
                type Values = <#write as #diesel::prelude::Insertable<#table::table>>::Values;
                fn values(self) -> Self::Values {
                    #diesel::prelude::Insertable::<#table::table>::values(#write::from(self))
                }
            }
            impl #diesel::prelude::Insertable<#table::table> for #ident {
                type Values = <#write as #diesel::prelude::Insertable<#table::table>>::Values;
                fn values(self) -> Self::Values {
                    #diesel::prelude::Insertable::<#table::table>::values(#write::from(&self))
                }
            }
            impl #ident {
                /// The rows to pass to `diesel::insert_into(..).values(..)` for a batch insert:
                /// each with its values sealed and its blind indexes computed.
                #[allow(dead_code)]
                pub fn batch(models: &[Self]) -> ::std::vec::Vec<#write> {
                    models.iter().map(#write::from).collect()
                }
            }
        });
    }
    if model.wants(DeriveKind::AsChangeset) {
        derives.push(quote!(#diesel::prelude::AsChangeset));
        impls.extend(quote! {
            impl<'__a> #diesel::prelude::AsChangeset for &'__a #ident {
                type Target = <#write as #diesel::prelude::AsChangeset>::Target;
                type Changeset = <#write as #diesel::prelude::AsChangeset>::Changeset;
                fn as_changeset(self) -> Self::Changeset {
                    #diesel::prelude::AsChangeset::as_changeset(#write::from(self))
                }
            }
            impl #diesel::prelude::AsChangeset for #ident {
                type Target = <#write as #diesel::prelude::AsChangeset>::Target;
                type Changeset = <#write as #diesel::prelude::AsChangeset>::Changeset;
                fn as_changeset(self) -> Self::Changeset {
                    #diesel::prelude::AsChangeset::as_changeset(#write::from(&self))
                }
            }
        });
    }
    quote! {
        /// One row as written: values sealed, blind indexes beside them. Every path that
        /// writes a field writes its index, because both come from this one conversion.
        #[doc(hidden)]
        #[derive(#(#derives),*)]
        #[diesel(table_name = #table)]
        #[diesel(primary_key(#(#pk),*))]
        #treat_none
        pub struct #write { #(#fields),* }

        impl<'__a> ::core::convert::From<&'__a #ident> for #write {
            fn from(m: &'__a #ident) -> Self {
                let __tenant: ::core::option::Option<#et::TenantId> = #tenant;
                #write_row
                Self { #(#init),* }
            }
        }
        #impls
    }
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

fn queries(
    model: &Model<'_>,
    _names: &Names,
    et: &TokenStream,
    diesel: &TokenStream,
) -> TokenStream {
    let ident = model.ident;
    let vis = model.vis;
    let table = &model.table;
    let tenant_field = model.tenant_field();
    let can_load = model.wants(DeriveKind::Queryable);
    let cols: Vec<_> = model
        .fields
        .iter()
        .map(|f| f.ident)
        .chain(
            model
                .encrypted_fields()
                .filter_map(|(_, e)| e.migrate_from.as_ref()),
        )
        .map(|name| quote!(#table::#name))
        .collect();
    let columns = quote!((#(#cols,)*));
    let columns_ty = quote!((#(#cols,)*));
    let mut methods = TokenStream::new();
    let mut async_methods = TokenStream::new();
    for (f, e) in model.encrypted_fields() {
        let Some(index) = &e.index else { continue };
        let name = f.ident;
        let inner = e.inner;
        let idx = idx_ident(model, f);
        let column = &index.column;
        let eq = format_ident!("{}_eq", name);
        let matches = format_ident!("{}_matches", name);
        let find = format_ident!("find_by_{}", name);
        let bidx_ty = quote!(#et::BlindIndex<#inner, #idx>);
        let previous_binding = index
            .previous_value()
            .map(|_| quote!(let previous = ::core::clone::Clone::clone(&value);));
        // During a blind-index key rotation a row may hold either version: match both.
        let (bidx_eq_ty, bidx_match) = match index.previous_value() {
            None => (
                quote!(#diesel::dsl::Eq<#table::#column, #bidx_ty>),
                quote!(#diesel::ExpressionMethods::eq(#table::#column, index)),
            ),
            Some(_) => {
                let prev = prev_idx_ident(model, f);
                let prev_ty = quote!(#et::BlindIndex<#inner, #prev>);
                (
                    quote!(#diesel::dsl::Or<#diesel::dsl::Eq<#table::#column, #bidx_ty>, #diesel::dsl::Eq<#table::#column, #prev_ty>>),
                    quote!(#diesel::BoolExpressionMethods::or(
                        #diesel::ExpressionMethods::eq(#table::#column, index),
                        #diesel::ExpressionMethods::eq(#table::#column, #et::BlindIndex::<#inner, #prev>::for_tenant(previous, __tenant_id)),
                    )),
                )
            }
        };
        let (tenant_param, tenant_arg, tenant_id, eq_ty, eq_expr) = match tenant_field {
            Some(t) => {
                let tname = t.ident;
                let tty = t.ty;
                (
                    quote!(tenant: &#tty,),
                    quote!(tenant,),
                    quote!(::core::option::Option::Some(#et::TenantId::from(::core::clone::Clone::clone(tenant)))),
                    quote!(#diesel::dsl::And<#diesel::dsl::Eq<#table::#tname, #tty>, #bidx_eq_ty>),
                    quote!(#diesel::BoolExpressionMethods::and(
                        #diesel::ExpressionMethods::eq(#table::#tname, ::core::clone::Clone::clone(tenant)),
                        #bidx_match,
                    )),
                )
            }
            None => (
                quote!(),
                quote!(),
                quote!(::core::option::Option::None),
                bidx_eq_ty.clone(),
                bidx_match.clone(),
            ),
        };
        let stored = if e.optional {
            quote!(match &self.#name { ::core::option::Option::Some(v) => v, ::core::option::Option::None => return false })
        } else {
            quote!(&self.#name)
        };
        let (matches_param, matches_body) = if e.kind == Some(ValueKind::String) {
            (
                quote!(&str),
                quote!(<#idx as #et::IndexSpec>::PARAMS.same_str(#stored, value)),
            )
        } else {
            (
                quote!(&#inner),
                quote!(<#idx as #et::IndexSpec>::PARAMS.same(#stored, value).unwrap_or(false)),
            )
        };
        let doc_eq = format!(
            "A filter on the blind index of `{name}`: rows whose `{col}` matches `value` after normalization.\n\n\
             Usable in `.filter(...)` with other filters, on sync and async connections.{trunc}",
            col = column,
            trunc = if index.bits_value() < 256 {
                format!(
                    " This index is truncated, so unrelated rows also match: keep only the rows for \
                     which `{name}_matches` holds, or use `find_by_{name}`, which does."
                )
            } else {
                String::new()
            }
        );
        methods.extend(quote! {
            #[doc = #doc_eq]
            #[allow(dead_code)]
            #vis fn #eq(#tenant_param value: impl ::core::convert::Into<#inner>) -> #eq_ty {
                let value: #inner = value.into();
                let __tenant_id: ::core::option::Option<#et::TenantId> = #tenant_id;
                #previous_binding
                let index: #bidx_ty = #et::BlindIndex::for_tenant(value, ::core::clone::Clone::clone(&__tenant_id));
                #eq_expr
            }

            /// Whether this row's value equals `value` as the blind index sees it (after
            /// normalization), checked on the decrypted value.
            #[allow(dead_code)]
            #vis fn #matches(&self, value: #matches_param) -> bool {
                #matches_body
            }
        });
        // `<field>_in`: one query for many values, both versions during a rotation.
        let eq_in = format_ident!("{}_in", name);
        let find_in = format_ident!("find_by_{}_in", name);
        // The lookups' bodies, one each for the sync and async methods around them. The
        // columns are named, not `as_select()`, so the query's type does not depend on the
        // backend and needs no bounds beyond `LoadQuery`.
        let one_query = quote! {
            let value: #inner = value.into();
            let query = #diesel::QueryDsl::filter(
                #diesel::QueryDsl::select(#table::table, #columns),
                Self::#eq(#tenant_arg ::core::clone::Clone::clone(&value)),
            );
        };
        let one_keep = quote! {
            ::core::result::Result::Ok(rows.into_iter().filter(|r| r.#matches(&value)).collect())
        };
        let many_query = quote! {
            let values: ::std::vec::Vec<#inner> =
                values.into_iter().map(::core::convert::Into::into).collect();
            let query = #diesel::QueryDsl::filter(
                #diesel::QueryDsl::select(#table::table, #columns),
                Self::#eq_in(#tenant_arg ::core::iter::Iterator::cloned(values.iter())),
            );
        };
        let row_holds = if e.optional {
            quote!(r.#name.as_ref().is_some_and(|v| wanted.contains(v)))
        } else {
            quote!(wanted.contains(&r.#name))
        };
        // Each value normalized once; each row once, then a binary search.
        let many_keep = quote! {
            let wanted = #et::Wanted::new(<#idx as #et::IndexSpec>::PARAMS, &values);
            ::core::result::Result::Ok(rows.into_iter().filter(|r| #row_holds).collect())
        };
        let in_of =
            |ty: &TokenStream| quote!(#diesel::dsl::EqAny<#table::#column, ::std::vec::Vec<#ty>>);
        let (bidx_in_ty, bidx_in_match, previous_in) = match index.previous_value() {
            None => (
                in_of(&bidx_ty),
                quote!(#diesel::ExpressionMethods::eq_any(#table::#column, index)),
                quote!(),
            ),
            Some(_) => {
                let prev = prev_idx_ident(model, f);
                let prev_ty = quote!(#et::BlindIndex<#inner, #prev>);
                let (now_in, prev_in) = (in_of(&bidx_ty), in_of(&prev_ty));
                (
                    quote!(#diesel::dsl::Or<#now_in, #prev_in>),
                    quote!(#diesel::BoolExpressionMethods::or(
                        #diesel::ExpressionMethods::eq_any(#table::#column, index),
                        #diesel::ExpressionMethods::eq_any(#table::#column, previous),
                    )),
                    quote!(
                        let previous: ::std::vec::Vec<#prev_ty> = values
                            .iter()
                            .map(|v| #et::BlindIndex::for_tenant(::core::clone::Clone::clone(v), ::core::clone::Clone::clone(&__tenant_id)))
                            .collect();
                    ),
                )
            }
        };
        let (in_ty, in_expr) = match tenant_field {
            Some(t) => {
                let tname = t.ident;
                let tty = t.ty;
                (
                    quote!(#diesel::dsl::And<#diesel::dsl::Eq<#table::#tname, #tty>, #bidx_in_ty>),
                    quote!(#diesel::BoolExpressionMethods::and(
                        #diesel::ExpressionMethods::eq(#table::#tname, ::core::clone::Clone::clone(tenant)),
                        #bidx_in_match,
                    )),
                )
            }
            None => (bidx_in_ty.clone(), bidx_in_match.clone()),
        };
        let doc_in = format!(
            "A filter on the blind index of `{name}` for many values at once: rows whose `{column}` \
             matches any of `values` after normalization, in one `IN (...)` (during a blind-index \
             rotation, either version). On PostgreSQL the list is one array parameter; on MySQL \
             and SQLite each value is one bound parameter (two during a rotation), so split lists \
             longer than their limits (65,535 and 32,766 parameters).{trunc}",
            trunc = if index.bits_value() < 256 {
                format!(
                    " Truncated: keep the rows for which `{name}_matches` holds for one of the values, or use `find_by_{name}_in`."
                )
            } else {
                String::new()
            }
        );
        methods.extend(quote! {
            #[doc = #doc_in]
            #[allow(dead_code)]
            #vis fn #eq_in<__V: ::core::convert::Into<#inner>>(
                #tenant_param
                values: impl ::core::iter::IntoIterator<Item = __V>,
            ) -> #in_ty {
                let values: ::std::vec::Vec<#inner> =
                    values.into_iter().map(::core::convert::Into::into).collect();
                let __tenant_id: ::core::option::Option<#et::TenantId> = #tenant_id;
                #previous_in
                let index: ::std::vec::Vec<#bidx_ty> = values
                    .into_iter()
                    .map(|v| #et::BlindIndex::for_tenant(v, ::core::clone::Clone::clone(&__tenant_id)))
                    .collect();
                #in_expr
            }
        });
        if can_load {
            let doc_find_in = format!(
                "Loads the rows whose `{name}` equals one of `values` (after normalization), in one \
                 query, each candidate checked by decrypted equality as `find_by_{name}` does."
            );
            let doc_async = format!(
                "`find_by_{name}` on a diesel-async connection: the same lookup and re-check."
            );
            let doc_in_async = format!(
                "`find_by_{name}_in` on a diesel-async connection: the same lookup and re-check."
            );
            let find_async = format_ident!("find_by_{}_async", name);
            let find_in_async = format_ident!("find_by_{}_in_async", name);
            methods.extend(quote! {
                #[doc = #doc_find_in]
                #[allow(dead_code)]
                #vis fn #find_in<__C, __V: ::core::convert::Into<#inner>>(
                    conn: &mut __C,
                    #tenant_param
                    values: impl ::core::iter::IntoIterator<Item = __V>,
                ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
                where
                    __C: #diesel::Connection,
                    #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns_ty>, #in_ty>:
                        for<'__q> #diesel::query_dsl::LoadQuery<'__q, __C, Self>,
                {
                    #many_query
                    let rows: ::std::vec::Vec<Self> = #diesel::RunQueryDsl::load(query, conn)?;
                    #many_keep
                }
            });
            async_methods.extend(quote! {
                #[doc = #doc_async]
                #[allow(dead_code)]
                #vis async fn #find_async<__C>(
                    conn: &mut __C,
                    #tenant_param
                    value: impl ::core::convert::Into<#inner>,
                ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
                where
                    __C: #et::diesel_async::AsyncConnection,
                    Self: ::core::marker::Send,
                    #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns_ty>, #eq_ty>:
                        for<'__q> #et::diesel_async::methods::LoadQuery<'__q, __C, Self>,
                {
                    #one_query
                    let rows: ::std::vec::Vec<Self> =
                        #et::diesel_async::RunQueryDsl::load(query, conn).await?;
                    #one_keep
                }

                #[doc = #doc_in_async]
                #[allow(dead_code)]
                #vis async fn #find_in_async<__C, __V: ::core::convert::Into<#inner>>(
                    conn: &mut __C,
                    #tenant_param
                    values: impl ::core::iter::IntoIterator<Item = __V>,
                ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
                where
                    __C: #et::diesel_async::AsyncConnection,
                    Self: ::core::marker::Send,
                    #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns_ty>, #in_ty>:
                        for<'__q> #et::diesel_async::methods::LoadQuery<'__q, __C, Self>,
                {
                    #many_query
                    let rows: ::std::vec::Vec<Self> =
                        #et::diesel_async::RunQueryDsl::load(query, conn).await?;
                    #many_keep
                }
            });
        }
        if can_load {
            let doc_find = format!(
                "Loads the rows whose `{name}` equals `value` (after normalization): a blind-index \
                 lookup, then a check of every candidate by decrypted equality, so a truncated index \
                 never returns a wrong row. On diesel-async: `find_by_{name}_async`."
            );
            methods.extend(quote! {
                #[doc = #doc_find]
                #[allow(dead_code)]
                #vis fn #find<__C>(
                    conn: &mut __C,
                    #tenant_param
                    value: impl ::core::convert::Into<#inner>,
                ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
                where
                    __C: #diesel::Connection,
                    #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns_ty>, #eq_ty>:
                        for<'__q> #diesel::query_dsl::LoadQuery<'__q, __C, Self>,
                {
                    #one_query
                    let rows: ::std::vec::Vec<Self> = #diesel::RunQueryDsl::load(query, conn)?;
                    #one_keep
                }
            });
        }
    }
    for c in &model.compounds {
        let (sync, asynchronous) = compound_queries(model, c, et, diesel, &columns_ty);
        methods.extend(sync);
        async_methods.extend(asynchronous);
    }
    if methods.is_empty() {
        return methods;
    }
    // The async lookups exist when encrypted-types has its `async` feature: the macro that
    // wraps them is defined by that feature, so the user's crate needs no feature of its own.
    quote! {
        impl #ident { #methods }
        #et::if_async! {
            impl #ident { #async_methods }
        }
    }
}

/// A compound index's `<name>_eq`, `<name>_matches`, `find_by_<name>` and (async)
/// `find_by_<name>_async`. The values are one argument: a tuple of references in field order
/// (`(&str, &NaiveDate)`), or the reference alone for an index of one field.
fn compound_queries(
    model: &Model<'_>,
    c: &Compound,
    et: &TokenStream,
    diesel: &TokenStream,
    columns: &TokenStream,
) -> (TokenStream, TokenStream) {
    let Some(name) = &c.name else {
        return (TokenStream::new(), TokenStream::new());
    };
    let vis = model.vis;
    let table = &model.table;
    let spec = compound_ident(model, name);
    let column = &c.index.column;
    let eq = format_ident!("{}_eq", name);
    let matches = format_ident!("{}_matches", name);
    let find = format_ident!("find_by_{}", name);
    let find_async = format_ident!("find_by_{}_async", name);
    // Each field: its type as taken, the expression of its value in `values`, whether text.
    let fields: Vec<_> = c
        .fields
        .iter()
        .filter_map(|(f, _)| model.encrypted_field(f))
        .collect();
    let one = fields.len() == 1;
    let mut tys = Vec::new();
    let mut parts = Vec::new();
    let mut checks = Vec::new();
    for (i, (f, e)) in fields.iter().enumerate() {
        let text = e.kind == Some(ValueKind::String);
        let inner = e.inner;
        tys.push(if text { quote!(&str) } else { quote!(&#inner) });
        let access = if one {
            quote!(values)
        } else {
            let i = syn::Index::from(i);
            quote!(values.#i)
        };
        parts.push((access.clone(), text));
        let field = f.ident;
        let stored = if e.optional {
            quote!(match &self.#field { ::core::option::Option::Some(v) => v, ::core::option::Option::None => return false })
        } else {
            quote!(&self.#field)
        };
        checks.push(if text {
            quote!(if !__p.same_str(#i, #stored, #access) { return false; })
        } else {
            quote!(if !__p.same(#i, #stored, #access).unwrap_or(false) { return false; })
        });
    }
    let values_ty = if one {
        quote!(#(#tys)*)
    } else {
        quote!((#(#tys,)*))
    };
    let now = compound_value(
        &spec,
        &quote!(::core::clone::Clone::clone(&__tenant_id)),
        &parts,
        et,
    );
    let now_ty = quote!(#et::CompoundIndex<#spec>);
    let (index_ty, index_expr) = match c.index.previous_value() {
        None => (
            quote!(#diesel::dsl::Eq<#table::#column, #now_ty>),
            quote!(#diesel::ExpressionMethods::eq(#table::#column, #now)),
        ),
        Some(_) => {
            let prev = prev_compound_ident(model, name);
            let before = compound_value(
                &prev,
                &quote!(::core::clone::Clone::clone(&__tenant_id)),
                &parts,
                et,
            );
            (
                quote!(#diesel::dsl::Or<#diesel::dsl::Eq<#table::#column, #now_ty>, #diesel::dsl::Eq<#table::#column, #et::CompoundIndex<#prev>>>),
                quote!(#diesel::BoolExpressionMethods::or(
                    #diesel::ExpressionMethods::eq(#table::#column, #now),
                    #diesel::ExpressionMethods::eq(#table::#column, #before),
                )),
            )
        }
    };
    let (tenant_param, tenant_arg, tenant_id, eq_ty, eq_expr) = match model.tenant_field() {
        Some(t) => {
            let (tname, tty) = (t.ident, t.ty);
            (
                quote!(tenant: &#tty,),
                quote!(tenant,),
                quote!(::core::option::Option::Some(#et::TenantId::from(::core::clone::Clone::clone(tenant)))),
                quote!(#diesel::dsl::And<#diesel::dsl::Eq<#table::#tname, #tty>, #index_ty>),
                quote!(#diesel::BoolExpressionMethods::and(
                    #diesel::ExpressionMethods::eq(#table::#tname, ::core::clone::Clone::clone(tenant)),
                    #index_expr,
                )),
            )
        }
        None => (
            quote!(),
            quote!(),
            quote!(::core::option::Option::None),
            index_ty,
            index_expr,
        ),
    };
    let names: Vec<String> = c.fields.iter().map(|(f, _)| f.to_string()).collect();
    let list = names.join(", ");
    let doc_eq = format!(
        "A filter on compound index `{name}` ({list}): rows whose fields all match `values` after \
         their normalizers. Usable in `.filter(...)` with other filters.{trunc}",
        trunc = if c.index.bits_value() < 256 {
            format!(
                " This index is truncated, so unrelated rows also match: keep the rows for which \
                 `{name}_matches` holds, or use `find_by_{name}`, which does."
            )
        } else {
            String::new()
        }
    );
    let doc_find = format!(
        "Loads the rows whose {list} match `values` (after their normalizers): a lookup on compound \
         index `{name}`, then a check of every field of every candidate by decrypted equality, so \
         a truncated index never returns a wrong row. On diesel-async: `find_by_{name}_async`."
    );
    let doc_async =
        format!("`find_by_{name}` on a diesel-async connection: the same lookup and re-check.");
    let mut sync = quote! {
        #[doc = #doc_eq]
        #[allow(dead_code)]
        #vis fn #eq(#tenant_param values: #values_ty) -> #eq_ty {
            let __tenant_id: ::core::option::Option<#et::TenantId> = #tenant_id;
            #eq_expr
        }

        /// Whether every field of this row equals its value in `values` as the compound index
        /// sees them (after normalization), checked on the decrypted values.
        #[allow(dead_code)]
        #vis fn #matches(&self, values: #values_ty) -> bool {
            let __p = <#spec as #et::CompoundSpec>::PARAMS;
            #(#checks)*
            true
        }
    };
    let mut asynchronous = TokenStream::new();
    if model.wants(DeriveKind::Queryable) {
        let query = quote! {
            let query = #diesel::QueryDsl::filter(
                #diesel::QueryDsl::select(#table::table, #columns),
                Self::#eq(#tenant_arg values),
            );
        };
        let keep = quote! {
            ::core::result::Result::Ok(rows.into_iter().filter(|r| r.#matches(values)).collect())
        };
        sync.extend(quote! {
            #[doc = #doc_find]
            #[allow(dead_code)]
            #vis fn #find<__C>(
                conn: &mut __C,
                #tenant_param
                values: #values_ty,
            ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
            where
                __C: #diesel::Connection,
                #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns>, #eq_ty>:
                    for<'__q> #diesel::query_dsl::LoadQuery<'__q, __C, Self>,
            {
                #query
                let rows: ::std::vec::Vec<Self> = #diesel::RunQueryDsl::load(query, conn)?;
                #keep
            }
        });
        asynchronous = quote! {
            #[doc = #doc_async]
            #[allow(dead_code)]
            #vis async fn #find_async<__C>(
                conn: &mut __C,
                #tenant_param
                values: #values_ty,
            ) -> #diesel::QueryResult<::std::vec::Vec<Self>>
            where
                __C: #et::diesel_async::AsyncConnection,
                Self: ::core::marker::Send,
                #diesel::dsl::Filter<#diesel::dsl::Select<#table::table, #columns>, #eq_ty>:
                    for<'__q> #et::diesel_async::methods::LoadQuery<'__q, __C, Self>,
            {
                #query
                let rows: ::std::vec::Vec<Self> =
                    #et::diesel_async::RunQueryDsl::load(query, conn).await?;
                #keep
            }
        };
    }
    (sync, asynchronous)
}

/// `Model::set_<field>(tenant, value)`: a changeset of one encrypted field that writes its
/// value, its blind index and (during a migration) NULL into its legacy column, together.
fn setters(model: &Model<'_>, et: &TokenStream, diesel: &TokenStream) -> TokenStream {
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
        let mut tys = vec![quote!(#diesel::dsl::Eq<#table::#name, #value_ty>)];
        let sealed = wrap(quote!(#et::Encrypted::with_tenant), &bound);
        let mut exprs = vec![quote!(#diesel::ExpressionMethods::eq(#table::#name, #sealed))];
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

/// Checks that `table!` declares every column the model writes, binary where it holds sealed
/// bytes, with the error at the field. Each name resolves to the table's column through the
/// inner block's glob import, or, when `table!` lacks it, to the local stand-in declared
/// outside it, which is no column: the bound then fails with `ColumnOf`'s message.
fn column_checks(model: &Model<'_>, et: &TokenStream, diesel: &TokenStream) -> TokenStream {
    let Some(table) = &model.table else {
        return TokenStream::new();
    };
    let mut standins = Vec::new();
    let mut checks = Vec::new();
    for (f, e) in model.encrypted_fields() {
        let span = f.ident.span();
        let mut cols = vec![(f.ident.clone(), true)];
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
