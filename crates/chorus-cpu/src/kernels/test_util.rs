//! Helpers for the kernel unit tests: Vec-backed device pointers, a small deterministic random
//! generator and naive strided indexing.

use chorus_core::kernel::{DevicePtr, View};

/// The device address of a slice's first element (inputs).
pub(crate) fn ptr<T>(s: &[T]) -> DevicePtr {
    DevicePtr(s.as_ptr() as usize as u64)
}

/// The device address of a slice's first element (outputs).
pub(crate) fn ptr_mut<T>(s: &mut [T]) -> DevicePtr {
    DevicePtr(s.as_mut_ptr() as usize as u64)
}

/// A view of `data` starting `offset` elements in.
pub(crate) fn view<T>(data: &[T], offset: usize, shape: &[usize], strides: &[usize]) -> View {
    View {
        ptr: ptr(&data[offset..]),
        shape: shape.to_vec(),
        strides: strides.to_vec(),
    }
}

/// Multi-index of the `i`-th element of `shape` in row-major order.
pub(crate) fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Offset of multi-index `idx` under `strides`.
pub(crate) fn offset(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// For each element of `shape` without `dims` (row-major), the elements of the contiguous `src`
/// of `shape` whose kept coordinates match it, in row-major order: what a reduction over `dims`
/// combines.
pub(crate) fn reduced_groups<T: Copy>(src: &[T], shape: &[usize], dims: &[usize]) -> Vec<Vec<T>> {
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    let out_shape: Vec<usize> = kept.iter().map(|&d| shape[d]).collect();
    let mut groups = vec![Vec::new(); out_shape.iter().product()];
    for (i, &x) in src.iter().enumerate() {
        let idx = unravel(i, shape);
        let o = kept.iter().fold(0, |o, &d| o * shape[d] + idx[d]);
        groups[o].push(x);
    }
    groups
}

/// SplitMix64: a tiny deterministic generator for test data.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform f32 in [-1, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` uniform f32 in [-1, 1).
    pub(crate) fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }

    /// `n` i64 in [-100, 100].
    pub(crate) fn i64s(&mut self, n: usize) -> Vec<i64> {
        (0..n)
            .map(|_| (self.next_u64() % 201) as i64 - 100)
            .collect()
    }
}
