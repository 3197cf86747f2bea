//! [`CoalescingSink`]: opens counted in each thread, reported once per interval.
//!
//! A read touches only its own thread's counts (no lock, no shared counter, no tenant cloned
//! once the thread has seen the tenant): a `RefCell` in a thread local. A thread looks at the
//! clock on its first row and every [`CHECK_EVERY`] rows after (not per row), and hands its
//! counts to the sink when its own interval or the sink's has passed, and when it exits; the
//! sink then emits what it holds if its interval has passed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::AuditSink;
use crate::tenant::{TenantId, describe};

/// Rows between two looks at the clock in a thread (a zero interval looks every row).
const CHECK_EVERY: u32 = 16;

/// A thread's counts for one sink hold at most this many (tenant, table) groups: one more is
/// handed over at once, so a thread that reads many tenants scans a short list per row.
const MAX_GROUPS: usize = 64;

type Counts = HashMap<(Option<TenantId>, &'static str, &'static str), u64>;

/// Counts opens per (tenant, table, column) and emits one `decrypts` event for each every
/// `interval` (60 seconds by default).
///
/// Each thread counts its own reads without a lock. It looks at the clock on its first row and
/// every 16 rows after, and hands its counts to the sink when its own interval or the sink's has
/// passed, and when it exits; the sink emits when counts reach it after its interval, on
/// [`CoalescingSink::flush`], and when it is dropped (replaced by `set_sink`). A thread that
/// stops reading keeps up to 15 rows' counts until it reads again or exits; counts still in
/// other threads when the sink is replaced are dropped with it.
///
/// ```
/// use std::sync::Arc;
/// use encrypted_types::audit::{set_sink, CoalescingSink};
/// // Installed through an `Arc`, the sink can still be flushed (at shutdown, say).
/// let sink = Arc::new(CoalescingSink::default());
/// set_sink(Arc::clone(&sink));
/// sink.flush();
/// ```
pub struct CoalescingSink {
    shared: Arc<Shared>,
}

/// What every thread hands its counts to.
struct Shared {
    /// Tells this sink's counts apart in a thread's list.
    id: u64,
    interval: Duration,
    /// Counts handed over and not emitted yet.
    state: Mutex<Counts>,
    /// When the sink was made, and its last emission as nanoseconds after that (written under
    /// the lock; threads read it without).
    origin: Instant,
    emitted_at: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for CoalescingSink {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl fmt::Debug for CoalescingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalescingSink")
            .field("interval", &self.shared.interval)
            .finish_non_exhaustive()
    }
}

impl CoalescingSink {
    /// A sink that reports every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                interval,
                state: Mutex::new(HashMap::new()),
                origin: Instant::now(),
                emitted_at: AtomicU64::new(0),
            }),
        }
    }

    /// Emits the counts handed over so far and this thread's own, and starts a new interval.
    /// Other threads' counts arrive at their next interval or when they exit.
    pub fn flush(&self) {
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut()
                && let Some(pending) = local.iter_mut().find(|p| p.id == self.shared.id)
            {
                pending.hand_over();
            }
        });
        let counts = {
            let mut state = self.shared.lock();
            self.shared.emitted_now();
            std::mem::take(&mut *state)
        };
        emit(counts);
    }
}

impl Drop for CoalescingSink {
    /// A sink replaced (`set_sink`, `clear_sink`) emits what has reached it.
    fn drop(&mut self) {
        let counts = std::mem::take(&mut *self.shared.lock());
        emit(counts);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a thread's counts; returns the counts to emit if the sink's interval has passed.
    fn take_in(&self, groups: Vec<Group>) -> Option<Counts> {
        let mut state = self.lock();
        for g in groups {
            for (column, n) in g.columns {
                *state
                    .entry((g.tenant.clone(), g.table, column))
                    .or_insert(0) += n;
            }
        }
        if self.due(Instant::now()) && !state.is_empty() {
            self.emitted_now();
            Some(std::mem::take(&mut *state))
        } else {
            None
        }
    }

    /// Records an emission (under the lock, so one emission per interval).
    fn emitted_now(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.emitted_at.store(nanos, Ordering::Relaxed);
    }

    /// Whether the sink's interval has passed since it last emitted, read without its lock.
    fn due(&self, now: Instant) -> bool {
        let last = Duration::from_nanos(self.emitted_at.load(Ordering::Relaxed));
        now.duration_since(self.origin).saturating_sub(last) >= self.interval
    }
}

/// One tenant's reads of one table in one thread.
struct Group {
    tenant: Option<TenantId>,
    table: &'static str,
    columns: Vec<(&'static str, u64)>,
}

/// One thread's counts for one sink.
struct Pending {
    id: u64,
    sink: Weak<Shared>,
    groups: Vec<Group>,
    rows: u32,
    since: Instant,
}

impl Pending {
    fn add(&mut self, tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        // Rows of one tenant and table come in runs: the last group is tried first.
        let found = self
            .groups
            .iter()
            .rposition(|g| g.table == table && g.tenant.as_ref() == tenant);
        let group = match found {
            Some(i) => self.groups.get_mut(i),
            None => {
                self.groups.push(Group {
                    tenant: tenant.cloned(),
                    table,
                    columns: Vec::new(),
                });
                self.groups.last_mut()
            }
        };
        let Some(group) = group else { return };
        for &column in columns {
            match group.columns.iter_mut().find(|(c, _)| *c == column) {
                Some((_, n)) => *n += 1,
                None => group.columns.push((column, 1)),
            }
        }
    }

    /// Hands the counts to the sink (if it still exists); emits if the sink is due.
    fn hand_over(&mut self) {
        self.since = Instant::now();
        self.rows = 0;
        let groups = std::mem::take(&mut self.groups);
        if groups.is_empty() {
            return;
        }
        if let Some(due) = self.sink.upgrade().and_then(|s| s.take_in(groups)) {
            emit(due);
        }
    }
}

impl Drop for Pending {
    /// A thread that exits (or a sink that is gone) hands its counts over, and the sink emits
    /// them if its interval has passed: a thread per request or per job is reported too.
    /// (`tracing` finds its dispatcher without this thread's locals when they are gone.)
    fn drop(&mut self) {
        self.hand_over();
    }
}

thread_local! {
    /// This thread's counts, one entry per sink it has counted for.
    static LOCAL: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
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
        self.opened_row(tenant, table, &[column]);
    }

    fn opened_row(&self, tenant: Option<&TenantId>, table: &'static str, columns: &[&'static str]) {
        let counted = LOCAL.try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return false;
            };
            // Forget the counts of sinks that are gone (replaced by `set_sink`).
            local.retain(|p| p.sink.strong_count() > 0);
            let shared = &self.shared;
            let pending = match local.iter().position(|p| p.id == shared.id) {
                Some(i) => local.get_mut(i),
                None => {
                    local.push(Pending {
                        id: shared.id,
                        sink: Arc::downgrade(shared),
                        groups: Vec::new(),
                        rows: 0,
                        since: Instant::now(),
                    });
                    local.last_mut()
                }
            };
            let Some(pending) = pending else { return false };
            pending.add(tenant, table, columns);
            pending.rows = pending.rows.wrapping_add(1);
            // A thread's first row looks at the clock too, so a thread that reads one row and
            // lives on hands it over on its next look.
            let look = shared.interval.is_zero() || pending.rows % CHECK_EVERY == 1;
            let due = look && {
                let now = Instant::now();
                now.duration_since(pending.since) >= shared.interval || shared.due(now)
            };
            if due || pending.groups.len() > MAX_GROUPS {
                pending.hand_over();
            }
            true
        });
        // A thread being torn down (or a sink called from inside its own emission): straight
        // to the sink.
        if !matches!(counted, Ok(true)) {
            let group = Group {
                tenant: tenant.cloned(),
                table,
                columns: columns.iter().map(|&c| (c, 1)).collect(),
            };
            if let Some(due) = self.shared.take_in(vec![group]) {
                emit(due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn totals(sink: &CoalescingSink) -> Counts {
        sink.shared.lock().clone()
    }

    /// Counts stay in the thread until its interval passes or it exits; then they reach the
    /// sink whole, by (tenant, table, column).
    #[test]
    fn a_threads_counts_reach_the_sink_on_exit_and_on_its_interval() {
        let sink = Arc::new(CoalescingSink::new(Duration::from_secs(3600)));
        let a = TenantId::from("a");
        let s = Arc::clone(&sink);
        let t = a.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                s.opened_row(Some(&t), "patients", &["name", "email"]);
            }
            s.opened(None, "patients", "notes");
            // Nothing handed over yet: the hour has not passed.
            assert!(totals(&s).is_empty());
        })
        .join()
        .unwrap();
        let counts = totals(&sink);
        assert_eq!(
            counts.get(&(Some(a.clone()), "patients", "name")),
            Some(&100)
        );
        assert_eq!(
            counts.get(&(Some(a.clone()), "patients", "email")),
            Some(&100)
        );
        assert_eq!(counts.get(&(None, "patients", "notes")), Some(&1));

        // A zero interval hands every row over.
        let now = CoalescingSink::new(Duration::ZERO);
        now.opened_row(Some(&a), "visits", &["reason"]);
        now.opened_row(Some(&a), "visits", &["reason"]);
        // Emitted at once: nothing left waiting.
        assert!(totals(&now).is_empty());
    }

    /// Threads that read a few rows and exit, one per request: their counts are emitted once
    /// the sink's interval has passed, by whichever thread looks or exits next.
    #[test]
    fn short_lived_threads_are_reported() {
        let sink = Arc::new(CoalescingSink::new(Duration::from_millis(50)));
        let spawn = |n: usize| {
            let s = Arc::clone(&sink);
            std::thread::spawn(move || {
                for _ in 0..n {
                    s.opened_row(None, "visits", &["reason"]);
                }
            })
            .join()
            .unwrap();
        };
        spawn(3);
        // Handed over at exit, not emitted: the interval has not passed.
        assert_eq!(totals(&sink).get(&(None, "visits", "reason")), Some(&3));
        std::thread::sleep(Duration::from_millis(60));
        spawn(1);
        // The second thread's first row found the sink due: everything emitted.
        assert!(totals(&sink).is_empty());
    }

    /// Two threads reading one tenant count apart and add up.
    #[test]
    fn two_threads_add_up() {
        let sink = Arc::new(CoalescingSink::new(Duration::from_secs(3600)));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let s = Arc::clone(&sink);
                std::thread::spawn(move || {
                    let t = TenantId::from("a");
                    for _ in 0..1000 {
                        s.opened_row(Some(&t), "patients", &["name", "ssn", "notes"]);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let counts = totals(&sink);
        for column in ["name", "ssn", "notes"] {
            assert_eq!(
                counts.get(&(Some(TenantId::from("a")), "patients", column)),
                Some(&2000)
            );
        }
    }
}
