//! The `Reduce` kernel: Sum and Mean of a contiguous tensor over some of its dimensions.
//!
//! The input is read once, in row-major order, while each element is added into its output's
//! accumulator (f64 for f32, wrapping i64 for i64). That visits the reduced elements of every
//! output in row-major order, so the result is deterministic and matches a sequential loop.
//! Rows whose innermost dimension is reduced run as a contiguous accumulation into one
//! accumulator; rows whose innermost dimension is kept as a zipped, vectorizable loop.
//!
//! Empty reductions give 0 for Sum and NaN for Mean (as PyTorch); an i64 Mean (which the
//! front-end rejects) divides the sum by the count, truncating, and gives 0 when empty.

use super::strided::{row_major_strides, Layout};
use super::{slice, slice_mut};
use chorus_core::dtype::DType;
use chorus_core::kernel::{DevicePtr, ReduceOp};

/// Element types the reduce kernel handles, with their accumulator.
trait Accumulate: Copy {
    /// Accumulator type.
    type Acc: Copy;
    /// The empty sum.
    const ZERO: Self::Acc;
    /// `acc + x`.
    fn add(acc: Self::Acc, x: Self) -> Self::Acc;
    /// The output element from the sum of `count` elements.
    fn finish(acc: Self::Acc, count: usize, mean: bool) -> Self;
}

impl Accumulate for f32 {
    type Acc = f64;
    const ZERO: f64 = 0.0;
    fn add(acc: f64, x: f32) -> f64 {
        acc + f64::from(x)
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
    fn add(acc: i64, x: i64) -> i64 {
        acc.wrapping_add(x)
    }
    fn finish(acc: i64, count: usize, mean: bool) -> i64 {
        match (mean, count) {
            (false, _) => acc,
            (true, 0) => 0,
            (true, c) => acc.wrapping_div(i64::try_from(c).unwrap_or(i64::MAX)),
        }
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
pub(super) unsafe fn reduce(
    op: ReduceOp,
    src: DevicePtr,
    shape: &[usize],
    dims: &[usize],
    out: DevicePtr,
    dtype: DType,
) {
    assert!(
        dims.windows(2).all(|w| w[0] < w[1]) && dims.iter().all(|&d| d < shape.len()),
        "reduce: dims {dims:?} are not sorted, distinct dimensions of {shape:?}"
    );
    let mean = match op {
        ReduceOp::Sum => false,
        ReduceOp::Mean => true,
        other => panic!("reduce: the CPU backend has no {other:?}"),
    };
    // SAFETY: caller's contract, with the element type named by `dtype`.
    unsafe {
        match dtype {
            DType::F32 => reduce_typed::<f32>(src, shape, dims, out, mean),
            DType::I64 => reduce_typed::<i64>(src, shape, dims, out, mean),
            other => panic!("reduce: the CPU backend has no {other} arithmetic"),
        }
    }
}

/// [`reduce`] for element type `T`.
///
/// # Safety
/// As [`reduce`], with `T` the element type.
unsafe fn reduce_typed<T: Accumulate>(
    src: DevicePtr,
    shape: &[usize],
    dims: &[usize],
    out: DevicePtr,
    mean: bool,
) {
    let reduced = |d: usize| dims.binary_search(&d).is_ok();
    let count: usize = dims.iter().map(|&d| shape[d]).product();
    let out_len: usize = (0..shape.len())
        .filter(|&d| !reduced(d))
        .map(|d| shape[d])
        .product();
    let in_len: usize = shape.iter().product();
    // SAFETY: caller's contract: `out` holds `out_len` writable, unaliased elements.
    let out = unsafe { slice_mut::<T>(out, out_len) };
    // SAFETY: caller's contract: `src` holds `in_len` readable elements.
    let src = unsafe { slice::<T>(src, in_len) };
    if out_len == 0 {
        return;
    }
    // Input strides are row-major; the output stride of a reduced dimension is 0, of a kept one
    // the product of the kept extents inside it.
    let in_strides = row_major_strides(shape);
    let mut out_strides = vec![0; shape.len()];
    let mut out_step = 1;
    for d in (0..shape.len()).rev().filter(|&d| !reduced(d)) {
        out_strides[d] = out_step;
        out_step *= shape[d];
    }
    let layout = Layout::coalesce(shape, [&in_strides, &out_strides]);
    let (n, [_, os]) = (layout.row_len(), layout.row_strides());
    let mut acc = vec![T::ZERO; out_len];
    layout.for_each_row(|[i, o]| {
        let row = &src[i..i + n];
        match os {
            0 => acc[o] = row.iter().fold(acc[o], |a, &x| T::add(a, x)),
            1 => {
                for (a, &x) in acc[o..o + n].iter_mut().zip(row) {
                    *a = T::add(*a, x);
                }
            }
            _ => {
                for (j, &x) in row.iter().enumerate() {
                    acc[o + j * os] = T::add(acc[o + j * os], x);
                }
            }
        }
    });
    for (o, a) in out.iter_mut().zip(acc) {
        *o = T::finish(a, count, mean);
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, unravel, Rng};
    use super::*;
    use chorus_core::kernel::Kernel;

    /// Naive reduction: for each output element, a sequential sum over the input in row-major
    /// order of the elements whose kept coordinates match.
    fn naive<T: Accumulate>(src: &[T], shape: &[usize], dims: &[usize], mean: bool) -> Vec<T> {
        let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
        let out_shape: Vec<usize> = kept.iter().map(|&d| shape[d]).collect();
        let out_len: usize = out_shape.iter().product();
        let count: usize = dims.iter().map(|&d| shape[d]).product();
        (0..out_len)
            .map(|o| {
                let oidx = unravel(o, &out_shape);
                let acc = src.iter().enumerate().fold(T::ZERO, |acc, (i, &x)| {
                    let idx = unravel(i, shape);
                    let matches = kept.iter().zip(&oidx).all(|(&d, &v)| idx[d] == v);
                    if matches {
                        T::add(acc, x)
                    } else {
                        acc
                    }
                });
                T::finish(acc, count, mean)
            })
            .collect()
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
        let kernel = Kernel::Reduce {
            op,
            src: ptr(src),
            shape: shape.to_vec(),
            dims: dims.to_vec(),
            out: ptr_mut(&mut out),
            dtype,
        };
        // SAFETY: `src` holds the product of `shape` elements, `out` that of the kept extents.
        unsafe { execute(&kernel) };
        out
    }

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

    #[test]
    fn f32_sum_and_mean_match_naive() {
        let mut rng = Rng::new(5);
        for &(shape, dims) in CASES {
            let src = rng.f32s(shape.iter().product());
            for (op, mean) in [(ReduceOp::Sum, false), (ReduceOp::Mean, true)] {
                let got = run(op, DType::F32, &src, shape, dims);
                let expect = naive(&src, shape, dims, mean);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expect), "{op:?} {shape:?} over {dims:?}");
            }
        }
    }

    #[test]
    fn i64_sum_and_mean_match_naive() {
        let mut rng = Rng::new(6);
        for &(shape, dims) in CASES {
            let src = rng.i64s(shape.iter().product());
            for (op, mean) in [(ReduceOp::Sum, false), (ReduceOp::Mean, true)] {
                let got = run(op, DType::I64, &src, shape, dims);
                assert_eq!(
                    got,
                    naive(&src, shape, dims, mean),
                    "{op:?} {shape:?} over {dims:?}"
                );
            }
        }
        assert_eq!(
            run(ReduceOp::Sum, DType::I64, &[i64::MAX, 1], &[2], &[0]),
            vec![i64::MIN]
        );
        assert_eq!(
            run(ReduceOp::Mean, DType::I64, &[-7, 0], &[2], &[0]),
            vec![-3]
        );
    }

    #[test]
    fn empty_reductions_and_f64_accumulation() {
        let sum: Vec<f32> = run(ReduceOp::Sum, DType::F32, &[], &[2, 0], &[1]);
        assert_eq!(sum, vec![0.0, 0.0]);
        let mean: Vec<f32> = run(ReduceOp::Mean, DType::F32, &[], &[2, 0], &[1]);
        assert!(mean.iter().all(|x| x.to_bits() == f32::NAN.to_bits()));
        assert_eq!(
            run::<i64>(ReduceOp::Mean, DType::I64, &[], &[0], &[0]),
            vec![0]
        );
        // 2^24 + 1 + 1 is exact in f64 but not when accumulating in f32.
        let got = run(
            ReduceOp::Sum,
            DType::F32,
            &[16_777_216.0, 1.0, 1.0],
            &[3],
            &[0],
        );
        assert_eq!(got, vec![16_777_218.0]);
        let big = vec![0.1f32; 100_000];
        let got = run(ReduceOp::Mean, DType::F32, &big, &[100, 1000], &[0, 1]);
        assert_eq!(got, naive(&big, &[100, 1000], &[0, 1], true));
    }
}
