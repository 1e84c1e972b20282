//! The `Reduce` kernel: Sum, Mean, Max, Min and Prod of a contiguous tensor over some of its
//! dimensions.
//!
//! The input is read once, in row-major order, while each element is combined into its output's
//! accumulator (f64 for f32 Sum/Mean/Prod, wrapping i64 for i64, the element type itself for
//! Max/Min). That visits the reduced elements of every output in row-major order, so the result
//! is deterministic and matches a sequential loop. Rows whose innermost dimension is reduced run
//! as a contiguous fold into one accumulator; rows whose innermost dimension is kept as a zipped,
//! vectorizable loop.
//!
//! Max and Min propagate NaN (the first NaN met wins, as PyTorch). Empty reductions give 0 for
//! Sum, 1 for Prod, NaN for Mean and for f32 Max/Min, 0 for i64 Max/Min (PyTorch rejects empty
//! max/min, and so does the front-end); an i64 Mean (which the front-end rejects) divides the
//! sum by the count, truncating, and gives 0 when empty.

use super::mem::{slice, slice_mut};
use super::strided::{row_major_strides, Layout};
use chorus_core::dtype::DType;
use chorus_core::kernel::{Reduce, ReduceOp};

/// Element types the reduce kernel handles, with their accumulators.
trait Accumulate: Copy + PartialOrd {
    /// Accumulator type of Sum, Mean and Prod.
    type Acc: Copy;
    /// The empty sum.
    const ZERO: Self::Acc;
    /// The empty product.
    const ONE: Self::Acc;
    /// Identity of Max (the lowest value).
    const LOWEST: Self;
    /// Identity of Min (the highest value).
    const HIGHEST: Self;
    /// The result of an empty Max or Min.
    const EMPTY_EXTREMUM: Self;
    /// `acc + x`.
    fn add(acc: Self::Acc, x: Self) -> Self::Acc;
    /// `acc * x`.
    fn mul(acc: Self::Acc, x: Self) -> Self::Acc;
    /// The output element from the sum (or product) of `count` elements.
    fn finish(acc: Self::Acc, count: usize, mean: bool) -> Self;
}

impl Accumulate for f32 {
    type Acc = f64;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const LOWEST: f32 = f32::NEG_INFINITY;
    const HIGHEST: f32 = f32::INFINITY;
    const EMPTY_EXTREMUM: f32 = f32::NAN;
    fn add(acc: f64, x: f32) -> f64 {
        acc + f64::from(x)
    }
    fn mul(acc: f64, x: f32) -> f64 {
        acc * f64::from(x)
    }
    /// The mean of nothing is the canonical `f32::NAN` (not whatever `0.0 / 0.0` gives).
    fn finish(acc: f64, count: usize, mean: bool) -> f32 {
        match (mean, count) {
            (false, _) => acc as f32,
            (true, 0) => f32::NAN,
            (true, c) => (acc / c as f64) as f32,
        }
    }
}

impl Accumulate for i64 {
    type Acc = i64;
    const ZERO: i64 = 0;
    const ONE: i64 = 1;
    const LOWEST: i64 = i64::MIN;
    const HIGHEST: i64 = i64::MAX;
    const EMPTY_EXTREMUM: i64 = 0;
    fn add(acc: i64, x: i64) -> i64 {
        acc.wrapping_add(x)
    }
    fn mul(acc: i64, x: i64) -> i64 {
        acc.wrapping_mul(x)
    }
    fn finish(acc: i64, count: usize, mean: bool) -> i64 {
        match (mean, count) {
            (false, _) => acc,
            (true, 0) => 0,
            (true, c) => acc.wrapping_div(i64::try_from(c).unwrap_or(i64::MAX)),
        }
    }
}

/// The larger of `acc` and `x`, NaN if either is: a NaN accumulator stays (no comparison with it
/// holds), a NaN `x` (unordered even with itself) replaces it.
fn max<T: PartialOrd>(acc: T, x: T) -> T {
    if x > acc || x.partial_cmp(&x).is_none() {
        x
    } else {
        acc
    }
}

/// The smaller of `acc` and `x`, NaN if either is (see [`max`]).
fn min<T: PartialOrd>(acc: T, x: T) -> T {
    if x < acc || x.partial_cmp(&x).is_none() {
        x
    } else {
        acc
    }
}

/// Reduces the contiguous `src` of `shape` over `dims` into the contiguous `out` of `shape`
/// without `dims`.
///
/// # Safety
/// `src` is readable, aligned `dtype` for the product of `shape` elements; `out` is valid and
/// aligned for the product of the kept extents, overlaps no input and is not otherwise accessed.
///
/// # Panics
/// When `dims` is not strictly increasing or names a dimension beyond `shape`.
pub(super) unsafe fn reduce(k: &Reduce) {
    let (shape, dims) = (&k.shape, &k.dims);
    assert!(
        dims.windows(2).all(|w| w[0] < w[1]) && dims.iter().all(|&d| d < shape.len()),
        "reduce: dims {dims:?} are not sorted, distinct dimensions of {shape:?}"
    );
    // SAFETY: caller's contract, with the element type named by `dtype`.
    unsafe {
        match k.dtype {
            DType::F32 => with_op::<f32>(k),
            DType::I64 => with_op::<i64>(k),
            other => panic!("reduce: the CPU backend has no {other} arithmetic"),
        }
    }
}

/// Monomorphises the walk for the descriptor's op.
///
/// # Safety
/// As [`reduce`], with `T` the element type.
unsafe fn with_op<T: Accumulate>(k: &Reduce) {
    let count = k.reduced_len();
    let extremum = |acc: T| if count == 0 { T::EMPTY_EXTREMUM } else { acc };
    // SAFETY: forwarded contract.
    unsafe {
        match k.op {
            ReduceOp::Sum => walk(k, T::ZERO, T::add, |a| T::finish(a, count, false)),
            ReduceOp::Mean => walk(k, T::ZERO, T::add, |a| T::finish(a, count, true)),
            ReduceOp::Prod => walk(k, T::ONE, T::mul, |a| T::finish(a, count, false)),
            ReduceOp::Max => walk(k, T::LOWEST, max, extremum),
            ReduceOp::Min => walk(k, T::HIGHEST, min, extremum),
            other => panic!("reduce: the CPU backend has no {other:?}"),
        }
    }
}

/// Folds every input element into its output's accumulator (starting at `init`) with `step`, in
/// row-major order, then writes `finish(acc)`.
///
/// # Safety
/// As [`reduce`], with `T` the element type.
unsafe fn walk<T: Copy, A: Copy>(
    k: &Reduce,
    init: A,
    step: impl Fn(A, T) -> A + Copy,
    finish: impl Fn(A) -> T,
) {
    let out_len = k.out_len();
    // SAFETY: caller's contract: `out` holds `out_len` writable, unaliased elements.
    let out = unsafe { slice_mut::<T>(k.out, out_len) };
    // SAFETY: caller's contract: `src` holds `in_len` readable elements.
    let src = unsafe { slice::<T>(k.src, k.in_len()) };
    if out_len == 0 {
        return;
    }
    let layout = Layout::coalesce(&k.shape, [&row_major_strides(&k.shape), &k.out_strides()]);
    let (n, [_, os]) = (layout.row_len(), layout.row_strides());
    let mut acc = vec![init; out_len];
    layout.for_each_row(|[i, o]| {
        let row = &src[i..i + n];
        match os {
            0 => acc[o] = row.iter().fold(acc[o], |a, &x| step(a, x)),
            1 => {
                for (a, &x) in acc[o..o + n].iter_mut().zip(row) {
                    *a = step(*a, x);
                }
            }
            _ => {
                for (j, &x) in row.iter().enumerate() {
                    acc[o + j * os] = step(acc[o + j * os], x);
                }
            }
        }
    });
    for (o, a) in out.iter_mut().zip(acc) {
        *o = finish(a);
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, reduced_groups, Rng};
    use super::*;
    use chorus_core::kernel::Kernel;
    use ReduceOp::{Max, Mean, Min, Prod, Sum};

    /// Naive reduction: `f` of each output's elements in row-major order.
    fn naive<T: Copy>(src: &[T], shape: &[usize], dims: &[usize], f: impl Fn(&[T]) -> T) -> Vec<T> {
        reduced_groups(src, shape, dims)
            .iter()
            .map(|g| f(g))
            .collect()
    }

    /// Reference of `op` over the elements `g` of one f32 output.
    fn reference_f32(op: ReduceOp, g: &[f32]) -> f32 {
        let sum = g.iter().fold(0.0, |a, &x| a + f64::from(x));
        let nan = g.iter().find(|x| x.is_nan());
        match op {
            Sum => sum as f32,
            Mean if g.is_empty() => f32::NAN,
            Mean => (sum / g.len() as f64) as f32,
            Prod => g.iter().map(|&x| f64::from(x)).product::<f64>() as f32,
            _ if g.is_empty() => f32::NAN,
            _ if nan.is_some() => *nan.unwrap(),
            Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            Min => g.iter().copied().fold(f32::INFINITY, f32::min),
            _ => unreachable!(),
        }
    }

    /// Reference of `op` over the elements `g` of one i64 output.
    fn reference_i64(op: ReduceOp, g: &[i64]) -> i64 {
        let sum = g.iter().fold(0i64, |a, &x| a.wrapping_add(x));
        match op {
            Sum => sum,
            Mean if g.is_empty() => 0,
            Mean => sum.wrapping_div(g.len() as i64),
            Prod => g.iter().fold(1i64, |a, &x| a.wrapping_mul(x)),
            Max => g.iter().copied().max().unwrap_or(0),
            Min => g.iter().copied().min().unwrap_or(0),
            _ => unreachable!(),
        }
    }

    fn run<T: Accumulate + Default>(
        op: ReduceOp,
        dtype: DType,
        src: &[T],
        shape: &[usize],
        dims: &[usize],
    ) -> Vec<T> {
        let out_len = (0..shape.len())
            .filter(|d| !dims.contains(d))
            .map(|d| shape[d])
            .product();
        let mut out = vec![T::default(); out_len];
        let kernel = Kernel::Reduce(chorus_core::kernel::Reduce {
            op,
            src: ptr(src),
            shape: shape.to_vec(),
            dims: dims.to_vec(),
            out: ptr_mut(&mut out),
            dtype,
        });
        // SAFETY: `src` holds the product of `shape` elements, `out` that of the kept extents.
        unsafe { execute(&kernel) };
        out
    }

    const OPS: [ReduceOp; 5] = [Sum, Mean, Max, Min, Prod];

    const CASES: &[(&[usize], &[usize])] = &[
        (&[], &[]),                  // 0-d
        (&[7], &[]),                 // nothing reduced: copy
        (&[7], &[0]),                // everything
        (&[3, 4, 5], &[0, 1, 2]),    // everything, rank 3
        (&[3, 4, 5], &[2]),          // last
        (&[3, 4, 5], &[1, 2]),       // last two
        (&[3, 4, 5], &[0]),          // first
        (&[3, 4, 5], &[1]),          // middle
        (&[3, 4, 5], &[0, 2]),       // first and last
        (&[2, 1, 3, 1, 4], &[1, 3]), // size-1 dims only
        (&[2, 1, 3, 1, 4], &[0, 1, 4]),
        (&[4, 3, 2, 5, 3], &[1, 3]), // alternating
        (&[3, 0, 2], &[1]),          // empty reduction
        (&[3, 0, 2], &[0]),          // empty output
    ];

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn f32_every_op_matches_naive() {
        let mut rng = Rng::new(5);
        for &(shape, dims) in CASES {
            let src = rng.f32s(shape.iter().product());
            for op in OPS {
                let got = run(op, DType::F32, &src, shape, dims);
                let expect = naive(&src, shape, dims, |g| reference_f32(op, g));
                assert_eq!(bits(&got), bits(&expect), "{op:?} {shape:?} over {dims:?}");
            }
        }
    }

    #[test]
    fn i64_every_op_matches_naive() {
        let mut rng = Rng::new(6);
        for &(shape, dims) in CASES {
            let src = rng.i64s(shape.iter().product());
            for op in OPS {
                let got = run(op, DType::I64, &src, shape, dims);
                let expect = naive(&src, shape, dims, |g| reference_i64(op, g));
                assert_eq!(got, expect, "{op:?} {shape:?} over {dims:?}");
            }
        }
        let all = |op, v: &[i64]| run(op, DType::I64, v, &[v.len()], &[0])[0];
        assert_eq!(all(Sum, &[i64::MAX, 1]), i64::MIN);
        assert_eq!(all(Mean, &[-7, 0]), -3);
        assert_eq!(all(Prod, &[i64::MAX, 2]), -2);
        assert_eq!(all(Max, &[i64::MIN, i64::MAX, 0]), i64::MAX);
        assert_eq!(all(Min, &[i64::MIN, i64::MAX, 0]), i64::MIN);
        for (op, want) in [(Max, 0), (Min, 0), (Prod, 1)] {
            assert_eq!(all(op, &[]), want, "empty {op:?}");
        }
    }

    #[test]
    fn max_min_propagate_nan() {
        let mut src = Rng::new(7).f32s(60);
        src[7] = f32::NAN; // [0, 1, 2] of shape [3, 4, 5]
        src[44] = f32::NAN; // [2, 0, 4]
        src[0] = f32::INFINITY;
        src[59] = f32::NEG_INFINITY;
        for &dims in &[&[0][..], &[1], &[2], &[0, 2], &[0, 1, 2]] {
            for op in [Max, Min] {
                let got = run(op, DType::F32, &src, &[3, 4, 5], dims);
                let expect = naive(&src, &[3, 4, 5], dims, |g| reference_f32(op, g));
                assert_eq!(bits(&got), bits(&expect), "{op:?} over {dims:?}");
                assert!(got.iter().any(|x| x.is_nan()));
            }
        }
        // NaN first, last, and after an infinity.
        let all = |op, v: &[f32]| run(op, DType::F32, v, &[v.len()], &[0])[0];
        for v in [[f32::NAN, 1.0], [1.0, f32::NAN], [f32::INFINITY, f32::NAN]] {
            assert!(all(Max, &v).is_nan() && all(Min, &v).is_nan());
        }
        assert_eq!(all(Max, &[f32::NEG_INFINITY; 2]), f32::NEG_INFINITY);
    }

    #[test]
    fn empty_reductions_and_f64_accumulation() {
        let sum: Vec<f32> = run(Sum, DType::F32, &[], &[2, 0], &[1]);
        assert_eq!(sum, vec![0.0, 0.0]);
        let prod: Vec<f32> = run(Prod, DType::F32, &[], &[2, 0], &[1]);
        assert_eq!(prod, vec![1.0, 1.0]);
        for op in [Mean, Max, Min] {
            let got: Vec<f32> = run(op, DType::F32, &[], &[2, 0], &[1]);
            assert_eq!(bits(&got), bits(&[f32::NAN; 2]), "{op:?}");
        }
        assert_eq!(run::<i64>(Mean, DType::I64, &[], &[0], &[0]), vec![0]);
        // 2^24 + 1 + 1 is exact in f64 but not when accumulating in f32.
        let got = run(Sum, DType::F32, &[16_777_216.0, 1.0, 1.0], &[3], &[0]);
        assert_eq!(got, vec![16_777_218.0]);
        // 1e30 * 1e30 overflows f32 but not the f64 accumulator.
        let v = [1e30f32, 1e30, 1e-30];
        let got = run(Prod, DType::F32, &v, &[3], &[0])[0];
        assert_eq!(
            got,
            (1e30f32 as f64 * 1e30f32 as f64 * 1e-30f32 as f64) as f32
        );
        let big = vec![0.1f32; 100_000];
        let got = run(Mean, DType::F32, &big, &[100, 1000], &[0, 1]);
        let want = naive(&big, &[100, 1000], &[0, 1], |g| reference_f32(Mean, g));
        assert_eq!(got, want);
    }
}
