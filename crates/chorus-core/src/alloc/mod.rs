//! The caching allocator: one per device, shared by every stream and thread.
//!
//! # Protocol
//! `alloc(bytes, stream)`:
//! 1. (runtime) the calling thread's cache of small blocks, no shared lock; then the stream's
//!    returns (`returns`: small blocks of the stream freed on other threads, one lock per
//!    stream);
//! 2. under the pool lock: poll completed fences and deferred frees, then best fit among free
//!    blocks the stream may use (`pool` module docs); blocks of other streams that would fit but
//!    are not yet known safe get a fence recorded on their stream, for next time;
//! 3. a new segment, within the memory limit;
//! 4. on failure: release cached segments that are safe, retry; then (lock released) take back
//!    the blocks every thread keeps in its cache and the streams' returns keep, synchronize the
//!    device, mark every free so far complete, retry once more (its polls keep every finished
//!    block in the pools, none for the streams' returns, so that whole segments can be
//!    released), and again (at most `SYNCED_RETRIES` in all) while blocks that fit wait only for
//!    a fence (freed by other streams since the snapshot); then fail with
//!    [`Error::OutOfMemory`] stating requested, allocated, cached and limit.
//!
//! `free(block, users)`: a block used by its owner stream alone goes back to the free index at
//! once, tagged with that stream (reusable by it immediately, by others after a fence). A block
//! other streams used too gets an event recorded *now* on each of them (before the pool lock is
//! taken: the block's uses on those streams were all enqueued before the free) and waits as a
//! deferred free until they complete. The tensor layer tracks `users` automatically.
//!
//! Polling (step 2) asks the device about fences and deferred frees under the pool lock, which
//! every thread whose cache misses takes, so it asks as little as it can: per stream, fences
//! are asked oldest first and only up to the first unfinished one; deferred frees are kept in
//! the order they were queued and, once one of a stream's events is unfinished, the later
//! entries' events on that stream are not asked in the same poll (work on a stream finishes in
//! order, so they are almost always unfinished too; skipping an event only delays its block,
//! until the stream's earlier event finishes; on a stream whose events never finish, a broken
//! one, blocks stay deferred until teardown, as that stream's own blocks do). A small deferred
//! block found complete while *another* stream allocates goes to its own stream's returns
//! (`MemoryDevice::keep`), where that stream's next allocation finds it without this lock: a
//! tensor one thread made and another thread's stream read (a batching queue's device input)
//! comes back to the thread that makes the next one.
//!
//! # Fields
//! `pools` under the `ALLOCATOR` lock; counters are atomics read without the lock.

pub(crate) mod pool;
pub(crate) mod returns;
pub(crate) mod thread_cache;

use crate::error::{BackendError, DeviceId, Error, Result};
use crate::kernel::DevicePtr;
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use chorus_sync::{rank, RankedMutex};
use pool::{classify, Deferred, Fit, Kind, Pools};

pub use pool::Block;

/// Synchronized retries an allocation makes at most (step 4). After the first, another is made
/// only while free blocks that fit wait for nothing but a fence: blocks other streams freed
/// after the last synchronization's snapshot, which many threads freeing at once keep making
/// (measured: 64 threads under a 12 MB limit failed 6 of 12,800 allocations with one retry).
const SYNCED_RETRIES: u32 = 4;

/// Sequence number of a deferred free that must never complete (a fence failed).
const NEVER: u64 = u64::MAX;

/// What the allocator needs from its device: segments and fences (events) on streams.
pub(crate) trait MemoryDevice {
    type Segment: Send + Sync;
    type Fence: Send + Sync;
    fn alloc_segment(&self, bytes: usize) -> Result<(Self::Segment, DevicePtr), BackendError>;
    /// # Safety
    /// No enqueued or running work uses the segment.
    unsafe fn free_segment(&self, seg: Self::Segment);
    /// Records a fence at the current end of `stream`; `None` if it could not be recorded.
    fn record_fence(&self, stream: StreamId) -> Option<Self::Fence>;
    /// Waits for `stream`'s work so far (a fence could not be recorded), bounded; whether it
    /// completed (called with no lock held).
    fn wait_stream(&self, stream: StreamId) -> bool;
    fn fence_done(&self, fence: &Self::Fence) -> bool;
    fn drop_fence(&self, fence: Self::Fence);
    /// Waits for all streams (called with no lock held).
    fn synchronize_all(&self);
    /// After shutdown: waits for all streams, within the device's shutdown timeout; whether
    /// they are all idle (called with no lock held). Without a bound by default.
    fn settle(&self) -> bool {
        self.synchronize_all();
        true
    }
    /// Gives back ([`Allocator::give_back`]) the blocks every thread keeps in its cache and the
    /// streams' returns keep, retiring the caches; holds the registry lock until they are all
    /// in the pools (called with no lock held).
    fn reclaim_thread_caches(&self);
    /// Offers a free small block, reusable by its stream at once, to that stream's returns
    /// (`returns`); called under the allocator's lock. `Err` hands it back. None kept by default.
    fn keep(&self, block: Block) -> std::result::Result<(), Block> {
        Err(block)
    }
}

/// Memory statistics of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Bytes held by live tensors.
    pub allocated_bytes: usize,
    /// Bytes reserved from the device (segments).
    pub reserved_bytes: usize,
    /// Peak of `allocated_bytes` since creation or the last [`reset_peak`](crate::Device::reset_peak_memory).
    pub peak_allocated_bytes: usize,
    /// Peak of `reserved_bytes`, likewise.
    pub peak_reserved_bytes: usize,
    /// Live segments.
    pub segments: usize,
    /// Allocations served.
    pub allocations: u64,
    /// Frees.
    pub frees: u64,
    /// Allocations served from cached memory (a thread cache, a stream's returns or a free block)
    /// without a new segment.
    pub cache_hits: u64,
    /// Of those, allocations served by the calling thread's cache.
    pub thread_cache_hits: u64,
    /// Of those, allocations served by their stream's returns (blocks of the stream freed on
    /// another thread).
    pub returns_hits: u64,
    /// Frees of blocks used by several streams, deferred until events completed.
    pub deferred_frees: u64,
    /// Fences recorded to let one stream reuse another's freed blocks.
    pub fences: u64,
    /// Times an allocation synchronized the device to retry after running out.
    pub oom_retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    allocated: AtomicUsize,
    reserved: AtomicUsize,
    peak_allocated: AtomicUsize,
    peak_reserved: AtomicUsize,
    segments: AtomicUsize,
    allocations: AtomicU64,
    frees: AtomicU64,
    cache_hits: AtomicU64,
    thread_cache_hits: AtomicU64,
    returns_hits: AtomicU64,
    deferred_frees: AtomicU64,
    fences: AtomicU64,
    oom_retries: AtomicU64,
}

/// The caching allocator of one device.
#[derive(Debug)]
pub(crate) struct Allocator<S, F> {
    device: DeviceId,
    pools: RankedMutex<Pools<S, F>>,
    limit: Option<usize>,
    closed: AtomicBool,
    /// Set when a free after shutdown found a stream still busy past the shutdown timeout.
    unsettled: AtomicBool,
    c: Counters,
}

impl<S: Send + Sync, F: Send + Sync> Allocator<S, F> {
    pub(crate) fn new(device: DeviceId, streams: usize, limit: Option<usize>) -> Self {
        Self {
            device,
            pools: RankedMutex::new(rank::ALLOCATOR, Pools::new(streams)),
            limit,
            closed: AtomicBool::new(false),
            unsettled: AtomicBool::new(false),
            c: Counters::default(),
        }
    }

    /// Allocates at least `bytes` for `stream` (steps 2-4 of the protocol).
    pub(crate) fn alloc<D>(&self, dev: &D, bytes: usize, stream: StreamId) -> Result<Block>
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let (kind, size) = classify(bytes).ok_or(Error::SizeOverflow { what: "allocation" })?;
        // Synchronized retries so far (step 4).
        let mut syncs = 0;
        loop {
            if self.closed.load(Relaxed) {
                return Err(Error::DeviceClosed {
                    device: self.device,
                });
            }
            // After the synchronization, finished deferred frees go back to the pools, where
            // their segments can be released, rather than to their streams' returns.
            let allocating = (syncs == 0).then_some(stream);
            let mut p = self.pools.lock();
            self.poll(&mut p, dev, allocating);
            // Whether free blocks that fit wait only for a fence on another stream.
            let waiting;
            match p.best_fit(kind, size, stream) {
                Fit::Found(b) => {
                    self.c.cache_hits.fetch_add(1, Relaxed);
                    return Ok(self.handed_out(b));
                }
                Fit::None { fence_wanted } => {
                    waiting = !fence_wanted.is_empty();
                    for s in fence_wanted {
                        self.request_fence(&mut p, dev, s);
                    }
                }
            }
            if let Some(b) = self.grow(&mut p, dev, kind, size, stream)? {
                return Ok(self.handed_out(b));
            }
            // Fences may have completed meanwhile: a cached block beats a new segment.
            self.poll(&mut p, dev, allocating);
            if let Fit::Found(b) = p.best_fit(kind, size, stream) {
                self.c.cache_hits.fetch_add(1, Relaxed);
                return Ok(self.handed_out(b));
            }
            self.release_cached(&mut p, dev);
            if let Some(b) = self.grow(&mut p, dev, kind, size, stream)? {
                return Ok(self.handed_out(b));
            }
            if syncs > 0 && !(waiting && syncs < SYNCED_RETRIES) {
                let reserved = p.reserved;
                drop(p);
                let allocated = self.c.allocated.load(Relaxed);
                return Err(Error::OutOfMemory {
                    device: self.device,
                    requested: bytes,
                    allocated,
                    cached: reserved.saturating_sub(allocated),
                    limit: self.limit,
                });
            }
            drop(p);
            self.c.oom_retries.fetch_add(1, Relaxed);
            dev.reclaim_thread_caches();
            // Every free up to here (the caches' blocks included) was enqueued before the
            // synchronization, so its last uses are complete after it.
            let upto = self.pools.lock().free_seq.clone();
            dev.synchronize_all();
            self.pools.lock().all_complete(&upto);
            syncs += 1;
        }
    }

    /// Counts the bytes of a block served by a thread cache (the cache counts the event).
    pub(crate) fn thread_cache_hit(&self, b: Block) -> Block {
        self.count_bytes_out(b.size);
        b
    }

    /// Counts a block served by its stream's returns (`returns`): a cache hit.
    pub(crate) fn returns_hit(&self, b: Block) -> Block {
        self.c.cache_hits.fetch_add(1, Relaxed);
        self.c.returns_hits.fetch_add(1, Relaxed);
        self.handed_out(b)
    }

    fn count_bytes_out(&self, size: usize) {
        let now = self.c.allocated.fetch_add(size, Relaxed) + size;
        if now > self.c.peak_allocated.load(Relaxed) {
            self.c.peak_allocated.fetch_max(now, Relaxed);
        }
    }

    fn handed_out(&self, b: Block) -> Block {
        self.c.allocations.fetch_add(1, Relaxed);
        self.count_bytes_out(b.size);
        b
    }

    /// Counts the bytes of a block the user gave back (before it goes anywhere).
    pub(crate) fn count_bytes_in(&self, b: &Block) {
        self.c.allocated.fetch_sub(b.size, Relaxed);
    }

    /// Counts a free that did not go into a thread cache.
    pub(crate) fn count_free(&self) {
        self.c.frees.fetch_add(1, Relaxed);
    }

    /// Adds the final counts of a closed thread cache to the allocator's own.
    pub(crate) fn fold(&self, (hits, frees): (u64, u64)) {
        self.c.allocations.fetch_add(hits, Relaxed);
        self.c.cache_hits.fetch_add(hits, Relaxed);
        self.c.thread_cache_hits.fetch_add(hits, Relaxed);
        self.c.frees.fetch_add(frees, Relaxed);
    }

    /// Returns a counted block to the pools. `others`: streams besides `b.stream` that used it.
    pub(crate) fn release<D>(&self, dev: &D, b: Block, others: &[StreamId])
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let owner = b.stream;
        let others: Vec<StreamId> = others.iter().copied().filter(|&s| s != owner).collect();
        // Driver calls, so before the lock (module docs). A stream whose fence cannot be
        // recorded is waited for here instead (its uses so far are then complete); one that
        // does not finish within the wait's bound keeps the block until teardown (`NEVER`),
        // which is safe.
        let mut events: Vec<(StreamId, F)> = Vec::with_capacity(others.len());
        let mut unfinished = false;
        for &s in &others {
            match dev.record_fence(s) {
                Some(f) => events.push((s, f)),
                None => unfinished |= !dev.wait_stream(s),
            }
        }
        let mut p = self.pools.lock();
        p.free_seq[owner.index()] += 1;
        let seq = p.free_seq[owner.index()];
        if events.is_empty() && !unfinished {
            p.release(b.seg, b.offset, owner, seq);
        } else {
            let seq = if unfinished { NEVER } else { seq };
            p.defer(b.seg, b.offset);
            p.deferred.push(Deferred {
                seg: b.seg,
                offset: b.offset,
                owner,
                seq,
                events,
            });
            self.c.deferred_frees.fetch_add(1, Relaxed);
        }
        if self.closed.load(Relaxed) && !self.unsettled.load(Relaxed) {
            // After shutdown no new work is accepted and shutdown already waited for the streams,
            // so this wait is usually immediate. It makes the block's last uses complete, so its
            // segment goes back to the device now rather than at teardown. If a stream does not
            // finish within the shutdown timeout (shutdown gave up on it too), the block stays
            // for the teardown, and later frees do not wait again.
            let upto = p.free_seq.clone();
            drop(p);
            if dev.settle() {
                let mut p = self.pools.lock();
                p.all_complete(&upto);
                self.release_cached(&mut p, dev);
            } else {
                self.unsettled.store(true, Relaxed);
            }
        }
    }

    /// Returns counted blocks that only their owner streams used (a thread cache's, a stream's
    /// returns') to the pools, under one acquisition of the pool lock. Never waits, so it may
    /// be called under the registry lock; after shutdown their segments go back at teardown.
    pub(crate) fn give_back(&self, blocks: Vec<Block>) {
        if blocks.is_empty() {
            return;
        }
        let mut p = self.pools.lock();
        for b in blocks {
            p.free_seq[b.stream.index()] += 1;
            let seq = p.free_seq[b.stream.index()];
            p.release(b.seg, b.offset, b.stream, seq);
        }
    }

    /// Frees the cached segments that are safe to free.
    fn release_cached<D>(&self, p: &mut Pools<S, F>, dev: &D)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        self.poll(p, dev, None);
        for s in p.take_releasable() {
            // SAFETY: `take_releasable` returns only segments without used or deferred blocks
            // whose free blocks' last uses are covered by completed fences.
            unsafe { dev.free_segment(s) };
        }
        self.sync_reserved(p);
    }

    /// Synchronizes the device and releases every cached segment (`empty_cache`).
    pub(crate) fn empty_cache<D>(&self, dev: &D)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let upto = self.pools.lock().free_seq.clone();
        dev.synchronize_all();
        let mut p = self.pools.lock();
        p.all_complete(&upto);
        self.release_cached(&mut p, dev);
    }

    /// The number of frees so far, per stream (a snapshot for [`Allocator::close`]).
    pub(crate) fn free_seq(&self) -> Vec<u64> {
        self.pools.lock().free_seq.clone()
    }

    /// Marks the allocator closed (no new allocations) and releases what is safe; never waits.
    /// `complete`: a [`Allocator::free_seq`] snapshot taken before the caller saw every stream
    /// idle, so that every free up to it is complete. (Not a snapshot taken after: a thread
    /// that passed its open check just before the shutdown may have enqueued work since, and
    /// its blocks, freed after that work was enqueued, must not go back to the device while it
    /// runs.)
    pub(crate) fn close<D>(&self, dev: &D, complete: Option<Vec<u64>>)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        self.closed.store(true, Relaxed);
        let mut p = self.pools.lock();
        if let Some(upto) = complete {
            p.all_complete(&upto);
        }
        self.release_cached(&mut p, dev);
    }

    /// Final teardown: frees every segment. The device must be idle.
    pub(crate) fn teardown<D>(&self, dev: &D)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let mut p = self.pools.lock();
        for s in Self::take_everything(&mut p, dev) {
            // SAFETY: the caller guarantees the device is idle.
            unsafe { dev.free_segment(s) };
        }
        self.sync_reserved(&p);
    }

    /// Final teardown of a device whose work never finished: every segment is leaked (never
    /// freed, not even when the allocator drops), since that work may still use any of them.
    /// Returns the bytes leaked.
    pub(crate) fn leak<D>(&self, dev: &D) -> usize
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let mut p = self.pools.lock();
        let bytes = p.reserved;
        for s in Self::take_everything(&mut p, dev) {
            std::mem::forget(s);
        }
        self.sync_reserved(&p);
        bytes
    }

    /// Drops every fence and takes out every segment (`teardown`, `leak`).
    fn take_everything<D>(p: &mut Pools<S, F>, dev: &D) -> Vec<S>
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        for q in std::mem::take(&mut p.fences) {
            q.into_iter().for_each(|(_, f)| dev.drop_fence(f));
        }
        for d in std::mem::take(&mut p.deferred) {
            d.events.into_iter().for_each(|(_, f)| dev.drop_fence(f));
        }
        p.take_all()
    }

    fn grow<D>(
        &self,
        p: &mut Pools<S, F>,
        dev: &D,
        kind: Kind,
        size: usize,
        stream: StreamId,
    ) -> Result<Option<Block>>
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let mut seg_size = Pools::<S, F>::segment_size(kind, size);
        if let Some(limit) = self.limit {
            if p.reserved.saturating_add(seg_size) > limit {
                if p.reserved.saturating_add(size) > limit {
                    return Ok(None);
                }
                seg_size = size;
            }
        }
        match dev.alloc_segment(seg_size) {
            Ok((raw, base)) => {
                let b = p.add_segment(raw, base, seg_size, kind, size, stream);
                self.sync_reserved(p);
                Ok(Some(b))
            }
            Err(BackendError::OutOfMemory { .. }) => Ok(None),
            Err(e) => Err(Error::Device {
                device: self.device,
                stream,
                source: e,
            }),
        }
    }

    fn request_fence<D>(&self, p: &mut Pools<S, F>, dev: &D, s: StreamId)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        let i = s.index();
        let covered = p.fences[i].back().map_or(p.completed[i], |(c, _)| *c);
        if covered < p.free_seq[i] {
            if let Some(f) = dev.record_fence(s) {
                let upto = p.free_seq[i];
                p.fences[i].push_back((upto, f));
                self.c.fences.fetch_add(1, Relaxed);
            }
        }
    }

    /// Raises `completed` for streams whose fences are done; frees deferred blocks whose
    /// events are done, asking the device as little as it can (module docs).
    fn poll<D>(&self, p: &mut Pools<S, F>, dev: &D, allocating: Option<StreamId>)
    where
        D: MemoryDevice<Segment = S, Fence = F>,
    {
        for i in 0..p.fences.len() {
            while p.fences[i].front().is_some_and(|(_, f)| dev.fence_done(f)) {
                let (upto, f) = p.fences[i].pop_front().expect("front checked");
                p.completed[i] = p.completed[i].max(upto);
                dev.drop_fence(f);
            }
        }
        // Streams with an unfinished event seen in this poll; entries that are done move to the
        // back (`kept` counts the ones staying, in their order).
        let mut busy: Vec<StreamId> = Vec::new();
        let mut kept = 0;
        for i in 0..p.deferred.len() {
            let d = &p.deferred[i];
            let done = d.seq != NEVER
                && d.events.iter().all(|(s, f)| {
                    if busy.contains(s) {
                        return false;
                    }
                    let finished = dev.fence_done(f);
                    if !finished {
                        busy.push(*s);
                    }
                    finished
                });
            if !done {
                p.deferred.swap(kept, i);
                kept += 1;
            }
        }
        if kept < p.deferred.len() {
            let done: Vec<Deferred<F>> = p.deferred.drain(kept..).collect();
            for d in done {
                d.events.into_iter().for_each(|(_, f)| dev.drop_fence(f));
                // While allocating, a small block of another stream goes to its stream's
                // returns (module docs); the allocating stream's own stays here for best fit.
                if allocating.is_some_and(|s| s != d.owner) {
                    if let Some(b) = p.undefer_small(d.seg, d.offset, d.owner) {
                        match dev.keep(b) {
                            Ok(()) => continue,
                            Err(b) => p.defer(b.seg, b.offset),
                        }
                    }
                }
                p.release(d.seg, d.offset, d.owner, d.seq);
            }
        }
    }

    fn sync_reserved(&self, p: &Pools<S, F>) {
        self.c.reserved.store(p.reserved, Relaxed);
        self.c.segments.store(p.segments(), Relaxed);
        self.c.peak_reserved.fetch_max(p.reserved, Relaxed);
    }

    /// Statistics, adding `(hits, frees)` of the open thread caches.
    pub(crate) fn stats(&self, (hits, frees): (u64, u64)) -> MemoryStats {
        let c = &self.c;
        MemoryStats {
            allocated_bytes: c.allocated.load(Relaxed),
            reserved_bytes: c.reserved.load(Relaxed),
            peak_allocated_bytes: c.peak_allocated.load(Relaxed),
            peak_reserved_bytes: c.peak_reserved.load(Relaxed),
            segments: c.segments.load(Relaxed),
            allocations: c.allocations.load(Relaxed) + hits,
            frees: c.frees.load(Relaxed) + frees,
            cache_hits: c.cache_hits.load(Relaxed) + hits,
            thread_cache_hits: c.thread_cache_hits.load(Relaxed) + hits,
            returns_hits: c.returns_hits.load(Relaxed),
            deferred_frees: c.deferred_frees.load(Relaxed),
            fences: c.fences.load(Relaxed),
            oom_retries: c.oom_retries.load(Relaxed),
        }
    }

    pub(crate) fn reset_peak(&self) {
        self.c
            .peak_allocated
            .store(self.c.allocated.load(Relaxed), Relaxed);
        self.c
            .peak_reserved
            .store(self.c.reserved.load(Relaxed), Relaxed);
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    /// Three streams whose work is counted: a fence is `(stream, items enqueued when it was
    /// recorded)` and is done once that many items completed. Counts the questions asked; with
    /// `keeps`, keeps what the allocator offers to the streams' returns.
    #[derive(Default)]
    struct Dev {
        segments: AtomicU64,
        enqueued: [AtomicU64; 3],
        done: [AtomicU64; 3],
        asked: AtomicUsize,
        keeps: bool,
        /// Every fence fails to record.
        no_fences: bool,
        /// With `no_fences`: no stream ever finishes when waited for.
        stuck: bool,
        kept: chorus_sync::Mutex<Vec<Block>>,
        /// Segments given back, in order.
        freed: chorus_sync::Mutex<Vec<u64>>,
    }

    impl MemoryDevice for Dev {
        type Segment = u64;
        type Fence = (StreamId, u64);
        fn alloc_segment(&self, _: usize) -> std::result::Result<(u64, DevicePtr), BackendError> {
            let id = self.segments.fetch_add(1, Relaxed);
            Ok((id, DevicePtr(id << 32)))
        }
        unsafe fn free_segment(&self, s: u64) {
            self.freed.lock().unwrap().push(s);
        }
        fn record_fence(&self, s: StreamId) -> Option<(StreamId, u64)> {
            if self.no_fences {
                return None;
            }
            Some((s, self.enqueued[s.index()].load(Relaxed)))
        }
        fn fence_done(&self, f: &(StreamId, u64)) -> bool {
            self.asked.fetch_add(1, Relaxed);
            self.done[f.0.index()].load(Relaxed) >= f.1
        }
        fn drop_fence(&self, _: (StreamId, u64)) {}
        fn wait_stream(&self, s: StreamId) -> bool {
            if self.stuck {
                return false;
            }
            self.done[s.index()].store(self.enqueued[s.index()].load(Relaxed), Relaxed);
            true
        }
        fn synchronize_all(&self) {
            for s in 0..3 {
                self.done[s].store(self.enqueued[s].load(Relaxed), Relaxed);
            }
        }
        fn reclaim_thread_caches(&self) {}
        fn keep(&self, block: Block) -> std::result::Result<(), Block> {
            if !self.keeps {
                return Err(block);
            }
            self.kept.lock().unwrap().push(block);
            Ok(())
        }
    }

    const A: StreamId = StreamId::new(1);
    const B: StreamId = StreamId::new(2);

    fn id() -> DeviceId {
        DeviceId {
            backend: "test",
            ordinal: 0,
            instance: 0,
        }
    }

    /// Frees `n` blocks of A that stream B also used, each after one more item of B's work.
    fn defer_on_b(alloc: &Allocator<u64, (StreamId, u64)>, dev: &Dev, n: usize) {
        for _ in 0..n {
            let b = alloc.alloc(dev, 4096, A).unwrap();
            dev.enqueued[B.index()].fetch_add(1, Relaxed);
            alloc.count_bytes_in(&b);
            alloc.count_free();
            alloc.release(dev, b, &[A, B]);
        }
    }

    #[test]
    fn a_free_whose_fence_cannot_be_recorded_waits_for_the_stream_instead() {
        let dev = Dev {
            no_fences: true,
            ..Dev::default()
        };
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        defer_on_b(&alloc, &dev, 3);
        // B was waited for at each free: every block is free at once, none deferred.
        let p = alloc.pools.lock();
        assert!(p.deferred.is_empty());
        drop(p);
        assert_eq!(dev.done[B.index()].load(Relaxed), 3);
        let stats = alloc.stats((0, 0));
        assert_eq!((stats.allocated_bytes, stats.deferred_frees), (0, 0));
        // The memory is reused: three more blocks come from the same segment.
        for _ in 0..3 {
            let _ = alloc.alloc(&dev, 4096, A).unwrap();
        }
        assert_eq!(dev.segments.load(Relaxed), 1);
        // A stream that never finishes keeps its block until teardown, as before.
        let dev = Dev {
            no_fences: true,
            stuck: true,
            ..Dev::default()
        };
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        defer_on_b(&alloc, &dev, 1);
        let p = alloc.pools.lock();
        assert_eq!(p.deferred.len(), 1);
        assert_eq!(p.deferred[0].seq, NEVER);
    }

    #[test]
    fn a_poll_asks_about_one_unfinished_event_per_stream() {
        let dev = Dev::default();
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        defer_on_b(&alloc, &dev, 10);
        // Ten deferred frees wait for B, which finished nothing: the first one's event is
        // asked about, and the nine behind it on the same stream are not.
        dev.asked.store(0, Relaxed);
        let _ = alloc.alloc(&dev, 4096, A).unwrap();
        assert_eq!(
            dev.asked.load(Relaxed),
            1,
            "one question for ten unfinished frees on B"
        );
        // B finishes its first four items: four blocks come back, in the order freed.
        dev.done[B.index()].store(4, Relaxed);
        let _ = alloc.alloc(&dev, 4096, A).unwrap();
        let stats = alloc.stats((0, 0));
        assert_eq!(stats.deferred_frees, 10);
        let p = alloc.pools.lock();
        assert_eq!(p.deferred.len(), 6);
        let waits: Vec<u64> = p.deferred.iter().map(|d| (d.events[0].1).1).collect();
        assert_eq!(
            waits,
            [5, 6, 7, 8, 9, 10],
            "the unfinished ones keep their order"
        );
    }

    #[test]
    fn a_finished_deferred_block_goes_to_its_streams_returns_unless_that_stream_allocates() {
        let dev = Dev {
            keeps: true,
            ..Dev::default()
        };
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        defer_on_b(&alloc, &dev, 2);
        dev.synchronize_all();
        // Stream B allocates: A's finished blocks go to A's returns, not to the pools.
        let b = alloc.alloc(&dev, 4096, B).unwrap();
        let kept = dev.kept.lock().unwrap().clone();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|k| k.stream == A && k.size == 4096));
        assert!(kept.iter().all(|k| k.ptr != b.ptr));
        assert!(alloc.pools.lock().deferred.is_empty());
        // Stream A allocating finds its own finished deferred block in the pools instead.
        defer_on_b(&alloc, &dev, 1);
        dev.synchronize_all();
        let freed = alloc.pools.lock().deferred[0].offset;
        let again = alloc.alloc(&dev, 4096, A).unwrap();
        assert_eq!(again.offset, freed, "reused in place");
        assert_eq!(dev.kept.lock().unwrap().len(), 2, "nothing more kept");
    }

    #[test]
    fn running_out_releases_finished_deferred_blocks_instead_of_keeping_them() {
        let dev = Dev {
            keeps: true,
            ..Dev::default()
        };
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, Some(4 << 20));
        // One small segment (2 MiB) whose blocks wait for B's work.
        defer_on_b(&alloc, &dev, 3);
        assert_eq!(alloc.stats((0, 0)).reserved_bytes, 2 << 20);
        // B asks for 3 MiB: under the 4 MiB limit only once that segment is released, which
        // its blocks allow once B's work is done (the synchronization of running out). Kept
        // in A's returns instead, they would hold it.
        let big = alloc.alloc(&dev, 3 << 20, B).unwrap();
        assert_eq!(big.size, 3 << 20);
        assert!(dev.kept.lock().unwrap().is_empty(), "nothing kept");
        assert_eq!(alloc.stats((0, 0)).reserved_bytes, 3 << 20);
    }

    #[test]
    fn a_request_near_usize_max_is_out_of_memory_not_an_overflow() {
        let dev = Dev::default();
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, Some(4 << 20));
        // Something reserved, so that the limit check adds to a non-zero total.
        alloc.alloc(&dev, 4096, A).unwrap();
        match alloc.alloc(&dev, usize::MAX - (1 << 21), A) {
            Err(Error::OutOfMemory { .. } | Error::SizeOverflow { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn closing_keeps_blocks_freed_after_the_idle_snapshot() {
        let dev = Dev::default();
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        // The shutdown took its snapshot and saw every stream idle; then a thread that had
        // passed its open check enqueued work on A reading a large block, and dropped the
        // block. Closing with the snapshot keeps that block's segment.
        let free = |b: Block| {
            alloc.count_bytes_in(&b);
            alloc.count_free();
            alloc.release(&dev, b, &[A]);
        };
        // Blocks above the large class: a segment each.
        let early = alloc.alloc(&dev, 12 << 20, A).unwrap();
        free(early);
        let late = alloc.alloc(&dev, 16 << 20, A).unwrap();
        let upto = alloc.free_seq();
        dev.enqueued[A.index()].fetch_add(1, Relaxed);
        free(late);
        alloc.close(&dev, Some(upto));
        assert_eq!(
            *dev.freed.lock().unwrap(),
            [0],
            "only the first segment went back, not the one A's work may still read"
        );
        assert_eq!(
            alloc.stats((0, 0)).reserved_bytes,
            16 << 20,
            "the block freed before the snapshot went back, the late one stays"
        );
    }

    #[test]
    fn deferred_blocks_are_reused_once_their_streams_finish() {
        let dev = Dev::default();
        let alloc: Allocator<u64, (StreamId, u64)> = Allocator::new(id(), 3, None);
        defer_on_b(&alloc, &dev, 3);
        let reserved = alloc.stats((0, 0)).reserved_bytes;
        dev.synchronize_all();
        // All three blocks are free again: three more allocations need no new memory.
        let blocks: Vec<Block> = (0..3)
            .map(|_| alloc.alloc(&dev, 4096, A).unwrap())
            .collect();
        assert_eq!(alloc.stats((0, 0)).reserved_bytes, reserved);
        assert!(alloc.pools.lock().deferred.is_empty());
        drop(blocks);
    }
}
