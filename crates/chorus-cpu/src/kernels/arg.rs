//! The `ArgReduce` kernel: values and i64 indices of the max or min along the middle axis of the
//! contiguous f32 `[outer, n, inner]`, written contiguous as `[outer, inner]`.
//!
//! PyTorch semantics: the first index among equal values wins, and a NaN beats every number (the
//! first NaN wins, its index is returned). The outputs serve as the running best of each column:
//! each `[n, inner]` block is read row by row, every row a zipped loop over the `inner` columns,
//! so the input is read once and contiguously whatever `inner` is.

use super::mem::{slice, slice_mut};
use chorus_core::kernel::{ArgOp, ArgReduce};

/// Whether `v` (met later) replaces `best`: a NaN `best` stays, a NaN `v` wins, otherwise a strictly
/// better `v` (so the first of equal values stays).
#[inline(always)]
fn better(v: f32, best: f32, max: bool) -> bool {
    !best.is_nan() && (v.is_nan() || if max { v > best } else { v < best })
}

/// Arg-max or arg-min of `[outer, n, inner]` along `n`.
///
/// # Safety
/// `src` is readable, aligned f32 for `outer * n * inner` elements; `values` (f32) and `indices`
/// (i64) are valid and aligned for `outer * inner` writes, overlap no input nor each other and are
/// not otherwise accessed during the call.
///
/// # Panics
/// When `n == 0` while `outer * inner > 0` (nothing to choose from), and on an op this backend
/// does not implement.
pub(super) unsafe fn arg_reduce(k: &ArgReduce) {
    let (n, inner) = (k.n, k.inner);
    let max = match k.op {
        ArgOp::Max => true,
        ArgOp::Min => false,
        other => panic!("arg_reduce: the CPU backend has no {other:?}"),
    };
    let out_len = k.rows();
    // SAFETY: caller's contract: `outer * n * inner` readable f32, not written during the call.
    let src = unsafe { slice::<f32>(k.src, k.src_len()) };
    // SAFETY: caller's contract: `outer * inner` writable, unaliased f32.
    let values = unsafe { slice_mut::<f32>(k.values, out_len) };
    // SAFETY: caller's contract: `outer * inner` writable, unaliased i64 (not overlapping
    // `values`).
    let indices = unsafe { slice_mut::<i64>(k.indices, out_len) };
    if out_len == 0 {
        return;
    }
    assert!(n > 0, "arg_reduce: the reduced dimension is empty");
    let blocks = src.chunks_exact(n * inner);
    let outs = values
        .chunks_exact_mut(inner)
        .zip(indices.chunks_exact_mut(inner));
    for (x, (vals, idx)) in blocks.zip(outs) {
        vals.copy_from_slice(&x[..inner]);
        idx.fill(0);
        for (j, row) in x.chunks_exact(inner).enumerate().skip(1) {
            let j = j as i64;
            for ((b, i), &v) in vals.iter_mut().zip(idx.iter_mut()).zip(row) {
                if better(v, *b, max) {
                    *b = v;
                    *i = j;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use chorus_core::kernel::{ArgOp, Kernel};

    /// Reference: a sequential scan per column, with PyTorch's rules written out.
    fn reference(x: &[f32], [outer, n, inner]: [usize; 3], op: ArgOp) -> Vec<(f32, i64)> {
        let mut out = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let col: Vec<f32> = (0..n).map(|j| x[(o * n + j) * inner + i]).collect();
                let pick = match col.iter().position(|v| v.is_nan()) {
                    Some(p) => p,
                    None => {
                        let best = col.iter().copied().fold(col[0], |a, v| match op {
                            ArgOp::Max => a.max(v),
                            _ => a.min(v),
                        });
                        col.iter().position(|&v| v == best).unwrap()
                    }
                };
                out.push((col[pick], pick as i64));
            }
        }
        out
    }

    fn run(x: &[f32], [outer, n, inner]: [usize; 3], op: ArgOp) -> Vec<(f32, i64)> {
        let mut values = vec![0.0f32; outer * inner];
        let mut indices = vec![-1i64; outer * inner];
        let kernel = Kernel::ArgReduce(chorus_core::kernel::ArgReduce {
            op,
            src: ptr(x),
            values: ptr_mut(&mut values),
            indices: ptr_mut(&mut indices),
            outer,
            n,
            inner,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: `x` holds `outer * n * inner` elements, the outputs `outer * inner` each.
        unsafe { execute(&kernel) };
        values.into_iter().zip(indices).collect()
    }

    fn check(x: &[f32], dims: [usize; 3]) {
        for op in [ArgOp::Max, ArgOp::Min] {
            let (got, want) = (run(x, dims, op), reference(x, dims, op));
            let same = got.iter().zip(&want).all(|((gv, gi), (wv, wi))| {
                gi == wi && (gv.to_bits() == wv.to_bits() || (gv.is_nan() && wv.is_nan()))
            });
            assert!(
                same && got.len() == want.len(),
                "{op:?} {dims:?}: {got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut rng = Rng::new(21);
        for dims in [
            [3, 7, 1],
            [2, 5, 3],
            [1, 1, 1],
            [4, 1, 6],
            [1, 9, 1],
            [2, 33, 70],
            [0, 4, 2],
            [3, 4, 0],
        ] {
            check(&rng.f32s(dims.iter().product()), dims);
        }
    }

    #[test]
    fn ties_take_the_first_index() {
        // Quantized data: many ties per column.
        let x: Vec<f32> = Rng::new(22)
            .i64s(4 * 9 * 5)
            .iter()
            .map(|&v| (v % 3) as f32)
            .collect();
        check(&x, [4, 9, 5]);
        assert_eq!(
            run(&[2.0, 5.0, 5.0, 1.0, 1.0], [1, 5, 1], ArgOp::Max),
            vec![(5.0, 1)]
        );
        assert_eq!(
            run(&[2.0, 5.0, 5.0, 1.0, 1.0], [1, 5, 1], ArgOp::Min),
            vec![(1.0, 3)]
        );
        assert_eq!(run(&[0.0, -0.0], [1, 2, 1], ArgOp::Max)[0].1, 0);
    }

    #[test]
    fn the_first_nan_wins() {
        let nan = f32::NAN;
        for (x, at) in [
            (vec![1.0, nan, 3.0, nan], 1),
            (vec![nan, 5.0, 1.0], 0),
            (vec![f32::INFINITY, -1.0, nan], 2),
        ] {
            for op in [ArgOp::Max, ArgOp::Min] {
                let got = run(&x, [1, x.len(), 1], op);
                assert!(got[0].0.is_nan() && got[0].1 == at, "{op:?} {x:?}: {got:?}");
            }
        }
        let mut x = Rng::new(23).f32s(3 * 6 * 4);
        x[4 + 1] = nan; // [0, 1, 1]
        x[24 * 2 + 4 * 5 + 3] = nan; // [2, 5, 3]
        x[24 * 2 + 4 * 2 + 3] = nan; // [2, 2, 3]: the first of two
        check(&x, [3, 6, 4]);
    }
}
