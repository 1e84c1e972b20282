//! The queue's state machine, shared by submitters, workers, tickets and shutdown. It knows
//! nothing of tensors or models (items are opaque), so that the loom models in `src/tests/`
//! check exactly this code.
//!
//! # State
//! The phase goes `Open` → `Draining` → `Closed`, or `Open` → `Closed` directly:
//! - `Open`: [`Queue::push`] accepts items while fewer than `capacity` are waiting.
//! - `Draining` ([`ShutdownMode::Drain`]): pushes are refused with [`Push::Closed`]; every
//!   waiting item is ready at once; [`Queue::next`] returns [`Next::Stop`] once none is left.
//! - `Closed` ([`ShutdownMode::Fail`], also from `Draining`): pushes are refused, and
//!   [`Queue::shutdown`] hands every waiting item back to its caller, which fails them.
//!
//! Each item is, from push to outcome, in exactly one place: a group of the queue, the hands of
//! the one worker whose [`Queue::next`] took it (in a batch, or expired past its timeout), or
//! the hands of the one thread whose [`Queue::cancel`] or [`Queue::shutdown`] took it. Every
//! move out of the queue happens under the lock, so each item is taken out once, and whoever
//! takes it completes it (outside the lock).
//!
//! # Batches
//! Items are grouped by key (the per-row shape and dtype, or its length class along a padded
//! dimension), first in, first out within a group; a batch is a run of items from the front of
//! one group. Each group has a row limit, `max_batch` or less (a token budget, set by the
//! caller with the group's first push). A group is *ready* when it holds at least its limit in
//! rows, or at least the largest preferred size, or its oldest item has waited `max_delay`, or
//! the queue is draining. A worker takes the ready group whose front is oldest: up to the
//! limit if it has that many rows, else the largest preferred size it holds, else everything;
//! a batch always takes at least one item.
//!
//! # Fields
//! Everything is in [`State`] under one lock (`BATCH_QUEUE`), held for bookkeeping only: no
//! model, runtime call, ticket completion or waker runs under it.
//!
//! # Wake-ups
//! Idle workers wait on `work`, timed to the earliest deadline of the waiting items (the front
//! of each group: its `max_delay` and its timeout), or untimed when the queue is empty. A new
//! item's deadlines are never earlier than those of the items already waiting, so a push
//! notifies one idle worker only when it may change what an idle worker should do: when the
//! queue was empty (the idle workers' waits are untimed) or when the push makes its group
//! ready. A worker that takes a batch and leaves items behind notifies one more idle worker,
//! which takes the next ready batch or times its wait to the rest. Shutdown notifies all.
//!
//! # The timer
//! With a timeout set, one more thread ([`Queue::next_expired`]) takes items out once they have
//! waited past it, so that a request expires on time even while every worker is inside a long
//! batch (workers also expire what is due whenever they look for work, and a ticket waiting on
//! its request expires it itself). The timer waits on `timer`, timed to the earliest expiry
//! (the oldest front's), or untimed when nothing waits, and then says so in `timer_idle`. A push
//! notifies it only then (an item pushed later never expires earlier than those waiting), and
//! clears the flag, so pushes into a busy queue cost the timer nothing. Shutdown notifies it,
//! and it stops.

use crate::config::ShutdownMode;
use chorus_sync::{rank, Condvar, RankedMutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How batches are formed (a copy of the queue's settings).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Most rows in one batch.
    pub(crate) max_batch: usize,
    /// Longest the oldest item of a group waits for its batch to fill.
    pub(crate) max_delay: Duration,
    /// Preferred batch sizes, ascending.
    pub(crate) preferred: Vec<usize>,
    /// Most items waiting at once.
    pub(crate) capacity: usize,
    /// Longest an item may wait before it expires.
    pub(crate) timeout: Option<Duration>,
}

/// An item in the queue, with its bookkeeping.
#[derive(Debug)]
pub(crate) struct Queued<T> {
    /// Unique, increasing in push order.
    pub(crate) id: u64,
    /// Rows the item adds to a batch.
    pub(crate) rows: usize,
    /// When it was pushed.
    pub(crate) enqueued: Instant,
    /// The item.
    pub(crate) item: T,
}

#[derive(Debug)]
struct Group<K, T> {
    key: K,
    rows: usize,
    /// Most rows of one batch of this group (`max_batch`, or less under a token budget).
    limit: usize,
    items: VecDeque<Queued<T>>,
}

/// The queue's phase (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepting items.
    Open,
    /// Refusing items, running the waiting ones.
    Draining,
    /// Refusing items; the waiting ones were handed to the shutdown caller.
    Closed,
}

#[derive(Debug)]
struct State<K, T> {
    phase: Phase,
    groups: Vec<Group<K, T>>,
    /// Items waiting, over all groups.
    len: usize,
    /// Most items ever waiting at once (since the last reset).
    peak: usize,
    next_id: u64,
    /// Workers waiting on `work`.
    idle: usize,
    /// The timer waits on `timer` untimed (module docs).
    timer_idle: bool,
}

/// Outcome of [`Queue::push`].
#[must_use]
#[derive(Debug)]
pub(crate) enum Push<T> {
    /// Queued under `id` at `enqueued`.
    Queued {
        /// The item's id (for [`Queue::cancel`]).
        id: u64,
        /// When it was queued.
        enqueued: Instant,
    },
    /// Refused: `capacity` items are waiting. The item is handed back.
    Full(T),
    /// Refused: the queue is shut down. The item is handed back.
    Closed(T),
}

/// Outcome of [`Queue::next`].
#[must_use]
#[derive(Debug)]
pub(crate) enum Next<T> {
    /// Work for the calling worker: a batch to run (possibly empty) and items that waited past
    /// their timeout (possibly empty), never both empty.
    Work {
        /// Items of one group, oldest first.
        batch: Vec<Queued<T>>,
        /// Items to fail with a timeout.
        expired: Vec<Queued<T>>,
    },
    /// The queue is shut down and empty: the worker exits.
    Stop,
}

/// The queue: items of type `T` grouped by keys of type `K`.
#[derive(Debug)]
pub(crate) struct Queue<K, T> {
    policy: Policy,
    state: RankedMutex<State<K, T>>,
    work: Condvar,
    timer: Condvar,
}

impl<K: PartialEq, T> Queue<K, T> {
    /// An open, empty queue.
    pub(crate) fn new(policy: Policy) -> Self {
        Queue {
            policy,
            state: RankedMutex::new(
                rank::BATCH_QUEUE,
                State {
                    phase: Phase::Open,
                    groups: Vec::new(),
                    len: 0,
                    peak: 0,
                    next_id: 1,
                    idle: 0,
                    timer_idle: false,
                },
            ),
            work: Condvar::new(),
            timer: Condvar::new(),
        }
    }

    /// Whether `rows` rows in a group are enough to run without waiting for the delay.
    fn full_enough(&self, rows: usize, limit: usize) -> bool {
        rows >= limit || self.policy.preferred.last().is_some_and(|&p| rows >= p)
    }

    /// Adds `item` (of `rows` rows) to the group of `key`, whose batches take at most `limit`
    /// rows (`max_batch`, or less: a token budget; the same for every push of a key), unless
    /// the queue is full or shut down; wakes an idle worker if that may change its plan
    /// (module docs).
    pub(crate) fn push(&self, key: K, rows: usize, limit: usize, item: T) -> Push<T> {
        let mut st = self.state.lock();
        if st.phase != Phase::Open {
            return Push::Closed(item);
        }
        if st.len >= self.policy.capacity {
            return Push::Full(item);
        }
        let enqueued = Instant::now();
        let id = st.next_id;
        st.next_id += 1;
        let was_empty = st.len == 0;
        let g = match st.groups.iter().position(|g| g.key == key) {
            Some(g) => g,
            None => {
                st.groups.push(Group {
                    key,
                    rows: 0,
                    limit: limit.clamp(1, self.policy.max_batch),
                    items: VecDeque::new(),
                });
                st.groups.len() - 1
            }
        };
        let group = &mut st.groups[g];
        group.items.push_back(Queued {
            id,
            rows,
            enqueued,
            item,
        });
        group.rows += rows;
        let ready = self.policy.max_delay.is_zero() || self.full_enough(group.rows, group.limit);
        st.len += 1;
        st.peak = st.peak.max(st.len);
        let wake = st.idle > 0 && (was_empty || ready);
        let wake_timer = std::mem::take(&mut st.timer_idle);
        drop(st);
        if wake {
            self.work.notify_one();
        }
        if wake_timer {
            self.timer.notify_one();
        }
        Push::Queued { id, enqueued }
    }

    /// The next work for a worker: blocks until a batch is ready or items expire, or returns
    /// [`Next::Stop`] once the queue is shut down and empty.
    pub(crate) fn next(&self) -> Next<T> {
        let mut st = self.state.lock();
        loop {
            let now = Instant::now();
            let expired = self.sweep(&mut st, now);
            if let Some(g) = self.ready_group(&st, now) {
                let batch = self.take(&mut st, g);
                let more = st.len > 0 && st.idle > 0;
                drop(st);
                if more {
                    self.work.notify_one();
                }
                return Next::Work { batch, expired };
            }
            if !expired.is_empty() {
                return Next::Work {
                    batch: Vec::new(),
                    expired,
                };
            }
            if st.phase != Phase::Open && st.len == 0 {
                return Next::Stop;
            }
            st.idle += 1;
            st = match self.deadline(&st) {
                Some(d) => {
                    self.work
                        .wait_timeout(st, d.saturating_duration_since(now))
                        .0
                }
                None => self.work.wait(st),
            };
            st.idle -= 1;
        }
    }

    /// The timer's next work (module docs): blocks until items have waited past the timeout
    /// and returns them, oldest first within each group; `None` once the queue is shut down
    /// (a draining queue's items are all ready, and the workers expire what is due when they
    /// take them), or at once when no timeout is set.
    pub(crate) fn next_expired(&self) -> Option<Vec<Queued<T>>> {
        let timeout = self.policy.timeout?;
        let mut st = self.state.lock();
        loop {
            let now = Instant::now();
            let expired = self.sweep(&mut st, now);
            if !expired.is_empty() {
                return Some(expired);
            }
            if st.phase != Phase::Open {
                return None;
            }
            let expiry = st
                .groups
                .iter()
                .filter_map(|g| g.items.front())
                .filter_map(|q| q.enqueued.checked_add(timeout))
                .min();
            st = match expiry {
                Some(at) => {
                    self.timer
                        .wait_timeout(st, at.saturating_duration_since(now))
                        .0
                }
                None => {
                    st.timer_idle = true;
                    let mut st = self.timer.wait(st);
                    st.timer_idle = false;
                    st
                }
            };
        }
    }

    /// Takes out the items that have waited past the timeout (the fronts of their groups,
    /// since items are queued in time order).
    fn sweep(&self, st: &mut State<K, T>, now: Instant) -> Vec<Queued<T>> {
        let mut out = Vec::new();
        let Some(timeout) = self.policy.timeout else {
            return out;
        };
        for g in &mut st.groups {
            while let Some(front) = g.items.front() {
                if now.saturating_duration_since(front.enqueued) < timeout {
                    break;
                }
                if let Some(q) = g.items.pop_front() {
                    g.rows -= q.rows;
                    out.push(q);
                }
            }
        }
        if !out.is_empty() {
            st.len -= out.len();
            st.groups.retain(|g| !g.items.is_empty());
        }
        out
    }

    /// The ready group whose oldest item is oldest, if any.
    fn ready_group(&self, st: &State<K, T>, now: Instant) -> Option<usize> {
        let draining = st.phase != Phase::Open;
        st.groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let front = g.items.front()?;
                let ready = draining
                    || self.full_enough(g.rows, g.limit)
                    || now.saturating_duration_since(front.enqueued) >= self.policy.max_delay;
                ready.then_some((i, front.id))
            })
            .min_by_key(|&(_, id)| id)
            .map(|(i, _)| i)
    }

    /// Takes a batch from the front of group `g` (module docs: how many rows).
    fn take(&self, st: &mut State<K, T>, g: usize) -> Vec<Queued<T>> {
        let group = &mut st.groups[g];
        let limit = if group.rows >= group.limit {
            group.limit
        } else {
            let waiting = group.rows;
            self.policy
                .preferred
                .iter()
                .rev()
                .find(|&&p| p <= waiting)
                .copied()
                .unwrap_or(waiting)
        };
        let mut rows = 0;
        let mut batch = Vec::new();
        while let Some(front) = group.items.front() {
            if !batch.is_empty() && rows + front.rows > limit {
                break;
            }
            let Some(q) = group.items.pop_front() else {
                break;
            };
            rows += q.rows;
            batch.push(q);
            if rows >= limit {
                break;
            }
        }
        group.rows -= rows;
        if group.items.is_empty() {
            st.groups.swap_remove(g);
        }
        st.len -= batch.len();
        batch
    }

    /// The earliest instant at which a waiting item becomes ready by delay or expires.
    fn deadline(&self, st: &State<K, T>) -> Option<Instant> {
        st.groups
            .iter()
            .filter_map(|g| g.items.front())
            .flat_map(|q| {
                let by_delay = q.enqueued.checked_add(self.policy.max_delay);
                let by_timeout = self.policy.timeout.and_then(|t| q.enqueued.checked_add(t));
                [by_delay, by_timeout]
            })
            .flatten()
            .min()
    }

    /// Takes item `id` out if it is still waiting (a worker has not taken it).
    pub(crate) fn cancel(&self, id: u64) -> Option<Queued<T>> {
        let mut st = self.state.lock();
        let (g, i) = st.groups.iter().enumerate().find_map(|(g, group)| {
            group
                .items
                .binary_search_by_key(&id, |q| q.id)
                .ok()
                .map(|i| (g, i))
        })?;
        let group = &mut st.groups[g];
        let q = group.items.remove(i)?;
        group.rows -= q.rows;
        if group.items.is_empty() {
            st.groups.swap_remove(g);
        }
        st.len -= 1;
        Some(q)
    }

    /// Refuses new items from now on. [`ShutdownMode::Drain`] leaves the waiting items to the
    /// workers (all ready at once); [`ShutdownMode::Fail`] takes them out and returns them,
    /// oldest first, for the caller to fail. Wakes every idle worker.
    pub(crate) fn shutdown(&self, mode: ShutdownMode) -> Vec<Queued<T>> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        match mode {
            ShutdownMode::Drain => {
                if st.phase == Phase::Open {
                    st.phase = Phase::Draining;
                }
            }
            ShutdownMode::Fail => {
                st.phase = Phase::Closed;
                out.reserve(st.len);
                for g in st.groups.drain(..) {
                    out.extend(g.items);
                }
                st.len = 0;
                out.sort_unstable_by_key(|q| q.id);
            }
        }
        drop(st);
        self.work.notify_all();
        self.timer.notify_all();
        out
    }

    /// The phase.
    pub(crate) fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    /// Items waiting now, and the most ever waiting at once since the last reset.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.len, st.peak)
    }

    /// Resets the peak depth to the current depth.
    pub(crate) fn reset_peak(&self) {
        let mut st = self.state.lock();
        st.peak = st.len;
    }
}
