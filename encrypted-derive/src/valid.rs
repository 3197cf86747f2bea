//! Semantic checks: everything that parses but is still wrong. All errors are collected and
//! reported together, each at its own span.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::spanned::Spanned;

use crate::ast::{Model, SUPPORTED, ValueKind};
use crate::attr::{DeriveKind, kw};

pub(crate) fn check(model: &Model<'_>) -> syn::Result<()> {
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut err = |span: Span, msg: String| errors.push(syn::Error::new(span, msg));

    if !model.input.generics.params.is_empty() {
        err(
            model.input.generics.span(),
            "#[derive(Encrypted)] does not support generic models\nhelp: remove the generic parameters".into(),
        );
    }
    if model.table.is_none() {
        err(
            model.ident.span(),
            "missing table name\nhelp: add `#[encrypted(table = your_table)]` (or `#[diesel(table_name = your_table)]`) naming the `diesel::table!` module".into(),
        );
    }
    if let Some(schema) = &model.schema {
        let name = schema.value();
        if name.is_empty() || name.contains('\0') || name.len() > 64 {
            err(
                schema.span(),
                "a schema name has 1 to 64 bytes and no NUL\nhelp: write the schema (on MySQL, the database) the table lives in, as in `schema = \"clinic_a\"`".into(),
            );
        }
    }
    if let (Some((span, _)), None) = (model.adopt_schema, &model.schema) {
        err(
            span,
            "`adopt_schema` needs `schema = \"..\"`\nhelp: adopt_schema reads values sealed before the model named its schema; name the schema, or remove adopt_schema".into(),
        );
    }
    // `find_by_<a>_in` of a field `a` would clash with `find_by_<a_in>` of a field `a_in`.
    let indexed: Vec<String> = model
        .encrypted_fields()
        .filter(|(_, e)| e.index.is_some())
        .map(|(f, _)| crate::ast::sql_name(f.ident))
        .collect();
    for (f, e) in model.encrypted_fields() {
        let name = crate::ast::sql_name(f.ident);
        if e.index.is_some() && indexed.contains(&format!("{name}_in")) {
            err(
                f.ident.span(),
                format!(
                    "the lookups of `{name}` and `{name}_in` would have the same names (`find_by_{name}_in`)\nhelp: rename one of the two fields, or give one of them no blind index"
                ),
            );
        }
    }
    // `migrate_from = x` adds a field `__legacy_x` to the generated row structs.
    for (_, e) in model.encrypted_fields() {
        let Some(legacy) = &e.migrate_from else {
            continue;
        };
        let generated = format!("__legacy_{}", crate::ast::sql_name(legacy));
        if let Some(f) = model
            .fields
            .iter()
            .find(|f| crate::ast::sql_name(f.ident) == generated)
        {
            err(
                f.ident.span(),
                format!(
                    "the field `{generated}` has the name the derive gives the legacy column `{legacy}` in its generated rows\nhelp: rename this field"
                ),
            );
        }
    }
    if model.encrypted_fields().next().is_none() {
        err(
            model.ident.span(),
            "no field is marked #[encrypted]\nhelp: mark the fields to encrypt with `#[encrypted]` or `#[encrypted(blind_index)]`".into(),
        );
    }
    if let Some(t) = &model.tenant {
        match model.tenant_field() {
            None => err(t.span(), format!("no field named `{t}` for the tenant\nhelp: `tenant = ...` names a field of this struct that holds the tenant id")),
            Some(f) if f.encrypted.is_some() => err(t.span(), format!("the tenant field `{t}` cannot be encrypted\nhelp: the tenant selects the keys, so it is stored in clear; remove #[encrypted] from `{t}`")),
            Some(f) if crate::ast::unwrap_option(f.ty).1 => err(f.ty.span(), "the tenant field cannot be an Option\nhelp: every row belongs to exactly one tenant".into()),
            Some(_) => {}
        }
    }
    for pk in &model.primary_key {
        if !model.fields.iter().any(|f| f.ident == pk) && model.wants(DeriveKind::AsChangeset) {
            err(
                pk.span(),
                format!(
                    "no field named `{pk}` for the primary key\nhelp: set `#[encrypted(primary_key(...))]` to this model's primary-key fields"
                ),
            );
        }
    }
    bind_row(model, &mut err);
    let mut seen_derive = Vec::new();
    for (d, span) in &model.derives {
        if seen_derive.contains(d) {
            err(
                *span,
                format!(
                    "`{d:?}` is listed twice\nhelp: valid options are: {}",
                    kw::DERIVES
                ),
            );
        }
        seen_derive.push(*d);
    }

    // Every column name the write row will hold: the fields, then the companions.
    let mut columns: HashMap<String, Span> = HashMap::new();
    for f in &model.fields {
        let name = crate::ast::sql_name(&f.column);
        if columns.insert(name.clone(), f.column.span()).is_some() {
            err(
                f.column.span(),
                format!(
                    "duplicate column `{name}`: two fields of this struct are stored in it\nhelp: give each field its own column with `#[encrypted(column = ..)]` or `#[diesel(column_name = ..)]`"
                ),
            );
        }
    }
    contexts(model, &mut err);
    for f in &model.fields {
        if let Some(span) = f.stray_index {
            err(span, "#[blind_index] must be written inside #[encrypted(...)]: a blind index needs an encrypted field\nhelp: write `#[encrypted(blind_index(...))]`".into());
        }
        let Some(e) = &f.encrypted else { continue };
        if e.kind.is_none() {
            err(
                f.ty.span(),
                format!(
                    "unsupported type for an encrypted field\nhelp: supported types are {SUPPORTED}"
                ),
            );
        }
        if model.primary_key.iter().any(|pk| pk == f.ident) {
            err(
                f.ident.span(),
                format!(
                    "the primary key `{}` cannot be encrypted\nhelp: rows are found by their primary key in SQL; keep it in clear",
                    f.ident
                ),
            );
        }
        if let Some(legacy) = &e.migrate_from {
            if !matches!(e.kind, Some(ValueKind::String | ValueKind::Bytes)) {
                err(
                    legacy.span(),
                    "`migrate_from` reads a legacy TEXT/VARCHAR column into a String field, or a binary column into a Vec<u8> field\nhelp: for another type, convert the column in place and use `encrypted_types::migration` (see KEYS.md)".into(),
                );
            }
            if let Some(_prev) = columns.insert(crate::ast::sql_name(legacy), legacy.span()) {
                err(
                    legacy.span(),
                    format!(
                        "duplicate column `{legacy}`: the legacy column is already a field or another companion column\nhelp: `migrate_from` names the old plaintext column, which no field of this struct maps"
                    ),
                );
            }
        }
        let Some(index) = &e.index else { continue };
        if e.kind == Some(ValueKind::Json) {
            err(
                index.span,
                "a JSON field cannot have a blind index: equal JSON values can be written as different bytes (key order, number forms), so their indexes would differ\nhelp: index a String or scalar field that holds the value to look up".into(),
            );
            continue;
        }
        numbers(index, &mut err);
        if matches!(e.kind, Some(ValueKind::Other | ValueKind::Bytes))
            && let Some((_, span)) = index
                .normalize
                .first()
                .or_else(|| index.previous_normalize.iter().flatten().next())
        {
            err(
                *span,
                format!(
                    "normalizers apply to String fields only\nhelp: remove `normalize` here; valid normalizers for strings are: {}",
                    kw::NORMALIZERS
                ),
            );
        }
        let name = crate::ast::sql_name(&index.column);
        if let Some(_prev) = columns.insert(name.clone(), index.column.span()) {
            let span = if index.explicit_column {
                index.column.span()
            } else {
                index.span
            };
            err(
                span,
                format!(
                    "duplicate column `{name}`: the blind index of `{}` would be stored in a column that another field or index already uses\nhelp: name another companion column with `blind_index(column = ...)`",
                    f.ident
                ),
            );
        }
    }

    for c in &model.compounds {
        compound(model, c, &mut columns, &mut err);
    }

    let mut iter = errors.into_iter();
    match iter.next() {
        None => Ok(()),
        Some(mut first) => {
            first.extend(iter);
            Err(first)
        }
    }
}

/// Context names: what every value of a field is bound to, so two fields of one table may
/// not share one (a value copied between them would open), and an empty one binds nothing.
/// Other models of the same table are out of the derive's sight: the docs say to keep each
/// context name to one column across them.
fn contexts(model: &Model<'_>, err: &mut impl FnMut(Span, String)) {
    let mut seen: HashMap<&str, &syn::Ident> = HashMap::new();
    for (f, e) in model.encrypted_fields() {
        if e.context.is_empty() || e.context.len() > u16::MAX.into() {
            err(
                e.context_span,
                "a context name has 1 to 65535 bytes\nhelp: `context = \"email\"`; by default it is the field's name".into(),
            );
        }
        if let Some(other) = seen.insert(&e.context, f.ident) {
            err(
                e.context_span,
                format!(
                    "fields `{other}` and `{}` have the same context name `{}`\nwhy: a value sealed for one would open as the other\nhelp: give each encrypted field of a table its own `context = \"..\"`",
                    f.ident, e.context
                ),
            );
        }
    }
}

/// The numbers of an index: bits, version, previous.
fn numbers(index: &crate::ast::Index, err: &mut impl FnMut(Span, String)) {
    for bits in index.bits.iter().chain(&index.previous_bits) {
        match bits.base10_parse::<u32>() {
            Ok(1..=256) => {}
            _ => err(bits.span(), "`bits` must be between 1 and 256\nhelp: 256 (the default) keeps the whole HMAC; use `encrypted_types::index::plan(rows, distinct)` to size a truncated index".into()),
        }
    }
    if let Some(v) = &index.version
        && !matches!(v.base10_parse::<u32>(), Ok(1..))
    {
        err(v.span(), "`version` must be a positive integer\nhelp: versions start at 1 and grow with each blind-index key rotation".into());
    }
    if let Some(p) = &index.previous
        && !matches!(p.base10_parse::<u32>(), Ok(n) if n >= 1 && n < index.version_value())
    {
        err(p.span(), "`previous` must be a version below `version`\nhelp: during a blind-index key rotation write `version = N, previous = N - 1`; remove `previous` once the reindex job has finished".into());
    }
}

/// A compound index: named, over 1 to 8 distinct encrypted fields that every write writes.
fn compound(
    model: &Model<'_>,
    c: &crate::ast::Compound,
    columns: &mut HashMap<String, Span>,
    err: &mut impl FnMut(Span, String),
) {
    let span = c.index.span;
    numbers(&c.index, err);
    let Some(name) = &c.name else {
        err(span, "a compound index needs a name\nhelp: `compound_index(name = name_dob, fields(last_name(casefold), date_of_birth))`; the name gives `Model::find_by_name_dob` and the column `name_dob_bidx`".into());
        return;
    };
    let n = c.fields.len();
    if n == 0 || n > 8 {
        err(
            span,
            format!(
                "`compound_index` `{name}` has {n} fields; it takes 1 to 8\nhelp: `fields(last_name(casefold), date_of_birth)`"
            ),
        );
    }
    // Its methods must not clash with those of a field's index or of another compound index
    // (the async ones exist only with the `async` feature, so a clash would surface late).
    let ours = compound_methods(&crate::ast::sql_name(name));
    let mut others: Vec<String> = model
        .encrypted_fields()
        .filter(|(_, e)| e.index.is_some())
        .flat_map(|(f, _)| {
            let f = crate::ast::sql_name(f.ident);
            [
                format!("{f}_eq"),
                format!("{f}_matches"),
                format!("find_by_{f}"),
                format!("{f}_in"),
                format!("find_by_{f}_in"),
                format!("find_by_{f}_async"),
                format!("find_by_{f}_in_async"),
            ]
        })
        .collect();
    for o in &model.compounds {
        if !std::ptr::eq(o, c)
            && let Some(n) = &o.name
        {
            others.extend(compound_methods(&crate::ast::sql_name(n)));
        }
    }
    if let Some(clash) = ours.iter().find(|m| others.contains(m)) {
        err(
            name.span(),
            format!(
                "compound index `{name}` would generate `{clash}`, which a field's index or another compound index generates too\nhelp: name it after what it finds, e.g. `name_dob`, so its methods are its own"
            ),
        );
    }
    let mut seen: Vec<&syn::Ident> = Vec::new();
    for (field, steps) in &c.fields {
        if seen.contains(&field) {
            err(
                field.span(),
                format!("`{field}` is named twice in `{name}`\nhelp: name each field once"),
            );
            continue;
        }
        seen.push(field);
        let Some((f, e)) = model.encrypted_field(field) else {
            err(
                field.span(),
                format!(
                    "`{field}` is not an encrypted field of this struct\nhelp: a compound index covers fields marked #[encrypted]; a clear column is searched with plain SQL"
                ),
            );
            continue;
        };
        match e.kind {
            Some(ValueKind::Json) => err(field.span(), "a JSON field cannot be part of a compound index: equal JSON values can be written as different bytes\nhelp: index a String or scalar field that holds the value to look up".into()),
            Some(ValueKind::String) => {}
            _ => {
                if let Some((_, s)) = steps.first() {
                    err(*s, format!("normalizers apply to String fields only\nhelp: write `{field}` without normalizers"));
                }
            }
        }
        if let Some(legacy) = &e.migrate_from {
            err(
                legacy.span(),
                format!(
                    "`{field}` is still migrated from `{legacy}` and cannot be part of compound index `{name}`\nwhy: while the legacy column holds a value, the backfill of one column cannot compute an index over several\nhelp: finish the migration first (`jobs::encrypt_column`), then add the compound index and run `jobs::reindex`"
                ),
            );
        }
        if e.optional && !model.treat_none_as_null {
            err(
                f.ty.span(),
                format!(
                    "`{field}` may be skipped by this `none = skip` changeset, which would leave compound index `{name}` computed from the other fields only\nhelp: make `{field}` non-optional here, or update through a model that writes every field of `{name}`"
                ),
            );
        }
    }
    let column = crate::ast::sql_name(&c.index.column);
    if columns
        .insert(column.clone(), c.index.column.span())
        .is_some()
    {
        let s = if c.index.explicit_column {
            c.index.column.span()
        } else {
            name.span()
        };
        err(
            s,
            format!(
                "duplicate column `{column}`: compound index `{name}` would be stored in a column that a field or another index already uses\nhelp: name another column with `compound_index(.., column = ...)`"
            ),
        );
    }
}

/// The methods a compound index `name` generates.
fn compound_methods(name: &str) -> [String; 4] {
    [
        format!("{name}_eq"),
        format!("{name}_matches"),
        format!("find_by_{name}"),
        format!("find_by_{name}_async"),
    ]
}

/// Why a row identity must be written by the insert, for every refusal below.
const BIND_ROW_WHY: &str = "a value is bound to its row's identity when it is sealed, before the insert runs, so the identity must be known then";
const BIND_ROW_HELP: &str = "help: make the primary key one the application assigns before the insert, such as a client-generated UUID (`id: Uuid` set with `Uuid::new_v4()`), and bind to it";

fn bind_row(model: &Model<'_>, err: &mut impl FnMut(Span, String)) {
    let Some(span) = model.bind_row_span else {
        return;
    };
    let n = model.bind_row.len();
    if n == 0 || n > 4 {
        err(
            span,
            format!(
                "`bind_row` names {n} fields; it takes 1 to 4\nhelp: name the fields of the row's identity, usually its primary key: `bind_row = id` or `bind_row(clinic_id, patient_no)`"
            ),
        );
    }
    let mut seen: Vec<&syn::Ident> = Vec::new();
    for b in &model.bind_row {
        if seen.contains(&b) {
            err(
                b.span(),
                format!("`{b}` is named twice in `bind_row`\nhelp: name each field once"),
            );
            continue;
        }
        seen.push(b);
        let Some(f) = model.fields.iter().find(|f| f.ident == b) else {
            err(
                b.span(),
                format!(
                    "no field named `{b}` for `bind_row`\nhelp: `bind_row` names the primary-key fields of this struct"
                ),
            );
            continue;
        };
        if f.encrypted.is_some() {
            err(
                b.span(),
                format!(
                    "`bind_row` field `{b}` cannot be encrypted\nhelp: the row's identity is stored in clear, like the primary key; remove #[encrypted] from `{b}` or bind to another field"
                ),
            );
        } else if crate::ast::unwrap_option(f.ty).1 {
            err(
                f.ty.span(),
                format!(
                    "`bind_row` field `{b}` is an Option: a key the database generates (SERIAL, AUTO_INCREMENT) is not known when the values are sealed\nwhy: {BIND_ROW_WHY}\n{BIND_ROW_HELP}"
                ),
            );
        } else if let Some(skip) = f.skip_insertion {
            err(
                skip,
                format!(
                    "`bind_row` field `{b}` is skipped on insert (`skip_insertion`): the database would generate it after the values were sealed\nwhy: {BIND_ROW_WHY}\n{BIND_ROW_HELP}"
                ),
            );
        } else if !model.primary_key.contains(b) {
            err(
                b.span(),
                format!(
                    "`bind_row` field `{b}` is not part of the primary key\nwhy: a binding protects a row only if it is the identity the application finds the row by; a separate row-id column, stored in clear, would be copied along with the value\n{BIND_ROW_HELP}"
                ),
            );
        }
    }
    for pk in &model.primary_key {
        if !model.bind_row.contains(pk) {
            let all: Vec<String> = model.primary_key.iter().map(ToString::to_string).collect();
            err(
                span,
                format!(
                    "`bind_row` leaves out primary-key field `{pk}`\nwhy: rows that share the other key fields would share an identity, and their values could be swapped\nhelp: name every primary-key field: `bind_row({})`",
                    all.join(", ")
                ),
            );
        }
    }
    for (f, e) in model.encrypted_fields() {
        if let Some(legacy) = &e.migrate_from {
            err(
                legacy.span(),
                format!(
                    "`migrate_from` cannot be combined with `bind_row` (field `{}`)\nwhy: while the legacy column holds a value it is the row's value, and plaintext there is bound to nothing\nhelp: finish the migration first (`jobs::encrypt_column`, then drop the legacy column), then declare `bind_row` and run `jobs::rotate_data_keys` once with `JobOptions {{ bind_unbound: true, .. }}`",
                    f.ident
                ),
            );
        }
    }
}
