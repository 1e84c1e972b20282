//! Thread-local state of the runtime: per device, the thread's bound stream, its scoped
//! stream overrides and its cache of small blocks.
//!
//! # State
//! An entry is created the first time a thread uses a device. Its stream is bound on first use
//! (`current_stream`) and kept for the thread's life. When the thread exits, the entry's
//! destructor calls `RuntimeObj::thread_exit` (if the device still exists): the cache is closed
//! and its blocks go back to the allocator, and an exclusive stream slot is given back once the
//! work the thread enqueued on it has completed.
//!
//! Overrides (`StreamGuard`) form a stack per thread; the newest override for a device wins.
//! Each carries a token so that dropping guards out of order removes the right one.
//!
//! A call made while the thread-local state is being destroyed (from another thread-local
//! destructor) uses the default stream 0 and no cache.

use super::RuntimeObj;
use crate::alloc::thread_cache::ThreadCache;
use crate::error::Result;
use crate::stream::StreamId;
use chorus_sync::{Arc, Weak};
use std::cell::{Cell, RefCell};

struct Entry {
    instance: u64,
    rt: Weak<dyn RuntimeObj>,
    stream: Option<StreamId>,
    exclusive: bool,
    cache: Option<Arc<ThreadCache>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.upgrade() {
            rt.thread_exit(self.stream.take(), self.exclusive, self.cache.take());
        }
    }
}

#[derive(Default)]
struct Local {
    entries: Vec<Entry>,
    overrides: Vec<(u64, StreamId, u64)>,
}

std::thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// The thread's entry for device `instance`; `rt` (only called when the entry is new) names
/// the device, so that the hot paths never touch the runtime's reference counts.
fn entry(l: &mut Local, instance: u64, rt: impl FnOnce() -> Weak<dyn RuntimeObj>) -> &mut Entry {
    match l.entries.iter().position(|e| e.instance == instance) {
        Some(i) => &mut l.entries[i],
        None => {
            // Drop entries of devices that are gone before growing.
            l.entries.retain(|e| e.rt.strong_count() > 0);
            l.entries.push(Entry {
                instance,
                rt: rt(),
                stream: None,
                exclusive: false,
                cache: None,
            });
            l.entries.last_mut().expect("just pushed")
        }
    }
}

/// The thread's current stream on device `instance`, binding one with `bind` on first use.
pub(crate) fn current_stream(
    instance: u64,
    rt: impl FnOnce() -> Weak<dyn RuntimeObj>,
    bind: impl FnOnce() -> Result<(StreamId, bool)>,
) -> Result<StreamId> {
    LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            if let Some(&(_, s, _)) = l.overrides.iter().rev().find(|o| o.0 == instance) {
                return Ok(s);
            }
            let e = entry(&mut l, instance, rt);
            if let Some(s) = e.stream {
                return Ok(s);
            }
            let (s, exclusive) = bind()?;
            e.stream = Some(s);
            e.exclusive = exclusive;
            Ok(s)
        })
        .unwrap_or(Ok(StreamId::DEFAULT))
}

/// Runs `f` on the thread's cache for device `instance`, made by `make` on first use and again
/// after another thread closed it (the allocator retiring every cache when memory runs out).
/// With `on_stream: Some(s)`, only if the thread's current stream (a guard's, else its bound
/// one; none is bound here) is `s`.
pub(crate) fn with_cache<R>(
    instance: u64,
    rt: impl FnOnce() -> Weak<dyn RuntimeObj>,
    on_stream: Option<StreamId>,
    f: impl FnOnce(&ThreadCache) -> R,
    make: impl FnOnce() -> Arc<ThreadCache>,
) -> Option<R> {
    LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            if let Some(want) = on_stream {
                let current = match l.overrides.iter().rev().find(|o| o.0 == instance) {
                    Some(&(_, s, _)) => Some(s),
                    None => l
                        .entries
                        .iter()
                        .find(|e| e.instance == instance)
                        .and_then(|e| e.stream),
                };
                if current != Some(want) {
                    return None;
                }
            }
            let e = entry(&mut l, instance, rt);
            if e.cache.as_ref().is_some_and(|c| c.is_closed()) {
                e.cache = None;
            }
            let c = e.cache.get_or_insert_with(make);
            Some(f(c))
        })
        .ok()
        .flatten()
}

/// Removes the thread's cache for device `instance` (to flush it).
pub(crate) fn take_cache(instance: u64) -> Option<Arc<ThreadCache>> {
    LOCAL
        .try_with(|l| {
            let mut l = l.borrow_mut();
            l.entries
                .iter_mut()
                .find(|e| e.instance == instance)
                .and_then(|e| e.cache.take())
        })
        .ok()
        .flatten()
}

/// Makes `stream` the thread's current stream on device `instance`; returns the override's token.
pub(crate) fn push_override(instance: u64, stream: StreamId) -> u64 {
    let token = NEXT_TOKEN.with(|t| {
        let v = t.get();
        t.set(v + 1);
        v
    });
    let _ = LOCAL.try_with(|l| l.borrow_mut().overrides.push((instance, stream, token)));
    token
}

/// Removes the override with `token`.
pub(crate) fn pop_override(token: u64) {
    let _ = LOCAL.try_with(|l| {
        let mut l = l.borrow_mut();
        if let Some(i) = l.overrides.iter().rposition(|o| o.2 == token) {
            l.overrides.remove(i);
        }
    });
}
