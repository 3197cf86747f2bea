//! Markers and metadata: the per-column context and index types, the compound specs and the
//! model's `EncryptedModel` description that jobs and checks read.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::ast::{Compound, Model, ValueKind};

use super::{compound_ident, ctx_ident, idx_ident, prev_compound_ident, prev_idx_ident};

pub(super) fn markers(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let table_name = model.table_name();
    let schema = schema_tokens(model);
    let adopt = adoption_tokens(model, et);
    let mut out = TokenStream::new();
    for (f, e) in model.encrypted_fields() {
        let ctx = ctx_ident(model, f);
        // Values and indexes bind the context name; SQL uses the column.
        let column = e.context.as_str();
        let sql_column = crate::ast::sql_name(&f.column);
        out.extend(quote! {
            #[doc(hidden)]
            #[derive(Debug, Clone, Copy)]
            pub struct #ctx;
            impl #et::ColumnContext for #ctx {
                const TABLE: &'static str = #table_name;
                const COLUMN: &'static str = #column;
                const SQL_COLUMN: &'static str = #sql_column;
                const SCHEMA: ::core::option::Option<&'static str> = #schema;
                const SCHEMA_ADOPTION: #et::format::Adoption = #adopt;
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

/// The `CompoundSpec` of a compound index, and of its previous version during a rotation.
pub(super) fn compound_markers(model: &Model<'_>, c: &Compound, et: &TokenStream) -> TokenStream {
    let Some(name) = &c.name else {
        return TokenStream::new();
    };
    let table_name = model.table_name();
    let name_text = crate::ast::sql_name(name);
    let index_column = crate::ast::sql_name(&c.index.column);
    let fields = c.fields.iter().filter_map(|(field, steps)| {
        let (_, e) = model.encrypted_field(field)?;
        let column = e.context.as_str();
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

/// The model's stage of adopting its schema.
fn adoption_tokens(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    match model.adopt_schema {
        None => quote!(#et::format::Adoption::Done),
        Some((_, true)) => quote!(#et::format::Adoption::Prepare),
        Some((_, false)) => quote!(#et::format::Adoption::Adopt),
    }
}

/// `Some("schema")` or `None`, as the model names it.
fn schema_tokens(model: &Model<'_>) -> TokenStream {
    match &model.schema {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    }
}

pub(super) fn metadata(model: &Model<'_>, et: &TokenStream) -> TokenStream {
    let ident = model.ident;
    let table_name = model.table_name();
    let pk = model
        .primary_key
        .iter()
        .map(|pk| crate::ast::sql_name(model.column_of(pk)));
    let tenant = match &model.tenant {
        Some(t) => {
            let t = crate::ast::sql_name(model.column_of(t));
            quote!(::core::option::Option::Some(#t))
        }
        None => quote!(::core::option::Option::None),
    };
    let columns = model.encrypted_fields().map(|(f, e)| {
        let column = crate::ast::sql_name(&f.column);
        let context = e.context.as_str();
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
                context: #context,
                value_type: <#inner as #et::Plaintext>::TYPE,
                nullable: #nullable,
                indexes: &[#(#indexes),*],
                validate: #et::model_validate::<#inner>,
                legacy: #legacy,
            }
        }
    });
    let bind_row = model.bind_fields().map(|f| {
        let column = crate::ast::sql_name(&f.column);
        let ty = f.ty;
        quote!(#et::RowColumn { column: #column, kind: <#ty as #et::RowIdentity>::KIND })
    });
    let table = &model.table;
    let plain = model.fields.iter().filter(|f| f.encrypted.is_none()).map(|f| {
        let column = crate::ast::sql_name(&f.column);
        let col = &f.column;
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
    let schema = schema_tokens(model);
    let adopt = adoption_tokens(model, et);
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
                schema: #schema,
                schema_adoption: #adopt,
            };
        }
    }
}
