//! Allocator deferred free: a block freed while stream A still reads it is never handed to
//! stream B before A's read has completed. Block memory is a loom cell, so an early hand-out
//! makes B's write race A's read, which loom reports.

use crate::alloc::{Allocator, Block, MemoryDevice};
use crate::error::{BackendError, DeviceId};
use crate::kernel::DevicePtr;
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicU64, Ordering};
use chorus_sync::cell::UnsafeCell;
use chorus_sync::{thread, Arc, Mutex};

/// Model device memory: one loom cell, shared like device memory is.
struct Mem(UnsafeCell<u64>);
// SAFETY (model): sharing is the point; loom checks every access through the cell.
unsafe impl Sync for Mem {}
// SAFETY (model): as above.
unsafe impl Send for Mem {}

const A: StreamId = StreamId::new(1);
const B: StreamId = StreamId::new(2);

/// Two streams whose work is modeled by threads: `done[s]` counts completed work items of
/// stream `s` (Release), `enqueued[s]` the items handed to it. Segments are 512-byte cells.
struct Dev {
    mem: Mutex<Vec<Arc<Mem>>>,
    enqueued: [AtomicU64; 3],
    done: [AtomicU64; 3],
    /// What the allocator handed to the streams' returns (`MemoryDevice::keep`).
    kept: Mutex<Vec<Block>>,
}

impl Dev {
    fn cell(&self, ptr: DevicePtr) -> Arc<Mem> {
        self.mem.lock().unwrap()[(ptr.0 / 512) as usize].clone()
    }
}

impl MemoryDevice for Dev {
    type Segment = Arc<Mem>;
    type Fence = (StreamId, u64);
    fn reclaim_thread_caches(&self) {}
    fn alloc_segment(&self, bytes: usize) -> Result<(Self::Segment, DevicePtr), BackendError> {
        assert_eq!(
            bytes, 512,
            "the model's limit makes every segment one block"
        );
        let mut m = self.mem.lock().unwrap();
        let cell = Arc::new(Mem(UnsafeCell::new(0)));
        m.push(cell.clone());
        Ok((cell, DevicePtr((m.len() as u64 - 1) * 512)))
    }
    unsafe fn free_segment(&self, seg: Self::Segment) {
        // Giving memory back is a write as far as a still-running reader is concerned.
        // SAFETY (model): loom flags it if it can overlap a read.
        seg.0.with_mut(|p| unsafe { *p = 0xdead });
    }
    fn record_fence(&self, stream: StreamId) -> Option<(StreamId, u64)> {
        Some((
            stream,
            self.enqueued[stream.index()].load(Ordering::Acquire),
        ))
    }
    fn fence_done(&self, f: &(StreamId, u64)) -> bool {
        self.done[f.0.index()].load(Ordering::Acquire) >= f.1
    }
    fn drop_fence(&self, _: (StreamId, u64)) {}
    fn wait_stream(&self, s: StreamId) -> bool {
        while self.done[s.index()].load(Ordering::Acquire)
            < self.enqueued[s.index()].load(Ordering::Acquire)
        {
            thread::yield_now();
        }
        true
    }
    fn keep(&self, block: Block) -> Result<(), Block> {
        self.kept.lock().unwrap().push(block);
        Ok(())
    }
    fn synchronize_all(&self) {
        for s in 0..3 {
            while self.done[s].load(Ordering::Acquire) < self.enqueued[s].load(Ordering::Acquire) {
                thread::yield_now();
            }
        }
    }
}

fn device() -> Arc<Dev> {
    Arc::new(Dev {
        mem: Mutex::new(Vec::new()),
        enqueued: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        done: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        kept: Mutex::new(Vec::new()),
    })
}

fn id() -> DeviceId {
    DeviceId {
        backend: "loom",
        ordinal: 0,
        instance: 0,
    }
}

/// Enqueues a read of `ptr` on stream `s`: a thread that reads the cell, then counts the item done.
fn read_on(dev: &Arc<Dev>, s: StreamId, ptr: DevicePtr) -> thread::JoinHandle<u64> {
    dev.enqueued[s.index()].fetch_add(1, Ordering::AcqRel);
    let (dev, cell) = (dev.clone(), dev.cell(ptr));
    thread::spawn(move || {
        // SAFETY (model): a read that must not overlap any write of another stream.
        let v = cell.0.with(|p| unsafe { *p });
        dev.done[s.index()].fetch_add(1, Ordering::Release);
        v
    })
}

#[test]
fn freed_block_waits_for_reader_before_other_stream() {
    loom::model(|| {
        let dev = device();
        // Room for exactly one block: B can only get memory by reusing A's block.
        let alloc: Allocator<Arc<Mem>, (StreamId, u64)> = Allocator::new(id(), 3, Some(512));
        let b1 = alloc.alloc(&*dev, 512, A).unwrap();
        let reader = read_on(&dev, A, b1.ptr());
        alloc.count_bytes_in(&b1);
        alloc.count_free();
        alloc.release(&*dev, b1, &[A]);
        // B gets either A's block (once A's read is fenced) or a fresh segment after A's was
        // released (also only once fenced); either way after the read.
        let b2 = alloc.alloc(&*dev, 512, B).unwrap();
        // SAFETY (model): B's write; loom flags it if it can overlap A's read.
        dev.cell(b2.ptr()).0.with_mut(|p| unsafe { *p = 7 });
        assert_eq!(
            reader.join().unwrap(),
            0,
            "A read the value it was meant to read"
        );
    });
}

#[test]
fn block_used_by_two_streams_is_deferred_until_both_finish() {
    loom::model(|| {
        let dev = device();
        let alloc: Allocator<Arc<Mem>, (StreamId, u64)> = Allocator::new(id(), 3, Some(512));
        let b1 = alloc.alloc(&*dev, 512, A).unwrap();
        // Stream B also reads the block (the tensor layer adds B to its users).
        let rb = read_on(&dev, B, b1.ptr());
        alloc.count_bytes_in(&b1);
        alloc.count_free();
        alloc.release(&*dev, b1, &[A, B]);
        // Even the owner stream A must wait for B's read before reusing it.
        let b2 = alloc.alloc(&*dev, 512, A).unwrap();
        // SAFETY (model): A's write after the deferred free.
        dev.cell(b2.ptr()).0.with_mut(|p| unsafe { *p = 9 });
        assert_eq!(rb.join().unwrap(), 0);
    });
}

#[test]
fn a_block_kept_for_its_stream_waits_for_the_other_streams_read() {
    loom::model(|| {
        let dev = device();
        // Two blocks' worth: stream 0 can allocate without taking A's block.
        let alloc: Allocator<Arc<Mem>, (StreamId, u64)> = Allocator::new(id(), 3, Some(1024));
        let b1 = alloc.alloc(&*dev, 512, A).unwrap();
        // Stream B reads A's block; A frees it (deferred on B's read).
        let rb = read_on(&dev, B, b1.ptr());
        alloc.count_bytes_in(&b1);
        alloc.count_free();
        alloc.release(&*dev, b1, &[A, B]);
        // Another stream allocates: its poll may find B's read done and hand the block to A's
        // returns (or leave it deferred if not).
        let _other = alloc.alloc(&*dev, 512, StreamId::DEFAULT).unwrap();
        let kept = dev.kept.lock().unwrap().pop();
        if let Some(k) = kept {
            assert_eq!(k.stream(), A);
            // A reuses its returned block at once: its write must come after B's read.
            // SAFETY (model): A's write; loom flags it if it can overlap B's read.
            dev.cell(k.ptr()).0.with_mut(|p| unsafe { *p = 5 });
        }
        assert_eq!(
            rb.join().unwrap(),
            0,
            "B read the value it was meant to read"
        );
    });
}
