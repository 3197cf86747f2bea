//! The actor on whose behalf values are opened: a user id, a service name, a job. The
//! application names it around the work it does for that actor; sinks such as
//! [`AnomalySink`](super::AnomalySink) read it for every opened value.
//!
//! The actor lives in a thread-local for the duration of a closure ([`with_actor`]) or of each
//! poll of a future ([`with_actor_async`]), so it follows an async task across the threads
//! of a runtime and never leaks into another task polled on the same thread. It does not
//! follow work handed elsewhere: a `tokio::spawn` or `spawn_blocking` inside needs its own
//! `with_actor`, and `with_actor(a, || async { .. })` only names the actor while the future
//! is *built*; use [`with_actor_async`] for a future.
//!
//! The actor is written to audit events as given: use an opaque id (`user-8812`), not an
//! email or a name.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

thread_local! {
    static ACTOR: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `f` with `actor` as the current actor, restoring the previous one afterwards (also
/// when `f` panics).
///
/// ```
/// use encrypted_types::audit::{current_actor, with_actor};
/// let seen = with_actor("nurse-17", || current_actor());
/// assert_eq!(seen.as_deref(), Some("nurse-17"));
/// assert_eq!(current_actor(), None);
/// ```
pub fn with_actor<R>(actor: impl Into<Arc<str>>, f: impl FnOnce() -> R) -> R {
    let _restore = Scope::enter(Some(actor.into()));
    f()
}

/// Wraps `fut` so that `actor` is the current actor while it runs (set on every poll, on
/// whichever thread polls it).
///
/// ```
/// use std::future::Future;
/// use std::task::{Context, Poll, Waker};
/// use encrypted_types::audit::{current_actor, with_actor_async};
///
/// let mut fut = std::pin::pin!(with_actor_async("import-job", async { current_actor() }));
/// let seen = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
/// assert_eq!(seen, Poll::Ready(Some("import-job".into())));
/// assert_eq!(current_actor(), None);
/// ```
pub fn with_actor_async<F: Future>(actor: impl Into<Arc<str>>, fut: F) -> WithActor<F> {
    WithActor {
        actor: actor.into(),
        fut: Box::pin(fut),
    }
}

/// The actor set by the innermost [`with_actor`] or [`with_actor_async`] on this thread.
pub fn current_actor() -> Option<Arc<str>> {
    // During thread-local teardown there is no actor.
    ACTOR
        .try_with(|a| a.try_borrow().ok().and_then(|a| a.clone()))
        .ok()
        .flatten()
}

/// The future returned by [`with_actor_async`].
#[must_use = "futures do nothing unless polled"]
pub struct WithActor<F> {
    actor: Arc<str>,
    // Boxed so the wrapper is `Unpin` and needs no unsafe pin projection.
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for WithActor<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Scope::enter(Some(Arc::clone(&self.actor)));
        self.fut.as_mut().poll(cx)
    }
}

impl<F> std::fmt::Debug for WithActor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithActor")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Sets the actor and puts the previous one back on drop.
struct Scope {
    /// The actor before this scope, if the scope could set its own.
    previous: Option<Option<Arc<str>>>,
}

impl Scope {
    fn enter(actor: Option<Arc<str>>) -> Self {
        let previous = ACTOR
            .try_with(|a| {
                a.try_borrow_mut()
                    .ok()
                    .map(|mut a| std::mem::replace(&mut *a, actor))
            })
            .ok()
            .flatten();
        Self { previous }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = ACTOR.try_with(|a| {
                if let Ok(mut a) = a.try_borrow_mut() {
                    *a = previous;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current_actor(), None);
        with_actor("a", || {
            with_actor("b", || assert_eq!(current_actor().as_deref(), Some("b")));
            assert_eq!(current_actor().as_deref(), Some("a"));
        });
        assert_eq!(current_actor(), None);
    }

    #[test]
    fn a_panic_restores_the_previous_actor() {
        let caught = std::panic::catch_unwind(|| with_actor("x", || panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(current_actor(), None);
    }
}
