//! Audit events: who used which keys, without plaintext or key bytes.
//!
//! Key creation, unwrapping, keyring loads, shredding and every failed open are `tracing`
//! events with target `encrypted_types::audit`. Successful opens are too many to log one by
//! one: an [`AuditSink`] receives them, once per row read. [`CoalescingSink`] counts them in
//! each thread and turns them into one event per (tenant, table, column) per interval; [`AnomalySink`] raises an `anomaly` event when a
//! tenant, a column or an actor ([`with_actor`]) opens more values in a window than its
//! [`Limits`] allow. With the `metrics` feature, seals, opens and failures (by reason) are also
//! counters of the `metrics` facade.
//!
//! ```
//! use encrypted_types::audit::{set_sink, AnomalySink, CoalescingSink, Limits};
//! set_sink(AnomalySink::new(Limits::per_minute().actor(1_000)).with_inner(CoalescingSink::default()));
//! ```

mod actor;
mod anomaly;
mod coalesce;
pub(crate) mod metrics;

pub use actor::{WithActor, current_actor, with_actor, with_actor_async};
pub use anomaly::{Anomaly, AnomalyScope, AnomalySink, Limits};
pub use coalesce::CoalescingSink;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

use crate::Error;
use crate::tenant::TenantId;

/// Receives decrypt events. Implementations must be cheap: they run on every row read.
pub trait AuditSink: Send + Sync {
    /// A value of `table.column` belonging to `tenant` was opened (a value read on its own,
    /// through [`Encrypted`](struct@crate::Encrypted)).
    fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str);

    /// The values of `columns` in one row of `table`, belonging to `tenant`, were opened: a
    /// derived model's read calls this once per row instead of [`AuditSink::opened`] once per
    /// value. The default calls `opened` for each column, so a sink that implements only
    /// `opened` sees every value as before; a sink on a hot path implements this too.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use encrypted_types::TenantId;
    /// use encrypted_types::audit::AuditSink;
    /// #[derive(Default)]
    /// struct Rows(AtomicU64);
    /// impl AuditSink for Rows {
    ///     fn opened(&self, _: Option<&TenantId>, _: &'static str, _: &'static str) {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///     }
    /// }
    /// let sink = Rows::default();
    /// sink.opened_row(None, "patients", &["name", "email"]);
    /// assert_eq!(sink.0.load(Ordering::Relaxed), 2);
    /// ```
    fn opened_row(&self, tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        for column in columns {
            self.opened(tenant, table, column);
        }
    }
}

/// A sink shared with the code that installed it (to flush it, or to read it in a test).
impl<S: AuditSink + ?Sized> AuditSink for Arc<S> {
    fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str) {
        (**self).opened(tenant, table, column);
    }

    fn opened_row(&self, tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        (**self).opened_row(tenant, table, columns);
    }
}

static SINK: ArcSwapOption<Box<dyn AuditSink>> = ArcSwapOption::const_empty();
/// Whether a sink is installed: one atomic load on every open, instead of a guarded load of
/// `SINK`, when none is.
static HAS_SINK: AtomicBool = AtomicBool::new(false);

/// Installs the process-wide sink (replacing any previous one).
pub fn set_sink(sink: impl AuditSink + 'static) {
    SINK.store(Some(Arc::new(Box::new(sink))));
    HAS_SINK.store(true, Ordering::Release);
}

/// Removes the sink.
pub fn clear_sink() {
    HAS_SINK.store(false, Ordering::Release);
    SINK.store(None);
}

pub(crate) fn opened(tenant: Option<&TenantId>, table: &'static str, column: &'static str) {
    metrics::opened(table, column);
    if !HAS_SINK.load(Ordering::Acquire) {
        return;
    }
    if let Some(sink) = SINK.load().as_ref() {
        sink.opened(tenant, table, column);
    }
}

/// The values of `columns` in one row were opened (the derive's reads).
pub(crate) fn opened_row(tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
    for column in columns {
        metrics::opened(table, column);
    }
    if !HAS_SINK.load(Ordering::Acquire) {
        return;
    }
    if let Some(sink) = SINK.load().as_ref() {
        sink.opened_row(tenant, table, columns);
    }
}

pub(crate) fn open_failed(
    table: &'static str,
    column: &'static str,
    value_type: &'static str,
    error: &Error,
) {
    metrics::open_failed(table, column, error);
    tracing::warn!(
        target: "encrypted_types::audit",
        event = "open_failed",
        table,
        column,
        value_type,
        error = %error,
    );
}
