//! Lookups: the blind-index queries on the model, per field and per compound index.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::ast::{Compound, Model, ValueKind};
use crate::attr::DeriveKind;

use super::{
    Names, compound_ident, compound_value, idx_ident, prev_compound_ident, prev_idx_ident,
};

pub(super) fn queries(
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
        .map(|f| &f.column)
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
                let tname = &t.column;
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
                let tname = &t.column;
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
pub(super) fn compound_queries(
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
            let (tname, tty) = (&t.column, t.ty);
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
