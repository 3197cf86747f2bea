//! [`CoalescingSink`]: opens counted in each thread, reported once per interval.
//!
//! A read touches only its own thread's counts (no lock, no shared counter, no tenant cloned
//! once the thread has seen the tenant): a `RefCell` in a thread local. A thread hands its
//! counts to the sink when its interval has passed (looked at every [`CHECK_EVERY`] rows, so
//! the clock is not read per row), when it exits, and on [`CoalescingSink::flush`] from that
//! thread; the sink emits what it holds when its own interval has passed.

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

/// A thread's counts for one sink grow to at most this many (tenant, table) groups before they
/// are handed over early, so a thread that reads many tenants keeps a bounded map.
const MAX_GROUPS: usize = 1024;

type Counts = HashMap<(Option<TenantId>, &'static str, &'static str), u64>;

/// Counts opens per (tenant, table, column) and emits one `decrypts` event for each every
/// `interval` (60 seconds by default).
///
/// Each thread counts its own reads without a lock and hands its counts to the sink when its
/// interval has passed (checked every 16 rows), when the thread exits, and when it calls
/// [`CoalescingSink::flush`]; a thread that stops reading keeps its counts until one of those.
/// The sink emits when a thread hands over counts after the sink's interval, or on `flush`.
///
/// ```
/// use encrypted_types::audit::{set_sink, CoalescingSink};
/// set_sink(CoalescingSink::default());
/// ```
pub struct CoalescingSink {
    shared: Arc<Shared>,
}

/// What every thread hands its counts to.
struct Shared {
    /// Tells this sink's counts apart in a thread's list.
    id: u64,
    interval: Duration,
    /// Counts handed over and not emitted yet, and when the sink last emitted.
    state: Mutex<(Counts, Instant)>,
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
                state: Mutex::new((HashMap::new(), Instant::now())),
            }),
        }
    }

    /// Emits the counts handed over so far and this thread's own, and starts a new interval.
    /// Other threads' counts arrive at their next interval or when they exit.
    pub fn flush(&self) {
        LOCAL.with(|local| {
            if let Ok(mut local) = local.try_borrow_mut()
                && let Some(pending) = local.iter_mut().find(|p| p.id == self.shared.id)
            {
                pending.hand_over();
            }
        });
        let counts = {
            let mut state = self.shared.lock();
            state.1 = Instant::now();
            std::mem::take(&mut state.0)
        };
        emit(counts);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Counts, Instant)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a thread's counts; returns the counts to emit if the sink's interval has passed.
    fn take_in(&self, groups: Vec<Group>) -> Option<Counts> {
        let mut state = self.lock();
        for g in groups {
            for (column, n) in g.columns {
                *state
                    .0
                    .entry((g.tenant.clone(), g.table, column))
                    .or_insert(0) += n;
            }
        }
        if state.1.elapsed() >= self.interval {
            state.1 = Instant::now();
            Some(std::mem::take(&mut state.0))
        } else {
            None
        }
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
    /// A thread that exits hands its counts over; the next emission reports them (no event
    /// from a thread's destructor, where the subscriber may already be gone).
    fn drop(&mut self) {
        let groups = std::mem::take(&mut self.groups);
        if let Some(shared) = self.sink.upgrade()
            && !groups.is_empty()
        {
            let mut state = shared.lock();
            for g in groups {
                for (column, n) in g.columns {
                    *state
                        .0
                        .entry((g.tenant.clone(), g.table, column))
                        .or_insert(0) += n;
                }
            }
        }
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
            let look = shared.interval.is_zero() || pending.rows % CHECK_EVERY == 0;
            if pending.groups.len() > MAX_GROUPS
                || (look && pending.since.elapsed() >= shared.interval)
            {
                pending.hand_over();
            }
            true
        });
        // A thread being torn down (or a sink called from inside its own emission): straight
        // to the sink.
        if counted != Ok(true) {
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
        sink.shared.lock().0.clone()
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
