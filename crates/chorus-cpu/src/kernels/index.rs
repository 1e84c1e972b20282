//! The `IndexSelect` kernel: gather along the middle axis, `out[o, k, i] = src[o, indices[k], i]`
//! for the contiguous `[outer, n, inner]` source and `[outer, count, inner]` output.
//!
//! Elements are moved as opaque 2-, 4- or 8-byte words, so every dtype of a given size shares one
//! path; each selected slab of `inner` elements is one `copy_nonoverlapping` (a single word move
//! when `inner == 1`). An index outside `0..n` is never read through: its slabs are zeroed and
//! the first such index is reported in the launch's fault word (`FaultWord`'s protocol; the
//! kernel runs on one thread, so the word is written once), which poisons the output.

use super::mem::{host, slice, slice_mut};
use chorus_core::kernel::{FaultWord, IndexSelect};
// sync-shim: allowed (a fault word: device memory written by a kernel, read by the host later)
use std::sync::atomic::{AtomicU64, Ordering};

/// Gathers `count` slabs per outer index.
///
/// # Safety
/// `src` is readable, aligned `dtype` for `outer * n * inner` elements, `indices` readable,
/// aligned i64 for `count`; `out` is valid and aligned for `outer * count * inner` writes of
/// `dtype`, overlaps no input and is not otherwise accessed during the call; `fault` is a
/// fault word (16 bytes, 8-byte aligned) that only this launch writes.
///
/// # Panics
/// On an element size this backend has no word for (the op front-end has none).
pub(super) unsafe fn index_select(k: &IndexSelect) {
    if k.out_len() == 0 {
        // No element is selected: nothing is read, and no index is checked (as on CUDA).
        return;
    }
    let n = k.n;
    // SAFETY: caller's contract: `count` readable i64, not written during the call.
    let indices = unsafe { slice::<i64>(k.indices, k.count) };
    let mut bad = None;
    let rows: Vec<Option<usize>> = indices
        .iter()
        .map(|&i| match usize::try_from(i) {
            Ok(r) if r < n => Some(r),
            _ => {
                bad.get_or_insert(i);
                None
            }
        })
        .collect();
    if let Some(i) = bad {
        // SAFETY: caller's contract: the fault word is 16 aligned bytes of this launch.
        unsafe { report(k, i) };
    }

    // SAFETY: caller's contract, with the element type replaced by a same-size word (the
    // alignment of u16/u32/u64 is that of f16/bf16, f32 and i64); every row is below `n`.
    unsafe {
        match k.dtype.size() {
            2 => gather::<u16>(k, &rows),
            4 => gather::<u32>(k, &rows),
            8 => gather::<u64>(k, &rows),
            size => panic!("index_select: no {size}-byte element type on the CPU backend"),
        }
    }
}

/// Records the bad index `i` in the launch's fault word (`FaultWord`'s protocol).
///
/// # Safety
/// `k.fault` is valid and 8-byte aligned for 16 bytes that only this launch writes.
unsafe fn report(k: &IndexSelect, i: i64) {
    let word = host::<u64>(k.fault);
    // SAFETY: caller's contract; the host reads the word only after this kernel has run
    // (stream order), and atomics keep the protocol the same as on a parallel device.
    let (state, value) = unsafe { (AtomicU64::from_ptr(word), AtomicU64::from_ptr(word.add(1))) };
    if state
        .compare_exchange(0, FaultWord::CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        value.store(i as u64, Ordering::Relaxed);
        state.store(FaultWord::FAILED, Ordering::Release);
    }
}

/// [`index_select`] with checked `rows` (`None`: out of range, zeros) and `T` a word of the
/// element size.
///
/// # Safety
/// As [`index_select`]; every `Some` row is below `n`.
unsafe fn gather<T: Copy + Default>(k: &IndexSelect, rows: &[Option<usize>]) {
    let (n, inner) = (k.n, k.inner);
    // SAFETY: caller's contract: `outer * n * inner` readable words, not written during the call.
    let src = unsafe { slice::<T>(k.src, k.src_len()) };
    // SAFETY: caller's contract: `outer * count * inner` writable, unaliased words.
    let out = unsafe { slice_mut::<T>(k.out, k.out_len()) };
    if out.is_empty() {
        return;
    }
    if n == 0 {
        // Every index is out of range of an empty dimension: all zeros.
        out.fill(T::default());
        return;
    }
    let blocks = src
        .chunks_exact(n * inner)
        .zip(out.chunks_exact_mut(rows.len() * inner));
    for (x, y) in blocks {
        if inner == 1 {
            for (o, &r) in y.iter_mut().zip(rows) {
                *o = r.map_or_else(T::default, |r| x[r]);
            }
        } else {
            for (slab, &r) in y.chunks_exact_mut(inner).zip(rows) {
                match r {
                    Some(r) => slab.copy_from_slice(&x[r * inner..][..inner]),
                    None => slab.fill(T::default()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use chorus_core::kernel::{FaultWord, Kernel};
    use chorus_core::DType;

    /// The output and the fault word's report.
    fn run_checked<T: Copy + Default>(
        src: &[T],
        idx: &[i64],
        [outer, n, inner]: [usize; 3],
        dtype: DType,
    ) -> (Vec<T>, Option<i64>) {
        assert_eq!(src.len(), outer * n * inner);
        let mut out = vec![T::default(); outer * idx.len() * inner];
        let mut fault = [0u64; 2];
        let kernel = Kernel::IndexSelect(chorus_core::kernel::IndexSelect {
            src: ptr(src),
            indices: ptr(idx),
            out: ptr_mut(&mut out),
            outer,
            n,
            inner,
            count: idx.len(),
            dtype,
            fault: ptr_mut(&mut fault),
        });
        // SAFETY: `src` holds `outer * n * inner` elements, `idx` `count`, `out` the output
        // size; `fault` is 16 aligned bytes.
        unsafe { execute(&kernel) };
        let bytes: Vec<u8> = fault.iter().flat_map(|w| w.to_le_bytes()).collect();
        (out, FaultWord::decode(&bytes))
    }

    fn run<T: Copy + Default>(src: &[T], idx: &[i64], dims: [usize; 3], dtype: DType) -> Vec<T> {
        let (out, fault) = run_checked(src, idx, dims, dtype);
        assert_eq!(fault, None);
        out
    }

    /// Naive reference: element by element.
    fn reference<T: Copy>(src: &[T], idx: &[i64], [outer, n, inner]: [usize; 3]) -> Vec<T> {
        let mut out = Vec::new();
        for o in 0..outer {
            for &k in idx {
                out.extend((0..inner).map(|i| src[(o * n + k as usize) * inner + i]));
            }
        }
        out
    }

    #[test]
    fn gathers_every_dtype_and_shape() {
        let mut rng = Rng::new(41);
        let cases: &[([usize; 3], &[i64])] = &[
            ([1, 10, 1], &[3, 0, 9, 3]),
            ([3, 5, 1], &[4, 4, 0]),
            ([2, 6, 7], &[5, 1, 2, 0, 5]), // embedding-like rows
            ([1, 4, 16], &[2]),
            ([4, 3, 2], &[]),
            ([0, 3, 2], &[1]),
            ([2, 3, 0], &[2, 1]),
            ([1, 1, 1], &[0, 0, 0]),
        ];
        for &(dims, idx) in cases {
            let len = dims.iter().product();
            let f = rng.f32s(len);
            let i = rng.i64s(len);
            let h: Vec<u16> = (0..len as u16).map(|v| v.wrapping_mul(7)).collect();
            assert_eq!(
                run(&f, idx, dims, DType::F32),
                reference(&f, idx, dims),
                "{dims:?}"
            );
            assert_eq!(
                run(&i, idx, dims, DType::I64),
                reference(&i, idx, dims),
                "{dims:?}"
            );
            assert_eq!(
                run(&h, idx, dims, DType::BF16),
                reference(&h, idx, dims),
                "{dims:?}"
            );
        }
    }

    #[test]
    fn a_bad_index_is_reported_in_the_fault_word_and_its_rows_are_zero() {
        let src: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        let (out, fault) = run_checked(&src, &[1, 5, 0], [2, 5, 1], DType::F32);
        assert_eq!(out, vec![2.0, 0.0, 1.0, 7.0, 0.0, 6.0]);
        assert_eq!(fault, Some(5));
        // The first bad index is the one reported.
        let (out, fault) = run_checked(&[3i64, 4, 5], &[0, -1, 7], [1, 3, 1], DType::I64);
        assert_eq!((out, fault), (vec![3, 0, 0], Some(-1)));
        let (out, fault) = run_checked::<f32>(&[], &[0], [2, 0, 3], DType::F32);
        assert_eq!((out, fault), (vec![0.0; 6], Some(0)));
        // An index that selects no element is not checked.
        let (out, fault) = run_checked::<f32>(&[], &[9], [2, 5, 0], DType::F32);
        assert_eq!((out, fault), (vec![], None));
        // Slabs of several elements are zeroed whole.
        let (out, fault) = run_checked(&[1u16, 2, 3, 4], &[2, 1], [1, 2, 2], DType::BF16);
        assert_eq!((out, fault), (vec![0, 0, 3, 4], Some(2)));
    }
}
