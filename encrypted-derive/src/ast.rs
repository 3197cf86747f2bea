//! The model of one annotated struct, built from the parsed attributes.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Fields, GenericArgument, Ident, LitInt, Path, PathArguments, Type,
    Visibility,
};

use crate::attr::{self, DeriveKind, Normalizer};

pub(crate) struct Model<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) input: &'a DeriveInput,
    /// The diesel table module, as written (`patients`, `schema::patients`).
    pub(crate) table: Option<Path>,
    pub(crate) tenant: Option<Ident>,
    pub(crate) primary_key: Vec<Ident>,
    pub(crate) derives: Vec<(DeriveKind, Span)>,
    pub(crate) fields: Vec<Field<'a>>,
    pub(crate) treat_none_as_null: bool,
    /// Whether the derive writes a `Debug` that prints every encrypted field as `<redacted>`.
    pub(crate) redacted_debug: bool,
    /// Whether the model wipes its encrypted fields' plaintext on drop.
    pub(crate) zeroize: bool,
    /// `bind_row`: the fields every encrypted value is bound to, in order (empty if none).
    pub(crate) bind_row: Vec<Ident>,
    pub(crate) bind_row_span: Option<Span>,
    /// `schema = ".."`: the table's schema, bound into every value (suites 4 and 5).
    pub(crate) schema: Option<syn::LitStr>,
    /// `adopt_schema` (`.1`: `adopt_schema(prepare)`): values sealed before the model named
    /// its schema still open.
    pub(crate) adopt_schema: Option<(Span, bool)>,
    /// `compound_index(...)`: indexes over several fields.
    pub(crate) compounds: Vec<Compound>,
}

/// One compound index.
pub(crate) struct Compound {
    /// Its name (`name_dob`): the methods' and the key's; `None` is reported by `valid`.
    pub(crate) name: Option<Ident>,
    /// Each field with its normalizers, in order.
    pub(crate) fields: Vec<(Ident, Vec<(Normalizer, Span)>)>,
    /// Column, bits, version, previous (no normalizers of its own).
    pub(crate) index: Index,
}

/// The SQL name of an identifier: `r#type` is the column `type`.
pub(crate) fn sql_name(ident: &Ident) -> String {
    use syn::ext::IdentExt;
    ident.unraw().to_string()
}

pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    /// The SQL column: the field's name unless `column = ..` or `column_name = ..` says
    /// otherwise.
    pub(crate) column: Ident,
    pub(crate) ty: &'a Type,
    pub(crate) encrypted: Option<Encrypted<'a>>,
    pub(crate) stray_index: Option<Span>,
    /// `#[diesel(skip_insertion)]`: the insert leaves the column to the database.
    pub(crate) skip_insertion: Option<Span>,
}

pub(crate) struct Encrypted<'a> {
    /// `T` for a field of type `T` or `Option<T>`.
    pub(crate) inner: &'a Type,
    pub(crate) optional: bool,
    /// What the type is, by its name; `None` if unsupported.
    pub(crate) kind: Option<ValueKind>,
    pub(crate) index: Option<Index>,
    /// `migrate_from = ...`: the legacy plaintext column read while it is non-NULL.
    pub(crate) migrate_from: Option<Ident>,
    /// The context name every value and blind index is bound to (FORMAT §2): the field's
    /// name unless `context = ".."` pins it, never the SQL column, so a rename stores nothing
    /// new.
    pub(crate) context: String,
    /// Where the context name came from, for errors.
    pub(crate) context_span: Span,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    String,
    Bytes,
    Json,
    Other,
}

pub(crate) struct Index {
    pub(crate) span: Span,
    pub(crate) column: Ident,
    /// The `column = ...` the user wrote, for spans.
    pub(crate) explicit_column: bool,
    pub(crate) bits: Option<LitInt>,
    pub(crate) version: Option<LitInt>,
    /// During a blind-index key rotation: the version whose indexes lookups also match.
    pub(crate) previous: Option<LitInt>,
    /// The previous version's length, if it differs from this one's.
    pub(crate) previous_bits: Option<LitInt>,
    /// The previous version's normalizers, if they differ from this one's.
    pub(crate) previous_normalize: Option<Vec<(Normalizer, Span)>>,
    /// Whether the previous version derives from the retired root key.
    pub(crate) previous_root_retired: bool,
    pub(crate) normalize: Vec<(Normalizer, Span)>,
}

impl Index {
    /// From its attribute; the column defaults to `<base>_bidx`.
    fn from_attr(i: attr::IndexAttr, base: &Ident) -> Self {
        Index {
            span: i.span,
            explicit_column: i.column.is_some(),
            column: i
                .column
                .unwrap_or_else(|| quote::format_ident!("{}_bidx", base)),
            bits: i.bits,
            version: i.version,
            previous: i.previous,
            previous_bits: i.previous_bits,
            previous_normalize: i.previous_normalize,
            previous_root_retired: i.previous_root_retired,
            normalize: i.normalize,
        }
    }

    pub(crate) fn bits_value(&self) -> u16 {
        self.bits
            .as_ref()
            .and_then(|b| b.base10_parse().ok())
            .unwrap_or(256)
    }

    pub(crate) fn previous_bits_value(&self) -> u16 {
        self.previous_bits
            .as_ref()
            .and_then(|b| b.base10_parse().ok())
            .unwrap_or_else(|| self.bits_value())
    }

    pub(crate) fn previous_normalize(&self) -> &[(Normalizer, Span)] {
        self.previous_normalize
            .as_deref()
            .unwrap_or(&self.normalize)
    }

    pub(crate) fn previous_value(&self) -> Option<u32> {
        self.previous.as_ref().and_then(|v| v.base10_parse().ok())
    }

    pub(crate) fn version_value(&self) -> u32 {
        self.version
            .as_ref()
            .and_then(|v| v.base10_parse().ok())
            .unwrap_or(1)
    }
}

impl<'a> Model<'a> {
    pub(crate) fn from_input(input: &'a DeriveInput) -> syn::Result<Self> {
        let Data::Struct(data) = &input.data else {
            return Err(syn::Error::new(
                input.ident.span(),
                "#[derive(Encrypted)] works on structs with named fields\nhelp: declare the model as `struct Name { field: Type, ... }`",
            ));
        };
        let Fields::Named(named) = &data.fields else {
            return Err(syn::Error::new(
                data.fields.span(),
                "#[derive(Encrypted)] needs named fields\nhelp: declare the model as `struct Name { field: Type, ... }`",
            ));
        };
        let attrs = attr::parse_struct(&input.attrs)?;
        let mut fields = Vec::new();
        for f in &named.named {
            let Some(ident) = f.ident.as_ref() else {
                continue;
            };
            let fa = attr::parse_field(&f.attrs)?;
            let column = fa.column.unwrap_or_else(|| ident.clone());
            let encrypted = fa.encrypted.map(|_| {
                let (inner, optional) = unwrap_option(&f.ty);
                let (context, context_span) = match &fa.context {
                    Some(c) => (c.value(), c.span()),
                    None => (sql_name(ident), ident.span()),
                };
                Encrypted {
                    inner,
                    optional,
                    kind: classify(inner),
                    migrate_from: fa.migrate_from,
                    index: fa.index.map(|i| Index::from_attr(i, &column)),
                    context,
                    context_span,
                }
            });
            fields.push(Field {
                ident,
                column,
                ty: &f.ty,
                encrypted,
                stray_index: fa.stray_index,
                skip_insertion: fa.skip_insertion,
            });
        }
        let default_derives = [
            DeriveKind::Queryable,
            DeriveKind::Selectable,
            DeriveKind::Insertable,
            DeriveKind::AsChangeset,
        ];
        Ok(Model {
            ident: &input.ident,
            vis: &input.vis,
            input,
            table: attrs.table,
            tenant: attrs.tenant,
            primary_key: attrs
                .primary_key
                .unwrap_or_else(|| vec![Ident::new("id", Span::call_site())]),
            derives: attrs.derives.unwrap_or_else(|| {
                default_derives
                    .iter()
                    .map(|d| (*d, Span::call_site()))
                    .collect()
            }),
            fields,
            // A `None` writes NULL unless the model says otherwise: keeping the old value
            // would silently keep data a deletion meant to remove.
            treat_none_as_null: attrs
                .none_is_null
                .or(attrs.treat_none_as_null)
                .unwrap_or(true),
            // Plaintext must not reach logs by `{:?}`: on unless the model writes its own.
            redacted_debug: attrs.redacted_debug.unwrap_or(true),
            zeroize: attrs.zeroize,
            bind_row_span: attrs.bind_row.as_ref().map(|(_, s)| *s),
            bind_row: attrs.bind_row.map(|(f, _)| f).unwrap_or_default(),
            schema: attrs.schema,
            adopt_schema: attrs.adopt_schema,
            compounds: attrs
                .compounds
                .into_iter()
                .map(|c| {
                    let base = c
                        .name
                        .clone()
                        .unwrap_or_else(|| Ident::new("compound", c.index.span));
                    Compound {
                        index: Index::from_attr(c.index, &base),
                        name: c.name,
                        fields: c.fields,
                    }
                })
                .collect(),
        })
    }

    pub(crate) fn wants(&self, kind: DeriveKind) -> bool {
        self.derives.iter().any(|(d, _)| *d == kind)
    }

    /// The SQL table name: the last segment of the table path.
    pub(crate) fn table_name(&self) -> String {
        self.table
            .as_ref()
            .and_then(|p| p.segments.last())
            .map(|s| sql_name(&s.ident))
            .unwrap_or_default()
    }

    pub(crate) fn encrypted_fields(&self) -> impl Iterator<Item = (&Field<'a>, &Encrypted<'a>)> {
        self.fields
            .iter()
            .filter_map(|f| f.encrypted.as_ref().map(|e| (f, e)))
    }

    /// The `bind_row` fields, in binding order (those that exist; `valid` reports the rest).
    pub(crate) fn bind_fields(&self) -> impl Iterator<Item = &Field<'a>> {
        self.bind_row
            .iter()
            .filter_map(|b| self.fields.iter().find(|f| f.ident == b))
    }

    /// Whether `field` is a field of a compound index.
    pub(crate) fn in_compound(&self, field: &Ident) -> bool {
        self.compounds
            .iter()
            .any(|c| c.fields.iter().any(|(f, _)| f == field))
    }

    /// The field named `name`, if it is encrypted.
    pub(crate) fn encrypted_field(&self, name: &Ident) -> Option<(&Field<'a>, &Encrypted<'a>)> {
        self.encrypted_fields().find(|(f, _)| f.ident == name)
    }

    /// The SQL column of field `name` (a primary-key or tenant field), or `name` itself.
    pub(crate) fn column_of<'b>(&'b self, name: &'b Ident) -> &'b Ident {
        self.fields
            .iter()
            .find(|f| f.ident == name)
            .map_or(name, |f| &f.column)
    }

    pub(crate) fn tenant_field(&self) -> Option<&Field<'a>> {
        let t = self.tenant.as_ref()?;
        self.fields.iter().find(|f| f.ident == t)
    }
}

/// `Option<T>` gives `(T, true)`, anything else `(ty, false)`.
pub(crate) fn unwrap_option(ty: &Type) -> (&Type, bool) {
    if let Type::Path(p) = ty
        && p.qself.is_none()
        && let Some(last) = p.path.segments.last()
        && last.ident == "Option"
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(GenericArgument::Type(inner)) = args.args.first()
    {
        return (inner, true);
    }
    (ty, false)
}

/// The supported value types, recognised by their last path segment.
pub(crate) const SUPPORTED: &str = "String, Vec<u8>, bool, i16, i32, i64, f64, NaiveDate, NaiveDateTime, DateTime<Utc>, Uuid, serde_json::Value, Json<T>, and Option<_> of any of them";

fn classify(ty: &Type) -> Option<ValueKind> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    let name = last.ident.to_string();
    match name.as_str() {
        "String" => Some(ValueKind::String),
        "bool" | "i16" | "i32" | "i64" | "f64" | "NaiveDate" | "NaiveDateTime" | "Uuid" => {
            Some(ValueKind::Other)
        }
        // JSON has no one canonical byte form a blind index could be computed from.
        "Value" | "Json" => Some(ValueKind::Json),
        "DateTime" => Some(ValueKind::Other),
        "Vec" => match &last.arguments {
            PathArguments::AngleBracketed(a) => match a.args.first() {
                Some(GenericArgument::Type(Type::Path(inner))) if inner.path.is_ident("u8") => {
                    Some(ValueKind::Bytes)
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}
