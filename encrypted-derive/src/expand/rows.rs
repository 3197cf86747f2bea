//! Rows and writes: the stored row a query reads and opens, and the write struct that seals.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Model;
use crate::attr::DeriveKind;

use super::{
    Names, compound_ident, compound_value, ctx_ident, field_init, idx_ident, row_of, tenant_of,
};

pub(super) fn read_side(
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
            let column = column_attr(name, &f.column);
            quote!(#column #name: #ty)
        })
        .collect();
    // The legacy columns last, in the order `queries` selects them.
    for (_, e) in model.encrypted_fields() {
        if let Some(legacy) = &e.migrate_from {
            let inner = e.inner;
            let field = legacy_field(legacy);
            fields.push(
                quote!(#[diesel(column_name = #legacy)] #field: ::core::option::Option<#inner>),
            );
        }
    }
    let tenant = tenant_of(model, &quote!(row), et);
    let pk: Vec<_> = model
        .primary_key
        .iter()
        .filter(|pk| model.fields.iter().any(|f| f.ident == *pk))
        .collect();
    // Each key field as a part by its type (`ToKeyPart`), else by its `Debug` text: the
    // message then prints it by `RowKey`'s rule, and `Unreadable::key` holds it in full.
    let key = quote!({
        #[allow(unused_imports)]
        use #et::{ViaDebug as _, ViaToKeyPart as _};
        #et::RowKey(::std::vec![#((&#et::KeyPartOf(&row.#pk)).key_part()),*])
    });
    let opens = model.encrypted_fields().map(|(f, e)| {
        let name = f.ident;
        // Errors name the SQL column: that is where an operator looks.
        let column = crate::ast::sql_name(&f.column);
        let inner = e.inner;
        let ctx = ctx_ident(model, f);
        // Opened under its header's key (and, for `bind_row`, with the row's identity); the
        // row's tenant must own it. The fields share the keyring read and the per-nonce state
        // (`__open`), are checked against the row's tenant by reference, and are reported to
        // the audit sink together, once the row is open (`__opened`).
        let row = row_arg(model);
        let open = quote! {
            match __keys.get().and_then(|__k| {
                #et::Encrypted::<#inner, #ctx>::open_in_row(&mut __open, __k, bytes, #row, __tenant.as_ref())
            }) {
                ::core::result::Result::Ok(v) => {
                    if let ::core::option::Option::Some(__slot) = __opened.get_mut(__n) {
                        *__slot = #column;
                        __n += 1;
                    }
                    v
                }
                ::core::result::Result::Err(e) => {
                    // The values this row opened before the failure were decrypted: reported.
                    #et::audit_row(__tenant.as_ref(), #table_name, __opened.get(..__n).unwrap_or_default());
                    return ::core::result::Result::Err(#et::Unreadable::new(#key, #table_name, #column, e));
                }
            }
        };
        let legacy_row = e.migrate_from.as_ref().map(legacy_field);
        let value = match (&legacy_row, e.optional) {
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
                let legacy_name = e.migrate_from.as_ref().map(crate::ast::sql_name).unwrap_or_default();
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
    let encrypted = model.encrypted_fields().count();
    let queryable = model.wants(DeriveKind::Queryable).then(|| {
        quote! {
            impl #et::FallibleModel for #ident {
                type Raw = #read;
                fn open(row: #read) -> ::core::result::Result<Self, ::std::boxed::Box<#et::Unreadable>> {
                    let __tenant: ::core::option::Option<#et::TenantId> = #tenant;
                    #read_row
                    let __keys = #et::RowKeys::load();
                    let mut __open = #et::format::RowOpen::new();
                    let mut __opened: [&'static str; #encrypted] = [""; #encrypted];
                    let mut __n: usize = 0;
                    #(#opens)*
                    #et::audit_row(__tenant.as_ref(), #table_name, __opened.get(..__n).unwrap_or_default());
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

pub(super) fn write_side(
    model: &Model<'_>,
    names: &Names,
    et: &TokenStream,
    diesel: &TokenStream,
) -> TokenStream {
    let ident = model.ident;
    let write = &names.write;
    let table = &model.table;
    // Diesel leaves out of an update's SET the fields whose *column* is named here.
    let pk: Vec<&syn::Ident> = model
        .primary_key
        .iter()
        .map(|p| model.column_of(p))
        .collect();
    let mut fields = Vec::new();
    let mut init = Vec::new();
    for f in &model.fields {
        let name = f.ident;
        match &f.encrypted {
            None => {
                let ty = f.ty;
                let column = column_attr(name, &f.column);
                fields.push(quote!(#column #name: #ty));
                init.push(quote!(#name: ::core::clone::Clone::clone(&m.#name)));
            }
            Some(e) => {
                // Sealed and indexed here, once, from a borrow of the model's value: `ToSql`
                // only writes the bytes (`Written`).
                let ty = written_ty(e.optional, et);
                let column = column_attr(name, &f.column);
                fields.push(quote!(#column #name: #ty));
                let inner = e.inner;
                let ctx = ctx_ident(model, f);
                let row = row_arg(model);
                init.push(field_init(name, name, e.optional, |v| {
                    quote!(#et::Written::new(match &mut __seal {
                        ::core::result::Result::Ok(s) => #et::Encrypted::<#inner, #ctx>::seal_in_row(s, #v, #row),
                        ::core::result::Result::Err(e) => ::core::result::Result::Err(::core::clone::Clone::clone(e)),
                    }))
                }));
                if let Some(index) = &e.index {
                    let column = &index.column;
                    let ty = written_ty(e.optional, et);
                    let idx = idx_ident(model, f);
                    fields.push(quote!(#column: #ty));
                    init.push(field_init(column, name, e.optional, |v| {
                        quote!(#et::Written::new(__keys.get().and_then(|__k| {
                            <#idx as #et::IndexSpec>::PARAMS.compute(__k, __tenant.as_ref(), #v)
                        })))
                    }));
                }
                // Every write clears the legacy plaintext: the row's value now lives sealed.
                if let Some(legacy) = &e.migrate_from {
                    let inner = e.inner;
                    let field = legacy_field(legacy);
                    fields.push(quote!(
                        #[diesel(treat_none_as_null = true, column_name = #legacy)]
                        #field: ::core::option::Option<#inner>
                    ));
                    init.push(quote!(#field: ::core::option::Option::None));
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
        let compute = quote!(#et::Written::new(__keys.get().and_then(|__k| __c.compute_with(__k))));
        let ty = written_ty(optional, et);
        fields.push(quote!(#column: #ty));
        if optional {
            init.push(
                quote!(#column: (|| ::core::option::Option::Some(#value))().map(|__c| #compute)),
            );
        } else {
            init.push(quote!(#column: { let __c = #value; #compute }));
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
                // One keyring read, one key and one nonce for the whole row (ADR 0004).
                let __keys = #et::RowKeys::load();
                let mut __seal = __keys
                    .get()
                    .and_then(|__k| __k.primary_key(__tenant.as_ref()))
                    .and_then(#et::format::RowSeal::new);
                Self { #(#init),* }
            }
        }
        #impls
    }
}

/// `#[diesel(column_name = ..)]` on a generated field whose column is not its name.
fn column_attr(field: &syn::Ident, column: &syn::Ident) -> TokenStream {
    if field == column {
        TokenStream::new()
    } else {
        quote!(#[diesel(column_name = #column)])
    }
}

/// The generated field of a legacy column: a name of its own, because a field may keep the
/// legacy column's name while its sealed values live in another column.
fn legacy_field(legacy: &syn::Ident) -> syn::Ident {
    quote::format_ident!("__legacy_{}", legacy)
}

/// `Written`, or `Option<Written>` for an optional field: the bytes a write struct binds.
fn written_ty(optional: bool, et: &TokenStream) -> TokenStream {
    if optional {
        quote!(::core::option::Option<#et::Written>)
    } else {
        quote!(#et::Written)
    }
}

/// `Some(&__row)` for a `bind_row` model, `None` otherwise: the row a value is bound to.
fn row_arg(model: &Model<'_>) -> TokenStream {
    if model.bind_row.is_empty() {
        quote!(::core::option::Option::None)
    } else {
        quote!(::core::option::Option::Some(&__row))
    }
}
