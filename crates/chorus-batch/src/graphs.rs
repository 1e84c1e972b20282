//! A worker's graphs of the model ([`BatchConfig::graphs`](crate::BatchConfigBuilder::graphs)).
//!
//! With graphs on, a worker runs a batch through a [`Graph`] of the model captured for the
//! batch's input shape, on the worker's own stream, the first time that shape comes: a
//! [`Graph::run`] replays the model's kernels as one unit (on CUDA one graph launch instead of
//! a launch per op). So that a few graphs serve every batch, a batch is padded with zero rows
//! up to the next power of two (at most `max_batch`): one graph per size 1, 2, 4, … and
//! `max_batch`; the padding's output rows are dropped. That is only right for models whose output rows each
//! depend on their own input row alone, which is what batching requests assumes anyway.
//!
//! A worker keeps at most [`MAX_GRAPHS`] graphs; batches of further shapes run the model
//! directly. A model that cannot be captured (it reads a tensor back or draws random numbers
//! inside its forward: [`chorus_core::Error::Capture`]) makes the worker call it directly from
//! then on. A capture that fails otherwise (an input dtype graphs do not take, or a model that
//! rejects the padded shape; running out of memory is tried again) is remembered for that shape (up to [`MAX_GRAPHS`] of them): the
//! batch's own rows are passed to the model directly, and later batches that would be padded
//! to that shape are not padded (they get a graph of their own size, if that captures).
//!
//! Each worker's graphs are its own (no lock: one worker thread uses them), and a graph's
//! result is bit-identical to the direct call on the same padded batch.

use chorus_core::{DType, Device, Graph, Tensor};
use chorus_nn::{Module, NnError};
use std::collections::{HashMap, HashSet};

/// Most graphs one worker keeps.
pub(crate) const MAX_GRAPHS: usize = 32;

/// One worker's graphs, by the batch input's shape and dtype.
pub(crate) struct WorkerGraphs {
    /// Whether batches may still run through graphs (the setting, and the model capturable).
    on: bool,
    graphs: HashMap<(Vec<usize>, DType), Graph>,
    /// Shapes whose capture failed (not for want of capturability: module docs).
    failed: HashSet<(Vec<usize>, DType)>,
}

impl WorkerGraphs {
    /// The graphs of a worker of a queue with graphs `on` (none captured yet).
    pub(crate) fn new(on: bool) -> Self {
        WorkerGraphs {
            on,
            graphs: HashMap::new(),
            failed: HashSet::new(),
        }
    }

    /// The rows a batch of `rows` rows (at most `max_batch`) of per-row shape `row` runs as:
    /// padded up to the next power of two or `max_batch` when a graph will run it, else `rows`.
    pub(crate) fn rows(&self, max_batch: usize, row: &[usize], dtype: DType, rows: usize) -> usize {
        if !self.on {
            return rows;
        }
        let padded = rows.next_power_of_two().min(max_batch).max(rows);
        let mut shape = Vec::with_capacity(row.len() + 1);
        shape.push(padded);
        shape.extend_from_slice(row);
        let key = (shape, dtype);
        let capturable = self.graphs.len() < MAX_GRAPHS && !self.failed.contains(&key);
        if self.graphs.contains_key(&key) || capturable {
            padded
        } else {
            rows
        }
    }

    /// `model(x)` through the graph of `x`'s shape, captured now if it is new; `None` when
    /// the model is to be called directly instead (module docs).
    pub(crate) fn run(
        &mut self,
        device: &Device,
        model: &dyn Module,
        x: &Tensor,
    ) -> Option<Result<Tensor, NnError>> {
        if !self.on {
            return None;
        }
        let key = (x.shape().to_vec(), x.dtype());
        if !self.graphs.contains_key(&key) {
            if self.graphs.len() >= MAX_GRAPHS || self.failed.contains(&key) {
                return None;
            }
            let captured = Graph::capture(device, &[(&key.0[..], key.1)], |i| {
                Ok::<_, NnError>(vec![model.forward(&i[0])?])
            });
            match captured {
                Ok(g) => {
                    self.graphs.insert(key.clone(), g);
                }
                Err(NnError::Core(chorus_core::Error::Capture { .. })) => {
                    self.on = false;
                    return None;
                }
                // Memory may be had later: tried again next time.
                Err(NnError::Core(chorus_core::Error::OutOfMemory { .. })) => return None,
                Err(_) => {
                    if self.failed.len() < MAX_GRAPHS {
                        self.failed.insert(key);
                    }
                    return None;
                }
            }
        }
        let graph = self.graphs.get(&key)?;
        Some(
            graph
                .run(&[x])
                .map(|mut outputs| outputs.swap_remove(0))
                .map_err(NnError::from),
        )
    }
}
