//! [`SentenceQueue`]: one sentence per request from any number of threads, batched.
//!
//! A request is a text. The calling thread tokenizes it and submits the packed ids, mask and
//! types (`[1, 3, L]`, [`SentenceEncoder::pack`]) as a host request to a
//! [`BatchQueue`] running the encoder as a [`Module`](chorus_nn::Module), with
//! `pad_dim = 2`: requests of different lengths share a batch, padded with zeros to the
//! longest, and requests of one length class (`(2^(k-1), 2^k]` tokens) go together, so the
//! padding stays under half; `max_batch_tokens` bounds rows × padded length. The worker reads
//! the pooled rows back; the calling thread normalises its own row
//! ([`SentenceEncoder::finish`]).
//!
//! A text's embedding depends on its batch only through float rounding (the shapes of the
//! products change with the batch): cosine with the direct call >= 1 − 1e-6.

use crate::encoder::SentenceEncoder;
use crate::error::Result;
use chorus_batch::{BatchConfigBuilder, BatchQueue, HostTensor};
use chorus_sync::Arc;

/// A batching queue of sentences. See the module docs.
#[derive(Debug)]
pub struct SentenceQueue {
    encoder: Arc<SentenceEncoder>,
    queue: BatchQueue,
}

impl SentenceQueue {
    /// A queue running `encoder` with the settings of `config` (its padding dimension is set
    /// here: the packed input's length).
    ///
    /// # Errors
    /// [`TextError::Batch`](crate::TextError::Batch) for invalid settings or workers that cannot start.
    pub fn new(encoder: Arc<SentenceEncoder>, config: BatchConfigBuilder) -> Result<SentenceQueue> {
        let config = config.pad_dim(Some(2)).input_shape(None).build()?;
        let queue = BatchQueue::new(Arc::clone(&encoder), config)?;
        Ok(SentenceQueue { encoder, queue })
    }

    /// The embedding of `text`, computed in whatever batch it lands in; blocks until it is
    /// there.
    ///
    /// # Errors
    /// [`TextError::Tokenizer`](crate::TextError::Tokenizer); [`TextError::Batch`](crate::TextError::Batch) for the queue's errors (full, shut down,
    /// a failed batch).
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let (packed, len) = self.encoder.pack(text)?;
        let input = HostTensor::new(&packed, &[1, 3, len])?;
        let row = self.queue.infer(input)?.to_vec::<f32>()?;
        Ok(self.encoder.finish(&row))
    }

    /// The queue (statistics, shutdown).
    pub fn queue(&self) -> &BatchQueue {
        &self.queue
    }
}
