//! Ranked mutex and its condvar.
//!
//! # State
//! Each thread keeps (in debug builds) the stack of ranks it holds. `lock` checks the new rank
//! against the top of the stack, pushes it, and the guard's drop removes it. A condvar wait
//! keeps the rank on the stack: the lock is reacquired before the wait returns, and nothing else
//! may be acquired by the waiting thread meanwhile. A thread may wait only while the waited
//! lock is the one ranked lock it holds: blocking while holding another stalls every thread
//! that needs that one, and reacquiring the waited lock under a higher-ranked one would be an
//! order the check at `lock` never sees.
//!
//! Poisoning is ignored: runtime code never runs user code under a lock, so a panic under a
//! runtime lock is a runtime bug that has already been reported by the panic itself, and the
//! runtime must keep serving other threads.

use crate::rank::LockRank;
use crate::{RawCondvar, RawGuard, RawMutex};
use std::time::Duration;

#[cfg(all(any(debug_assertions, chorus_lock_ranks), not(chorus_loom)))]
mod held {
    use crate::rank::LockRank;
    use std::cell::RefCell;

    std::thread_local! {
        static HELD: RefCell<Vec<LockRank>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn acquire(rank: LockRank) {
        // `try_with`: locks taken from other thread-local destructors go unchecked.
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(top) = h.iter().max() {
                assert!(
                    rank.rank > top.rank,
                    "lock order violation: acquiring `{}` (rank {}) while holding `{}` (rank {})",
                    rank.name,
                    rank.rank,
                    top.name,
                    top.rank
                );
            }
            h.push(rank);
        });
    }

    pub(super) fn release(rank: LockRank) {
        // `try_with`: guards may drop during thread-local destruction.
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|r| *r == rank) {
                h.remove(i);
            }
        });
    }

    pub(super) fn waiting(rank: LockRank) {
        let _ = HELD.try_with(|h| {
            let h = h.borrow();
            assert!(
                h.len() == 1 && h[0] == rank,
                "waiting on `{}` while holding {:?}: a wait must hold only the waited lock",
                rank.name,
                *h
            );
        });
    }

    pub(super) fn assert_none() {
        let _ = HELD.try_with(|h| {
            let h = h.borrow();
            assert!(
                h.is_empty(),
                "runtime locks held where none may be: {:?}",
                *h
            );
        });
    }
}

#[cfg(not(all(any(debug_assertions, chorus_lock_ranks), not(chorus_loom))))]
mod held {
    use crate::rank::LockRank;
    #[inline(always)]
    pub(super) fn acquire(_: LockRank) {}
    #[inline(always)]
    pub(super) fn release(_: LockRank) {}
    #[inline(always)]
    pub(super) fn waiting(_: LockRank) {}
    #[inline(always)]
    pub(super) fn assert_none() {}
}

/// Panics (in builds that check lock ranks) if the calling thread holds any [`RankedMutex`].
///
/// The runtime calls this right before it runs user code (completion handlers).
///
/// # Panics
/// When a ranked lock is held and ranks are checked.
pub fn assert_no_locks_held() {
    held::assert_none();
}

/// A mutex with a place in the global lock order ([`crate::rank`]).
#[derive(Debug)]
pub struct RankedMutex<T> {
    rank: LockRank,
    raw: RawMutex<T>,
}

/// Guard of a [`RankedMutex`]; releases the lock (and its rank) on drop.
#[derive(Debug)]
pub struct RankedGuard<'a, T> {
    rank: LockRank,
    raw: Option<RawGuard<'a, T>>,
}

impl<T> RankedMutex<T> {
    /// Creates a mutex of the given rank.
    pub fn new(rank: LockRank, value: T) -> Self {
        Self {
            rank,
            raw: RawMutex::new(value),
        }
    }

    /// The lock's rank.
    pub fn rank(&self) -> LockRank {
        self.rank
    }

    /// Acquires the lock, blocking until it is free.
    ///
    /// # Panics
    /// In builds that check ranks, if the calling thread holds a lock of equal or higher rank.
    pub fn lock(&self) -> RankedGuard<'_, T> {
        held::acquire(self.rank);
        let raw = self
            .raw
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        RankedGuard {
            rank: self.rank,
            raw: Some(raw),
        }
    }

    /// Consumes the mutex, returning the value.
    pub fn into_inner(self) -> T {
        self.raw
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T> std::ops::Deref for RankedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.raw
            .as_ref()
            .expect("guard holds its lock until dropped")
    }
}

impl<T> std::ops::DerefMut for RankedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.raw
            .as_mut()
            .expect("guard holds its lock until dropped")
    }
}

impl<T> Drop for RankedGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.raw.take());
        held::release(self.rank);
    }
}

/// Whether a timed wait returned because its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True when the wait ended because the timeout elapsed.
    pub fn timed_out(self) -> bool {
        self.0
    }
}

/// Condition variable for [`RankedGuard`]s.
#[derive(Debug, Default)]
pub struct Condvar(RawCondvar);

impl Condvar {
    /// A new condvar.
    pub fn new() -> Self {
        Self(RawCondvar::new())
    }

    /// Releases the guard's lock, waits for a notification, reacquires.
    ///
    /// # Panics
    /// In builds that check ranks, if the calling thread holds another ranked lock.
    pub fn wait<'a, T>(&self, mut guard: RankedGuard<'a, T>) -> RankedGuard<'a, T> {
        held::waiting(guard.rank);
        let raw = guard.raw.take().expect("guard holds its lock");
        let raw = self
            .0
            .wait(raw)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.raw = Some(raw);
        guard
    }

    /// Like [`Condvar::wait`] but gives up after `timeout`.
    pub fn wait_timeout<'a, T>(
        &self,
        mut guard: RankedGuard<'a, T>,
        timeout: Duration,
    ) -> (RankedGuard<'a, T>, WaitTimeoutResult) {
        held::waiting(guard.rank);
        let raw = guard.raw.take().expect("guard holds its lock");
        let (raw, res) = self
            .0
            .wait_timeout(raw, timeout)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.raw = Some(raw);
        (guard, WaitTimeoutResult(res.timed_out()))
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    /// Wakes all waiters.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;
    use crate::rank::{TEST_HIGH, TEST_LOW};

    #[test]
    fn in_order_is_fine() {
        let a = RankedMutex::new(TEST_LOW, 1);
        let b = RankedMutex::new(TEST_HIGH, 2);
        let ga = a.lock();
        let gb = b.lock();
        assert_eq!(*ga + *gb, 3);
    }

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "ranks are checked in debug builds")]
    fn out_of_order_panics_naming_both() {
        let a = RankedMutex::new(TEST_LOW, 1);
        let b = RankedMutex::new(TEST_HIGH, 2);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _gb = b.lock();
            let _ga = a.lock();
        }))
        .expect_err("out-of-order acquisition must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("test low") && msg.contains("test high"),
            "{msg}"
        );
        // The failed acquisition left nothing held.
        assert_no_locks_held();
    }

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "ranks are checked in debug builds")]
    fn waiting_while_holding_another_lock_panics() {
        let a = RankedMutex::new(TEST_LOW, 1);
        let b = RankedMutex::new(TEST_HIGH, 2);
        let cv = Condvar::new();
        // Alone, a wait is fine (a timed one, so that the test does not block).
        let gb = b.lock();
        drop(cv.wait_timeout(gb, Duration::from_millis(1)));
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ga = a.lock();
            let gb = b.lock();
            drop(cv.wait_timeout(gb, Duration::from_millis(1)));
        }))
        .expect_err("a wait holding another lock must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("waiting on `test high`"), "{msg}");
        assert_no_locks_held();
    }
}
