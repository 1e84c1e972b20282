//! The allocator's view of a runtime: segments from the backend, fences from the event pool.

use super::Runtime;
use crate::alloc::MemoryDevice;
use crate::backend::Backend;
use crate::error::BackendError;
use crate::faults::FaultSite;
use crate::kernel::DevicePtr;
use crate::stream::StreamId;

impl<B: Backend> MemoryDevice for Runtime<B> {
    type Segment = B::Segment;
    type Fence = B::Event;

    fn reclaim_thread_caches(&self) {
        self.flush_caches(false);
    }

    fn keep(&self, block: crate::alloc::Block) -> Result<(), crate::alloc::Block> {
        // After shutdown the returns are closed: `put` hands the block back.
        self.returns.put(block)
    }

    fn alloc_segment(&self, bytes: usize) -> Result<(B::Segment, DevicePtr), BackendError> {
        // An injected failure is what a device allocation that fails says: out of memory.
        self.inject(FaultSite::Alloc).map_err(|e| match e {
            BackendError::Injected { .. } => BackendError::OutOfMemory { bytes },
            e => e,
        })?;
        self.backend.alloc_segment(bytes)
    }

    unsafe fn free_segment(&self, seg: B::Segment) {
        // SAFETY: forwarded from the caller (the allocator's fence protocol).
        unsafe { self.backend.free_segment(seg) }
    }

    fn record_fence(&self, stream: StreamId) -> Option<B::Event> {
        let s = self.streams.get(stream.index())?;
        let (ev, _id) = self
            .events
            .acquire(false, || self.backend.create_event(false))
            .ok()?;
        match (self.inject(FaultSite::Record)).and_then(|()| self.backend.record(&ev, s)) {
            Ok(()) => Some(ev),
            Err(e) => {
                if let BackendError::Lost { cause } = e {
                    self.lose(cause);
                }
                self.drop_fence(ev);
                None
            }
        }
    }

    fn wait_stream(&self, stream: StreamId) -> bool {
        self.settle_stream(stream)
    }

    fn fence_done(&self, fence: &B::Event) -> bool {
        // An event the device cannot answer for is treated as never done: its block is kept.
        self.backend.query(fence).unwrap_or(false)
    }

    fn drop_fence(&self, fence: B::Event) {
        self.events
            .release(fence, false, |e| self.backend.reset_event(e));
    }

    fn synchronize_all(&self) {
        self.wait_all(None);
    }

    fn settle(&self) -> bool {
        self.wait_all(Some(self.config.shutdown_timeout)).is_empty()
    }
}
