//! What a backend derives from one storage's contents and keeps while the storage lives, such as
//! a weight repacked into the layout its matrix kernel reads.
//!
//! # Why it is sound
//! A storage is written once, by the op that creates it, before any op reads it (stream order,
//! `runtime/storage.rs`), and never again (tensors, model weights included, are immutable:
//! `docs/ARCHITECTURE.md`, "Tensors: write once, users tracked"). So whatever a
//! kernel derives from the contents when it runs, every later kernel reading the same storage,
//! on any stream, would derive the same. The cache belongs to the storage object, not to its
//! memory: when the storage drops, its cache goes with it (once the kernels that hold a handle
//! have run), so memory reused for another tensor never meets a stale entry.
//!
//! # Protocol
//! Entries are keyed by a value of any type (a backend's own key type, so backends and kernels
//! never confuse each other's entries) and made at most once per key, under the cache's lock:
//! a second thread asking for the same key waits for the first one's value. The lock is a leaf:
//! `make` must not take runtime locks.

use chorus_sync::{rank, Arc, RankedMutex};
use std::any::Any;

/// The values: std's `Arc` (loom's cannot hold a `dyn Any`); they are data, no part of any
/// modeled protocol.
// sync-shim: allowed (type-erased values; the lock around them is chorus_sync's)
type Value<T> = std::sync::Arc<T>;

type Entry = (Box<dyn Any + Send + Sync>, Value<dyn Any + Send + Sync>);

/// A handle to one storage's cache of derived data (cheap to clone; see the module docs).
#[derive(Clone)]
pub struct Derived(Arc<RankedMutex<Vec<Entry>>>);

impl Derived {
    /// A fresh, empty cache (the runtime makes one per storage; backends' tests make their own).
    pub fn new() -> Self {
        Derived(Arc::new(RankedMutex::new(
            rank::DERIVED_ENTRIES,
            Vec::new(),
        )))
    }

    /// The value stored under `key`, made by `make` the first time it is asked for.
    ///
    /// `make` runs under the cache's lock (so at most once per key and type), which it must not
    /// hold up with runtime locks of its own.
    pub fn get_or_insert_with<K, T>(&self, key: K, make: impl FnOnce() -> T) -> Value<T>
    where
        K: Any + Eq + Send + Sync,
        T: Any + Send + Sync,
    {
        let mut entries = self.0.lock();
        for (k, v) in entries.iter() {
            if k.downcast_ref::<K>() == Some(&key) {
                if let Ok(v) = Value::clone(v).downcast::<T>() {
                    return v;
                }
            }
        }
        let v = Value::new(make());
        entries.push((
            Box::new(key),
            Value::clone(&v) as Value<dyn Any + Send + Sync>,
        ));
        v
    }

    /// How many values the cache holds.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Derived {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Derived").finish_non_exhaustive()
    }
}

/// Handles are equal when they are the same storage's cache.
impl PartialEq for Derived {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn made_once_per_key_and_type() {
        let d = Derived::new();
        let mut calls = 0;
        let a = d.get_or_insert_with(1u32, || {
            calls += 1;
            vec![1.0f32]
        });
        let b = d.get_or_insert_with(1u32, || {
            calls += 1;
            vec![2.0f32]
        });
        assert!(Value::ptr_eq(&a, &b));
        assert_eq!(calls, 1);
        // Another key type, another key, another value type: separate entries.
        assert_eq!(*d.get_or_insert_with(1u64, || 7u8), 7);
        assert_eq!(*d.get_or_insert_with(2u32, || vec![3.0f32]), vec![3.0]);
        assert_eq!(*d.get_or_insert_with(1u32, || 9u8), 9);
        assert_eq!(*d.get_or_insert_with(1u32, Vec::<f32>::new), vec![1.0]);
        assert_eq!(d.len(), 4);
        assert_eq!(d.clone(), d);
        assert_ne!(Derived::new(), d);
    }
}
