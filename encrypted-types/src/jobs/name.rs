//! A job's identity: the target each of its units records, and a default name derived from
//! it, so a rerun resumes the same job and a run towards another target starts a new one.

use super::find_column;
use crate::Error;
use crate::format;
use crate::format::key::KeyId;
use crate::index::{CompoundParams, IndexParams};
use crate::keyring::Keyring;
use crate::model::{ColumnInfo, ModelInfo};

/// What a rotation of `c` moves away from: the retired keys and the suite it writes.
pub(super) fn rotate_target(model: &ModelInfo, c: &ColumnInfo, retired: &[KeyId]) -> String {
    let ids: Vec<String> = retired.iter().map(|k| k.get().to_string()).collect();
    format!(
        "{}.{} off keys {} to suite {}",
        model.display_name(),
        c.column,
        ids.join(","),
        format::suite_of(
            !model.bind_row.is_empty(),
            model.site(c).sealing_schema().is_some()
        )
    )
}

/// What a reindex writes: the index's version, length and normalizers.
pub(super) fn reindex_target(model: &ModelInfo, c: &ColumnInfo, params: &IndexParams) -> String {
    let norm: Vec<_> = params.normalize.iter().map(|n| n.label()).collect();
    format!(
        "{}.{} from {} version {} bits {} normalize [{}]",
        model.display_name(),
        params.index_column,
        c.column,
        params.version,
        params.bits,
        norm.join(",")
    )
}

/// What a compound reindex writes: the index's version, length and fields.
pub(super) fn compound_target(model: &ModelInfo, params: &CompoundParams) -> String {
    let fields: Vec<String> = params
        .fields
        .iter()
        .map(|f| {
            let norm: Vec<_> = f.normalize.iter().map(|n| n.label()).collect();
            format!("{}({})", f.column, norm.join(","))
        })
        .collect();
    format!(
        "{}.{} compound {} version {} bits {} fields [{}]",
        model.display_name(),
        params.index_column,
        params.name,
        params.version,
        params.bits,
        fields.join(",")
    )
}

/// What an encryption seals, and from where.
pub(super) fn encrypt_target(model: &ModelInfo, c: &ColumnInfo) -> String {
    match c.legacy {
        Some(legacy) => format!(
            "{}.{} sealed from {}",
            model.display_name(),
            c.column,
            legacy.column
        ),
        None => format!("{}.{} sealed", model.display_name(), c.column),
    }
}

/// A job, for [`default_job_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation<'a> {
    /// [`super::rotate_data_keys`].
    Rotate,
    /// [`super::reindex`].
    Reindex,
    /// [`super::encrypt_column`] of one column.
    Encrypt {
        /// The encrypted column.
        column: &'a str,
    },
}

/// A name for a job of `model` that follows its target: `rotate-patients-1a2b3c4d`, a digest
/// of what every unit of the job records (the retired keys of the installed keyring, the
/// index versions and parameters, the column sealed). Running again with the same name resumes
/// the job or finds it finished; after a key rotation, an index change or a destroyed key the
/// name changes with the target, so no run meets [`Error::JobMismatch`].
///
/// # Errors
/// [`Error::NoKeyring`] (rotation reads the installed keyring's retired keys);
/// [`Error::Store`] for an `Encrypt` column that is not encrypted.
pub fn default_job_name(model: &ModelInfo, op: Operation<'_>) -> Result<String, Error> {
    use sha2::Digest as _;
    let (name, targets): (&str, Vec<String>) = match op {
        Operation::Rotate => {
            let mut retired = Keyring::complete()?.retired_key_ids();
            retired.sort();
            let t = model
                .columns
                .iter()
                .map(|c| rotate_target(model, c, &retired))
                .collect();
            ("rotate", t)
        }
        Operation::Reindex => {
            let t = model
                .columns
                .iter()
                .flat_map(|c| c.indexes.iter().map(move |p| reindex_target(model, c, p)))
                .chain(model.compound.iter().map(|p| compound_target(model, p)))
                .collect();
            ("reindex", t)
        }
        Operation::Encrypt { column } => (
            "encrypt",
            vec![encrypt_target(model, find_column(model, column)?)],
        ),
    };
    let mut h = sha2::Sha256::new();
    for t in &targets {
        // Length-prefixed, so two lists of targets never hash alike.
        h.update((t.len() as u64).to_be_bytes());
        h.update(t.as_bytes());
    }
    let digest: String = h
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{name}-{}-{digest}", model.display_name()))
}
