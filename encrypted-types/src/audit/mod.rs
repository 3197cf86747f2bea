//! Audit events: who used which keys, without plaintext or key bytes.
//!
//! Key creation, unwrapping, keyring loads, shredding and every failed open are `tracing`
//! events with target `encrypted_types::audit`. Successful opens are too many to log one by
//! one: an [`AuditSink`] receives them. [`CoalescingSink`] turns them into one event per
//! (tenant, table, column) per interval; [`AnomalySink`] raises an `anomaly` event when a
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
pub(crate) mod metrics;

pub use actor::{WithActor, current_actor, with_actor, with_actor_async};
pub use anomaly::{Anomaly, AnomalyScope, AnomalySink, Limits};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::Error;
use crate::tenant::{TenantId, describe};

/// Receives decrypt events. Implementations must be cheap: they run on every opened value.
pub trait AuditSink: Send + Sync {
    /// A value of `table.column` belonging to `tenant` was opened.
    fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str);
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

type Counts = HashMap<(Option<TenantId>, &'static str, &'static str), u64>;

/// Counts opens per (tenant, table, column) and emits one `decrypts` event for each every
/// `interval` (60 seconds by default), from whichever thread opens a value after the interval
/// has passed, or on [`CoalescingSink::flush`].
///
/// ```
/// use encrypted_types::audit::{set_sink, CoalescingSink};
/// set_sink(CoalescingSink::default());
/// ```
pub struct CoalescingSink {
    interval: Duration,
    state: Mutex<(Counts, Instant)>,
}

impl Default for CoalescingSink {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl fmt::Debug for CoalescingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalescingSink")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl CoalescingSink {
    /// A sink that reports every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((HashMap::new(), Instant::now())),
        }
    }

    /// Emits the counts gathered so far and starts a new interval.
    pub fn flush(&self) {
        let counts = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.1 = Instant::now();
            std::mem::take(&mut state.0)
        };
        emit(counts);
    }
}

fn emit(counts: Counts) {
    for ((tenant, table, column), count) in counts {
        tracing::info!(
            target: "encrypted_types::audit",
            event = "decrypts",
            tenant = %describe(tenant.as_ref()),
            table,
            column,
            count,
        );
    }
}

impl AuditSink for CoalescingSink {
    fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str) {
        let due = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            *state.0.entry((tenant.cloned(), table, column)).or_insert(0) += 1;
            if state.1.elapsed() >= self.interval {
                state.1 = Instant::now();
                Some(std::mem::take(&mut state.0))
            } else {
                None
            }
        };
        if let Some(counts) = due {
            emit(counts);
        }
    }
}
