//! A one-shot result slot: the worker side ([`Completer`]) puts one value in, the request's
//! owner ([`Receiver`], inside a [`Ticket`](crate::Ticket)) takes it out by blocking, with a
//! deadline, by polling, or as a future.
//!
//! # State
//! `Pending(waker)` → `Ready(value)` → `Taken`.
//! - `Pending` → `Ready`: once, by [`Completer::complete`], or by the completer's drop with
//!   [`Abandon::abandoned`] (a worker that lost a request reports it instead of leaving its
//!   owner waiting forever). A completer is consumed by `complete`, so a value is put in at most
//!   once, and exactly once unless the completer is [`Completer::discard`]ed (only done when
//!   the request was rejected before it was queued, with the receiver dropped unseen).
//! - `Ready` → `Taken`: once, by the single receiver.
//!
//! # Fields
//! `state` is under `BATCH_TICKET`, held only to read or swap the state, never while waking.
//! The completer stores the value, takes the registered waker out, releases the lock, then
//! notifies the condvar (a blocked receiver) and wakes the waker (an async receiver, user code).
//! A receiver checks the state and registers its waker or sleeps under the same lock, so a
//! completion cannot slip between the check and the sleep (no lost wake-up; see the loom
//! models in `src/tests/`).

use chorus_sync::{rank, Arc, Condvar, RankedMutex};
use std::task::Waker;
use std::time::Instant;

/// The value a completer puts in when it is dropped without completing.
pub(crate) trait Abandon {
    /// The "request was lost" value.
    fn abandoned() -> Self;
}

enum State<R> {
    Pending(Option<Waker>),
    Ready(R),
    Taken,
}

struct Slot<R> {
    state: RankedMutex<State<R>>,
    ready: Condvar,
}

/// What a receiver found.
#[must_use]
pub(crate) enum Take<R> {
    /// The value (now taken).
    Ready(R),
    /// No value yet (only returned when a deadline passed or nothing was waited for).
    Pending,
    /// The value was taken before.
    Taken,
}

/// A new slot's two halves.
pub(crate) fn channel<R: Abandon>() -> (Completer<R>, Receiver<R>) {
    let slot = Arc::new(Slot {
        state: RankedMutex::new(rank::BATCH_TICKET, State::Pending(None)),
        ready: Condvar::new(),
    });
    (
        Completer {
            slot: Some(Arc::clone(&slot)),
        },
        Receiver { slot },
    )
}

/// The worker's half: puts the value in exactly once.
pub(crate) struct Completer<R: Abandon> {
    slot: Option<Arc<Slot<R>>>,
}

impl<R: Abandon> std::fmt::Debug for Completer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("armed", &self.slot.is_some())
            .finish()
    }
}

impl<R: Abandon> Completer<R> {
    /// Puts `value` in and wakes the receiver (outside the slot's lock).
    pub(crate) fn complete(mut self, value: R) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, value);
        }
    }

    /// Drops the completer without putting anything in (the receiver is being dropped unseen).
    pub(crate) fn discard(mut self) {
        self.slot = None;
    }
}

impl<R: Abandon> Drop for Completer<R> {
    fn drop(&mut self) {
        // Under loom, a model that failed unwinds its threads; touching loom objects then
        // would turn the report into an abort.
        if cfg!(chorus_loom) && chorus_sync::thread::panicking() {
            return;
        }
        if let Some(slot) = self.slot.take() {
            fill(&slot, R::abandoned());
        }
    }
}

fn fill<R>(slot: &Slot<R>, value: R) {
    let mut state = slot.state.lock();
    let State::Pending(waker) = &mut *state else {
        // Unreachable by construction (one completer per slot, consumed by `complete`); keep
        // the first outcome, and drop this one (it may own device memory) after the lock.
        drop(state);
        drop(value);
        return;
    };
    let waker = waker.take();
    *state = State::Ready(value);
    drop(state);
    slot.ready.notify_one();
    if let Some(w) = waker {
        w.wake();
    }
}

/// The owner's half.
pub(crate) struct Receiver<R> {
    slot: Arc<Slot<R>>,
}

impl<R> std::fmt::Debug for Receiver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl<R> Receiver<R> {
    fn take(state: &mut State<R>) -> Take<R> {
        match state {
            State::Pending(_) => Take::Pending,
            State::Taken => Take::Taken,
            State::Ready(_) => match std::mem::replace(state, State::Taken) {
                State::Ready(v) => Take::Ready(v),
                _ => Take::Taken,
            },
        }
    }

    /// Whether a value is waiting to be taken.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(*self.slot.state.lock(), State::Ready(_))
    }

    /// Takes the value if it is there.
    pub(crate) fn try_take(&self) -> Take<R> {
        Self::take(&mut self.slot.state.lock())
    }

    /// Blocks until the value is there, or until `deadline` (`None`: no deadline).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Take<R> {
        let mut state = self.slot.state.lock();
        loop {
            match Self::take(&mut state) {
                Take::Pending => {}
                done => return done,
            }
            match deadline {
                None => state = self.slot.ready.wait(state),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Take::Pending;
                    }
                    state = self.slot.ready.wait_timeout(state, left).0;
                }
            }
        }
    }

    /// Takes the value if it is there; otherwise registers `waker` to be woken when it is.
    ///
    /// The waker is cloned before the lock is taken and the one it replaces is dropped after
    /// the lock is released: waker code is user code.
    pub(crate) fn poll(&self, waker: &Waker) -> Take<R> {
        let mut mine = Some(waker.clone());
        let mut state = self.slot.state.lock();
        let out = match Self::take(&mut state) {
            Take::Pending => {
                if let State::Pending(registered) = &mut *state {
                    if !registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
                        std::mem::swap(registered, &mut mine);
                    }
                }
                Take::Pending
            }
            done => done,
        };
        drop(state);
        drop(mine);
        out
    }
}
