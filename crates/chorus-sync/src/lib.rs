//! The one place chorus takes its concurrency primitives from.
//!
//! Every `Arc`, `Mutex`, `Condvar`, atomic, `UnsafeCell` and thread spawn in chorus comes from
//! this crate. A normal build re-exports `std`; a build with `RUSTFLAGS="--cfg chorus_loom"`
//! re-exports [loom](https://docs.rs/loom) so that the runtime's protocols can be model-checked
//! (a project-specific cfg, so that third-party crates testing `cfg(loom)` stay out).
//!
//! Runtime locks are [`RankedMutex`]es: each carries a [`LockRank`] from the single list in
//! [`rank`], and a debug build panics when a thread acquires a lock whose rank is not strictly
//! greater than that of every lock it already holds, naming both locks.
//!
//! # Examples
//! ```
//! use chorus_sync::{rank, RankedMutex};
//! let m = RankedMutex::new(rank::ALLOCATOR, 5_u32);
//! *m.lock() += 1;
//! assert_eq!(*m.lock(), 6);
//! ```

// This crate is the one place allowed to name std's primitives (clippy.toml points everyone else here).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod rank;
mod ranked;

pub use rank::LockRank;
pub use ranked::{assert_no_locks_held, Condvar, RankedGuard, RankedMutex, WaitTimeoutResult};

#[cfg(not(chorus_loom))]
mod imp {
    pub use std::sync::{Arc, Weak};
    /// Atomics (std, or loom's under `chorus_loom`).
    pub mod atomic {
        pub use std::sync::atomic::{
            fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };
    }
    /// Threads (std, or loom's under `chorus_loom`).
    pub mod thread {
        pub use std::thread::{
            current, panicking, park, sleep, spawn, yield_now, Builder, JoinHandle, ThreadId,
        };
        /// Spawns a named thread.
        ///
        /// # Errors
        /// The OS refused to create the thread.
        pub fn spawn_named<F, T>(name: String, f: F) -> std::io::Result<JoinHandle<T>>
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            Builder::new().name(name).spawn(f)
        }
    }
    /// Interior mutability with loom's closure-based API.
    pub mod cell {
        /// `std::cell::UnsafeCell` with loom's `with` / `with_mut` API.
        #[derive(Debug, Default)]
        pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);
        impl<T> UnsafeCell<T> {
            /// Wraps `value`.
            pub const fn new(value: T) -> Self {
                Self(std::cell::UnsafeCell::new(value))
            }
            /// Gives `f` a shared raw pointer to the value.
            pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
                f(self.0.get())
            }
            /// Gives `f` a mutable raw pointer to the value.
            pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
                f(self.0.get())
            }
        }
    }
    pub(crate) use std::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard as RawGuard};
}

#[cfg(chorus_loom)]
mod imp {
    // loom has no `Weak`; reference counts are not what the models check (our own atomics,
    // locks and cells are), so std's `Arc`/`Weak` serve under loom too.
    pub use std::sync::{Arc, Weak};
    /// Atomics (loom's).
    pub mod atomic {
        pub use loom::sync::atomic::{
            fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
        };
    }
    /// Threads (loom's).
    pub mod thread {
        pub use loom::thread::{current, park, spawn, yield_now, Builder, JoinHandle, ThreadId};
        pub use std::thread::panicking;
        /// Under loom there is no real sleep: yield instead.
        pub fn sleep(_: std::time::Duration) {
            loom::thread::yield_now();
        }
        /// Spawns a model thread (the name is ignored by loom).
        ///
        /// # Errors
        /// Never under loom.
        pub fn spawn_named<F, T>(_name: String, f: F) -> std::io::Result<JoinHandle<T>>
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            Ok(loom::thread::spawn(f))
        }
    }
    /// Interior mutability, tracked by loom.
    pub mod cell {
        pub use loom::cell::UnsafeCell;
    }
    pub(crate) use loom::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard as RawGuard};
}

pub use imp::{atomic, cell, thread, Arc, Weak};
pub(crate) use imp::{RawCondvar, RawGuard, RawMutex};
/// `thread_local!` (loom's under `chorus_loom`, where every model thread needs its own value).
#[cfg(chorus_loom)]
pub use loom::thread_local;
/// `thread_local!` (loom's under `chorus_loom`, where every model thread needs its own value).
#[cfg(not(chorus_loom))]
pub use std::thread_local;

/// Plain, unranked mutex for leaf data that never nests with a runtime lock (tests, CLI).
/// Runtime locks use [`RankedMutex`].
#[cfg(not(chorus_loom))]
pub type Mutex<T> = std::sync::Mutex<T>;
/// Plain, unranked mutex (loom's under `chorus_loom`).
#[cfg(chorus_loom)]
pub type Mutex<T> = loom::sync::Mutex<T>;

/// Whether this build checks lock ranks (debug builds and `--cfg chorus_lock_ranks`, never loom).
pub const LOCK_RANKS_CHECKED: bool = cfg!(all(
    any(debug_assertions, chorus_lock_ranks),
    not(chorus_loom)
));
