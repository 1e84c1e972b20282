//! Per-thread caches of small blocks: the allocator's fast path without a shared lock.
//!
//! # State
//! A cache is owned by one thread and can be closed by any thread (its owner at thread exit,
//! or the device at shutdown, in either order):
//! - `IDLE`: nobody is inside; the owner may enter (`IDLE -> BUSY`), anyone may close
//!   (`IDLE -> CLOSED`).
//! - `BUSY`: the owner is pushing or popping (a few instructions, no blocking, no user code);
//!   a closer spins until it is `IDLE` again.
//! - `CLOSED`: final. The closer took the blocks; the owner bypasses the cache from now on.
//!
//! # Fields
//! `hits` and `frees` count the owner's fast-path allocations and frees, so that the fast path
//! touches no shared counter; statistics add them up (`Runtime::memory_stats`) and fold them
//! into the allocator's counters when the cache closes. `blocks` is touched only by the thread that moved the state to `BUSY` (the owner) or to
//! `CLOSED` (the closer), and the state's acquire/release pairs order those accesses, so
//! exactly one thread ever takes each cached block out.
//!
//! # Safety
//! `with_blocks` is the only access to the `UnsafeCell`, and only in the `BUSY` state that the
//! owner set, or right after the successful `IDLE -> CLOSED` swap.

use super::pool::Block;
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicU64, AtomicU8, Ordering};
use chorus_sync::cell::UnsafeCell;

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const CLOSED: u8 = 2;

/// A cached block: free, owned by `block.stream`, reusable by that stream at once.
pub(crate) type Cached = Block;

/// Cached blocks and their total size, within a capacity: a thread cache's, and a stream's
/// returns' (`super::returns`).
#[derive(Debug, Default)]
pub(crate) struct Held {
    blocks: Vec<Cached>,
    bytes: usize,
}

impl Held {
    /// Keeps `block` if `capacity` has room for it, else hands it back.
    pub(crate) fn put(&mut self, block: Cached, capacity: usize) -> Result<(), Cached> {
        if self.bytes + block.size > capacity {
            return Err(block);
        }
        self.bytes += block.size;
        self.blocks.push(block);
        Ok(())
    }

    /// Takes a kept block of exactly `size` bytes owned by `stream` (the latest kept first).
    pub(crate) fn take(&mut self, size: usize, stream: StreamId) -> Option<Cached> {
        let i = self
            .blocks
            .iter()
            .rposition(|c| c.size == size && c.stream == stream)?;
        self.bytes -= size;
        Some(self.blocks.swap_remove(i))
    }

    /// Takes every kept block.
    pub(crate) fn take_all(&mut self) -> Vec<Cached> {
        self.bytes = 0;
        std::mem::take(&mut self.blocks)
    }
}

/// One thread's cache for one device.
#[derive(Debug)]
pub(crate) struct ThreadCache {
    state: AtomicU8,
    /// The cached blocks.
    blocks: UnsafeCell<Held>,
    /// Allocations served from this cache (each also a cache hit).
    hits: AtomicU64,
    /// Frees that went into this cache.
    frees: AtomicU64,
    capacity: usize,
}

// SAFETY: `blocks` is only accessed by the single thread that won the state transition to
// BUSY or CLOSED (module docs), so sharing the cache between threads is sound; Block is plain data.
unsafe impl Sync for ThreadCache {}
// SAFETY: as above; the cache holds only plain data.
unsafe impl Send for ThreadCache {}

/// Outcome of an owner operation.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Put {
    Cached,
    /// Closed or full: the caller frees the block itself.
    Rejected(Cached),
}

impl ThreadCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: AtomicU8::new(IDLE),
            blocks: UnsafeCell::new(Held::default()),
            hits: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            capacity,
        }
    }

    /// Owner only: runs `f` on the blocks if the cache is open.
    fn with_blocks<R>(&self, f: impl FnOnce(&mut Held) -> R) -> Option<R> {
        if self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // CLOSED (the owner is the only one who sets BUSY, so it cannot be BUSY here).
            return None;
        }
        // SAFETY: we moved the state IDLE -> BUSY; no closer can take CLOSED until we store
        // IDLE below, and no other thread is the owner.
        let r = self.blocks.with_mut(|b| f(unsafe { &mut *b }));
        self.state.store(IDLE, Ordering::Release);
        Some(r)
    }

    /// Owner only: takes a cached block of exactly `size` bytes owned by `stream`.
    pub(crate) fn take(&self, size: usize, stream: StreamId) -> Option<Cached> {
        self.with_blocks(|held| {
            let b = held.take(size, stream)?;
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(b)
        })
        .flatten()
    }

    /// Owner only: caches a block if there is room.
    pub(crate) fn put(&self, block: Cached) -> Put {
        let cached = self.with_blocks(|held| {
            let cached = held.put(block, self.capacity).is_ok();
            if cached {
                self.frees.fetch_add(1, Ordering::Relaxed);
            }
            cached
        });
        if cached == Some(true) {
            Put::Cached
        } else {
            Put::Rejected(block)
        }
    }

    /// (allocations served, frees taken) so far. The owner counts inside its critical section,
    /// so after [`ThreadCache::close`] the counts are final.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
        )
    }

    /// Whether the cache was closed (for good: its owner then makes a new one).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    /// Any thread: closes the cache and returns its blocks, or `None` if it was closed already.
    pub(crate) fn close(&self) -> Option<Vec<Cached>> {
        loop {
            match self
                .state
                .compare_exchange(IDLE, CLOSED, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    let taken = self.blocks.with_mut(|b| {
                        // SAFETY: we won IDLE -> CLOSED; the owner will never enter again and no
                        // other closer can win, so this thread alone touches `blocks` from now on.
                        unsafe { &mut *b }.take_all()
                    });
                    return Some(taken);
                }
                Err(CLOSED) => return None,
                Err(_) => chorus_sync::thread::yield_now(),
            }
        }
    }
}
