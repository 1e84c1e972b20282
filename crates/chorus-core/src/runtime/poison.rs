//! Poison: how a kernel that fails on the device fails exactly the tensors it touched.
//!
//! # Semantics
//! A kernel that can fail on the device (today `index_select`, and so `embedding`, on an index
//! out of range) never traps: it writes what went wrong into a *fault word*
//! ([`crate::kernel::FaultWord`]), a 16-byte storage of its own that the op allocates and zeroes
//! on its stream just before the launch, and leaves its bad output elements 0. The op's output
//! is then *poisoned* by a [`Fault`]: the word, with what the error will name (device, stream,
//! op, kernel, the bound the index broke).
//!
//! - **Propagation.** An op's outputs carry the union of its inputs' faults (`Tensor::launch`).
//!   An op whose input carries a fault the host already knows failed does not compute: it
//!   returns its (poisoned) outputs without launching. One whose faults are still unknown runs
//!   on the zeroed elements (every kernel is memory-safe whatever the values); its outputs
//!   carry the faults all the same.
//! - **Reading back** (`to_vec`, `item`, `to_bytes`, and so a batch's rows) first resolves each
//!   unknown fault of the tensor: it reads the word back on the reading stream (ordered after
//!   the fallible kernel by `Storage::use_on`, like any input). A failure is the original
//!   error, [`Error::Kernel`], naming the op, the stream, the kernel and the value; a tensor
//!   with a failed fault never returns values.
//! - **Scope.** Nothing else changes: the stream goes on running later work, and tensors the
//!   failing kernel did not touch (other inputs, other requests' tensors) are unaffected.
//!
//! # Cost
//! An op with unpoisoned inputs pays one `Option` test per input. A fallible launch pays a
//! 16-byte allocation and a fill kernel; a read back of a tensor it poisoned pays one read of
//! the word, once per fault (the answer is kept: `resolved`). A resolved clean fault is
//! dropped from the union, so outputs made after a clean read carry nothing.
//!
//! # Crossing streams
//! The fault word is written on the fallible kernel's stream and read on the reading stream
//! after `use_on` has ordered that stream after the write, the same event that orders the
//! data, so poison crosses streams and threads exactly as data does.
//!
//! # Graphs
//! A fault made while a thread records a graph lives in the graph's memory and is rewritten by
//! every run; `crate::graph` copies each such word out of every run into a fresh storage and
//! poisons that run's outputs with copies of the faults ([`Fault::rebound`]).

use super::Storage;
use crate::error::{DeviceId, Error, Result};
use crate::kernel::FaultWord;
use crate::stream::StreamId;
use chorus_sync::Arc;

/// A create-once cell read without a lock (std's: it is no part of any loom model).
// sync-shim: allowed (see above)
type Once<T> = std::sync::OnceLock<T>;

/// One fallible launch's fault word and what its error will name. See the module docs.
pub(crate) struct Fault {
    word: Arc<Storage>,
    device: DeviceId,
    stream: StreamId,
    op: &'static str,
    kernel: &'static str,
    /// The bound the value broke (rows of the indexed dimension).
    bound: usize,
    /// What reading the word found: `None` clean, `Some(e)` failed.
    resolved: Once<Option<Error>>,
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault")
            .field("op", &self.op)
            .field("stream", &self.stream)
            .field("resolved", &self.resolved.get())
            .finish()
    }
}

/// The faults a storage carries (none for almost every storage).
pub(crate) type Poison = Arc<[Arc<Fault>]>;

impl Fault {
    /// A fault of `word` (a fresh, zeroed fault word written on `stream`).
    pub(crate) fn new(
        word: Arc<Storage>,
        stream: StreamId,
        op: &'static str,
        kernel: &'static str,
        bound: usize,
    ) -> Arc<Fault> {
        Arc::new(Fault {
            device: word.rt().id(),
            word,
            stream,
            op,
            kernel,
            bound,
            resolved: Once::new(),
        })
    }

    /// The same fault of a launch on stream `s`, reported through another word (a graph
    /// run's copy of it).
    pub(crate) fn rebound(&self, word: Arc<Storage>, s: StreamId) -> Arc<Fault> {
        Fault::new(word, s, self.op, self.kernel, self.bound)
    }

    /// The fault word.
    pub(crate) fn word(&self) -> &Arc<Storage> {
        &self.word
    }

    /// Whether the host knows this fault failed.
    fn known_failed(&self) -> bool {
        matches!(self.resolved.get(), Some(Some(_)))
    }

    /// Whether the host knows this fault did not fail.
    fn known_clean(&self) -> bool {
        matches!(self.resolved.get(), Some(None))
    }

    /// Reads the word back on stream `s` (once) and returns the failure it records.
    fn resolve(&self, s: StreamId) -> Result<()> {
        if let Some(r) = self.resolved.get() {
            return r.clone().map_or(Ok(()), Err);
        }
        Storage::use_on(&self.word, s)?;
        let rt = self.word.rt();
        // SAFETY: the word is a live 16-byte storage (held by `self`) ordered on `s` above; the
        // read blocks until the copy is done.
        let bytes = unsafe { rt.read(s, self.word.ptr(), FaultWord::BYTES)? };
        let found = FaultWord::decode(&bytes).map(|value| Error::Kernel {
            device: self.device,
            stream: self.stream,
            op: self.op,
            kernel: self.kernel,
            message: format!("index {value} out of range for {} rows", self.bound),
        });
        // Racing resolvers read the same word after the same kernel: they agree.
        self.resolved
            .get_or_init(|| found)
            .clone()
            .map_or(Ok(()), Err)
    }
}

/// The union of `sources`' faults, without the ones known clean and without repeats; `None`
/// when nothing is left (the hot path: no input carries any).
pub(crate) fn union<'a>(sources: impl IntoIterator<Item = &'a Poison>) -> Option<Poison> {
    let mut all: Vec<Arc<Fault>> = Vec::new();
    for p in sources {
        for f in p.iter() {
            if !f.known_clean() && !all.iter().any(|g| Arc::ptr_eq(f, g)) {
                all.push(Arc::clone(f));
            }
        }
    }
    (!all.is_empty()).then(|| all.into())
}

/// Whether one of `poison`'s faults is known to have failed (an op then does not compute).
pub(crate) fn known_failed(poison: &Poison) -> bool {
    poison.iter().any(|f| f.known_failed())
}

/// Resolves every fault of `poison` on stream `s` (module docs, "Reading back"): `Err` with
/// the first failure.
pub(crate) fn check(poison: &Poison, s: StreamId) -> Result<()> {
    // A failure the host already knows first: it needs no read.
    if let Some(e) = poison
        .iter()
        .find_map(|f| f.resolved.get().cloned().flatten())
    {
        return Err(e);
    }
    poison.iter().try_for_each(|f| f.resolve(s))
}
