//! Graphs: a function of tensors captured once as its list of kernels, then run as one unit
//! (on CUDA, one CUDA graph launch instead of a launch per kernel).
//!
//! # Semantics
//! [`Graph::capture`] calls the function once with placeholder inputs of the given shapes and
//! dtypes while the thread *records*: ops check their operands as always, allocate their
//! outputs from the graph's own memory and append their kernels to the recording; nothing runs
//! on the device and nothing can be read back (`to_vec` fails with [`Error::Capture`], and so
//! does `randn`, whose numbers a graph would repeat). Tensors the function uses that are not
//! the graph's (weights, constants made with `from_slice` during the capture) are kept alive
//! by the graph. [`Graph::run`] then copies its inputs into the graph's input memory, runs the
//! recorded kernels on the calling thread's current stream and copies the outputs into fresh
//! tensors: the same kernels on the same shapes, so a run gives bit-identical results to the
//! function called directly, on any thread, from any number of threads.
//!
//! The graph's memory (inputs, intermediates, outputs) is rewritten by every run, so tensors
//! made during the capture are usable only inside it ([`Error::GraphTensor`] elsewhere) and runs
//! of one graph are serialized on the device: a run on another stream than the previous run
//! waits (device-side) for it. Threads that should run in parallel capture a graph each.
//!
//! On CUDA, other CUDA code in the process (another library) must not synchronize the whole
//! device while `capture` runs: that breaks the CUDA graph capture (chorus tries again, then
//! runs the graph kernel by kernel) and has crashed the process inside the driver (chorus-cuda's
//! graph module docs). chorus's own threads may compute meanwhile.
//!
//! # Where the recording happens
//! The recording is the runtime's (`crate::runtime::capture`), below the tensor layer: while
//! the thread records, the runtime's launch path (`RuntimeObj::launch`) appends each kernel to
//! the recording, its storage allocation (`Storage::new_output`) hands out the arena's blocks,
//! and ordering a storage on a stream (`Storage::use_on`) notes external inputs and refuses
//! another graph's tensors. Ops are written once and do not know whether they are recorded.
//! This module starts and finishes a recording ([`Graph::capture`]) and runs what it recorded.
//!
//! # Protocol (runs)
//! `runs` (lock `GRAPH_RUNS`) holds the stream of the last run (at first the capturing stream,
//! where the graph's blocks were allocated). A run, under the lock: if its stream `s` differs,
//! makes `s` wait for all work enqueued on the last stream so far (which includes the previous
//! run's copies out, and the allocator's earlier use of the blocks); on a stream's first run,
//! orders `s` after the writes of every external storage (`Storage::use_on`, which also makes
//! `s` a user of them for their frees) and records `s` as a user of the graph's blocks; then
//! enqueues the copies in, the graph and the copies out, and notes `s`. So runs use the
//! graph's memory one after another in device order, whatever the interleaving of threads.
//!
//! # Poison
//! A fallible kernel recorded in the graph (`index_select`) has its fault word in the graph's
//! memory, zeroed by a recorded fill before it in every run (`crate::runtime::poison`). A run
//! copies each such word, after the graph, into a fresh word of its own, and poisons its fresh
//! outputs with the faults their capture-time outputs carried, each moved onto the run's copy
//! of its word, plus the run's inputs' faults. Reading a run's output back thus reports that
//! run's failure alone; the graph and the stream go on. A run whose inputs are known to have
//! failed enqueues nothing and returns poisoned outputs.
//!
//! Dropping the graph hands the backend's executable form to the completion thread once the
//! work enqueued on the last run's stream has completed (which, by the order above, includes
//! every run); its blocks go back to the allocator with every stream it ran on as users. (A
//! graph dropped after its device was shut down leaks its executable form: shutdown's wait is
//! bounded, so its last run might still be executing.)

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, StridedCopy};
use crate::runtime::capture::{Arena, Recorder, Recording};
use crate::runtime::poison::{self, Fault, Poison};
use crate::runtime::{GraphExec, RuntimeObj, Storage};
use crate::shape::numel;
use crate::stream::StreamId;
use crate::tensor::{Out, Tensor};
use chorus_sync::{rank, Arc, RankedMutex};

/// A captured function of tensors, run as one unit. See the module docs.
///
/// # Examples
/// ```
/// use chorus_core::{DType, Graph, Result, Tensor};
/// # let device = chorus_cpu::device()?;
/// let w = Tensor::from_slice(&device, &[1.0_f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// let graph = Graph::capture(&device, &[(&[1, 2], DType::F32)], |x| -> Result<_> {
///     Ok(vec![x[0].matmul(&w)?.relu()?])
/// })?;
/// let x = Tensor::from_slice(&device, &[1.0_f32, -1.0], &[1, 2])?;
/// let y = graph.run(&[&x])?;
/// assert_eq!(y[0].to_vec::<f32>()?, x.matmul(&w)?.relu()?.to_vec::<f32>()?);
/// # Ok::<(), chorus_core::Error>(())
/// ```
pub struct Graph {
    rt: Arc<dyn RuntimeObj>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    externals: Vec<Arc<Storage>>,
    /// The faults whose words are the graph's memory (module docs, "Poison").
    faults: Vec<Arc<Fault>>,
    exec: Option<GraphExec>,
    kernels: usize,
    runs: RankedMutex<Runs>,
    /// Last, so that its blocks go back after every storage of the graph is gone.
    arena: Arc<Arena>,
}

struct Runs {
    /// Stream of the last run (or of the capture).
    last: StreamId,
    /// Streams the graph has run on (ordered after the external writes), as a bitset.
    seen: Vec<u64>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("device", &self.rt.id())
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("kernels", &self.kernels)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// Captures `f`, called once with placeholder inputs of the given shapes and dtypes (their
    /// values are unspecified and never read during the capture), on the calling thread's
    /// current stream of `device`. See the module docs for what may happen inside `f`.
    ///
    /// `f` may return any error type that a chorus [`Error`] converts into (such as the
    /// modules' `NnError`), so that a model's `forward` can be captured with `?`.
    ///
    /// # Errors
    /// What `f` returns; [`Error::Capture`] for an op that cannot be recorded or a capture
    /// started inside another; [`Error::DeviceMismatch`] for an output of another device;
    /// [`Error::GraphTensor`] for an output made in another graph's capture;
    /// [`Error::UnsupportedDType`] for an input dtype other than f32 and i64; allocation and
    /// device errors.
    pub fn capture<F, E>(
        device: &Device,
        inputs: &[(&[usize], DType)],
        f: F,
    ) -> std::result::Result<Graph, E>
    where
        F: FnOnce(&[Tensor]) -> std::result::Result<Vec<Tensor>, E>,
        E: From<Error>,
    {
        let (rec, placeholders, outputs, arena, s) = {
            let rt = device.rt();
            rt.check_open()?;
            let s = rt.current_stream()?;
            let arena = Arena::new(Arc::clone(rt));
            let recording = Recording::start(&arena, s)?;
            let placeholders = Self::placeholders(rt, s, inputs)?;
            let outputs = f(&placeholders)?;
            (recording.finish(), placeholders, outputs, arena, s)
        };
        Ok(Self::finish(
            device.rt(),
            s,
            rec,
            placeholders,
            outputs,
            arena,
        )?)
    }

    /// The graph's input tensors, allocated while recording (so from its arena).
    fn placeholders(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        inputs: &[(&[usize], DType)],
    ) -> Result<Vec<Tensor>> {
        let mut placeholders = Vec::with_capacity(inputs.len());
        for &(shape, dtype) in inputs {
            if !matches!(dtype, DType::F32 | DType::I64) {
                return Err(Error::UnsupportedDType {
                    op: "Graph::capture",
                    dtype,
                });
            }
            numel("Graph::capture", shape)?;
            placeholders.push(Tensor::empty_on(rt, s, shape, dtype, "Graph::capture")?.tensor);
        }
        Ok(placeholders)
    }

    /// Checks the outputs and builds the graph from the recording.
    fn finish(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        mut rec: Recorder,
        placeholders: Vec<Tensor>,
        outputs: Vec<Tensor>,
        arena: Arc<Arena>,
    ) -> Result<Graph> {
        for o in &outputs {
            if o.device_id() != rt.id() {
                return Err(Error::DeviceMismatch {
                    op: "Graph::capture",
                    lhs: rt.id(),
                    rhs: o.device_id(),
                });
            }
            // An output that is not the graph's (a weight returned as it is, which no kernel
            // read) is copied out at every run like the others: an external storage too.
            rec.note_input(o.storage())?;
        }
        let kernels = rec.kernels.len();
        // SAFETY: every pointer in the kernels lies in the graph's arena blocks (given back only
        // when the arena drops, after the executable form) or in the external storages the
        // graph holds; `run` keeps the stream-order rules of `Backend::launch` for both. The
        // kernels read external storages (written by work enqueued before, once) and the
        // graph's blocks, and write only the graph's blocks, which nothing else uses (their
        // earlier uses by the allocator's other owners were enqueued before the call).
        let exec = unsafe { rt.build_graph(s, rec.kernels)? };
        let words = rt.num_streams().div_ceil(64);
        let mut faults: Vec<Arc<Fault>> = Vec::new();
        for f in outputs
            .iter()
            .filter_map(|o| o.storage().poison())
            .flat_map(|p| p.iter())
        {
            if f.word().in_graph() && !faults.iter().any(|g| Arc::ptr_eq(f, g)) {
                faults.push(Arc::clone(f));
            }
        }
        Ok(Graph {
            rt: Arc::clone(rt),
            inputs: placeholders,
            outputs,
            externals: rec.externals,
            faults,
            exec: Some(exec),
            kernels,
            runs: RankedMutex::new(
                rank::GRAPH_RUNS,
                Runs {
                    last: s,
                    seen: vec![0; words],
                },
            ),
            arena,
        })
    }

    /// Runs the graph on `inputs` on the calling thread's current stream and returns its
    /// outputs as new tensors (contiguous). Returns at once, like any op.
    ///
    /// # Errors
    /// [`Error::GraphInputs`] for the wrong number of inputs, [`Error::GraphInput`] for an
    /// input of another shape or dtype; [`Error::DeviceMismatch`]; [`Error::Capture`] when
    /// called while capturing; allocation and device errors.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "Graph::run";
        if inputs.len() != self.inputs.len() {
            return Err(Error::GraphInputs {
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        for (index, (x, p)) in inputs.iter().zip(&self.inputs).enumerate() {
            if x.device_id() != self.rt.id() {
                return Err(Error::DeviceMismatch {
                    op: OP,
                    lhs: self.rt.id(),
                    rhs: x.device_id(),
                });
            }
            if x.shape() != p.shape() || x.dtype() != p.dtype() {
                return Err(Error::GraphInput {
                    index,
                    expected: p.shape().to_vec(),
                    expected_dtype: p.dtype(),
                    got: x.shape().to_vec(),
                    got_dtype: x.dtype(),
                });
            }
        }
        let rt = &self.rt;
        if rt.capturing() {
            return Err(Error::Capture {
                op: OP,
                reason: "a graph cannot run inside a capture",
            });
        }
        let s = rt.current_stream()?;
        for x in inputs {
            x.use_on(s)?;
        }
        let fresh = (self.outputs.iter())
            .map(|o| Tensor::empty_on(rt, s, o.shape(), o.dtype(), OP))
            .collect::<Result<Vec<_>>>()?;
        let inputs_poison = poison::union(inputs.iter().filter_map(|x| x.storage().poison()));
        if let Some(p) = inputs_poison.as_ref().filter(|p| poison::known_failed(p)) {
            // Known to fail: nothing is computed (module docs, "Poison").
            for out in &fresh {
                out.tensor.storage().set_poison(Arc::clone(p));
            }
            return Ok(fresh.into_iter().map(|out| out.tensor).collect());
        }
        let words = (self.faults.iter())
            .map(|_| Tensor::empty_on(rt, s, &[2], DType::I64, OP))
            .collect::<Result<Vec<_>>>()?;
        // Everything of this run is enqueued under the run lock; the tensors made above are
        // dropped (on an error) only after it is released: a drop may call the device.
        self.enqueue_run(s, inputs, &fresh, &words)?;
        let moved: Vec<Arc<Fault>> = (self.faults.iter().zip(&words))
            .map(|(f, w)| f.rebound(Arc::clone(w.tensor.storage()), s))
            .collect();
        for (o, out) in self.outputs.iter().zip(&fresh) {
            let own: Option<Poison> = o.storage().poison().map(|p| {
                p.iter()
                    .map(
                        |f| match self.faults.iter().position(|g| Arc::ptr_eq(f, g)) {
                            Some(i) => Arc::clone(&moved[i]),
                            None => Arc::clone(f),
                        },
                    )
                    .collect()
            });
            if let Some(p) = poison::union(inputs_poison.iter().chain(own.as_ref())) {
                out.tensor.storage().set_poison(p);
            }
        }
        Ok(fresh.into_iter().map(|out| out.tensor).collect())
    }

    /// Enqueues one run on stream `s` under the run lock (module docs): the inputs copied in,
    /// the graph, the outputs copied into `fresh` and the graph's fault words into `words`.
    fn enqueue_run(
        &self,
        s: StreamId,
        inputs: &[&Tensor],
        fresh: &[Out],
        words: &[Out],
    ) -> Result<()> {
        let rt = &self.rt;
        let mut runs = self.runs.lock();
        if runs.last != s {
            rt.order_after(runs.last, s)?;
            runs.last = s;
        }
        let (w, bit) = s.bit();
        if runs.seen[w] & bit == 0 {
            for e in &self.externals {
                Storage::use_on(e, s)?;
            }
            self.arena.ran_on(s);
            runs.seen[w] |= bit;
        }
        for (x, p) in inputs.iter().zip(&self.inputs) {
            if x.is_empty() {
                continue;
            }
            let k = Kernel::Copy(StridedCopy::to_contiguous(x.view(), p.ptr(), x.dtype()));
            // SAFETY: the destination is the graph's input block, sized for this shape and
            // dtype (checked above) and used by runs one after another in stream order (module
            // docs); `x` is a live tensor ordered on `s` above and held until after the enqueue.
            unsafe { rt.launch(s, k)? };
        }
        let exec = self.exec.as_ref().expect("taken only by drop");
        // SAFETY: the graph's blocks and external storages are alive (held by `self`) and
        // ordered on `s` as the module docs say; the recorded kernels stay inside them.
        unsafe { rt.launch_graph(s, exec)? };
        for (o, out) in self.outputs.iter().zip(fresh) {
            if o.is_empty() {
                continue;
            }
            let k = Kernel::Copy(StridedCopy::to_contiguous(
                o.view(),
                out.tensor.ptr(),
                o.dtype(),
            ));
            // SAFETY: `out` is a fresh block for this shape and dtype; the source is a view
            // inside the graph's memory or an external storage, written by the graph before
            // this copy in stream order and not rewritten before the next run, which is
            // ordered after it (module docs).
            unsafe { rt.launch(s, k)? };
        }
        for (f, word) in self.faults.iter().zip(words) {
            let src = f.word();
            let k = Kernel::Copy(StridedCopy::to_contiguous(
                crate::kernel::View {
                    ptr: src.ptr(),
                    shape: vec![2],
                    strides: vec![1],
                },
                word.tensor.ptr(),
                DType::I64,
            ));
            // SAFETY: as the outputs' copies: `word` is a fresh block of two i64; the source is
            // a fault word in the graph's memory, written by this run before the copy.
            unsafe { rt.launch(s, k)? };
        }
        Ok(())
    }

    /// Number of kernels the capture recorded.
    pub fn kernels(&self) -> usize {
        self.kernels
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if let Some(exec) = self.exec.take() {
            let last = self.runs.lock().last;
            self.rt.drop_after(last, exec);
        }
    }
}
