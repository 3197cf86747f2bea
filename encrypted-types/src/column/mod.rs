//! The Diesel glue: [`crate::Encrypted`] and its context, its `ToSql`/`FromSql` on each
//! backend, and the fallible reading of whole rows.

pub(crate) mod context;
pub(crate) mod encrypted;
pub(crate) mod row;
pub(crate) mod sql;
pub(crate) mod written;
