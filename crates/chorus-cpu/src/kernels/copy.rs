//! The `Copy` kernel ([`StridedCopy`]): a strided gather of any view into a contiguous buffer,
//! or a strided view into a strided view of the same shape (e.g. into a region of a larger
//! tensor for concatenation). Elements are moved as opaque 2-, 4- or 8-byte words, so every dtype
//! of a given size shares one path; both views contiguous is one `memcpy`, otherwise the views
//! are coalesced and walked in segments (cache tiles when a view is read across rows).

use super::mem::host;
use super::strided::Layout;
use chorus_core::kernel::StridedCopy;

/// Copies `k.src` into `k.dst` (same shape): one `memcpy` when both are contiguous, otherwise
/// segment by segment over the coalesced views ([`StridedCopy::coalesced`]).
///
/// # Safety
/// `src` is readable and `dst` writable (both aligned for `dtype`) at every offset their shapes
/// and strides reach; `dst` overlaps neither `src` nor itself (no two of its indices share an
/// element) and is not otherwise accessed during the call.
///
/// # Panics
/// When the shapes differ or a stride list does not match its shape's rank.
pub(super) unsafe fn copy(k: &StridedCopy) {
    let (src, dst) = (&k.src, &k.dst);
    assert_eq!(src.shape, dst.shape, "copy: views of different shapes");
    let len = k.len();
    if len == 0 {
        return;
    }
    if src.is_contiguous() && dst.is_contiguous() {
        // SAFETY: two contiguous views of `len` elements: `len * size` bytes readable at
        // `src.ptr` and writable at `dst.ptr`, not overlapping (caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(
                host::<u8>(src.ptr),
                host::<u8>(dst.ptr),
                len * k.dtype.size(),
            )
        };
        return;
    }
    // SAFETY: caller's contract, with the element type replaced by a same-size word (the
    // alignment of u16/u32/u64 is that of f16/bf16, f32 and i64).
    unsafe {
        match k.dtype.size() {
            2 => strided::<u16>(k),
            4 => strided::<u32>(k),
            8 => strided::<u64>(k),
            size => panic!(
                "copy: no {size}-byte element type on the CPU backend ({})",
                k.dtype
            ),
        }
    }
}

/// Strided copy of `k.src` into `k.dst`, segment by segment.
///
/// # Safety
/// As [`copy`], with `T` of the size and alignment of the element type.
unsafe fn strided<T: Copy>(k: &StridedCopy) {
    let (shape, strides) = k.coalesced();
    let layout = Layout { shape, strides };
    let [ss, ds] = layout.row_strides();
    let (s, d) = (host::<T>(k.src.ptr).cast_const(), host::<T>(k.dst.ptr));
    // Every element is written once (the destination does not overlap itself), so segments may
    // come in any order.
    layout.for_each_segment(|[so, doff], n| {
        // SAFETY: `so + j * ss` (`doff + j * ds`) for `j < n` is the offset of an element of the
        // source (destination) view, readable (writable) by the caller's contract; the views do
        // not overlap.
        unsafe {
            let (s, d) = (s.add(so), d.add(doff));
            match (ss, ds) {
                (1, 1) => std::ptr::copy_nonoverlapping(s, d, n),
                (0, 1) => std::slice::from_raw_parts_mut(d, n).fill(*s),
                _ => {
                    for j in 0..n {
                        *d.add(j * ds) = *s.add(j * ss);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{offset, ptr_mut, unravel, view, Rng};
    use super::*;
    use chorus_core::kernel::{Kernel, View};
    use chorus_core::DType;

    /// Naive gather: element by element through the multi-index.
    fn naive<T: Copy>(data: &[T], start: usize, shape: &[usize], strides: &[usize]) -> Vec<T> {
        let len = shape.iter().product();
        (0..len)
            .map(|i| data[start + offset(&unravel(i, shape), strides)])
            .collect()
    }

    fn check<T: Copy + PartialEq + std::fmt::Debug + Default>(
        data: &[T],
        dtype: DType,
        start: usize,
        shape: &[usize],
        strides: &[usize],
    ) {
        let expect = naive(data, start, shape, strides);
        let mut out = vec![T::default(); expect.len()];
        let src = view(data, start, shape, strides);
        // SAFETY: the view stays inside `data` (checked by `naive`), `out` has `src.len()` slots.
        unsafe {
            execute(&Kernel::Copy(StridedCopy::to_contiguous(
                src,
                ptr_mut(&mut out),
                dtype,
            )))
        };
        assert_eq!(out, expect, "shape {shape:?} strides {strides:?}");
    }

    #[test]
    fn copies_views_of_every_kind() {
        let mut rng = Rng::new(1);
        let f = rng.f32s(400);
        let i = rng.i64s(400);
        let h: Vec<u16> = (0..400).map(|x| x as u16 * 3).collect();
        let cases: &[(usize, &[usize], &[usize])] = &[
            (0, &[], &[]),                       // 0-d
            (5, &[], &[]),                       // 0-d at an offset
            (0, &[2, 3, 4], &[12, 4, 1]),        // contiguous
            (0, &[4, 3], &[1, 4]),               // transposed
            (3, &[2, 3, 4], &[1, 2, 6]),         // fully reversed strides
            (0, &[3, 1, 5], &[0, 9, 1]),         // broadcast leading, size-1 middle
            (1, &[3, 4, 5], &[20, 0, 1]),        // broadcast middle
            (2, &[3, 4, 5], &[20, 5, 0]),        // broadcast trailing
            (0, &[1, 1, 1], &[7, 3, 2]),         // all size 1
            (0, &[2, 0, 3], &[3, 3, 1]),         // empty
            (7, &[3, 2, 2, 3], &[50, 3, 20, 7]), // arbitrary strides
            (0, &[6], &[0]),                     // scalar broadcast
        ];
        for &(start, shape, strides) in cases {
            check(&f, DType::F32, start, shape, strides);
            check(&i, DType::I64, start, shape, strides);
            check(&h, DType::BF16, start, shape, strides);
        }
        // Larger than a tile: transposed and strided views walked tile by tile.
        let big = Rng::new(2).f32s(3 * 130 * 70 * 2);
        check(&big, DType::F32, 0, &[3, 70, 130], &[1, 390, 3]);
        check(&big, DType::F32, 1, &[70, 130, 3], &[390 * 2, 3 * 2, 2]);
        check(&big, DType::F32, 0, &[130, 140], &[1, 130]);
    }

    /// Copies the `(start, shape, strides)` view of `data` into the `(at, strides)` region of a
    /// copy of `canvas`, compared with a naive element-by-element copy.
    fn check_into<T: Copy + PartialEq + std::fmt::Debug>(
        (data, canvas): (&[T], &[T]),
        dtype: DType,
        (start, shape, strides): (usize, &[usize], &[usize]),
        (at, dst_strides): (usize, &[usize]),
    ) {
        let mut expect = canvas.to_vec();
        for i in 0..shape.iter().product() {
            let idx = unravel(i, shape);
            expect[at + offset(&idx, dst_strides)] = data[start + offset(&idx, strides)];
        }
        let mut out = canvas.to_vec();
        let dst = View {
            ptr: ptr_mut(&mut out[at..]),
            shape: shape.to_vec(),
            strides: dst_strides.to_vec(),
        };
        let src = view(data, start, shape, strides);
        // SAFETY: both views stay inside their buffers (the naive copy indexed them), the
        // destination region does not overlap itself and `out` is not otherwise accessed.
        unsafe { execute(&Kernel::Copy(StridedCopy { src, dst, dtype })) };
        assert_eq!(out, expect, "{shape:?} {strides:?} -> {dst_strides:?}");
    }

    #[test]
    fn copies_into_regions_of_bigger_tensors() {
        let mut rng = Rng::new(3);
        let (f, canvas) = (rng.f32s(400), rng.f32s(400));
        let (i, icanvas) = (rng.i64s(400), rng.i64s(400));
        let h: Vec<u16> = (0..400).map(|x| x as u16 * 5).collect();
        let hcanvas = vec![7u16; 400];
        type Src = (usize, &'static [usize], &'static [usize]);
        let cases: &[(Src, (usize, &[usize]))] = &[
            ((0, &[3, 4], &[4, 1]), (8, &[6, 1])), // [3, 4] into rows 1.., cols 2.. of [5, 6]
            ((0, &[3, 4], &[4, 1]), (0, &[4, 1])), // contiguous: one memcpy
            ((2, &[3, 4], &[1, 3]), (8, &[6, 1])), // transposed source
            ((0, &[2, 3, 4], &[12, 4, 1]), (5, &[40, 4, 1])), // concatenation along dim 1
            ((1, &[3, 4], &[0, 1]), (3, &[10, 2])), // broadcast source, strided destination
            ((9, &[4, 5], &[0, 0]), (0, &[1, 4])), // scalar into a transposed region
            ((0, &[], &[]), (17, &[])),            // 0-d
            ((0, &[3, 0], &[1, 1]), (0, &[1, 1])), // empty
            ((0, &[1, 1, 6], &[9, 9, 1]), (30, &[7, 7, 1])), // size-1 dims
        ];
        for &(src, dst) in cases {
            check_into((&f, &canvas), DType::F32, src, dst);
            check_into((&i, &icanvas), DType::I64, src, dst);
            check_into((&h, &hcanvas), DType::BF16, src, dst);
        }
        // Larger than a tile: a transposed source into a column block of a wider tensor.
        let (big, wide) = (rng.f32s(130 * 70), rng.f32s(130 * 200));
        check_into(
            (&big, &wide),
            DType::F32,
            (0, &[130, 70], &[1, 130]),
            (50, &[200, 1]),
        );
    }
}
