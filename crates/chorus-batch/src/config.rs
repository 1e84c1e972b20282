//! Settings of a [`BatchQueue`](crate::BatchQueue) and how it shuts down.

use crate::error::{BatchError, Result};
use chorus_core::Device;
use std::time::Duration;

/// What [`BatchQueue::shutdown`](crate::BatchQueue::shutdown) does with requests still
/// waiting in the queue. Either way, new requests are rejected from the moment it is called
/// and batches already running complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Run every waiting request (without waiting for `max_delay`), then stop the workers.
    Drain,
    /// Fail every waiting request with [`BatchError::Shutdown`] (handing its input back), then
    /// stop the workers.
    Fail,
}

/// Settings of a batch queue: where it runs, how batches are formed, and its limits.
///
/// Made by [`BatchConfig::builder`], which checks the settings.
///
/// # Examples
/// ```
/// use chorus_batch::BatchConfig;
/// use std::time::Duration;
/// # let device = chorus_cpu::device()?;
/// let config = BatchConfig::builder(&device)
///     .max_batch(64)
///     .max_delay(Duration::from_micros(500))
///     .workers(2)
///     .timeout(Some(Duration::from_secs(1)))
///     .build()?;
/// assert_eq!(config.max_batch(), 64);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub(crate) device: Device,
    pub(crate) max_batch: usize,
    pub(crate) max_delay: Duration,
    pub(crate) max_queue: usize,
    pub(crate) workers: usize,
    pub(crate) preferred: Vec<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) input_shape: Option<Vec<usize>>,
    pub(crate) graphs: bool,
    pub(crate) pad_dim: Option<usize>,
    pub(crate) max_batch_tokens: Option<usize>,
}

/// Most workers a queue may have (each holds a thread and a stream).
pub const MAX_WORKERS: usize = 256;

impl BatchConfig {
    /// A builder with the defaults on `device`: `max_batch` 32, `max_delay` 1 ms,
    /// `max_queue` 4096, 2 workers, no preferred sizes, no timeout, any per-row shape.
    pub fn builder(device: &Device) -> BatchConfigBuilder {
        BatchConfigBuilder {
            cfg: BatchConfig {
                device: device.clone(),
                max_batch: 32,
                max_delay: Duration::from_millis(1),
                max_queue: 4096,
                workers: 2,
                preferred: Vec::new(),
                timeout: None,
                input_shape: None,
                graphs: false,
                pad_dim: None,
                max_batch_tokens: None,
            },
        }
    }

    /// The device the workers run on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Most rows (samples) in one batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// Longest a batch waits to fill, from its oldest request's submission.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }
    /// Most requests waiting at once.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }
    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
    /// Preferred batch sizes, sorted, without repeats.
    pub fn preferred_batch_sizes(&self) -> &[usize] {
        &self.preferred
    }
    /// Longest a request may wait in the queue.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// The per-row shape every request must have, if one was set.
    pub fn input_shape(&self) -> Option<&[usize]> {
        self.input_shape.as_deref()
    }
    /// Whether workers run batches through graphs of the model.
    pub fn graphs(&self) -> bool {
        self.graphs
    }
    /// The dimension along which requests may differ and are padded with zeros.
    pub fn pad_dim(&self) -> Option<usize> {
        self.pad_dim
    }
    /// Most rows × padded length in one batch.
    pub fn max_batch_tokens(&self) -> Option<usize> {
        self.max_batch_tokens
    }
}

/// Builder of [`BatchConfig`].
#[derive(Debug, Clone)]
pub struct BatchConfigBuilder {
    cfg: BatchConfig,
}

impl BatchConfigBuilder {
    /// Most rows (samples) in one batch; a request of more rows is rejected with
    /// [`BatchError::TooManyRows`].
    pub fn max_batch(mut self, rows: usize) -> Self {
        self.cfg.max_batch = rows;
        self
    }
    /// Longest a batch waits to fill, counted from its oldest request's submission. Zero runs
    /// whatever is waiting as soon as a worker is free.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.cfg.max_delay = delay;
        self
    }
    /// Most requests waiting at once; a request beyond it is rejected at once with
    /// [`BatchError::QueueFull`].
    pub fn max_queue(mut self, requests: usize) -> Self {
        self.cfg.max_queue = requests;
        self
    }
    /// Number of worker threads, each running batches on a stream of its own.
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.workers = n;
        self
    }
    /// Batch sizes (in rows) to prefer: a batch is run as soon as the largest preferred size
    /// is waiting, and a batch whose `max_delay` has passed is cut to the largest preferred
    /// size that is waiting (the rest follow in the next batch). Empty: no preference.
    pub fn preferred_batch_sizes(mut self, sizes: impl Into<Vec<usize>>) -> Self {
        let mut sizes = sizes.into();
        sizes.sort_unstable();
        sizes.dedup();
        self.cfg.preferred = sizes;
        self
    }
    /// Longest a request may wait in the queue before a worker takes it; past it, the request
    /// fails with [`BatchError::Timeout`]. A request already running is not interrupted.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.cfg.timeout = timeout;
        self
    }
    /// The shape of one row (an input's shape without dimension 0) that every request must
    /// have; others are rejected with [`BatchError::ShapeMismatch`]. `None` (the default): any
    /// shape, and requests of different per-row shapes or dtypes are batched separately.
    pub fn input_shape(mut self, shape: Option<Vec<usize>>) -> Self {
        self.cfg.input_shape = shape;
        self
    }

    /// Run batches through graphs of the model ([`chorus_core::Graph`]: on CUDA one graph
    /// launch per batch instead of a launch per op), off by default. A batch is padded with
    /// zero rows up to the next power of two (at most `max_batch`), so that a few graphs serve
    /// every batch, and each worker captures the graph of a padded shape the first time it
    /// comes (at most 32 per worker; further shapes run the model directly); the padding's
    /// rows are dropped.
    ///
    /// Only for models whose output rows each depend on their own input row alone (what
    /// batching assumes anyway). A model that cannot be captured (it reads tensors back or draws
    /// random numbers in its forward) is then simply called directly. Results are bit-identical
    /// to a direct call on the padded batch ([`BatchInfo::padded_rows`](crate::BatchInfo)).
    pub fn graphs(mut self, on: bool) -> Self {
        self.cfg.graphs = on;
        self
    }

    /// Requests may differ in dimension `dim` (a dimension of the input after the batch
    /// dimension 0: a sequence's length, say): a batch is then padded with zeros along it to its
    /// longest request, and the model must treat the padding as absent (a sequence model's
    /// attention mask, itself padded with zeros, does). To keep the padding small, requests are
    /// batched with requests of the same length class: lengths in `(2^(k-1), 2^k]` go together,
    /// so a batch is padded by less than half. Outputs are split by rows as usual (a model whose
    /// output still has the padded dimension gets it padded). `None` (the default): every
    /// dimension must match within a batch.
    pub fn pad_dim(mut self, dim: Option<usize>) -> Self {
        self.cfg.pad_dim = dim;
        self
    }

    /// A budget of rows × padded length (along [`pad_dim`](Self::pad_dim)) per batch, on top of
    /// `max_batch`: a batch of requests of length class `2^k` takes at most
    /// `max_batch_tokens / 2^k` rows (at least one request). `None` (the default): rows alone
    /// count.
    pub fn max_batch_tokens(mut self, tokens: Option<usize>) -> Self {
        self.cfg.max_batch_tokens = tokens;
        self
    }

    /// Checks and returns the settings.
    ///
    /// # Errors
    /// [`BatchError::Config`] naming the first invalid setting: a zero `max_batch` or
    /// `max_queue`, workers outside 1..=[`MAX_WORKERS`], a preferred size of 0 or above
    /// `max_batch`, a zero timeout, a `pad_dim` of 0, a zero `max_batch_tokens` or one without
    /// `pad_dim`.
    pub fn build(self) -> Result<BatchConfig> {
        let c = &self.cfg;
        let bad = |setting, value: String, reason| {
            Err(BatchError::Config {
                setting,
                value,
                reason,
            })
        };
        if c.max_batch == 0 {
            return bad("max_batch", "0".into(), "a batch needs at least one row");
        }
        if c.max_queue == 0 {
            return bad(
                "max_queue",
                "0".into(),
                "the queue must hold at least one request",
            );
        }
        if !(1..=MAX_WORKERS).contains(&c.workers) {
            return bad(
                "workers",
                c.workers.to_string(),
                "expected 1 to 256 workers",
            );
        }
        if let Some(&p) = c.preferred.iter().find(|&&p| p == 0 || p > c.max_batch) {
            return bad(
                "preferred_batch_sizes",
                format!("{:?}", c.preferred),
                if p == 0 {
                    "a preferred size must be at least 1"
                } else {
                    "a preferred size must not exceed max_batch"
                },
            );
        }
        if c.pad_dim == Some(0) {
            return bad(
                "pad_dim",
                "0".into(),
                "dimension 0 is the batch: pad a dimension after it",
            );
        }
        if c.max_batch_tokens == Some(0) {
            return bad(
                "max_batch_tokens",
                "0".into(),
                "a batch needs at least one token",
            );
        }
        if c.max_batch_tokens.is_some() && c.pad_dim.is_none() {
            return bad(
                "max_batch_tokens",
                format!("{:?}", c.max_batch_tokens),
                "a token budget counts the padded dimension: set pad_dim too",
            );
        }
        if c.timeout == Some(Duration::ZERO) {
            return bad(
                "timeout",
                "0s".into(),
                "a zero timeout would fail every request; use None for no timeout",
            );
        }
        Ok(self.cfg)
    }
}
