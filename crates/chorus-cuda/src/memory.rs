//! Device segments (`cuMemAlloc`, split by the core's caching allocator) and page-locked host
//! buffers (`cuMemHostAlloc`) for staging reads.

use crate::driver::{check, Context};
use chorus_core::{BackendError, BackendResult, DevicePtr};
use chorus_sync::Arc;
use cudarc::driver::sys::{self, CUresult};

/// One `cuMemAlloc` allocation; the core's allocator splits it into blocks.
#[derive(Debug)]
pub struct Segment {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<Context>,
}

impl Segment {
    /// Allocates `bytes` of device memory (the driver aligns to at least 256 bytes).
    pub(crate) fn alloc(ctx: &Arc<Context>, bytes: usize) -> BackendResult<(Segment, DevicePtr)> {
        ctx.bind()?;
        let mut ptr = 0;
        // SAFETY: the context is current; writes one device pointer.
        match unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(1)) } {
            CUresult::CUDA_SUCCESS => {}
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => return Err(BackendError::OutOfMemory { bytes }),
            other => check(other, "cuMemAlloc")?,
        }
        let segment = Segment {
            ptr,
            bytes,
            ctx: Arc::clone(ctx),
        };
        Ok((segment, DevicePtr(ptr)))
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Whether the segment is empty (never: segments have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once; the runtime
            // frees a segment only when no enqueued work uses it (Backend::free_segment).
            let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// Page-locked host memory (a stream's staging buffer for reads).
#[derive(Debug)]
pub(crate) struct Pinned {
    host: *mut u8,
    bytes: usize,
    ctx: Arc<Context>,
}

// SAFETY: the buffer is plain host memory owned by this value; every access goes through
// its owner's lock (a stream's staging buffer).
unsafe impl Send for Pinned {}
// SAFETY: as above.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// Allocates `bytes` of zeroed page-locked memory.
    pub(crate) fn alloc(ctx: &Arc<Context>, bytes: usize) -> BackendResult<Pinned> {
        ctx.bind()?;
        let mut host = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE;
        check(
            // SAFETY: the context is current; writes one host pointer to `bytes` bytes.
            unsafe { sys::cuMemHostAlloc(&mut host, bytes.max(1), flags) },
            "cuMemHostAlloc",
        )?;
        let host = host.cast::<u8>();
        // SAFETY: `host` points at `bytes` writable bytes that nothing else uses yet.
        unsafe { std::ptr::write_bytes(host, 0, bytes) };
        Ok(Pinned {
            host,
            bytes,
            ctx: Arc::clone(ctx),
        })
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes
    }

    /// The host address.
    pub(crate) fn host(&self) -> *mut u8 {
        self.host
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: allocated by cuMemHostAlloc and freed once; owners synchronize their
            // stream before dropping, so no copy into it is in flight.
            let _ = unsafe { sys::cuMemFreeHost(self.host.cast()) };
        }
    }
}
