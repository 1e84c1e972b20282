//! Host views of device addresses: the pointer and slice helpers every kernel file uses (a
//! leaf: it imports nothing from the kernels).

use chorus_core::kernel::DevicePtr;

/// The host pointer behind a CPU device address.
pub(super) fn host<T>(ptr: DevicePtr) -> *mut T {
    ptr.0 as usize as *mut T
}

/// The `len` elements at `ptr` as a shared slice (empty, touching nothing, when `len == 0`).
///
/// # Safety
/// When `len > 0`, `ptr` is valid and aligned for `len` reads of `T` and nobody writes them
/// during `'a`.
pub(super) unsafe fn slice<'a, T>(ptr: DevicePtr, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: caller's contract; `len > 0` so the pointer is a real, non-null allocation.
    unsafe { std::slice::from_raw_parts(host::<T>(ptr), len) }
}

/// The `len` elements at `ptr` as an exclusive slice (empty, touching nothing, when `len == 0`).
///
/// # Safety
/// When `len > 0`, `ptr` is valid and aligned for `len` writes of `T` and nobody else accesses
/// them during `'a`.
pub(super) unsafe fn slice_mut<'a, T>(ptr: DevicePtr, len: usize) -> &'a mut [T] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: caller's contract; `len > 0` so the pointer is a real, non-null allocation.
    unsafe { std::slice::from_raw_parts_mut(host::<T>(ptr), len) }
}
