//! The exclusive stream pool's free list of slots.
//!
//! # State
//! A slot (a pooled stream index) is either *free* (on the list) or *owned* by exactly one
//! thread. `try_acquire` pops (free → owned), `release` pushes (owned → free).
//!
//! # Fields
//! - `head`: a Treiber stack head packing `(tag << 32) | (index + 1)` (0 = empty). The tag
//!   grows on every successful swap, so a stale head seen before a pop/push/pop sequence can
//!   never win its compare-exchange (no ABA).
//! - `next[i]`: the link of slot `i`, written only by the thread that owns slot `i` (while
//!   pushing it) and read by poppers; a stale read is caught by the head's tag.
//! - `wait` (`STREAM_SLOT_WAIT`: the number of waiters and whether the pool is closed) +
//!   `cond`: the slow path for waiting on exhaustion. A waiter checks the list and the flag
//!   *under* the lock before each wait; a releaser pushes first, then takes the lock to notify,
//!   and [`StreamSlots::close`] (the device's shutdown) sets the flag under it, so neither can
//!   fall between a waiter's check and its wait (no lost wake-up). Releases are rare (thread
//!   exit), so taking the lock there is free.

use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicU32, AtomicU64, Ordering};
use chorus_sync::{rank, Condvar, RankedMutex};
use std::time::{Duration, Instant};

/// Free list of pooled stream indices `first..first + len`.
#[derive(Debug)]
pub(crate) struct StreamSlots {
    head: AtomicU64,
    next: Box<[AtomicU32]>,
    first: usize,
    wait: RankedMutex<Waiters>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Threads waiting on `cond`.
    count: usize,
    /// No more waiting: the device is shut down.
    closed: bool,
}

/// How long `acquire` may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    No,
    For(Duration),
    Forever,
}

impl StreamSlots {
    /// All `len` slots (indices `first..first + len`) start free.
    pub(crate) fn new(first: usize, len: usize) -> Self {
        assert!(len < u32::MAX as usize, "slot count fits the packed head");
        let next: Box<[AtomicU32]> = (0..len)
            .map(|i| AtomicU32::new(if i + 1 < len { i as u32 + 2 } else { 0 }))
            .collect();
        let head = if len > 0 { 1 } else { 0 };
        Self {
            head: AtomicU64::new(head),
            next,
            first,
            wait: RankedMutex::new(rank::STREAM_SLOT_WAIT, Waiters::default()),
            cond: Condvar::new(),
        }
    }

    /// Pops a free slot without blocking.
    pub(crate) fn try_acquire(&self) -> Option<StreamId> {
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            let top = (h & 0xffff_ffff) as usize;
            if top == 0 {
                return None;
            }
            let n = u64::from(self.next[top - 1].load(Ordering::Relaxed));
            let new = ((h >> 32).wrapping_add(1) << 32) | n;
            match self
                .head
                .compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(StreamId::new(self.first + top - 1)),
                Err(cur) => h = cur,
            }
        }
    }

    /// Pops a free slot, waiting as `wait` allows (a wait too long to have a deadline waits
    /// forever). `Err` carries how long it waited: the time ran out, or the pool was closed.
    pub(crate) fn acquire(&self, wait: Wait) -> Result<StreamId, Duration> {
        if let Some(s) = self.try_acquire() {
            return Ok(s);
        }
        let start = Instant::now();
        let deadline = match wait {
            Wait::No => return Err(Duration::ZERO),
            Wait::For(d) => start.checked_add(d),
            Wait::Forever => None,
        };
        let mut g = self.wait.lock();
        g.count += 1;
        let res = loop {
            if let Some(s) = self.try_acquire() {
                break Ok(s);
            }
            if g.closed {
                break Err(start.elapsed());
            }
            match deadline {
                None => g = self.cond.wait(g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(now - start);
                    }
                    g = self.cond.wait_timeout(g, d - now).0;
                }
            }
        };
        g.count -= 1;
        res
    }

    /// Ends every wait, now and later (the device's shutdown): waiters get `Err`.
    pub(crate) fn close(&self) {
        self.wait.lock().closed = true;
        self.cond.notify_all();
    }

    /// Pushes an owned slot back and wakes waiters.
    pub(crate) fn release(&self, slot: StreamId) {
        let i = slot.index() - self.first;
        debug_assert!(i < self.next.len(), "slot {slot} is not pooled");
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            self.next[i].store((h & 0xffff_ffff) as u32, Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | (i as u64 + 1);
            match self
                .head
                .compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(cur) => h = cur,
            }
        }
        let g = self.wait.lock();
        if g.count > 0 {
            self.cond.notify_all();
        }
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_slot_once_then_empty() {
        let s = StreamSlots::new(1, 4);
        let mut got: Vec<usize> = (0..4).map(|_| s.try_acquire().unwrap().index()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert_eq!(s.try_acquire(), None);
        assert!(s.acquire(Wait::For(Duration::from_millis(5))).is_err());
        s.release(StreamId::new(3));
        assert_eq!(s.acquire(Wait::No), Ok(StreamId::new(3)));
    }
}
