//! The `IndexSelect` kernel: gather along the middle axis, `out[o, k, i] = src[o, indices[k], i]`
//! for the contiguous `[outer, n, inner]` source and `[outer, count, inner]` output.
//!
//! Elements are moved as opaque 2-, 4- or 8-byte words, so every dtype of a given size shares one
//! path; each selected slab of `inner` elements is one `copy_nonoverlapping` (a single word move
//! when `inner == 1`). Every index is checked before anything is written: one outside `0..n`
//! panics with a message naming it, which the stream worker turns into a sticky stream error.

use super::mem::{slice, slice_mut};
use chorus_core::kernel::IndexSelect;

/// Gathers `count` slabs per outer index.
///
/// # Safety
/// `src` is readable, aligned `dtype` for `outer * n * inner` elements, `indices` readable,
/// aligned i64 for `count`; `out` is valid and aligned for `outer * count * inner` writes of
/// `dtype`, overlaps no input and is not otherwise accessed during the call.
///
/// # Panics
/// On an index outside `0..n`, and on an element size this backend has no word for.
pub(super) unsafe fn index_select(k: &IndexSelect) {
    let n = k.n;
    // SAFETY: caller's contract: `count` readable i64, not written during the call.
    let indices = unsafe { slice::<i64>(k.indices, k.count) };
    let rows: Vec<usize> = indices
        .iter()
        .map(|&i| match usize::try_from(i) {
            Ok(r) if r < n => r,
            _ => panic!("index_select: index {i} is out of range for a dimension of size {n}"),
        })
        .collect();

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

/// [`index_select`] with checked `rows` and `T` a word of the element size.
///
/// # Safety
/// As [`index_select`], with every row below `n`.
unsafe fn gather<T: Copy>(k: &IndexSelect, rows: &[usize]) {
    let (n, inner) = (k.n, k.inner);
    // SAFETY: caller's contract: `outer * n * inner` readable words, not written during the call.
    let src = unsafe { slice::<T>(k.src, k.src_len()) };
    // SAFETY: caller's contract: `outer * count * inner` writable, unaliased words.
    let out = unsafe { slice_mut::<T>(k.out, k.out_len()) };
    if out.is_empty() {
        return;
    }
    let blocks = src
        .chunks_exact(n * inner)
        .zip(out.chunks_exact_mut(rows.len() * inner));
    for (x, y) in blocks {
        if inner == 1 {
            for (o, &r) in y.iter_mut().zip(rows) {
                *o = x[r];
            }
        } else {
            for (slab, &r) in y.chunks_exact_mut(inner).zip(rows) {
                slab.copy_from_slice(&x[r * inner..][..inner]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use chorus_core::kernel::Kernel;
    use chorus_core::DType;

    fn run<T: Copy + Default>(
        src: &[T],
        idx: &[i64],
        [outer, n, inner]: [usize; 3],
        dtype: DType,
    ) -> Vec<T> {
        assert_eq!(src.len(), outer * n * inner);
        let mut out = vec![T::default(); outer * idx.len() * inner];
        let kernel = Kernel::IndexSelect(chorus_core::kernel::IndexSelect {
            src: ptr(src),
            indices: ptr(idx),
            out: ptr_mut(&mut out),
            outer,
            n,
            inner,
            count: idx.len(),
            dtype,
        });
        // SAFETY: `src` holds `outer * n * inner` elements, `idx` `count`, `out` the output size.
        unsafe { execute(&kernel) };
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
    #[should_panic(expected = "index 5 is out of range for a dimension of size 5")]
    fn index_past_the_end_panics() {
        run(&[0.0f32; 10], &[1, 5], [2, 5, 1], DType::F32);
    }

    #[test]
    #[should_panic(expected = "index -1 is out of range for a dimension of size 3")]
    fn negative_index_panics() {
        run(&[0i64; 3], &[0, -1], [1, 3, 1], DType::I64);
    }

    #[test]
    #[should_panic(expected = "index 0 is out of range for a dimension of size 0")]
    fn any_index_into_an_empty_dimension_panics() {
        run::<f32>(&[], &[0], [2, 0, 3], DType::F32);
    }
}
