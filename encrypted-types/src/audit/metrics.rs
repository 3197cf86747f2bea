//! Counters through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), so a
//! Prometheus, OpenTelemetry or Datadog exporter the application installs sees them:
//!
//! | counter | labels |
//! |---|---|
//! | `encrypted_types_seals_total` | `table`, `column` |
//! | `encrypted_types_seal_failures_total` | `table`, `column`, `reason` |
//! | `encrypted_types_opens_total` | `table`, `column` |
//! | `encrypted_types_open_failures_total` | `table`, `column`, `reason` |
//!
//! `reason` is [`Error::reason`](crate::Error::reason): a fixed name per kind of error, never a
//! value. Without the feature these are empty functions.

use crate::Error;

/// A value of `table.column` was sealed.
#[inline]
pub(crate) fn sealed(table: &'static str, column: &'static str) {
    done("encrypted_types_seals_total", table, column);
}

/// Sealing a value of `table.column` failed.
#[inline]
pub(crate) fn seal_failed(table: &'static str, column: &'static str, error: &Error) {
    failed("encrypted_types_seal_failures_total", table, column, error);
}

/// A value of `table.column` was opened.
#[inline]
pub(crate) fn opened(table: &'static str, column: &'static str) {
    done("encrypted_types_opens_total", table, column);
}

/// Opening a value of `table.column` failed.
#[inline]
pub(crate) fn open_failed(table: &'static str, column: &'static str, error: &Error) {
    failed("encrypted_types_open_failures_total", table, column, error);
}

#[inline]
fn done(name: &'static str, table: &'static str, column: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, "table" => table, "column" => column).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, table, column);
}

#[inline]
fn failed(name: &'static str, table: &'static str, column: &'static str, error: &Error) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, "table" => table, "column" => column, "reason" => error.reason())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, table, column, error);
}
