//! A one-shot result slot: the worker side ([`Completer`]) puts one value in, the request's
//! owner ([`Receiver`], inside a [`Ticket`](crate::Ticket)) takes it out by blocking, with a
//! deadline, by polling, or as a future.
//!
//! # State
//! `Pending(waker)` → `Ready(value)` → `Taken`.
//! - `Pending` → `Ready`: once, by [`Completer::complete`] or [`complete_all`], or by the
//!   completer's drop with [`Abandon::abandoned`] (a worker that lost a request reports it
//!   instead of leaving its owner waiting forever). A completer is consumed by completing, so a
//!   value is put in at most once, and exactly once unless the completer is
//!   [`Completer::discard`]ed (only done when the request was rejected before it was queued,
//!   with the receiver dropped unseen).
//! - `Ready` → `Taken`: once, by the single receiver.
//!
//! # Fields
//! `inner` is under `BATCH_TICKET`, held only to read or swap the state, never while waking.
//! The completer stores the value, takes the registered waker out, releases the lock, then
//! notifies the condvar (a blocked receiver) and wakes the waker (an async receiver, user code).
//! A receiver checks the state and registers its waker or sleeps under the same lock, so a
//! completion cannot slip between the check and the sleep (no lost wake-up; see the loom
//! models in `src/tests/`). `sleeping` (under the lock) says that the receiver is blocked in
//! [`Receiver::wait`] now.
//!
//! # Chained wake-ups ([`complete_all`])
//! Waking a sleeping thread costs the waker a system call and an inter-processor interrupt
//! (2–3 µs on the machines measured), so a worker that woke each of a batch's 64 blocked clients
//! itself would spend most of its batch doing it. [`complete_all`] instead puts every value in
//! first (a lock and a store each), keeping the slots whose receivers were sleeping, in order,
//! as the batch's *sleepers*; it then wakes the async receivers' wakers and only the first
//! sleeper. Sleeper `i`, woken, takes
//! its value and wakes sleepers `2i + 1` and `2i + 2` before its `wait` returns: a binary
//! tree, so the wake-ups are spread over the woken threads and the last of `n` sleepers is
//! `log2(n)` wake-ups away instead of `n`.
//!
//! Handing over sleeper `c` (by the worker for `c = 0`, by its parent otherwise) happens under
//! `c`'s lock: if its value is still `Ready`, its receiver is still inside `wait` (a sleeper
//! only leaves `wait` by taking its value), so the chain (the sleepers and `c`) is stored in the
//! slot and the receiver notified; it runs the chain after taking the value (or, woken early by
//! its deadline or spuriously, finds the chain not yet there and leaves without it). If the
//! value is already `Taken`, the receiver left without the chain, and whoever hands over
//! wakes `c`'s two children itself. Either way exactly one thread wakes each sleeper's
//! children, so every sleeper is woken; and a stored chain is always taken out again (by its
//! receiver), so the slots' references to the sleepers do not outlive the batch.

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

struct Inner<R> {
    state: State<R>,
    /// The receiver is blocked in [`Receiver::wait`].
    sleeping: bool,
    /// Set when this slot's receiver is to wake its children of a chain (module docs).
    chain: Option<Chain<R>>,
}

struct Slot<R> {
    inner: RankedMutex<Inner<R>>,
    ready: Condvar,
}

/// A batch's sleepers and the one of them whose children are to be woken.
struct Chain<R> {
    sleepers: Arc<[Arc<Slot<R>>]>,
    at: usize,
}

impl<R> Chain<R> {
    /// Wakes sleeper `self.at`'s children, and the children of any child whose receiver has
    /// already left.
    fn wake_children(self) {
        let mut parents = vec![self.at];
        while let Some(i) = parents.pop() {
            for c in [2 * i + 1, 2 * i + 2] {
                if c < self.sleepers.len() && !hand_over(&self.sleepers, c) {
                    parents.push(c);
                }
            }
        }
    }
}

/// Hands sleeper `c` its part of the chain and wakes it; `false` when its receiver has already
/// taken its value and left (the caller then wakes `c`'s children).
fn hand_over<R>(sleepers: &Arc<[Arc<Slot<R>>]>, c: usize) -> bool {
    let slot = &sleepers[c];
    let mut inner = slot.inner.lock();
    if !matches!(inner.state, State::Ready(_)) {
        return false;
    }
    inner.chain = Some(Chain {
        sleepers: Arc::clone(sleepers),
        at: c,
    });
    drop(inner);
    slot.ready.notify_one();
    true
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
        inner: RankedMutex::new(
            rank::BATCH_TICKET,
            Inner {
                state: State::Pending(None),
                sleeping: false,
                chain: None,
            },
        ),
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
    pub(crate) fn complete(self, value: R) {
        complete_all([(self, value)]);
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
            complete_slots([(slot, R::abandoned())]);
        }
    }
}

/// Completes every `(completer, value)` pair, then wakes their receivers: the async ones by
/// their wakers, then the blocked ones through a chain that starts at the first (module docs).
pub(crate) fn complete_all<R: Abandon>(items: impl IntoIterator<Item = (Completer<R>, R)>) {
    complete_slots(
        items
            .into_iter()
            .filter_map(|(mut completer, value)| Some((completer.slot.take()?, value))),
    );
}

/// [`complete_all`] on the slots.
fn complete_slots<R>(items: impl IntoIterator<Item = (Arc<Slot<R>>, R)>) {
    let mut sleepers = Vec::new();
    let mut wakers = Vec::new();
    for (slot, value) in items {
        if fill(&slot, value, &mut wakers) {
            sleepers.push(slot);
        }
    }
    wakers.into_iter().for_each(Waker::wake);
    wake_sleepers(sleepers);
}

/// Starts the chain of wake-ups through `sleepers` (filled slots whose receivers were blocked).
fn wake_sleepers<R>(sleepers: Vec<Arc<Slot<R>>>) {
    if sleepers.is_empty() {
        return;
    }
    let sleepers: Arc<[Arc<Slot<R>>]> = sleepers.into();
    if !hand_over(&sleepers, 0) {
        Chain { sleepers, at: 0 }.wake_children();
    }
}

/// Puts `value` in, without waking anyone; keeps the registered waker in `wakers`. `true` when
/// the receiver is blocked in `wait` (the caller must see that it is woken).
fn fill<R>(slot: &Slot<R>, value: R, wakers: &mut Vec<Waker>) -> bool {
    let mut inner = slot.inner.lock();
    let State::Pending(waker) = &mut inner.state else {
        // Unreachable by construction (one completer per slot, consumed by completing); keep
        // the first outcome, and drop this one (it may own device memory) after the lock.
        drop(inner);
        drop(value);
        return false;
    };
    wakers.extend(waker.take());
    inner.state = State::Ready(value);
    inner.sleeping
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
        matches!(self.slot.inner.lock().state, State::Ready(_))
    }

    /// Takes the value if it is there.
    pub(crate) fn try_take(&self) -> Take<R> {
        Self::take(&mut self.slot.inner.lock().state)
    }

    /// Blocks until the value is there, or until `deadline` (`None`: no deadline). Before it
    /// returns, wakes the sleepers it was handed in a chain (module docs).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Take<R> {
        let mut inner = self.slot.inner.lock();
        let out = loop {
            match Self::take(&mut inner.state) {
                Take::Pending => {}
                done => break done,
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break Take::Pending;
            }
            inner.sleeping = true;
            inner = match left {
                None => self.slot.ready.wait(inner),
                Some(left) => self.slot.ready.wait_timeout(inner, left).0,
            };
            inner.sleeping = false;
        };
        let chain = inner.chain.take();
        drop(inner);
        if let Some(chain) = chain {
            chain.wake_children();
        }
        out
    }

    /// Takes the value if it is there; otherwise registers `waker` to be woken when it is.
    ///
    /// The waker is cloned before the lock is taken and the one it replaces is dropped after
    /// the lock is released: waker code is user code.
    pub(crate) fn poll(&self, waker: &Waker) -> Take<R> {
        let mut mine = Some(waker.clone());
        let mut inner = self.slot.inner.lock();
        let out = match Self::take(&mut inner.state) {
            Take::Pending => {
                if let State::Pending(registered) = &mut inner.state {
                    if !registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
                        std::mem::swap(registered, &mut mine);
                    }
                }
                Take::Pending
            }
            done => done,
        };
        drop(inner);
        drop(mine);
        out
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    impl Abandon for u32 {
        fn abandoned() -> Self {
            u32::MAX
        }
    }

    /// Spawns a thread blocked in `rx.wait` and returns once it sleeps. The thread gives its
    /// value if it was woken before a generous deadline, and `None` if the deadline woke it (a
    /// lost wake-up fails the test instead of hanging it).
    fn sleeper(rx: Receiver<u32>) -> std::thread::JoinHandle<Option<u32>> {
        let slot = Arc::clone(&rx.slot);
        let t = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            match rx.wait(Some(deadline)) {
                Take::Ready(v) if Instant::now() < deadline => Some(v),
                _ => None,
            }
        });
        while !slot.inner.lock().sleeping {
            std::thread::yield_now();
        }
        t
    }

    #[test]
    fn every_sleeper_of_a_large_batch_is_woken_with_its_value() {
        let (done, rxs): (Vec<_>, Vec<_>) = (0..40).map(|_| channel::<u32>()).unzip();
        let threads: Vec<_> = rxs.into_iter().map(sleeper).collect();
        complete_all(done.into_iter().zip(0..));
        let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got, (0..40).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn children_of_a_sleeper_that_left_early_are_woken_by_who_hands_over() {
        // Sleeper 0's receiver takes its value before the chain reaches it (as one woken by
        // its deadline between the fill and the hand-over would); its children 1 and 2, and
        // 1's child 3, must still be woken.
        let (done, mut rxs): (Vec<_>, Vec<_>) = (0..4).map(|_| channel::<u32>()).unzip();
        let first = rxs.remove(0);
        let threads: Vec<_> = rxs.into_iter().map(sleeper).collect();
        let slots: Vec<_> = done
            .into_iter()
            .map(|mut c| c.slot.take().expect("armed"))
            .collect();
        let mut wakers = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            // Sleeper 0 is not really asleep, so `fill` reports only the other three.
            assert_eq!(fill(slot, i as u32, &mut wakers), i > 0);
        }
        assert!(matches!(first.try_take(), Take::Ready(0)));
        wake_sleepers(slots);
        let got: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got, vec![Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn a_deadline_wait_leaves_no_chain_behind() {
        // A receiver whose wait ran out before the completion is not a sleeper any more.
        let (done, rx) = channel::<u32>();
        assert!(matches!(
            rx.wait(Some(Instant::now() + Duration::from_millis(1))),
            Take::Pending
        ));
        assert!(!rx.slot.inner.lock().sleeping);
        done.complete(7);
        assert!(matches!(rx.wait(None), Take::Ready(7)));
        assert!(rx.slot.inner.lock().chain.is_none());
    }
}
