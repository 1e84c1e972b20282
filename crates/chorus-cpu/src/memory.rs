//! Aligned host memory segments.

use chorus_core::{BackendError, DevicePtr};
use std::alloc::Layout;
use std::ptr::NonNull;

/// Alignment of every segment (cache lines and the widest SIMD loads).
pub(crate) const ALIGN: usize = 256;

// sync-shim: allowed (a static counter outside every loom model; loom atomics cannot be statics)
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Bytes held in segments by every CPU device of the process (a plain std atomic: a
/// process-wide statistic outside every loom model).
static SEGMENT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of host memory that every CPU device of the process holds in segments now: the sum of
/// their [`MemoryStats::reserved_bytes`](chorus_core::MemoryStats::reserved_bytes), plus what
/// devices whose work never finished left leaked at teardown.
pub fn segment_bytes() -> usize {
    SEGMENT_BYTES.load(Relaxed)
}

/// A host allocation owned by the runtime's allocator.
#[derive(Debug)]
pub struct Segment {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a Segment is a uniquely owned heap allocation with no thread affinity; access to its
// bytes is synchronized by the runtime's stream-ordering protocol, not by this handle.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` gives no access to the bytes.
unsafe impl Sync for Segment {}

impl Segment {
    pub(crate) fn alloc(bytes: usize) -> Result<(Segment, DevicePtr), BackendError> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|_| BackendError::OutOfMemory { bytes })?;
        // Zeroed, so that reading a tensor made by `Tensor::empty` never reads uninitialized memory.
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(BackendError::OutOfMemory { bytes })?;
        SEGMENT_BYTES.fetch_add(layout.size(), Relaxed);
        Ok((Segment { ptr, layout }, DevicePtr(raw as usize as u64)))
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc` with exactly this layout and is freed only here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        SEGMENT_BYTES.fetch_sub(self.layout.size(), Relaxed);
    }
}
