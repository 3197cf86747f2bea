//! Parsing of the `#[encrypted(...)]` attributes (and the `#[diesel(...)]` keys we read).

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, LitInt, LitStr, Path};

/// Keywords, in one place so error messages and parsers agree.
pub(crate) mod kw {
    pub(crate) const STRUCT_KEYS: &str = "table, schema, adopt_schema, tenant, primary_key, bind_row, derive, none, debug, zeroize, compound_index";
    pub(crate) const NONE_CHOICES: &str = "null, skip";
    pub(crate) const DEBUG_CHOICES: &str = "redacted, none";
    pub(crate) const FIELD_KEYS: &str = "blind_index, migrate_from, column, context";
    pub(crate) const INDEX_KEYS: &str = "normalize, bits, column, version, previous";
    pub(crate) const NORMALIZERS: &str =
        "trim, lowercase, email, digits, casefold, last4, prefix(n)";
    pub(crate) const COMPOUND_KEYS: &str = "name, fields, bits, column, version, previous";
    pub(crate) const DERIVES: &str = "Queryable, Selectable, Insertable, AsChangeset";
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DeriveKind {
    Queryable,
    Selectable,
    Insertable,
    AsChangeset,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Normalizer {
    Trim,
    Lowercase,
    Email,
    Digits,
    Casefold,
    Last4,
    /// `prefix(n)`; `n` is checked by `valid` (0 is refused).
    Prefix(u16),
}

impl Normalizer {
    /// The library's `Normalizer` variant, as an expression after `Normalizer::`.
    pub(crate) fn variant(self) -> proc_macro2::TokenStream {
        match self {
            Self::Trim => quote::quote!(Trim),
            Self::Lowercase => quote::quote!(Lowercase),
            Self::Email => quote::quote!(Email),
            Self::Digits => quote::quote!(Digits),
            Self::Casefold => quote::quote!(Casefold),
            Self::Last4 => quote::quote!(Last4),
            Self::Prefix(n) => quote::quote!(Prefix(#n)),
        }
    }
}

/// The struct-level attributes.
#[derive(Default)]
pub(crate) struct StructAttrs {
    pub(crate) table: Option<Path>,
    pub(crate) tenant: Option<Ident>,
    pub(crate) primary_key: Option<Vec<Ident>>,
    pub(crate) derives: Option<Vec<(DeriveKind, Span)>>,
    /// `#[diesel(treat_none_as_null = ..)]`, if written.
    pub(crate) treat_none_as_null: Option<bool>,
    /// `#[encrypted(none = null | skip)]`: whether an update writes NULL for a `None` field.
    pub(crate) none_is_null: Option<bool>,
    /// `#[encrypted(debug = redacted | none)]`: whether the derive writes the model's `Debug`.
    pub(crate) redacted_debug: Option<bool>,
    /// `#[encrypted(zeroize)]`: wipe the model's plaintext fields when it is dropped.
    pub(crate) zeroize: bool,
    /// `#[encrypted(bind_row = f)]` or `bind_row(a, b)`: the fields every value is bound to,
    /// with the span of the key.
    pub(crate) bind_row: Option<(Vec<Ident>, Span)>,
    /// `#[encrypted(compound_index(...))]`, each.
    pub(crate) compounds: Vec<CompoundAttr>,
    /// `#[encrypted(schema = "..")]`: the table's schema, bound into every value.
    pub(crate) schema: Option<LitStr>,
    /// `#[encrypted(adopt_schema)]` or `adopt_schema(prepare)`: values sealed before the
    /// model named its schema still open, until a rotation has re-sealed them; the span of the
    /// key, and whether it only prepares (seals without the schema).
    pub(crate) adopt_schema: Option<(Span, bool)>,
}

/// `compound_index(name = n, fields(a(casefold), b), bits = .., column = .., version = ..,
/// previous = ..)`.
pub(crate) struct CompoundAttr {
    pub(crate) name: Option<Ident>,
    /// Each field with its normalizers, in order.
    pub(crate) fields: Vec<(Ident, Vec<(Normalizer, Span)>)>,
    /// The keys it shares with `blind_index` (no `normalize`: that is per field).
    pub(crate) index: IndexAttr,
}

/// One field's attributes.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    /// Span of the `#[encrypted]` attribute, if present.
    pub(crate) encrypted: Option<Span>,
    pub(crate) index: Option<IndexAttr>,
    /// A stray `#[blind_index]` outside `#[encrypted(...)]`.
    pub(crate) stray_index: Option<Span>,
    /// `migrate_from = legacy_column`: the plaintext column this field is migrated from.
    pub(crate) migrate_from: Option<Ident>,
    /// `#[diesel(skip_insertion)]`: the insert does not write this field.
    pub(crate) skip_insertion: Option<Span>,
    /// `#[encrypted(column = x)]` or diesel's `#[diesel(column_name = x)]`: the SQL column,
    /// when it is not the field's name.
    pub(crate) column: Option<Ident>,
    /// `#[encrypted(context = "name")]`: the context name bound into every value.
    pub(crate) context: Option<LitStr>,
}

pub(crate) struct IndexAttr {
    pub(crate) span: Span,
    pub(crate) normalize: Vec<(Normalizer, Span)>,
    pub(crate) bits: Option<LitInt>,
    pub(crate) column: Option<Ident>,
    pub(crate) version: Option<LitInt>,
    pub(crate) previous: Option<LitInt>,
    /// `previous(bits = ..)`: the previous version's length, when it differs.
    pub(crate) previous_bits: Option<LitInt>,
    /// `previous(normalize = ..)`: the previous version's normalizers, when they differ.
    pub(crate) previous_normalize: Option<Vec<(Normalizer, Span)>>,
    /// `previous(root = retired)`: the previous version derives from the retired root key.
    pub(crate) previous_root_retired: bool,
}

impl IndexAttr {
    fn new(span: Span) -> Self {
        Self {
            span,
            normalize: Vec::new(),
            bits: None,
            column: None,
            version: None,
            previous: None,
            previous_bits: None,
            previous_normalize: None,
            previous_root_retired: false,
        }
    }
}

fn parse_compound(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<CompoundAttr> {
    let mut out = CompoundAttr {
        name: None,
        fields: Vec::new(),
        index: IndexAttr::new(meta.path.span()),
    };
    meta.parse_nested_meta(|m| {
        if m.path.is_ident("name") {
            once(&m, out.name.is_some())?;
            out.name = Some(m.value()?.parse()?);
        } else if m.path.is_ident("fields") {
            once(&m, !out.fields.is_empty())?;
            m.parse_nested_meta(|f| {
                let field = f.path.require_ident()?.clone();
                let mut steps = Vec::new();
                if f.input.peek(syn::token::Paren) {
                    f.parse_nested_meta(|n| {
                        steps.push(step(&n)?);
                        Ok(())
                    })?;
                }
                out.fields.push((field, steps));
                Ok(())
            })?;
        } else if m.path.is_ident("normalize") {
            return Err(m.error("a compound index has normalizers per field\nhelp: write them after each field: `fields(last_name(casefold), ssn(last4))`"));
        } else if ["bits", "column", "version", "previous"]
            .iter()
            .any(|k| m.path.is_ident(k))
        {
            parse_index_key(&m, &mut out.index)?;
            if out.index.previous_normalize.is_some() {
                return Err(m.error("a compound index's previous version has the same fields and normalizers\nhelp: `previous(version = .., bits = .., root = retired)`; for other fields or normalizers declare a new compound index"));
            }
        } else {
            return Err(unknown(
                m.path.span(),
                "key in compound_index(...)",
                kw::COMPOUND_KEYS,
            ));
        }
        Ok(())
    })?;
    Ok(out)
}

/// One normalizer in a list: a name, or `prefix(n)`.
fn step(n: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<(Normalizer, Span)> {
    let ident = n.path.require_ident()?;
    if ident == "prefix" {
        if !n.input.peek(syn::token::Paren) {
            return Err(n.error(
                "`prefix` takes its length\nhelp: write `prefix(3)` for the first three characters",
            ));
        }
        let content;
        syn::parenthesized!(content in n.input);
        let lit: LitInt = content.parse()?;
        let len = lit.base10_parse::<u16>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            syn::Error::new(lit.span(), "`prefix(n)` keeps 1 to 65535 characters\nhelp: write `prefix(3)` for the first three characters")
        })?;
        return Ok((Normalizer::Prefix(len), ident.span()));
    }
    normalizer(ident)
}

fn unknown(span: Span, what: &str, valid: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!("unknown {what}\nhelp: valid options are: {valid}"),
    )
}

pub(crate) fn parse_struct(attrs: &[Attribute]) -> syn::Result<StructAttrs> {
    let mut out = StructAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("encrypted") {
            attr.parse_nested_meta(|meta| {
                let duplicate = |set: bool| {
                    if set {
                        Err(meta.error("this key is given twice\nhelp: give each key once"))
                    } else {
                        Ok(())
                    }
                };
                if meta.path.is_ident("table") {
                    duplicate(out.table.is_some())?;
                    out.table = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("schema") {
                    duplicate(out.schema.is_some())?;
                    out.schema = Some(meta.value()?.parse().map_err(|e: syn::Error| {
                        syn::Error::new(
                            e.span(),
                            "`schema` takes the schema's name as a string\nhelp: write `schema = \"clinic_a\"`",
                        )
                    })?);
                } else if meta.path.is_ident("adopt_schema") {
                    duplicate(out.adopt_schema.is_some())?;
                    let span = meta.path.span();
                    let mut prepare = false;
                    if meta.input.peek(syn::token::Paren) {
                        meta.parse_nested_meta(|m| {
                            if m.path.is_ident("prepare") && !prepare {
                                prepare = true;
                                Ok(())
                            } else {
                                Err(m.error("unknown stage of adopt_schema\nhelp: `adopt_schema(prepare)` reads values with the schema but still seals without it (the first deploy); `adopt_schema` seals with it"))
                            }
                        })?;
                    }
                    out.adopt_schema = Some((span, prepare));
                } else if meta.path.is_ident("tenant") {
                    duplicate(out.tenant.is_some())?;
                    out.tenant = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("primary_key") {
                    duplicate(out.primary_key.is_some())?;
                    out.primary_key = Some(parse_idents(&meta)?);
                } else if meta.path.is_ident("derive") {
                    duplicate(out.derives.is_some())?;
                    let mut list = Vec::new();
                    meta.parse_nested_meta(|d| {
                        let kind = match d.path.get_ident().map(ToString::to_string).as_deref() {
                            Some("Queryable") => DeriveKind::Queryable,
                            Some("Selectable") => DeriveKind::Selectable,
                            Some("Insertable") => DeriveKind::Insertable,
                            Some("AsChangeset") => DeriveKind::AsChangeset,
                            _ => return Err(unknown(d.path.span(), "derive", kw::DERIVES)),
                        };
                        list.push((kind, d.path.span()));
                        Ok(())
                    })?;
                    out.derives = Some(list);
                } else if meta.path.is_ident("none") {
                    duplicate(out.none_is_null.is_some())?;
                    let choice: Ident = meta.value()?.parse()?;
                    out.none_is_null = Some(match choice.to_string().as_str() {
                        "null" => true,
                        "skip" => false,
                        _ => return Err(unknown(choice.span(), "`none` choice", kw::NONE_CHOICES)),
                    });
                } else if meta.path.is_ident("zeroize") {
                    duplicate(out.zeroize)?;
                    out.zeroize = true;
                } else if meta.path.is_ident("bind_row") {
                    duplicate(out.bind_row.is_some())?;
                    let span = meta.path.span();
                    let fields = if meta.input.peek(syn::Token![=]) {
                        vec![meta.value()?.parse()?]
                    } else {
                        parse_idents(&meta)?
                    };
                    out.bind_row = Some((fields, span));
                } else if meta.path.is_ident("compound_index") {
                    out.compounds.push(parse_compound(&meta)?);
                } else if meta.path.is_ident("debug") {
                    duplicate(out.redacted_debug.is_some())?;
                    let choice: Ident = meta.value()?.parse()?;
                    out.redacted_debug = Some(match choice.to_string().as_str() {
                        "redacted" => true,
                        "none" => false,
                        _ => {
                            return Err(unknown(
                                choice.span(),
                                "`debug` choice",
                                kw::DEBUG_CHOICES,
                            ));
                        }
                    });
                } else {
                    return Err(unknown(
                        meta.path.span(),
                        "key in #[encrypted(...)]",
                        kw::STRUCT_KEYS,
                    ));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("diesel") {
            // Read the keys diesel users already write; leave the rest to diesel.
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("table_name") {
                    let path: Path = meta.value()?.parse()?;
                    out.table.get_or_insert(path);
                } else if meta.path.is_ident("primary_key") {
                    let pk = parse_idents(&meta)?;
                    out.primary_key.get_or_insert(pk);
                } else if meta.path.is_ident("treat_none_as_null") {
                    let lit: syn::LitBool = meta.value()?.parse()?;
                    out.treat_none_as_null = Some(lit.value);
                } else if meta.input.peek(syn::Token![=]) {
                    skip_value(meta.value()?)?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _content;
                    syn::parenthesized!(_content in meta.input);
                    let _: proc_macro2::TokenStream = _content.parse()?;
                }
                Ok(())
            })?;
        }
    }
    Ok(out)
}

/// Skips a diesel key's value up to the next top-level comma: parsing it as one token stream
/// would swallow the keys after it (`#[diesel(table_name = t, primary_key(a))]`).
fn skip_value(input: syn::parse::ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            if let proc_macro2::TokenTree::Punct(p) = &tt
                && p.as_char() == ','
            {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

fn parse_idents(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Vec<Ident>> {
    let mut idents = Vec::new();
    meta.parse_nested_meta(|m| {
        idents.push(m.path.require_ident()?.clone());
        Ok(())
    })?;
    Ok(idents)
}

pub(crate) fn parse_field(attrs: &[Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    for attr in attrs {
        if attr.path().is_ident("blind_index") {
            out.stray_index = Some(attr.path().span());
        }
        if attr.path().is_ident("diesel") {
            // Only `skip_insertion` and `column_name = x` matter here, wherever they sit among
            // diesel's own keys: found by a scan of the tokens, so no key before them hides them.
            if let syn::Meta::List(list) = &attr.meta {
                let tokens: Vec<_> = list.tokens.clone().into_iter().collect();
                for (i, tt) in tokens.iter().enumerate() {
                    let proc_macro2::TokenTree::Ident(id) = tt else {
                        continue;
                    };
                    if id == "skip_insertion" {
                        out.skip_insertion = Some(id.span());
                    } else if id == "column_name"
                        && let Some(proc_macro2::TokenTree::Punct(eq)) = tokens.get(i + 1)
                        && eq.as_char() == '='
                    {
                        let name = match tokens.get(i + 2) {
                            Some(proc_macro2::TokenTree::Ident(c)) => c.clone(),
                            Some(proc_macro2::TokenTree::Literal(l)) => {
                                let lit: LitStr =
                                    syn::parse2(proc_macro2::TokenTree::Literal(l.clone()).into())?;
                                column_from_str(&lit)?
                            }
                            _ => {
                                return Err(syn::Error::new(
                                    id.span(),
                                    "`column_name` takes the column's name\nhelp: `#[diesel(column_name = email_sealed)]`",
                                ));
                            }
                        };
                        set_column(&mut out, name)?;
                    }
                }
            }
            continue;
        }
        if !attr.path().is_ident("encrypted") {
            continue;
        }
        out.encrypted = Some(attr.span());
        if matches!(attr.meta, syn::Meta::Path(_)) {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("blind_index") {
                if out.index.is_some() {
                    return Err(meta.error(
                        "a field has one blind index\nhelp: remove the second `blind_index`",
                    ));
                }
                let mut index = IndexAttr::new(meta.path.span());
                if meta.input.peek(syn::token::Paren) {
                    meta.parse_nested_meta(|m| parse_index_key(&m, &mut index))?;
                }
                out.index = Some(index);
                Ok(())
            } else if meta.path.is_ident("migrate_from") {
                if out.migrate_from.is_some() {
                    return Err(meta.error("this key is given twice\nhelp: give each key once"));
                }
                out.migrate_from = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("column") {
                set_column(&mut out, meta.value()?.parse()?)
            } else if meta.path.is_ident("context") {
                if out.context.is_some() {
                    return Err(meta.error("this key is given twice\nhelp: give each key once"));
                }
                out.context = Some(meta.value()?.parse()?);
                Ok(())
            } else {
                Err(unknown(
                    meta.path.span(),
                    "key in #[encrypted(...)] on a field",
                    kw::FIELD_KEYS,
                ))
            }
        })?;
    }
    Ok(out)
}

/// Diesel's string form of a column name, `column_name = "type"`: a keyword is the raw
/// identifier Diesel's `table!` declares for it (`r#type`); `"r#type"` is that already.
fn column_from_str(lit: &LitStr) -> syn::Result<Ident> {
    use syn::ext::IdentExt;
    let mut any: Ident = lit.parse_with(Ident::parse_any)?;
    let name = any.to_string();
    if syn::parse_str::<Ident>(&name).is_ok() {
        any.set_span(lit.span());
        return Ok(any);
    }
    if matches!(name.as_str(), "self" | "Self" | "super" | "crate" | "_") {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{name}` cannot name a column\nhelp: rename the column"),
        ));
    }
    Ok(Ident::new_raw(&name, lit.span()))
}

/// Records the field's SQL column, from `#[encrypted(column = ..)]` or diesel's
/// `column_name`: one name, given once.
fn set_column(out: &mut FieldAttrs, name: Ident) -> syn::Result<()> {
    if out.column.is_some() {
        return Err(syn::Error::new(
            name.span(),
            "the field's column is given twice\nhelp: write `#[encrypted(column = ..)]` or `#[diesel(column_name = ..)]`, once",
        ));
    }
    out.column = Some(name);
    Ok(())
}

fn parse_normalize(
    m: &syn::meta::ParseNestedMeta<'_>,
    out: &mut Vec<(Normalizer, Span)>,
) -> syn::Result<()> {
    if m.input.peek(syn::token::Paren) {
        m.parse_nested_meta(|n| {
            out.push(step(&n)?);
            Ok(())
        })
    } else {
        let value = m.value()?;
        // Accept both `normalize = email` and `normalize = "email"`.
        if value.peek(LitStr) {
            let lit: LitStr = value.parse()?;
            out.push(normalizer_named(&lit.value(), lit.span())?);
        } else {
            let ident: Ident = value.parse()?;
            out.push(normalizer(&ident)?);
        }
        Ok(())
    }
}

fn parse_index_key(m: &syn::meta::ParseNestedMeta<'_>, index: &mut IndexAttr) -> syn::Result<()> {
    if m.path.is_ident("normalize") {
        parse_normalize(m, &mut index.normalize)
    } else if m.path.is_ident("bits") {
        once(m, index.bits.is_some())?;
        index.bits = Some(m.value()?.parse()?);
        Ok(())
    } else if m.path.is_ident("column") {
        once(m, index.column.is_some())?;
        index.column = Some(m.value()?.parse()?);
        Ok(())
    } else if m.path.is_ident("previous") {
        once(m, index.previous.is_some())?;
        if !m.input.peek(syn::token::Paren) {
            index.previous = Some(m.value()?.parse()?);
            return Ok(());
        }
        // `previous(version = N, bits = B, normalize = ..)`: a rotation that also changes the
        // length or the normalizers; what is not given is the current version's.
        let span = m.path.span();
        m.parse_nested_meta(|p| {
            if p.path.is_ident("version") {
                once(&p, index.previous.is_some())?;
                index.previous = Some(p.value()?.parse()?);
            } else if p.path.is_ident("bits") {
                once(&p, index.previous_bits.is_some())?;
                index.previous_bits = Some(p.value()?.parse()?);
            } else if p.path.is_ident("normalize") {
                parse_normalize(&p, index.previous_normalize.get_or_insert_with(Vec::new))?;
            } else if p.path.is_ident("root") {
                once(&p, index.previous_root_retired)?;
                let root: Ident = p.value()?.parse()?;
                if root != "retired" {
                    return Err(unknown(root.span(), "`root`", "retired"));
                }
                index.previous_root_retired = true;
            } else {
                return Err(unknown(
                    p.path.span(),
                    "key in previous(...)",
                    "version, bits, normalize, root",
                ));
            }
            Ok(())
        })?;
        if index.previous.is_none() {
            return Err(syn::Error::new(
                span,
                "`previous(...)` needs the previous `version`\nhelp: write `previous(version = N - 1, bits = .., normalize = ..)`",
            ));
        }
        Ok(())
    } else if m.path.is_ident("version") {
        once(m, index.version.is_some())?;
        index.version = Some(m.value()?.parse()?);
        Ok(())
    } else {
        Err(unknown(
            m.path.span(),
            "key in blind_index(...)",
            kw::INDEX_KEYS,
        ))
    }
}

fn once(m: &syn::meta::ParseNestedMeta<'_>, set: bool) -> syn::Result<()> {
    if set {
        Err(m.error("this key is given twice\nhelp: give each key once"))
    } else {
        Ok(())
    }
}

fn normalizer(ident: &Ident) -> syn::Result<(Normalizer, Span)> {
    normalizer_named(&ident.to_string(), ident.span())
}

fn normalizer_named(name: &str, span: Span) -> syn::Result<(Normalizer, Span)> {
    let n = match name {
        "trim" => Normalizer::Trim,
        "lowercase" => Normalizer::Lowercase,
        "email" => Normalizer::Email,
        "digits" => Normalizer::Digits,
        "casefold" => Normalizer::Casefold,
        "last4" => Normalizer::Last4,
        _ => return Err(unknown(span, "normalizer", kw::NORMALIZERS)),
    };
    Ok((n, span))
}
