//! Recording a graph, below the tensor layer: the thread's recorder, and the graph's own memory
//! (its arena). `crate::graph` starts and finishes a recording and runs what it recorded; the
//! tensor front-end knows nothing of it.
//!
//! # State
//! Per thread and device: *not recording* → *recording* (a [`Recording`] installed by
//! `Graph::capture` on the capturing stream) → *not recording* (the recording finished, or its
//! guard dropped on an error or a panic). A thread records for at most one graph at a time
//! (starting a second is `Error::Capture`).
//!
//! # Protocol
//! While a thread runs the function given to `Graph::capture`, it holds a [`Recorder`] for that
//! device in a thread-local slot. The runtime asks this module at three points of every op, and
//! nothing is enqueued on the device:
//! - allocation, [`Storage::new_output`]: an output's block comes from the graph's [`Arena`]
//!   (a block freed earlier in the capture, else a new one from the allocator on the capturing
//!   stream); an op on another stream than the capture's is refused;
//! - ordering, [`Storage::use_on`]: an input that is the graph's own is fine; any other storage
//!   (weights, a constant made during the capture) is *external*: the graph keeps it alive and
//!   orders every stream it runs on after its write;
//! - launching, `RuntimeObj::launch` ([`record`]): the kernel is appended to the recording
//!   instead of being launched (`randn` is refused: a graph would repeat its numbers).
//!
//! Reading back (`RuntimeObj::capturing`, asked by `Tensor::to_bytes`) and running a graph are
//! refused while recording. Host data (`Tensor::from_bytes`) is not recorded: it is allocated
//! from the allocator and written at once, and the graph keeps it as an external.
//!
//! A storage made from the arena is the graph's: every run rewrites it, so it is usable only
//! inside its capture (elsewhere `Storage::use_on` fails with `Error::GraphTensor`) and it has
//! no cache of derived data. When such a storage drops, its block goes back to the arena, where
//! a later allocation of the same capture may take it (the recording is one ordered list, so
//! this is stream-ordered reuse). The arena gives every block back to the allocator when it
//! drops (after the graph and every storage of it), with the streams the graph ran on as users.
//!
//! # Fields
//! - `RECORDER`: thread-local, touched only by its thread.
//! - `Arena::blocks` under `GRAPH_ARENA` (a leaf lock): storages of the graph may drop on any
//!   thread.
//! - `Arena::ran_on`: a bitset of streams, set by runs under the graph's run lock (`GRAPH_RUNS`)
//!   and read by the arena's drop.

use super::storage::Storage;
use crate::alloc::Block;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::runtime::RuntimeObj;
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicU64, Ordering};
use chorus_sync::{rank, Arc, RankedMutex};
use std::cell::RefCell;

/// The memory of one graph (module docs).
pub(crate) struct Arena {
    rt: Arc<dyn RuntimeObj>,
    blocks: RankedMutex<Blocks>,
    ran_on: Box<[AtomicU64]>,
}

#[derive(Default)]
struct Blocks {
    /// Every block the arena took from the allocator.
    all: Vec<Block>,
    /// Those no storage holds now.
    free: Vec<Block>,
}

impl Arena {
    pub(crate) fn new(rt: Arc<dyn RuntimeObj>) -> Arc<Arena> {
        let words = rt.num_streams().div_ceil(64);
        Arc::new(Arena {
            rt,
            blocks: RankedMutex::new(rank::GRAPH_ARENA, Blocks::default()),
            ran_on: (0..words).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// A block of at least `bytes` for stream `s`: the smallest free one that fits, else a
    /// new one from the allocator.
    fn take(&self, bytes: usize, s: StreamId) -> Result<Block> {
        {
            let mut b = self.blocks.lock();
            let best = (b.free.iter().enumerate())
                .filter(|(_, blk)| blk.size() >= bytes)
                .min_by_key(|(_, blk)| blk.size())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(b.free.swap_remove(i));
            }
        }
        let block = self.rt.alloc(bytes, s)?;
        self.blocks.lock().all.push(block);
        Ok(block)
    }

    /// A storage of the graph dropped: its block may be taken again.
    pub(crate) fn put(&self, block: Block) {
        self.blocks.lock().free.push(block);
    }

    /// Records that the graph ran on stream `s` (the blocks' users when they are given back).
    pub(crate) fn ran_on(&self, s: StreamId) {
        let (w, bit) = s.bit();
        self.ran_on[w].fetch_or(bit, Ordering::Release);
    }

    pub(crate) fn rt(&self) -> &Arc<dyn RuntimeObj> {
        &self.rt
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let words = self.ran_on.iter().map(|w| w.load(Ordering::Acquire));
        let users: Vec<StreamId> = StreamId::in_bitset(words).collect();
        let all = std::mem::take(&mut self.blocks.lock().all);
        for block in all {
            // The capturing stream (the block's owner) is a user too; `free` adds no event for it.
            self.rt.free(block, &users);
        }
    }
}

/// What a capture has recorded so far.
pub(crate) struct Recorder {
    /// The device's instance number.
    instance: u64,
    /// The capturing stream: every block of the arena is this stream's.
    stream: StreamId,
    pub(crate) arena: Arc<Arena>,
    pub(crate) kernels: Vec<Kernel>,
    /// Storages the kernels read that are not the graph's, each once.
    pub(crate) externals: Vec<Arc<Storage>>,
}

std::thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Removes the thread's recorder when the capture ends, also by a panic.
pub(crate) struct Recording(());

impl Recording {
    /// Starts recording for `arena`'s device on this thread, capturing on stream `stream`
    /// (not recording → recording).
    pub(crate) fn start(arena: &Arc<Arena>, stream: StreamId) -> Result<Recording> {
        let instance = arena.rt().id().instance;
        RECORDER.with(|r| {
            let mut r = r.borrow_mut();
            if r.is_some() {
                return Err(Error::Capture {
                    op: "Graph::capture",
                    reason: "this thread is already capturing a graph",
                });
            }
            *r = Some(Recorder {
                instance,
                stream,
                arena: Arc::clone(arena),
                kernels: Vec::new(),
                externals: Vec::new(),
            });
            Ok(Recording(()))
        })
    }

    /// Ends the recording and returns what it recorded (recording → not recording).
    pub(crate) fn finish(self) -> Recorder {
        RECORDER
            .with(|r| r.borrow_mut().take())
            .expect("a Recording exists only while its recorder is installed")
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // After `finish` the slot is already empty. `try_with`: a thread-local destructor
        // cannot observe a recording (it is a stack guard), but never panic in a drop.
        let _ = RECORDER.try_with(|r| r.borrow_mut().take());
    }
}

/// Runs `f` on the thread's recorder if it records for `rt`'s device. The device's identity
/// is only asked for when the thread records at all (the ops' hot path pays one thread-local
/// lookup).
fn with<R>(rt: &dyn RuntimeObj, f: impl FnOnce(&mut Recorder) -> R) -> Option<R> {
    RECORDER
        .try_with(|r| {
            let mut r = r.borrow_mut();
            match r.as_mut() {
                Some(rec) if rec.instance == rt.id().instance => Some(f(rec)),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

impl Recorder {
    /// Checks and notes a storage the recorded work reads, or a graph output (module docs):
    /// the graph's own is fine, another graph's is an error, any other is an external.
    pub(crate) fn note_input(&mut self, storage: &Arc<Storage>) -> Result<()> {
        match storage.arena() {
            Some(a) if std::ptr::eq::<Arena>(&**a, &*self.arena) => Ok(()),
            Some(_) => Err(Error::GraphTensor),
            None => {
                let known =
                    (self.externals.iter()).any(|e| std::ptr::eq::<Storage>(&**e, &**storage));
                if !known {
                    self.externals.push(Arc::clone(storage));
                }
                Ok(())
            }
        }
    }
}

/// Whether this thread is capturing a graph of `rt`'s device.
pub(crate) fn recording(rt: &dyn RuntimeObj) -> bool {
    with(rt, |_| ()).is_some()
}

/// Allocation hook ([`Storage::new_output`]): while recording on `rt`, a storage of `bytes`
/// from the graph's arena; `None` otherwise. An op on another stream than the capture's is
/// refused: the arena's blocks are the capturing stream's, and a run is ordered after that
/// stream's work only.
pub(super) fn alloc(
    rt: &Arc<dyn RuntimeObj>,
    bytes: usize,
    s: StreamId,
) -> Option<Result<Storage>> {
    let (arena, stream) = with(&**rt, |rec| (Arc::clone(&rec.arena), rec.stream))?;
    if s != stream {
        return Some(Err(Error::Capture {
            op: "Graph::capture",
            reason: "the thread's current stream changed inside the capture; capture on one \
                     stream",
        }));
    }
    Some(
        arena
            .take(bytes, s)
            .map(|block| Storage::in_arena(Arc::clone(rt), block, arena)),
    )
}

/// Ordering hook ([`Storage::use_on`]): while recording on the storage's device, checks and
/// notes an input ([`Recorder::note_input`]); `None` otherwise.
pub(super) fn on_use(storage: &Arc<Storage>) -> Option<Result<()>> {
    with(&**storage.rt(), |rec| rec.note_input(storage))
}

/// Launch hook (`RuntimeObj::launch`): appends `k` to the thread's recording for `rt`'s device
/// (the caller checked [`recording`]).
pub(super) fn record(rt: &dyn RuntimeObj, k: Kernel) -> Result<()> {
    if matches!(k, Kernel::Randn(_)) {
        return Err(Error::Capture {
            op: "randn",
            reason: "a graph would give the same numbers at every run; make them outside and \
                     pass them in",
        });
    }
    with(rt, |rec| rec.kernels.push(k)).ok_or(Error::Capture {
        op: "record",
        reason: "this thread is not capturing a graph of this device",
    })
}
