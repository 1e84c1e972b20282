//! Sharing the chunks of one kernel between the calling thread and helpers from the thread
//! pool `gemm` uses (so the two never oversubscribe the cores).
//!
//! The caller does not wait for a helper to wake up (tens of microseconds on a busy machine,
//! as long as a small product): chunks are claimed from a counter by whoever comes first, the
//! caller included, and it only waits, spinning, for chunks a helper has claimed and not yet
//! finished. A helper that starts after every chunk was claimed ends without touching the
//! operands. Which thread computes which chunk does not change any bit.

use chorus_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use chorus_sync::Arc;

struct Work<F> {
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    chunks: usize,
    f: F,
}

impl<F: Fn(usize)> Work<F> {
    /// Claims and runs one chunk; false once every chunk is claimed.
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
/// returns when all have run. Panics if one of them did.
pub(super) fn run(chunks: usize, helpers: usize, f: impl Fn(usize) + Send + Sync + 'static) {
    let work = Arc::new(Work {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        chunks,
        f,
    });
    for _ in 0..helpers.min(chunks - 1) {
        let w = Arc::clone(&work);
        rayon::spawn(move || while w.step() {});
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

/// A raw pointer handed to the threads that share the columns.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) T);
// SAFETY: the pointers are only dereferenced inside chunks that `share` runs while the call
// that owns them blocks (see `run`), at disjoint columns.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}
