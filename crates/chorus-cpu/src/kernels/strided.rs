//! Strided index walking shared by the copy, elementwise and reduce kernels: dimension
//! coalescing, and an odometer that visits a shape row by row (the innermost dimension is left
//! to the caller's tight loop, so no per-element division or modulo is needed), optionally in
//! cache-sized tiles when an operand is read across rows (transposed views).

pub(crate) use chorus_core::kernel::row_major_strides;

/// A shape with the strides of `N` operands over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout<const N: usize> {
    /// Extent of each dimension.
    pub(crate) shape: Vec<usize>,
    /// Strides of each operand, one per dimension, in elements.
    pub(crate) strides: [Vec<usize>; N],
}

impl<const N: usize> Layout<N> {
    /// `shape` with the operands' `strides` simplified ([`chorus_core::kernel::coalesce`]):
    /// row-major element order and every element's offsets are unchanged.
    ///
    /// # Panics
    /// When a stride list's length differs from the shape's.
    pub(crate) fn coalesce(shape: &[usize], strides: [&[usize]; N]) -> Layout<N> {
        let (shape, strides) = chorus_core::kernel::coalesce(shape, strides);
        Layout { shape, strides }
    }

    /// Length of a row (the innermost extent; 1 for a 0-d layout).
    pub(crate) fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Each operand's stride along a row (0 for a 0-d layout).
    pub(crate) fn row_strides(&self) -> [usize; N] {
        std::array::from_fn(|o| self.strides[o].last().copied().unwrap_or(0))
    }

    /// Calls `row(offsets)` for every row (all dimensions but the innermost) in row-major order,
    /// `offsets[o]` being operand `o`'s offset of the row's first element. A 0-d layout has one
    /// row; a layout with an empty dimension has none.
    pub(crate) fn for_each_row(&self, mut row: impl FnMut([usize; N])) {
        if self.shape.contains(&0) {
            return;
        }
        let outer = self.shape.len().saturating_sub(1);
        let mut idx = vec![0usize; outer];
        let mut off = [0usize; N];
        loop {
            row(off);
            // Odometer step over the outer dimensions, innermost first.
            let mut d = outer;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.iter_mut().zip(&self.strides) {
                    *o += s[d];
                }
                if idx[d] < self.shape[d] {
                    break;
                }
                for (o, s) in off.iter_mut().zip(&self.strides) {
                    *o -= s[d] * self.shape[d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Calls `segment(offsets, len)` for runs of `len` consecutive elements along the innermost
    /// dimension, covering every element exactly once. When some operand steps through memory
    /// along rows (a stride other than 0 or 1, as in a transposed view), the two innermost
    /// dimensions are visited in `TILE` × `TILE` tiles so that the lines one tile touches stay
    /// in cache; otherwise segments are whole rows in row-major order. The order is thus not
    /// row-major: use it only where every element is independent (an operand locates the
    /// output).
    pub(crate) fn for_each_segment(&self, mut segment: impl FnMut([usize; N], usize)) {
        const TILE: usize = 64;
        let rank = self.shape.len();
        let strided_rows = self.row_strides().iter().any(|&s| s > 1);
        if rank < 2 || !strided_rows {
            let n = self.row_len();
            return self.for_each_row(|off| segment(off, n));
        }
        let (rows, cols) = (self.shape[rank - 2], self.shape[rank - 1]);
        let row_step: [usize; N] = std::array::from_fn(|o| self.strides[o][rank - 2]);
        let col_step = self.row_strides();
        // Every index of the outer dimensions is a row of this layout (its last extent is 1).
        let outer: Layout<N> = Layout {
            shape: [&self.shape[..rank - 2], &[1]].concat(),
            strides: std::array::from_fn(|o| [&self.strides[o][..rank - 2], &[0]].concat()),
        };
        outer.for_each_row(|base| {
            for i0 in (0..rows).step_by(TILE) {
                for j0 in (0..cols).step_by(TILE) {
                    let len = TILE.min(cols - j0);
                    for i in i0..rows.min(i0 + TILE) {
                        segment(
                            std::array::from_fn(|o| base[o] + i * row_step[o] + j0 * col_step[o]),
                            len,
                        );
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{offset, unravel};
    use super::*;

    #[test]
    fn coalesce_merges_and_drops() {
        let l = Layout::coalesce(&[2, 1, 3, 4], [&[12, 99, 4, 1], &[0, 7, 0, 1]]);
        assert_eq!(l.shape, vec![6, 4]);
        assert_eq!(l.strides, [vec![4, 1], vec![0, 1]]);
        let l = Layout::coalesce(&[2, 3, 4], [&row_major_strides(&[2, 3, 4])]);
        assert_eq!(l.shape, vec![24]);
        let l = Layout::coalesce(&[1, 1], [&[5, 5]]);
        assert!(l.shape.is_empty());
        assert_eq!((l.row_len(), l.row_strides()), (1, [0]));
        let l = Layout::coalesce(&[3, 4], [&[1, 3]]); // transposed: nothing merges
        assert_eq!(l.shape, vec![3, 4]);
    }

    #[test]
    fn rows_visit_every_element_in_row_major_order() {
        let shape = [3, 1, 4, 2, 5];
        let a = [100, 7, 1, 50, 10];
        let b = [0, 0, 5, 0, 1];
        let l = Layout::coalesce(&shape, [&a, &b]);
        let mut seen = Vec::new();
        l.for_each_row(|[oa, ob]| {
            let [sa, sb] = l.row_strides();
            for j in 0..l.row_len() {
                seen.push((oa + j * sa, ob + j * sb));
            }
        });
        let total: usize = shape.iter().product();
        let expect: Vec<_> = (0..total)
            .map(|i| {
                let idx = unravel(i, &shape);
                (offset(&idx, &a), offset(&idx, &b))
            })
            .collect();
        assert_eq!(seen, expect);
    }

    #[test]
    fn segments_cover_every_element_once() {
        for (shape, a) in [
            (vec![3, 70, 45], vec![1, 3, 210]),   // transposed: tiled
            (vec![2, 33, 64], vec![2112, 64, 1]), // contiguous: whole rows
            (vec![40], vec![3]),
            (vec![], vec![]),
        ] {
            let out = row_major_strides(&shape);
            let l = Layout::coalesce(&shape, [&a, &out]);
            let mut seen = Vec::new();
            l.for_each_segment(|[oa, oo], len| {
                let [sa, so] = l.row_strides();
                seen.extend((0..len).map(|j| (oo + j * so, oa + j * sa)));
            });
            seen.sort_unstable();
            let total: usize = shape.iter().product();
            let expect: Vec<_> = (0..total)
                .map(|i| (i, offset(&unravel(i, &shape), &a)))
                .collect();
            assert_eq!(seen, expect, "{shape:?}");
        }
    }

    #[test]
    fn empty_and_zero_d() {
        let mut rows = 0;
        Layout::coalesce(&[3, 0, 2], [&[0, 2, 1]]).for_each_row(|_| rows += 1);
        assert_eq!(rows, 0);
        Layout::coalesce(&[], [&[]]).for_each_row(|o| {
            assert_eq!(o, [0]);
            rows += 1;
        });
        assert_eq!(rows, 1);
    }
}
