//! Per-device pool of raw events.
//!
//! # State
//! A raw event is either *pooled* (in `free`, in the never-recorded state) or *leased* to one
//! [`crate::Event`] handle. Every lease gets a fresh id from `next_id`: ids are unique, never
//! reused and never zero, even though raw events are. On return the raw event is reset
//! (`Backend::reset_event`) *before* it goes back on the list, so the next lease cannot observe
//! anything its previous owner recorded.
//!
//! # Fields
//! `free` under `EVENT_POOL` (timing and plain events kept apart); `next_id` atomic.

use chorus_sync::atomic::{AtomicU64, Ordering};
use chorus_sync::{rank, RankedMutex};

/// Pool of raw events of type `E`.
#[derive(Debug)]
pub(crate) struct EventPool<E> {
    free: RankedMutex<[Vec<E>; 2]>,
    next_id: AtomicU64,
}

impl<E> EventPool<E> {
    pub(crate) fn new() -> Self {
        Self {
            free: RankedMutex::new(rank::EVENT_POOL, [Vec::new(), Vec::new()]),
            next_id: AtomicU64::new(1),
        }
    }

    /// Leases an event (pooled, or made by `create` with the lock released) and a fresh id.
    pub(crate) fn acquire<Err>(
        &self,
        timing: bool,
        create: impl FnOnce() -> Result<E, Err>,
    ) -> Result<(E, u64), Err> {
        let pooled = self.free.lock()[usize::from(timing)].pop();
        let raw = match pooled {
            Some(e) => e,
            None => create()?,
        };
        Ok((raw, self.next_id.fetch_add(1, Ordering::Relaxed)))
    }

    /// Returns a leased event: `reset` runs first, with no lock held.
    pub(crate) fn release(&self, raw: E, timing: bool, reset: impl FnOnce(&E)) {
        reset(&raw);
        self.free.lock()[usize::from(timing)].push(raw);
    }

    /// Takes every pooled event (teardown).
    pub(crate) fn drain(&self) -> Vec<E> {
        let mut f = self.free.lock();
        let [a, b] = &mut *f;
        a.drain(..).chain(b.drain(..)).collect()
    }
}
