//! Tensor storage: one allocator block, the streams that used it, and cross-stream ordering.
//! Tensors (`crate::tensor`) are views of a storage; the storage is the runtime's, because its
//! allocation and its ordering on a stream are where a graph's capture hooks in
//! (`super::capture`).
//!
//! # Protocol
//! A storage is written once, by the op that creates it, on its *writer* stream (the stream the
//! block was allocated for). Before any op uses it on stream `s`, [`Storage::use_on`]:
//! - if `s` is not yet in `users`: when `s` is not the writer, makes `s` wait (device-side) for
//!   the writer's work so far, which includes the write; then adds `s` to `users`;
//! - else does nothing (`s` already waited, or is the writer).
//!
//! When the last reference drops, the block goes back to the allocator with `users`, which
//! records events on every user other than the owner so that no other stream reuses the memory
//! before those uses have finished. Users are therefore tracked automatically: no
//! `record_stream` call is ever needed.
//!
//! # Fields
//! `users` is a bitset of streams (`StreamId::bit`); a bit is set (Release) only after the wait
//! for that stream has been enqueued, and read with Acquire, so a thread that sees the bit
//! enqueues its work after the wait. The `Arc` around the storage orders every `use_on` before
//! the drop. `derived` holds the handle to the storage's cache of derived data
//! (`crate::derived`, sound because of the write-once rule above), made on first request (a
//! create-once cell).
//!
//! # Graphs
//! While the calling thread records a graph of the device (`super::capture`), the two entry
//! points below are its hooks: [`Storage::new_output`] takes the block from the graph's arena,
//! and [`Storage::use_on`] checks and notes the input instead of ordering anything.
//! A storage of a graph's memory (`arena` is set) is the exception to the protocol above: every
//! run of the graph rewrites it, so it has no derived data, is usable only inside its capture
//! (`use_on` fails elsewhere with `Error::GraphTensor`) and gives its block back to the graph's
//! arena when it drops.

use super::capture::{self, Arena};
use super::poison::{self, Poison};
use super::RuntimeObj;
use crate::alloc::Block;
use crate::derived::Derived;
use crate::error::{Error, Result};
use crate::kernel::DevicePtr;
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicU64, Ordering};
use chorus_sync::Arc;

/// A create-once cell read without a lock (std's: it is no part of any loom model).
// sync-shim: allowed (see above)
type Once<T> = std::sync::OnceLock<T>;

pub(crate) struct Storage {
    rt: Arc<dyn RuntimeObj>,
    block: Block,
    users: Box<[AtomicU64]>,
    /// Data backends derive from the contents (`crate::derived`), made on first request.
    derived: Once<Derived>,
    /// The graph whose memory this is (module docs).
    arena: Option<Arc<Arena>>,
    /// The faults of the kernels this storage's contents depend on (`super::poison`), set by
    /// the op that writes it, before it is shared.
    poison: Once<Poison>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("device", &self.rt.id())
            .field("block", &self.block)
            .finish()
    }
}

impl Storage {
    /// A storage of `bytes` that an op's kernel will write on stream `s`: from the graph's arena
    /// while the calling thread records a graph of `rt`'s device (module docs), else from the
    /// allocator.
    ///
    /// # Errors
    /// Allocation errors; `Error::Capture` for an op on another stream than the capture's.
    pub(crate) fn new_output(rt: &Arc<dyn RuntimeObj>, bytes: usize, s: StreamId) -> Result<Self> {
        if let Some(r) = capture::alloc(rt, bytes, s) {
            return r;
        }
        Ok(Self::new(Arc::clone(rt), rt.alloc(bytes, s)?))
    }

    /// A storage of `bytes` that the host writes on stream `s`: always from the allocator, also
    /// during a capture (host data is written at once, and a graph that reads it keeps it as
    /// a constant).
    ///
    /// # Errors
    /// Allocation errors.
    pub(crate) fn new_upload(rt: &Arc<dyn RuntimeObj>, bytes: usize, s: StreamId) -> Result<Self> {
        Ok(Self::new(Arc::clone(rt), rt.alloc(bytes, s)?))
    }

    /// Wraps a block freshly allocated for (and about to be written on) `block.stream()`.
    fn new(rt: Arc<dyn RuntimeObj>, block: Block) -> Self {
        let words = rt.num_streams().div_ceil(64);
        let users: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let s = block.stream();
        let (w, bit) = s.bit();
        users[w].store(bit, Ordering::Relaxed);
        Self {
            rt,
            block,
            users,
            derived: Once::new(),
            arena: None,
            poison: Once::new(),
        }
    }

    /// Wraps a block of a graph's arena (module docs).
    pub(super) fn in_arena(rt: Arc<dyn RuntimeObj>, block: Block, arena: Arc<Arena>) -> Self {
        let mut storage = Self::new(rt, block);
        storage.arena = Some(arena);
        storage
    }

    /// The handle to this storage's cache of derived data (none for a graph's storage).
    pub(crate) fn derived(&self) -> Option<Derived> {
        if self.arena.is_some() {
            return None;
        }
        Some(self.derived.get_or_init(Derived::new).clone())
    }

    /// The graph whose memory this is.
    pub(super) fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena.as_ref()
    }

    /// Whether this is a graph's memory (module docs).
    pub(crate) fn in_graph(&self) -> bool {
        self.arena.is_some()
    }

    pub(crate) fn rt(&self) -> &Arc<dyn RuntimeObj> {
        &self.rt
    }

    /// The faults this storage carries (`super::poison`).
    pub(crate) fn poison(&self) -> Option<&Poison> {
        self.poison.get()
    }

    /// Poisons this storage with `p` (by the op writing it, once; a second call keeps the
    /// first).
    pub(crate) fn set_poison(&self, p: Poison) {
        let _ = self.poison.set(p);
    }

    /// Resolves this storage's faults on stream `s` before its contents are read back
    /// (`super::poison`, "Reading back").
    ///
    /// # Errors
    /// The original [`Error::Kernel`] of a failed fault; device errors of the read.
    pub(crate) fn check_poison(&self, s: StreamId) -> Result<()> {
        self.poison().map_or(Ok(()), |p| poison::check(p, s))
    }

    pub(crate) fn ptr(&self) -> DevicePtr {
        self.block.ptr()
    }

    pub(crate) fn writer(&self) -> StreamId {
        self.block.stream()
    }

    /// Orders stream `s` after the write and records `s` as a user (module docs); while the
    /// thread captures a graph of this device, checks and notes the input instead
    /// (`super::capture`).
    ///
    /// # Errors
    /// `Error::GraphTensor` for a storage of a graph used outside its capture; device errors.
    pub(crate) fn use_on(this: &Arc<Storage>, s: StreamId) -> Result<()> {
        if let Some(r) = capture::on_use(this) {
            return r;
        }
        if this.arena.is_some() {
            return Err(Error::GraphTensor);
        }
        let (w, bit) = s.bit();
        if this.users[w].load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        if s != this.writer() {
            this.rt.order_after(this.writer(), s)?;
        }
        this.users[w].fetch_or(bit, Ordering::Release);
        Ok(())
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(arena) = &self.arena {
            arena.put(self.block);
            return;
        }
        let words = self.users.iter().map(|w| w.load(Ordering::Acquire));
        let users: Vec<StreamId> = StreamId::in_bitset(words).collect();
        self.rt.free(self.block, &users);
    }
}
