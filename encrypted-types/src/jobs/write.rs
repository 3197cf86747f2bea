//! What a pass writes for one value, and why it leaves one alone.

#[allow(clippy::wildcard_imports)] // the job engine's parts share its imports and types
use super::*;

/// A value ready to be written: the row's key, the bytes read (the compare-and-swap's
/// condition, wiped after use: legacy plaintext during an encryption) and the columns to set.
pub(super) struct Write {
    pub(super) key: Vec<KeyPart>,
    pub(super) old: Zeroizing<Vec<u8>>,
    /// A compound index's fields as read (the compare-and-swap compares them all).
    pub(super) more: Vec<Option<Zeroizing<Vec<u8>>>>,
    pub(super) sets: Sets,
}

/// The columns a write sets: bytes, or `NULL` for `None`.
pub(super) type Sets = Vec<(&'static str, Option<Vec<u8>>)>;

pub(super) enum Outcome {
    Write(Sets),
    Nothing,
    Skip(SkipReason),
}

/// What `pass` would write for a row holding `value` (and `more`, a compound index's fields;
/// tenant text `tenant`, index `index`).
#[allow(clippy::too_many_arguments)] // one row as read, field by field
pub(super) fn prepare(
    keyring: &Keyring,
    t: &Table,
    pass: &Pass<'_>,
    value: &[u8],
    more: &[Option<Zeroizing<Vec<u8>>>],
    index: Option<&[u8]>,
    tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Result<Outcome, Error> {
    let c = pass.column;
    match &pass.op {
        Op::Rotate { .. } => {
            if foreign_tenant(keyring, t, value, tenant) {
                return Ok(Outcome::Skip(SkipReason::TenantMismatch));
            }
            if let Some(r) = t.unbound(value) {
                return Ok(Outcome::Skip(r));
            }
            match format::reseal(keyring, &t.site(c), bind, value) {
                Ok(Some(new)) => Ok(Outcome::Write(vec![(c.column, Some(new))])),
                Ok(None) => Ok(Outcome::Nothing),
                Err(e @ Error::NoKeyring) => Err(e),
                Err(e) => Ok(Outcome::Skip(SkipReason::of(&e))),
            }
        }
        Op::Reindex { params } => match fresh_index(keyring, t, c, params, value, tenant, bind) {
            Ok(new) if index == Some(new.as_slice()) => Ok(Outcome::Nothing),
            Ok(new) => Ok(Outcome::Write(vec![(params.index_column, Some(new))])),
            Err(r) => Ok(Outcome::Skip(r)),
        },
        Op::Compound { params, .. } => match fresh_compound(keyring, t, params, more, tenant, bind)
        {
            Ok(new) if index == new.as_deref() => Ok(Outcome::Nothing),
            Ok(new) => Ok(Outcome::Write(vec![(params.index_column, new)])),
            Err(r) => Ok(Outcome::Skip(r)),
        },
        Op::Encrypt | Op::Backfill { .. } => {
            if let Op::Backfill { legacy } = &pass.op {
                // Whatever the legacy column holds is plaintext; only its encoding is checked.
                if (c.validate)(value).is_err() {
                    return Ok(Outcome::Skip(SkipReason::InvalidLegacyValue));
                }
                let mut sets = seal_legacy(keyring, t, c, value, tenant, bind);
                if let Outcome::Write(sets) = &mut sets {
                    sets.push((legacy.column, None));
                }
                return Ok(sets);
            }
            match legacy_state(keyring, t, c, value, bind) {
                LegacyState::Done => Ok(Outcome::Nothing),
                LegacyState::Bad(r) => Ok(Outcome::Skip(r)),
                LegacyState::Todo => Ok(seal_legacy(keyring, t, c, value, tenant, bind)),
            }
        }
    }
}

/// A legacy value sealed under the row's tenant key, with its blind indexes.
pub(super) fn seal_legacy(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    value: &[u8],
    tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Outcome {
    let tenant = tenant.map(crate::TenantId::from);
    let sealed = match format::seal_raw(keyring, &t.site(c), tenant.as_ref(), bind, value) {
        Ok(s) => s,
        Err(e) => return Outcome::Skip(SkipReason::of(&e)),
    };
    let mut sets = vec![(c.column, Some(sealed))];
    for params in c.indexes {
        match params.compute_raw(keyring, tenant.as_ref(), c.value_type, value) {
            Ok(i) => sets.push((params.index_column, Some(i))),
            Err(e) => return Outcome::Skip(SkipReason::of(&e)),
        }
    }
    Outcome::Write(sets)
}

/// Whether a sealed value's key belongs to another tenant than its row: a ciphertext copied
/// across tenants, which a job must neither re-seal nor index under the row's name.
pub(super) fn foreign_tenant(
    keyring: &Keyring,
    t: &Table,
    value: &[u8],
    row: Option<&str>,
) -> bool {
    if !t.has_tenant {
        return false;
    }
    let Ok(h) = format::Header::parse(value) else {
        return false;
    };
    let Ok(key) = keyring.key(h.key_id) else {
        return false;
    };
    key.tenant().map(crate::TenantId::as_str) != row
}

/// The index `params` gives the value sealed in `value`, or why it cannot be computed.
pub(super) fn fresh_index(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    params: &IndexParams,
    value: &[u8],
    row_tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Result<Vec<u8>, SkipReason> {
    if foreign_tenant(keyring, t, value, row_tenant) {
        return Err(SkipReason::TenantMismatch);
    }
    if let Some(r) = t.unbound(value) {
        return Err(r);
    }
    let (plain, tenant) =
        format::open_raw(keyring, &t.site(c), bind, value).map_err(|e| SkipReason::of(&e))?;
    params
        .compute_raw(keyring, tenant.as_ref(), c.value_type, &plain)
        .map_err(|e| SkipReason::of(&e))
}

/// The compound index `params` gives a row whose fields hold `fields` (`None`: NULL, and then
/// so is the index), or why it cannot be computed. Each field is opened as the application
/// reads it: under its row's tenant, bound to its row where the model binds.
pub(super) fn fresh_compound(
    keyring: &Keyring,
    t: &Table,
    params: &CompoundParams,
    fields: &[Option<Zeroizing<Vec<u8>>>],
    row_tenant: Option<&str>,
    bind: Option<&RowBinding>,
) -> Result<Option<Vec<u8>>, SkipReason> {
    if fields.len() != params.fields.len() {
        return Err(SkipReason::of(&Error::InvalidIndex(
            "a compound index read with the wrong number of fields",
        )));
    }
    if fields.iter().any(Option::is_none) {
        return Ok(None);
    }
    let mut plains = Vec::with_capacity(fields.len());
    let mut tenant = None;
    for (f, value) in params.fields.iter().zip(fields.iter().flatten()) {
        if foreign_tenant(keyring, t, value, row_tenant) {
            return Err(SkipReason::TenantMismatch);
        }
        if let Some(r) = t.unbound(value) {
            return Err(r);
        }
        let (plain, owner) =
            format::open_raw(keyring, &t.site_of(f.column, f.value_type), bind, value)
                .map_err(|e| SkipReason::of(&e))?;
        plains.push(plain);
        tenant = owner;
    }
    let refs: Vec<Option<&[u8]>> = plains.iter().map(|p| Some(&p[..])).collect();
    params
        .compute_raw(keyring, tenant.as_ref(), &refs)
        .map_err(|e| SkipReason::of(&e))
}

/// What an encryption pass makes of a stored value.
pub(super) enum LegacyState {
    /// Sealed, and it opens (or its key was destroyed: sealed, and gone for good).
    Done,
    /// Legacy plaintext, a valid encoding of the field's type: to seal.
    Todo,
    /// Neither: reported, left as it is, and the column is not done.
    Bad(SkipReason),
}

pub(super) fn legacy_state(
    keyring: &Keyring,
    t: &Table,
    c: &ColumnInfo,
    value: &[u8],
    bind: Option<&RowBinding>,
) -> LegacyState {
    match format::classify(keyring, value) {
        // Opened, not assumed: a legacy value that happens to look sealed fails here and is
        // reported instead of passing for done.
        format::Stored::Sealed if t.unbound(value).is_some() => {
            LegacyState::Bad(SkipReason::RowBinding)
        }
        format::Stored::Sealed => match format::open_raw(keyring, &t.site(c), bind, value) {
            Ok(_) | Err(Error::KeyDestroyed(_)) => LegacyState::Done,
            Err(e) => LegacyState::Bad(SkipReason::of(&e)),
        },
        format::Stored::Unknown => LegacyState::Bad(SkipReason::UnknownKey),
        // Decode-checked first: a value that is not a valid encoding of the column's type
        // would seal into something every later read fails on.
        _ if (c.validate)(value).is_err() => LegacyState::Bad(SkipReason::InvalidLegacyValue),
        _ => LegacyState::Todo,
    }
}
