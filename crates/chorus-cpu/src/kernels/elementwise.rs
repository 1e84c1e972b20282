//! The `Binary` kernel: `out = lhs op rhs` elementwise over broadcast views, for f32 and i64.
//!
//! Paths, fastest first: both operands contiguous (one zipped loop the compiler vectorizes); one
//! operand contiguous and the other a scalar broadcast (all strides 0); otherwise the views are
//! coalesced and walked row by row, each row a tight loop specialised on its strides.
//!
//! i64 arithmetic wraps on overflow, and i64 division truncates toward zero with **division by
//! zero giving 0** (a kernel must not panic on data); `i64::MIN / -1` wraps to `i64::MIN`.

use super::mem::{host, slice_mut};
use super::strided::Layout;
use chorus_core::dtype::DType;
use chorus_core::kernel::{Binary, BinaryOp, Fill, Scalar, View};
use std::slice::from_raw_parts;

/// Element types with the four arithmetic operations of the `Binary` kernel.
trait Arith: Copy {
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn div(a: Self, b: Self) -> Self;
}

impl Arith for f32 {
    fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    fn div(a: f32, b: f32) -> f32 {
        a / b
    }
}

impl Arith for i64 {
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    fn sub(a: i64, b: i64) -> i64 {
        a.wrapping_sub(b)
    }
    fn mul(a: i64, b: i64) -> i64 {
        a.wrapping_mul(b)
    }
    /// Truncating division; `x / 0 == 0`.
    fn div(a: i64, b: i64) -> i64 {
        if b == 0 {
            0
        } else {
            a.wrapping_div(b)
        }
    }
}

/// `out = lhs op rhs` elementwise in row-major order.
///
/// # Safety
/// Both views are readable (aligned for `dtype`) at every offset their shapes and strides reach;
/// `out` is valid and aligned for `lhs.len()` writes of `dtype`, overlaps neither input and is not
/// otherwise accessed during the call.
pub(super) unsafe fn binary(k: &Binary) {
    let (lhs, rhs) = (&k.lhs, &k.rhs);
    assert_eq!(
        lhs.shape, rhs.shape,
        "binary: operands are not broadcast to one shape"
    );
    assert_eq!(
        lhs.strides.len(),
        lhs.shape.len(),
        "binary: lhs shape and strides differ in rank"
    );
    assert_eq!(
        rhs.strides.len(),
        rhs.shape.len(),
        "binary: rhs shape and strides differ in rank"
    );
    // SAFETY: caller's contract, with the element type named by `dtype`.
    unsafe {
        match k.dtype {
            DType::F32 => with_op::<f32>(k),
            DType::I64 => with_op::<i64>(k),
            other => panic!("binary: the CPU backend has no {other} arithmetic"),
        }
    }
}

/// Monomorphises the loops for `op`.
///
/// # Safety
/// As [`binary`], with `T` the element type.
unsafe fn with_op<T: Arith>(k: &Binary) {
    // SAFETY: forwarded contract.
    unsafe {
        match k.op {
            BinaryOp::Add => run(k, T::add),
            BinaryOp::Sub => run(k, T::sub),
            BinaryOp::Mul => run(k, T::mul),
            BinaryOp::Div => run(k, T::div),
            other => panic!("binary: the CPU backend has no {other:?}"),
        }
    }
}

/// `out[k] = f(lhs[k], rhs[k])` for every row-major index `k` (visited in any order).
///
/// # Safety
/// As [`binary`], with `T` the element type.
unsafe fn run<T: Copy>(k: &Binary, f: impl Fn(T, T) -> T + Copy) {
    let (lhs, rhs) = (&k.lhs, &k.rhs);
    let len = k.len();
    // SAFETY: caller's contract: `out` holds `len` writable, unaliased elements.
    let out = unsafe { slice_mut::<T>(k.out, len) };
    if len == 0 {
        return;
    }
    let (l, r) = (
        host::<T>(lhs.ptr).cast_const(),
        host::<T>(rhs.ptr).cast_const(),
    );
    let scalar = |v: &View| v.strides.iter().all(|&s| s == 0);
    let (lc, rc) = (lhs.is_contiguous(), rhs.is_contiguous());
    // Fast paths: contiguous ⊕ contiguous, contiguous ⊕ scalar, scalar ⊕ contiguous.
    let row_strides = match (lc, rc) {
        (true, true) => Some((1, 1)),
        (true, false) if scalar(rhs) => Some((1, 0)),
        (false, true) if scalar(lhs) => Some((0, 1)),
        _ => None,
    };
    if let Some((ls, rs)) = row_strides {
        // SAFETY: `out` has `len > 0` elements; a contiguous operand has `len` readable elements
        // from its pointer, a scalar broadcast one: what `row` reads with these strides.
        unsafe { row(l, ls, r, rs, out, f) };
        return;
    }
    // The output is an operand with row-major strides, so its row stride is 1 and segments may
    // come in any order.
    let (shape, strides) = k.coalesced();
    let layout = Layout { shape, strides };
    let [ls, rs, _] = layout.row_strides();
    layout.for_each_segment(|[lo, ro, oo], n| {
        // SAFETY: segments are not empty; `lo + j * ls` and `ro + j * rs` for `j < n` are
        // offsets of elements of the views, readable by the caller's contract.
        unsafe { row(l.add(lo), ls, r.add(ro), rs, &mut out[oo..oo + n], f) };
    });
}

/// `out[j] = f(l[j * ls], r[j * rs])` for `j < out.len()`, specialised on common strides.
///
/// # Safety
/// `out` is not empty; `l + j * ls` and `r + j * rs` are readable, aligned `T` for every
/// `j < out.len()`, not written during the call.
#[inline(always)]
unsafe fn row<T: Copy>(
    l: *const T,
    ls: usize,
    r: *const T,
    rs: usize,
    out: &mut [T],
    f: impl Fn(T, T) -> T,
) {
    let n = out.len();
    // SAFETY: in every arm, a stride of 1 means `n` contiguous readable elements, a stride of 0
    // one readable element (so the pointer is non-null); other strides are read at exactly the
    // offsets the caller promises.
    unsafe {
        match (ls, rs) {
            (1, 1) => {
                let (a, b) = (from_raw_parts(l, n), from_raw_parts(r, n));
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    *o = f(a, b);
                }
            }
            (1, 0) => {
                let (a, b) = (from_raw_parts(l, n), *r);
                for (o, &a) in out.iter_mut().zip(a) {
                    *o = f(a, b);
                }
            }
            (0, 1) => {
                let (a, b) = (*l, from_raw_parts(r, n));
                for (o, &b) in out.iter_mut().zip(b) {
                    *o = f(a, b);
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = f(*l.add(j * ls), *r.add(j * rs));
                }
            }
        }
    }
}

/// `out[i] = value` for `i < len`.
///
/// # Safety
/// `out` is valid and aligned for `len` writes of the scalar's type, and not otherwise accessed.
pub(super) unsafe fn fill(k: &Fill) {
    let Fill { out, len, value } = *k;
    match value {
        // SAFETY: caller's contract: `out` holds `len` writable f32.
        Scalar::F32(v) => unsafe { slice_mut::<f32>(out, len) }.fill(v),
        // SAFETY: caller's contract: `out` holds `len` writable i64.
        Scalar::I64(v) => unsafe { slice_mut::<i64>(out, len) }.fill(v),
        other => panic!("the CPU backend cannot fill with {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{offset, ptr_mut, unravel, view, Rng};
    use super::*;
    use chorus_core::kernel::Kernel;

    const OPS: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

    /// Runs the kernel on `(offset, strides)` views of `a` and `b` and compares with a naive
    /// per-element loop through the multi-index.
    fn check<T: Arith + Default + PartialEq + std::fmt::Debug>(
        dtype: DType,
        (a, b): (&[T], &[T]),
        shape: &[usize],
        (lo, ls): (usize, &[usize]),
        (ro, rs): (usize, &[usize]),
    ) {
        let len = shape.iter().product();
        for op in OPS {
            let f = [T::add, T::sub, T::mul, T::div][OPS.iter().position(|&o| o == op).unwrap()];
            let expect: Vec<T> = (0..len)
                .map(|i| {
                    let idx = unravel(i, shape);
                    f(a[lo + offset(&idx, ls)], b[ro + offset(&idx, rs)])
                })
                .collect();
            let mut out = vec![T::default(); len];
            let (lhs, rhs) = (view(a, lo, shape, ls), view(b, ro, shape, rs));
            let kernel = Kernel::Binary(chorus_core::kernel::Binary {
                op,
                lhs,
                rhs,
                out: ptr_mut(&mut out),
                dtype,
            });
            // SAFETY: the views stay inside `a` and `b` (the naive loop indexed them), `out`
            // has `len` slots.
            unsafe { execute(&kernel) };
            assert_eq!(out, expect, "{op:?} shape {shape:?} lhs {ls:?} rhs {rs:?}");
        }
    }

    type Case = (
        &'static [usize],
        (usize, &'static [usize]),
        (usize, &'static [usize]),
    );

    const CASES: &[Case] = &[
        (&[], (0, &[]), (3, &[])),                               // 0-d
        (&[2, 3, 4], (0, &[12, 4, 1]), (5, &[12, 4, 1])),        // both contiguous
        (&[2, 3, 4], (1, &[12, 4, 1]), (7, &[0, 0, 0])),         // scalar rhs
        (&[5, 7], (9, &[0, 0]), (0, &[7, 1])),                   // scalar lhs
        (&[4, 3, 5], (0, &[15, 5, 1]), (2, &[0, 5, 1])),         // broadcast leading
        (&[4, 3, 5], (0, &[15, 5, 1]), (2, &[5, 0, 1])),         // broadcast middle
        (&[4, 3, 5], (0, &[15, 5, 1]), (2, &[3, 1, 0])),         // broadcast trailing
        (&[4, 1, 5], (1, &[0, 3, 1]), (0, &[5, 9, 0])),          // both broadcast, size-1 dim
        (&[6, 4], (0, &[1, 6]), (0, &[4, 1])),                   // transposed lhs
        (&[6, 4], (3, &[1, 6]), (0, &[1, 7])),                   // both transposed
        (&[3, 4, 5], (0, &[1, 3, 12]), (4, &[0, 1, 4])),         // reversed, broadcast
        (&[2, 3, 0, 2], (0, &[6, 2, 2, 1]), (0, &[0, 0, 0, 1])), // empty
        (&[1, 1, 1], (2, &[0, 0, 0]), (1, &[5, 5, 5])),          // all size 1
        (&[3, 2, 4], (5, &[2, 1, 6]), (0, &[11, 1, 3])),         // arbitrary strides
    ];

    #[test]
    fn f32_every_case() {
        let mut rng = Rng::new(3);
        let (a, b) = (rng.f32s(200), rng.f32s(200));
        for &(shape, l, r) in CASES {
            check(DType::F32, (&a, &b), shape, l, r);
        }
        check(DType::F32, (&a[..0], &b), &[0], (0, &[1]), (0, &[1]));
        // Larger than a tile: bias rows, and transposed operands walked tile by tile.
        let (big, bias) = (rng.f32s(3 * 130 * 70), rng.f32s(130));
        let shape = [3, 70, 130];
        check(
            DType::F32,
            (&big, &bias),
            &shape,
            (0, &[9100, 130, 1]),
            (0, &[0, 0, 1]),
        );
        check(
            DType::F32,
            (&big, &bias),
            &shape,
            (0, &[9100, 1, 70]),
            (0, &[0, 1, 0]),
        );
        check(
            DType::F32,
            (&big, &big),
            &shape,
            (0, &[1, 390, 3]),
            (0, &[9100, 130, 1]),
        );
    }

    #[test]
    fn i64_every_case() {
        let mut rng = Rng::new(4);
        let (a, b) = (rng.i64s(200), rng.i64s(200));
        for &(shape, l, r) in CASES {
            check(DType::I64, (&a, &b), shape, l, r);
        }
    }

    #[test]
    fn i64_edge_cases() {
        let a: [i64; 6] = [7, -7, 5, i64::MIN, i64::MAX, 0];
        let b: [i64; 6] = [2, 2, 0, -1, 1, 0];
        let run = |op| {
            let mut out = vec![0i64; 6];
            let (lhs, rhs) = (view(&a, 0, &[6], &[1]), view(&b, 0, &[6], &[1]));
            let kernel = Kernel::Binary(chorus_core::kernel::Binary {
                op,
                lhs,
                rhs,
                out: ptr_mut(&mut out),
                dtype: DType::I64,
            });
            // SAFETY: both views and `out` are six contiguous elements of live buffers.
            unsafe { execute(&kernel) };
            out
        };
        assert_eq!(run(BinaryOp::Div), vec![3, -3, 0, i64::MIN, i64::MAX, 0]);
        assert_eq!(run(BinaryOp::Add)[4], i64::MIN);
        assert_eq!(run(BinaryOp::Mul)[3], i64::MIN);
    }

    #[test]
    fn f32_division_by_zero_is_ieee() {
        let (a, b) = ([1.0f32, -1.0, 0.0], [0.0f32; 3]);
        let mut out = vec![0.0f32; 3];
        let (lhs, rhs) = (view(&a, 0, &[3], &[1]), view(&b, 0, &[3], &[1]));
        let kernel = Kernel::Binary(chorus_core::kernel::Binary {
            op: BinaryOp::Div,
            lhs,
            rhs,
            out: ptr_mut(&mut out),
            dtype: DType::F32,
        });
        // SAFETY: both views and `out` are three contiguous elements of live buffers.
        unsafe { execute(&kernel) };
        assert_eq!(out[..2], [f32::INFINITY, f32::NEG_INFINITY]);
        assert!(out[2].is_nan());
    }
}
