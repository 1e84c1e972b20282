//! Sharing the chunks of one kernel between the calling thread and helpers from the thread
//! pool `gemm` uses (so the two never oversubscribe the cores).
//!
//! The caller does not wait for a helper to wake up (tens of microseconds on a busy machine,
//! as long as a small product): chunks are claimed from a counter by whoever comes first, the
//! caller included, and it only waits, spinning, for chunks a helper has claimed and not yet
//! finished. A helper that starts after every chunk was claimed ends without touching the
//! operands. Which thread computes which chunk does not change any bit.
//!
//! A helper that has run out of chunks may stay on its core a while (the `linger` its kernel
//! asks for), spinning on [`hot`]'s slot, where the next kernel hands it its work directly: a
//! pool thread woken from sleep often lands on the caller's busy core and starts only when the
//! scheduler next balances (milliseconds, measured: in one call of ten or more the caller then
//! did all of a 2 ms product alone), and large products come back to back in a forward pass.
//! With nothing handed over by then, the helper returns to the pool.

use chorus_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use chorus_sync::Arc;
use std::time::Duration;

struct Work<F> {
    linger: Duration,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    chunks: usize,
    f: F,
}

/// A kernel's chunks as a helper sees them.
trait Job: Send + Sync {
    /// Claims and runs one chunk; false once every chunk is claimed.
    fn step(&self) -> bool;
    /// How long a helper done with these chunks waits for the next job.
    fn linger(&self) -> Duration;
}

impl<F: Fn(usize) + Send + Sync> Job for Work<F> {
    fn linger(&self) -> Duration {
        self.linger
    }

    fn step(&self) -> bool {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        if c >= self.chunks {
            return false;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(c)));
        if r.is_err() {
            self.panicked.store(true, Ordering::Relaxed);
        }
        // Release: the chunk's writes happen before the caller sees it done.
        self.done.fetch_add(1, Ordering::Release);
        true
    }
}

/// Runs `f(c)` for every `c < chunks` on this thread and up to `helpers` pool threads;
/// returns when all have run, the helpers then waiting up to `linger` for the next kernel.
/// Panics if one of them did.
pub(super) fn run(
    chunks: usize,
    helpers: usize,
    linger: Duration,
    f: impl Fn(usize) + Send + Sync + 'static,
) {
    let work = Arc::new(Work {
        linger,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        chunks,
        f,
    });
    for _ in 0..helpers.min(chunks - 1) {
        if let Err(job) = hot::hand(Arc::clone(&work) as Arc<dyn Job>) {
            rayon::spawn(move || hot::help(job));
        }
    }
    while work.step() {}
    // Acquire: pairs with `step`'s release, so every chunk's writes are visible here.
    while work.done.load(Ordering::Acquire) < chunks {
        std::hint::spin_loop();
    }
    assert!(
        !work.panicked.load(Ordering::Relaxed),
        "matmul: a chunk panicked on a helper thread"
    );
}

/// The hand-over between callers and lingering helpers: a count of helpers waiting and one
/// slot holding a job for one of them.
///
/// `SLOT` is 0 or a `Box<Arc<dyn Job>>` from `Box::into_raw`, owned by the slot; whoever swaps it
/// out owns it. A waiting helper leaves `WAITING` (decrements it) before it takes from the slot,
/// and every helper that leaves takes from the slot once more; a caller that puts a job in the
/// slot and then sees no helper waiting takes it back (both sequentially consistent). So a job
/// put in the slot is always taken, by a helper or by its caller. A job taken late, after its
/// caller returned, has no chunks left: `step` returns false without running anything.
mod hot {
    use super::Job;
    use chorus_sync::Arc;
    use std::time::{Duration, Instant};
    // Plain std atomics: loom's cannot live in a `static`, and these only hand work to the
    // pool's threads, which no loom model runs.
    // sync-shim: allowed (statics outside every loom model)
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Helpers spinning for a job, not yet leaving.
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    /// A job for a waiting helper (see the module docs).
    static SLOT: AtomicUsize = AtomicUsize::new(0);

    /// Takes the slot's job, if any.
    fn take() -> Option<Arc<dyn Job>> {
        let p = SLOT.swap(0, SeqCst);
        // SAFETY: a nonzero slot is a pointer from `Box::into_raw` that the slot owned; the swap
        // made it ours alone.
        (p != 0).then(|| *unsafe { Box::from_raw(p as *mut Arc<dyn Job>) })
    }

    /// Hands `job` to a waiting helper; gives it back when none is waiting (spawn one).
    pub(super) fn hand(job: Arc<dyn Job>) -> Result<(), Arc<dyn Job>> {
        if WAITING.load(SeqCst) == 0 {
            return Err(job);
        }
        let p = Box::into_raw(Box::new(job)) as usize;
        // Another caller's job may still be in the slot: a waiting helper empties it at once,
        // or leaves, and then no helper is waiting.
        while SLOT.compare_exchange(0, p, SeqCst, SeqCst).is_err() {
            if WAITING.load(SeqCst) == 0 {
                // SAFETY: `p` is from `Box::into_raw` above and was never put in the slot.
                return Err(*unsafe { Box::from_raw(p as *mut Arc<dyn Job>) });
            }
            std::hint::spin_loop();
        }
        if WAITING.load(SeqCst) == 0 {
            // The helpers left: take a job back (ours, or one left for them just as late; its
            // caller runs all of its chunks anyway).
            return take().map_or(Ok(()), Err);
        }
        Ok(())
    }

    /// A helper's life: runs `job`'s chunks, then those of the jobs handed to it while it
    /// lingers.
    pub(super) fn help(mut job: Arc<dyn Job>) {
        loop {
            while job.step() {}
            let linger = job.linger();
            drop(job);
            match wait(linger) {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Waits, spinning, up to `linger` for a job in the slot.
    fn wait(linger: Duration) -> Option<Arc<dyn Job>> {
        if linger.is_zero() {
            return None;
        }
        WAITING.fetch_add(1, SeqCst);
        let start = Instant::now();
        loop {
            if SLOT.load(SeqCst) != 0 {
                WAITING.fetch_sub(1, SeqCst);
                if let Some(job) = take() {
                    return Some(job);
                }
                WAITING.fetch_add(1, SeqCst);
            }
            if start.elapsed() >= linger {
                WAITING.fetch_sub(1, SeqCst);
                return take();
            }
            std::hint::spin_loop();
        }
    }
}

/// A raw pointer handed to the threads that share the columns.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) T);
// SAFETY: the pointers are only dereferenced inside chunks that `share` runs while the call
// that owns them blocks (see `run`), at disjoint columns.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}
