//! Per-stream returns: small blocks freed by a thread that cannot cache them, kept for their
//! stream's next allocations without the allocator's shared lock.
//!
//! A thread caches a freed block only when the block's stream is the thread's current stream
//! (`thread_cache`). A block made on one thread and dropped on another (a batching worker's
//! output, dropped by the client that asked for it; a pipeline's stage handing tensors on) would
//! otherwise go back to the shared pools, and its stream's next allocation would take the pools'
//! lock, which every thread without a cached block contends for. Such a block goes here instead,
//! into its stream's returns, and the stream's next allocation that its thread's cache cannot
//! serve looks here before the pools. So does a small block that other streams used too, once
//! their events have completed, when the allocator finds it so while serving another stream
//! (`crate::alloc`'s poll).
//!
//! # What a return holds
//! Exactly what a thread cache holds: free blocks of at most `SMALL_MAX` bytes whose last uses
//! were their owner stream's (any other stream's uses have completed), reusable by that stream
//! at once (stream order protects them) and by no other. The pools see them as used. Each
//! stream keeps at most `capacity` bytes; a block that does not fit goes to the pools.
//!
//! # Fields
//! One `RUNTIME_RETURNS` lock per stream, a leaf: held only to push, pop or take everything,
//! with no other lock taken meanwhile. It ranks above the allocator's, which
//! `MemoryDevice::keep` holds while it pushes; blocks taken out are given back to the pools
//! after it is released. `drain(close)` empties a stream (running out of memory,
//! `empty_cache`) and, at shutdown, closes it, so that a block freed after shutdown goes to the
//! pools.

use super::pool::Block;
use super::thread_cache::Held;
use crate::stream::StreamId;
use chorus_sync::{rank, RankedMutex};

/// One stream's kept blocks, and whether it keeps any more.
#[derive(Debug, Default)]
struct Stream {
    held: Held,
    closed: bool,
}

/// The returns of every stream of one device.
#[derive(Debug)]
pub(crate) struct Returns {
    streams: Box<[RankedMutex<Stream>]>,
    capacity: usize,
}

impl Returns {
    /// Returns for `streams` streams of at most `capacity` bytes each (0: none kept).
    pub(crate) fn new(streams: usize, capacity: usize) -> Self {
        Self {
            streams: (0..streams)
                .map(|_| RankedMutex::new(rank::RUNTIME_RETURNS, Stream::default()))
                .collect(),
            capacity,
        }
    }

    /// Keeps `block` (free, used by its stream alone) for its stream, or hands it back if the
    /// stream's returns are full or closed.
    pub(crate) fn put(&self, block: Block) -> Result<(), Block> {
        let Some(stream) = self.streams.get(block.stream.index()) else {
            return Err(block);
        };
        let mut s = stream.lock();
        if s.closed {
            return Err(block);
        }
        s.held.put(block, self.capacity)
    }

    /// A kept block of exactly `size` bytes for `stream`.
    pub(crate) fn take(&self, size: usize, stream: StreamId) -> Option<Block> {
        self.streams
            .get(stream.index())?
            .lock()
            .held
            .take(size, stream)
    }

    /// Takes every kept block out (to give back to the pools); `close`: keep none from now on.
    pub(crate) fn drain(&self, close: bool) -> Vec<Block> {
        let mut out = Vec::new();
        for stream in self.streams.iter() {
            let mut s = stream.lock();
            s.closed |= close;
            out.append(&mut s.held.take_all());
        }
        out
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;
    use crate::kernel::DevicePtr;

    fn block(stream: usize, size: usize, at: u64) -> Block {
        Block {
            seg: 0,
            offset: at as usize,
            size,
            ptr: DevicePtr(at),
            stream: StreamId::new(stream),
        }
    }

    #[test]
    fn a_stream_gets_back_only_its_own_blocks_of_the_exact_size() {
        let r = Returns::new(3, 4096);
        r.put(block(1, 1024, 0)).unwrap();
        r.put(block(2, 1024, 1024)).unwrap();
        assert!(r.take(512, StreamId::new(1)).is_none(), "another size");
        assert!(r.take(1024, StreamId::new(0)).is_none(), "another stream's");
        assert_eq!(r.take(1024, StreamId::new(1)).unwrap().ptr, DevicePtr(0));
        assert!(r.take(1024, StreamId::new(1)).is_none(), "taken once");
        assert!(r.take(1024, StreamId::new(9)).is_none(), "no such stream");
    }

    #[test]
    fn full_or_closed_returns_hand_the_block_back() {
        let r = Returns::new(2, 2048);
        r.put(block(1, 1024, 0)).unwrap();
        r.put(block(1, 1024, 1024)).unwrap();
        assert!(r.put(block(1, 512, 2048)).is_err(), "over capacity");
        r.put(block(0, 512, 4096)).unwrap();
        assert_eq!(r.drain(false).len(), 3);
        r.put(block(1, 1024, 0)).unwrap();
        assert_eq!(r.drain(true).len(), 1);
        assert!(r.put(block(1, 1024, 0)).is_err(), "closed");
        assert!(
            Returns::new(1, 0).put(block(0, 512, 0)).is_err(),
            "no capacity"
        );
    }
}
