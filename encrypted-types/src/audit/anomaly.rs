//! Alerts on unusual decrypt volume: one actor reading 10,000 patients' notes in a minute, a
//! tenant's reads jumping a hundredfold, a column read in bulk.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{AuditSink, actor};
use crate::tenant::{TenantId, describe};

/// What an [`AnomalySink`] watches: the most decrypts allowed within `window` per tenant, per
/// column and per actor. A limit left `None` is not watched.
///
/// ```
/// use std::time::Duration;
/// use encrypted_types::audit::Limits;
/// let limits = Limits::per_minute().actor(1_000).tenant(50_000);
/// assert_eq!(limits.window(), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    window: Duration,
    tenant: Option<u64>,
    column: Option<u64>,
    actor: Option<u64>,
}

impl Limits {
    /// No limits yet, over a window of `window` (at least a millisecond).
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_millis(1)),
            tenant: None,
            column: None,
            actor: None,
        }
    }

    /// No limits yet, over one minute.
    pub fn per_minute() -> Self {
        Self::new(Duration::from_secs(60))
    }

    /// At most `n` decrypts of one tenant's values within the window.
    #[must_use]
    pub fn tenant(mut self, n: u64) -> Self {
        self.tenant = Some(n);
        self
    }

    /// At most `n` decrypts of one column (across tenants) within the window.
    #[must_use]
    pub fn column(mut self, n: u64) -> Self {
        self.column = Some(n);
        self
    }

    /// At most `n` decrypts by one actor ([`with_actor`](super::with_actor)) within the window.
    #[must_use]
    pub fn actor(mut self, n: u64) -> Self {
        self.actor = Some(n);
        self
    }

    /// The window the limits count over.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// What went over its limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AnomalyScope {
    /// One tenant's values (`None`: values of no tenant).
    Tenant(Option<TenantId>),
    /// One column, across tenants.
    Column {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
    },
    /// One actor.
    Actor(Arc<str>),
}

impl fmt::Display for AnomalyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tenant(t) => write!(f, "tenant {}", describe(t.as_ref())),
            Self::Column { table, column } => write!(f, "column {table}.{column}"),
            Self::Actor(a) => write!(f, "actor {a}"),
        }
    }
}

/// One anomaly: `scope` opened about `count` values within the window, over `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Anomaly {
    /// What went over its limit.
    pub scope: AnomalyScope,
    /// The decrypts counted in the window when the limit was passed.
    pub count: u64,
    /// The limit.
    pub limit: u64,
    /// The window.
    pub window: Duration,
}

type Alert = Box<dyn Fn(&Anomaly) + Send + Sync>;

/// An [`AuditSink`] that raises an `anomaly` event (target `encrypted_types::audit`, level
/// warn) the first time, in each window, that a tenant, a column or an actor passes its
/// [`Limits`], and passes every open on to an inner sink (such as the
/// [`CoalescingSink`](super::CoalescingSink)) so the ordinary audit trail continues.
///
/// Counts are kept per window and estimated over a sliding window from the current and the
/// previous one (the previous count weighted by how much of it still overlaps), so a burst
/// that straddles a window boundary is still seen; a scope raises one anomaly per burst, and
/// again only after its count has fallen back within the limit. Each open with a limit to
/// watch takes one process-wide lock, and reads without an actor are not counted against the
/// actor limit (name the actor inside `spawn_blocking` closures too).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use encrypted_types::audit::{AnomalySink, AuditSink, Limits, with_actor};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let sink = AnomalySink::new(Limits::per_minute().actor(3))
///     .on_anomaly(move |a| log.lock().unwrap().push(a.scope.to_string()));
/// with_actor("nurse-17", || {
///     for _ in 0..5 {
///         sink.opened(None, "patients", "notes");
///     }
/// });
/// assert_eq!(*seen.lock().unwrap(), ["actor nurse-17"]);
/// ```
pub struct AnomalySink {
    limits: Limits,
    inner: Option<Box<dyn AuditSink>>,
    alert: Option<Alert>,
    state: Mutex<Windows>,
}

/// Counts per scope for the current and the previous window.
struct Windows {
    start: Instant,
    /// Index of the current window since `start`.
    current: u64,
    counts: HashMap<AnomalyScope, Count>,
}

#[derive(Default)]
struct Count {
    /// The window `now` counts in.
    window: u64,
    now: u64,
    before: u64,
    /// Over the limit since the last anomaly raised: quiet until the count falls back to it,
    /// so one burst raises one anomaly, even across a window boundary.
    over: bool,
}

impl fmt::Debug for AnomalySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalySink")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AnomalySink {
    /// A sink watching `limits`, with no inner sink.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            inner: None,
            alert: None,
            state: Mutex::new(Windows {
                start: Instant::now(),
                current: 0,
                counts: HashMap::new(),
            }),
        }
    }

    /// Passes every open on to `inner` as well.
    #[must_use]
    pub fn with_inner(mut self, inner: impl AuditSink + 'static) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }

    /// Also calls `f` for every anomaly (to page someone, or to block the actor), besides the
    /// `tracing` event. It runs on the thread that opened the value, outside the sink's lock.
    #[must_use]
    pub fn on_anomaly(mut self, f: impl Fn(&Anomaly) + Send + Sync + 'static) -> Self {
        self.alert = Some(Box::new(f));
        self
    }

    /// Counts one open of each of `columns` (a row's, or one value's), under one lock.
    fn count(
        &self,
        tenant: Option<&TenantId>,
        table: &'static str,
        columns: &[&'static str],
    ) -> Vec<Anomaly> {
        let mut watched = Vec::new();
        let actor = self
            .limits
            .actor
            .and_then(|l| Some((l, actor::current_actor()?)));
        for &column in columns {
            if let Some(limit) = self.limits.tenant {
                watched.push((AnomalyScope::Tenant(tenant.cloned()), limit));
            }
            if let Some(limit) = self.limits.column {
                watched.push((AnomalyScope::Column { table, column }, limit));
            }
            if let Some((limit, actor)) = &actor {
                watched.push((AnomalyScope::Actor(actor.clone()), *limit));
            }
        }
        if watched.is_empty() {
            return Vec::new();
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = state.start.elapsed();
        state.count_at(elapsed, self.limits.window, watched)
    }
}

impl Windows {
    /// Counts one open in each of `watched` at `elapsed` since the sink started, and returns
    /// the scopes that have just gone over their limit.
    fn count_at(
        &mut self,
        elapsed: Duration,
        window: Duration,
        watched: Vec<(AnomalyScope, u64)>,
    ) -> Vec<Anomaly> {
        let w = window.as_nanos().max(1);
        let index = u64::try_from(elapsed.as_nanos() / w).unwrap_or(u64::MAX);
        // The part of the previous window that still lies inside the sliding one: w - into.
        let into = elapsed.as_nanos() % w;
        if index > self.current {
            // Forget scopes with nothing in the last two windows, so memory follows activity.
            self.counts
                .retain(|_, c| c.window.saturating_add(1) >= index);
            self.current = index;
        }
        let mut raised = Vec::new();
        for (scope, limit) in watched {
            let c = match self.counts.get_mut(&scope) {
                Some(c) => c,
                None => self.counts.entry(scope.clone()).or_default(),
            };
            if c.window != index {
                c.before = if c.window.saturating_add(1) == index {
                    c.now
                } else {
                    0
                };
                c.now = 0;
                c.window = index;
            }
            c.now = c.now.saturating_add(1);
            // now + before × (w − into) / w > limit, exactly: no rounding in either direction.
            let weighted = u128::from(c.now) * w + u128::from(c.before) * (w - into);
            let over = weighted > u128::from(limit) * w;
            if over && !c.over {
                raised.push(Anomaly {
                    scope,
                    count: u64::try_from(weighted.div_ceil(w)).unwrap_or(u64::MAX),
                    limit,
                    window,
                });
            }
            c.over = over;
        }
        raised
    }
}

impl AuditSink for AnomalySink {
    fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str) {
        // The ordinary trail first, so an alert callback that fails cannot lose the open.
        if let Some(inner) = &self.inner {
            inner.opened(tenant, table, column);
        }
        self.raise(self.count(tenant, table, &[column]));
    }

    fn opened_row(&self, tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        if let Some(inner) = &self.inner {
            inner.opened_row(tenant, table, columns);
        }
        self.raise(self.count(tenant, table, columns));
    }
}

impl AnomalySink {
    /// The `anomaly` event and the callback, for each scope that has just gone over.
    fn raise(&self, anomalies: Vec<Anomaly>) {
        for anomaly in anomalies {
            tracing::warn!(
                target: "encrypted_types::audit",
                event = "anomaly",
                scope = %anomaly.scope,
                count = anomaly.count,
                limit = anomaly.limit,
                window_secs = anomaly.window.as_secs_f64(),
            );
            if let Some(alert) = &self.alert {
                alert(&anomaly);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::with_actor;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn recording(limits: Limits) -> (AnomalySink, Arc<Mutex<Vec<Anomaly>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let sink =
            AnomalySink::new(limits).on_anomaly(move |a| log.lock().unwrap().push(a.clone()));
        (sink, seen)
    }

    #[test]
    fn a_burst_at_the_limit_is_quiet_and_one_more_fires_once() {
        let (sink, seen) = recording(Limits::per_minute().actor(10_000));
        with_actor("nurse-17", || {
            for _ in 0..10_000 {
                sink.opened(Some(&TenantId::from(1)), "patients", "notes");
            }
        });
        assert!(
            seen.lock().unwrap().is_empty(),
            "10,000 reads is within the limit"
        );
        with_actor("nurse-17", || {
            for _ in 0..500 {
                sink.opened(Some(&TenantId::from(1)), "patients", "notes");
            }
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one anomaly per window, not one per read");
        assert_eq!(seen[0].scope, AnomalyScope::Actor("nurse-17".into()));
        assert_eq!((seen[0].count, seen[0].limit), (10_001, 10_000));
    }

    #[test]
    fn each_scope_is_counted_apart() {
        let (sink, seen) = recording(Limits::per_minute().tenant(5).column(5).actor(100));
        let (a, b) = (TenantId::from("a"), TenantId::from("b"));
        for _ in 0..5 {
            sink.opened(Some(&a), "patients", "ssn");
            sink.opened(Some(&b), "patients", "notes");
        }
        assert!(seen.lock().unwrap().is_empty());
        sink.opened(Some(&a), "patients", "notes");
        let scopes: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.scope.clone())
            .collect();
        assert_eq!(
            scopes,
            [
                AnomalyScope::Tenant(Some(a.clone())),
                AnomalyScope::Column {
                    table: "patients",
                    column: "notes"
                }
            ]
        );
        // Without an actor, the actor limit never applies.
        assert!(!scopes.iter().any(|s| matches!(s, AnomalyScope::Actor(_))));
    }

    #[test]
    fn opens_reach_the_inner_sink() {
        struct Counter(Arc<AtomicU64>);
        impl AuditSink for Counter {
            fn opened(&self, _: Option<&TenantId>, _: &'static str, _: &'static str) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let n = Arc::new(AtomicU64::new(0));
        let sink =
            AnomalySink::new(Limits::per_minute().actor(1)).with_inner(Counter(Arc::clone(&n)));
        for _ in 0..7 {
            sink.opened(None, "t", "c");
        }
        assert_eq!(n.load(Ordering::Relaxed), 7);
    }

    fn windows() -> Windows {
        Windows {
            start: Instant::now(),
            current: 0,
            counts: HashMap::new(),
        }
    }

    fn tenant(limit: u64) -> Vec<(AnomalyScope, u64)> {
        vec![(AnomalyScope::Tenant(None), limit)]
    }

    const MIN: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_across_a_window_boundary_is_seen_and_raised_once() {
        let mut w = windows();
        // 80 reads just before the minute's end, 30 just after: 110 within two seconds.
        let mut raised = 0;
        for _ in 0..80 {
            raised += w.count_at(ms(59_000), MIN, tenant(100)).len();
        }
        for _ in 0..30 {
            raised += w.count_at(ms(61_000), MIN, tenant(100)).len();
        }
        assert_eq!(raised, 1, "the sliding count passes 100 once");
        // Still over the limit in the next reads: no second anomaly for the same burst.
        assert!(w.count_at(ms(61_500), MIN, tenant(100)).is_empty());
    }

    #[test]
    fn a_steady_rate_at_the_limit_is_quiet_and_a_new_burst_fires_again() {
        let mut w = windows();
        // One read every 600 ms for five minutes: a sliding minute that starts and ends on a
        // read holds 101 of them, the limit here. Counted exactly, never over it.
        for i in 0..500u64 {
            assert!(
                w.count_at(ms(i * 600), MIN, tenant(101)).is_empty(),
                "read {i}"
            );
        }
        // A burst on top of the steady rate raises one anomaly...
        let burst: usize = (0..60)
            .map(|_| w.count_at(ms(300_000), MIN, tenant(101)).len())
            .sum();
        assert_eq!(burst, 1);
        // ...and, once the count has fallen back (two quiet minutes), a later burst raises
        // another.
        assert!(w.count_at(ms(420_000), MIN, tenant(101)).is_empty());
        let again: usize = (0..101)
            .map(|_| w.count_at(ms(421_000), MIN, tenant(101)).len())
            .sum();
        assert_eq!(again, 1);
    }

    #[test]
    fn scopes_idle_for_two_windows_are_forgotten() {
        let mut w = windows();
        w.count_at(ms(1_000), MIN, tenant(100));
        w.count_at(ms(1_000), MIN, vec![(AnomalyScope::Actor("a".into()), 5)]);
        assert_eq!(w.counts.len(), 2);
        w.count_at(ms(150_000), MIN, vec![(AnomalyScope::Actor("b".into()), 5)]);
        assert_eq!(
            w.counts.len(),
            1,
            "only the scope read in this window is kept"
        );
    }
}
