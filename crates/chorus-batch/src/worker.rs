//! Worker threads: each binds a stream of its own, then takes batches from the queue and runs
//! them until the queue stops it.
//!
//! # One batch
//! A batch's requests are all device requests or all host requests (the queue's key says
//! which).
//! 1. Device requests: concatenate the inputs along dimension 0 on the worker's stream (one
//!    input is used as it is); the inputs were written on their submitters' streams, and the
//!    tensor layer orders the worker's stream after those writes. Host requests: copy their
//!    bytes into one buffer and upload it with one copy on the worker's stream.
//! 2. Run the model once, on the worker's stream, with no lock held: directly, or with graphs
//!    on through the worker's graph of the batch's shape, the batch padded with zero rows to a
//!    power of two first (`graphs.rs`); should no graph run it after all (the model cannot be
//!    captured, or not at that shape), the model is called on the batch's own rows.
//! 3. Check that the output has the batch's rows (padding included) along dimension 0, and
//!    drop the padding's rows.
//! 4. Device requests: split the output into one view per request, in submission order, then
//!    wait for the worker's stream. Host requests: read the whole output back with one copy
//!    (which waits for the stream), then cut it into one host tensor per request. Either way
//!    each request gets exactly its rows, computed when its ticket completes, and a device
//!    error of the batch's kernels fails this batch (and no other request).
//!    A poisoned output (a kernel failed on the device, say on an index out of range,
//!    `Tensor::check`) is a device error of the batch too ([`chorus_core::Error::Kernel`]).
//! 5. Count the batch in the statistics, then complete every request of the batch: all with
//!    their rows, or all with the batch's error. A request completed with its rows also gets its
//!    input back, which the ticket drops on the thread that takes the result: freeing a device
//!    input that the worker's stream also read is a deferred free under the allocator's shared
//!    lock (an event recorded, the block queued), and the submitting threads, many and
//!    otherwise waiting, pay that instead of the worker, whose thread every batch waits for.
//!
//! 6. Except when the output was poisoned, the batch had several requests and the model's
//!    rows are independent (`Module::rows_independent`): then steps 1 to 5 run again for each
//!    request alone, as a batch of its own, so that only the requests whose rows fail on their
//!    own fail (with the original error), and the others get their rows. (A request that
//!    fails alone was the cause; with dependent rows no request can be cleared, and the whole
//!    batch fails.) The worker's stream goes on either way: a poisoned output is no stream
//!    error.
//!
//! The time of each step goes into the statistics ([`Phases`]), along with how
//! long the batch's requests waited before the worker took them.
//!
//! The queue's timer thread ([`timer`]) lives here too: it fails requests that wait past their
//! timeout, as workers do between batches.
//!
//! A panic of the model is contained in step 2 and fails the batch with
//! [`BatchError::ModelPanicked`]; the worker goes on. Should a worker thread itself unwind (a
//! bug), it shuts the queue down in [`ShutdownMode::Fail`] so that no request is left waiting
//! for workers that are gone.

use crate::batch_queue::{Request, Shared};
use crate::config::ShutdownMode;
use crate::error::{BatchError, Result};
use crate::graphs::WorkerGraphs;
use crate::host::{HostTensor, Input};
use crate::queue::{Next, Queued};
use crate::slot::Completer;
use crate::stats::Phases;
use crate::ticket::{BatchInfo, Done};
use chorus_core::{Stream, StreamId, Tensor};
use chorus_sync::atomic::Ordering;
use chorus_sync::{thread, Arc};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Runs worker `index`: reports its stream index (or why it could not bind one) through
/// `started`, then serves batches until the queue stops.
pub(crate) fn main(shared: Arc<Shared>, index: usize, started: Completer<Result<StreamId>>) {
    let stream = match shared.config.device.current_stream() {
        Ok(s) => s,
        Err(e) => {
            started.complete(Err(BatchError::WorkerStart {
                worker: index,
                reason: format!("no stream: {e}"),
            }));
            return;
        }
    };
    started.complete(Ok(stream.id()));
    let _guard = FailOnUnwind(&shared);
    let mut graphs = WorkerGraphs::new(shared.config.graphs);
    loop {
        match shared.queue.next() {
            Next::Stop => return,
            Next::Work { batch, expired } => {
                expire(&shared, expired);
                if !batch.is_empty() {
                    run(&shared, index, &stream, &mut graphs, batch);
                }
            }
        }
    }
}

/// Runs the queue's timer thread (started when a timeout is set): fails requests once they
/// have waited past their timeout, even while every worker is busy, until the queue shuts
/// down (`crate::queue`, "The timer").
pub(crate) fn timer(shared: Arc<Shared>) {
    let _guard = FailOnUnwind(&shared);
    while let Some(expired) = shared.queue.next_expired() {
        expire(&shared, expired);
    }
}

/// Shuts the queue down, failing what waits, if a worker (or the timer) thread unwinds.
struct FailOnUnwind<'a>(&'a Shared);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            crate::batch_queue::fail_pending(self.0, ShutdownMode::Fail);
        }
    }
}

/// Fails requests that waited past their timeout.
fn expire(shared: &Shared, expired: Vec<Queued<Request>>) {
    if expired.is_empty() {
        return;
    }
    let now = Instant::now();
    let timeout = shared.config.timeout.unwrap_or_default();
    shared.stats.timed_out(expired.len());
    for q in expired {
        q.item.done.complete(Err(BatchError::Timeout {
            waited: now.saturating_duration_since(q.enqueued),
            timeout,
        }));
    }
}

/// Runs one batch and completes its requests (module docs).
fn run(
    shared: &Shared,
    worker: usize,
    stream: &Stream,
    graphs: &mut WorkerGraphs,
    batch: Vec<Queued<Request>>,
) {
    let number = shared.batches.fetch_add(1, Ordering::Relaxed) + 1;
    let start = Instant::now();
    let mut phases = Phases {
        queued: batch
            .iter()
            .map(|q| start.saturating_duration_since(q.enqueued))
            .sum(),
        ..Phases::default()
    };
    let rows: Vec<usize> = batch.iter().map(|q| q.rows).collect();
    let total: usize = rows.iter().sum();
    let mut inputs = Vec::with_capacity(batch.len());
    let mut pending = Vec::with_capacity(batch.len());
    let ids: Vec<u64> = batch.iter().map(|q| q.id).collect();
    for q in batch {
        inputs.push(q.item.input);
        pending.push((q.enqueued, q.item.done));
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        forward(shared, stream, graphs, &inputs, &rows, total, &mut phases)
    }))
    .unwrap_or_else(|panic| {
        Err(BatchError::ModelPanicked {
            rows: total,
            message: panic_message(panic.as_ref()),
        })
    });
    if matches!(&outcome, Err(e) if poisoned(e))
        && pending.len() > 1
        && shared.model.rows_independent()
    {
        // Step 6 (module docs): each request again, alone.
        let each = pending.into_iter().zip(inputs).zip(rows).zip(ids);
        for ((((enqueued, done), input), rows), id) in each {
            let item = Request { input, done };
            let alone = Queued {
                id,
                rows,
                enqueued,
                item,
            };
            run(shared, worker, stream, graphs, vec![alone]);
        }
        return;
    }
    let done = Instant::now();
    match outcome {
        Ok(Ran {
            parts,
            rows: padded,
            graph,
        }) => {
            let latencies: Vec<Duration> = pending
                .iter()
                .map(|(enqueued, _)| done.saturating_duration_since(*enqueued))
                .collect();
            shared
                .stats
                .batch(total, pending.len(), Some(&latencies), &phases, graph);
            let mut info = BatchInfo {
                batch: number,
                offset: 0,
                rows: total,
                padded_rows: padded,
                requests: pending.len(),
                worker,
                stream: stream.id(),
            };
            let each = pending.into_iter().zip(parts).zip(rows).zip(inputs);
            for ((((_, completer), output), n), input) in each {
                completer.complete(Ok(Done {
                    output,
                    info,
                    input,
                }));
                info.offset += n;
            }
            shared.stats.completed(done.elapsed());
        }
        Err(e) => {
            drop(inputs);
            shared
                .stats
                .batch(total, pending.len(), None, &phases, false);
            for (_, completer) in pending {
                completer.complete(Err(e.clone()));
            }
        }
    }
}

/// What a batch's forward pass produced.
struct Ran {
    /// Each request's rows, computed.
    parts: Vec<Input>,
    /// Rows the model ran on (the batch's, and zero rows padding it for a graph).
    rows: usize,
    /// Whether a graph ran it.
    graph: bool,
}

/// Steps 1 to 4 of a batch.
fn forward(
    shared: &Shared,
    stream: &Stream,
    graphs: &mut WorkerGraphs,
    inputs: &[Input],
    rows: &[usize],
    total: usize,
    phases: &mut Phases,
) -> Result<Ran> {
    let device = |source| BatchError::Device {
        rows: total,
        source,
    };
    let mut lap = Instant::now();
    let mut next_lap = || {
        let now = Instant::now();
        let d = now - lap;
        lap = now;
        d
    };
    let row = batch_row(shared, inputs);
    let dtype = match &inputs[0] {
        Input::Host(h) => h.dtype(),
        Input::Device(t) => t.dtype(),
    };
    let padded = graphs.rows(shared.config.max_batch, &row, dtype, total);
    let x = gather(shared, inputs, &row, total, padded).map_err(device)?;
    phases.gather = next_lap();
    let model_error = |e| match e {
        // The device is gone, not the model: the same error as every other call gets.
        chorus_nn::NnError::Core(source @ chorus_core::Error::DeviceLost { .. }) => {
            BatchError::Device {
                rows: total,
                source,
            }
        }
        e => BatchError::Model {
            rows: total,
            source: Arc::new(e),
        },
    };
    let (y, graph, ran) = match graphs.run(&shared.config.device, shared.model.as_ref(), &x) {
        Some(y) => (y.map_err(model_error)?, true, padded),
        None => {
            // No graph ran it after all: the model gets the batch's rows alone.
            let x = if padded > total {
                x.narrow(0, 0, total).map_err(device)?
            } else {
                x
            };
            let y = shared.model.forward(&x).map_err(model_error)?;
            (y, false, total)
        }
    };
    phases.forward = next_lap();
    if y.shape().first() != Some(&ran) {
        return Err(BatchError::OutputRows {
            rows: ran,
            got: y.shape().to_vec(),
        });
    }
    let y = if ran > total {
        y.narrow(0, 0, total).map_err(device)?
    } else {
        y
    };
    let parts = if matches!(inputs.first(), Some(Input::Host(_))) {
        scatter_host(&y, rows).map_err(device)?
    } else {
        let parts = if rows.len() == 1 {
            vec![y.clone()]
        } else {
            y.split(rows, 0).map_err(device)?
        };
        stream.synchronize().map_err(device)?;
        // A poisoned output fails here, not when a request reads its rows (step 6).
        y.check().map_err(device)?;
        parts.into_iter().map(Input::Device).collect()
    };
    phases.finish = next_lap();
    Ok(Ran {
        parts,
        rows: ran,
        graph,
    })
}

/// The shape of one row of the batch: the first input's, with the padded dimension
/// (`BatchConfig::pad_dim`) as long as the longest input's.
fn batch_row(shared: &Shared, inputs: &[Input]) -> Vec<usize> {
    let shape = |i: &Input| match i {
        Input::Host(h) => h.shape().to_vec(),
        Input::Device(t) => t.shape().to_vec(),
    };
    let mut row = shape(&inputs[0])[1..].to_vec();
    if let Some(d) = shared.config.pad_dim {
        row[d - 1] = inputs.iter().map(|i| shape(i)[d]).max().unwrap_or(0);
    }
    row
}

/// Step 1: the batch's input on the worker's stream, each request padded with zeros along the
/// padded dimension to `row` (`BatchConfig::pad_dim`), `total` rows followed by zero rows up
/// to `padded`. (Every input of a batch is of the kind of its first: the queue's key says
/// which.)
fn gather(
    shared: &Shared,
    inputs: &[Input],
    row: &[usize],
    total: usize,
    padded: usize,
) -> chorus_core::Result<Tensor> {
    let device = &shared.config.device;
    let mut shape = vec![padded];
    shape.extend_from_slice(row);
    if let Some(Input::Host(first)) = inputs.first() {
        let size = first.dtype().size();
        let row_bytes = row.iter().product::<usize>() * size;
        let mut bytes = Vec::with_capacity(row_bytes * padded);
        for h in inputs.iter().filter_map(Input::as_host) {
            match shared.config.pad_dim {
                Some(d) if h.shape()[d] < row[d - 1] => {
                    // Each slab before `d` copies its `len` entries of `inner` bytes, then zeros.
                    let inner = h.shape()[d + 1..].iter().product::<usize>() * size;
                    let (len, to) = (h.shape()[d], row[d - 1]);
                    for slab in h.as_bytes().chunks_exact(len * inner) {
                        bytes.extend_from_slice(slab);
                        bytes.resize(bytes.len() + (to - len) * inner, 0);
                    }
                }
                _ => bytes.extend_from_slice(h.as_bytes()),
            }
        }
        bytes.resize(row_bytes * padded, 0);
        return Tensor::from_bytes(device, bytes, &shape, first.dtype());
    }
    let mut parts: Vec<Tensor> = Vec::with_capacity(inputs.len() + 1);
    for t in inputs.iter().filter_map(Input::as_tensor) {
        match shared.config.pad_dim {
            Some(d) if t.shape()[d] < row[d - 1] => {
                let mut zeros = t.shape().to_vec();
                zeros[d] = row[d - 1] - t.shape()[d];
                let zeros = Tensor::zeros(device, &zeros, t.dtype())?;
                parts.push(Tensor::cat(&[t, &zeros], d as isize)?);
            }
            _ => parts.push(t.clone()),
        }
    }
    if padded > total {
        shape[0] = padded - total;
        parts.push(Tensor::zeros(device, &shape, parts[0].dtype())?);
    }
    match parts.as_slice() {
        [one] => Ok(one.clone()),
        many => Tensor::cat(&many.iter().collect::<Vec<_>>(), 0),
    }
}

/// Step 4 for host requests: the output read back with one copy (waiting for the worker's
/// stream) and cut into each request's rows.
fn scatter_host(y: &Tensor, rows: &[usize]) -> chorus_core::Result<Vec<Input>> {
    let bytes = y.to_bytes()?;
    let total: usize = rows.iter().sum();
    let row_bytes = bytes.len() / total;
    let mut shape = y.shape().to_vec();
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for &n in rows {
        shape[0] = n;
        let part = bytes[at..at + n * row_bytes].to_vec();
        at += n * row_bytes;
        out.push(Input::Host(HostTensor::from_rows(part, &shape, y.dtype())));
    }
    Ok(out)
}

/// Whether `e` is a kernel's failure on the device that poisoned the batch's output (an index
/// out of range), as opposed to a failure of the whole device or stream.
fn poisoned(e: &BatchError) -> bool {
    matches!(
        e,
        BatchError::Device {
            source: chorus_core::Error::Kernel { .. },
            ..
        }
    )
}

/// The message of a contained panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}
