//! The `Matmul` kernel: batched f32 matrix products through the `gemm` crate, one call per batch
//! entry, single-threaded (`Parallelism::None`) so results are deterministic and the stream
//! worker stays the only thread doing the work.

use super::{host, slice_mut};
use chorus_core::kernel::{DevicePtr, MatOperand};

/// Sizes of a batched matmul.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    /// Number of matrices.
    pub(super) batch: usize,
    /// Rows of lhs and out.
    pub(super) m: usize,
    /// Columns of rhs and out.
    pub(super) n: usize,
    /// Columns of lhs, rows of rhs.
    pub(super) k: usize,
}

/// A stride as `gemm` wants it.
fn signed(stride: usize) -> isize {
    isize::try_from(stride).expect("matmul: stride exceeds isize::MAX")
}

/// `out[b] = lhs[b] @ rhs[b]` for `b < batch`, out contiguous `[batch, m, n]`.
///
/// # Safety
/// `lhs` (`rhs`) is readable, aligned f32 at every `[b, i, p]` (`[b, p, j]`) offset with
/// `b < batch`, `i < m`, `p < k`, `j < n`; `out` is valid and aligned for `batch * m * n` f32
/// writes, overlaps neither operand and is not otherwise accessed during the call.
pub(super) unsafe fn matmul(lhs: &MatOperand, rhs: &MatOperand, out: DevicePtr, d: Dims) {
    let len = d.batch * d.m * d.n;
    // SAFETY: caller's contract: `out` holds `batch * m * n` writable, unaliased f32.
    let out = unsafe { slice_mut::<f32>(out, len) };
    if len == 0 {
        return;
    }
    if d.k == 0 {
        out.fill(0.0);
        return;
    }
    let (l, r) = (
        host::<f32>(lhs.ptr).cast_const(),
        host::<f32>(rhs.ptr).cast_const(),
    );
    for (b, dst) in out.chunks_exact_mut(d.m * d.n).enumerate() {
        // SAFETY: `dst` is `m * n` writable f32, row-major (column stride 1, row stride n); the
        // operands of batch entry `b` start at `b * batch_stride` and are readable at every offset
        // gemm computes from the given strides (caller's contract); `read_dst` is false, so `dst`
        // is only written, and `alpha` (its factor) is unused; `beta = 1` scales the product.
        unsafe {
            gemm::gemm(
                d.m,
                d.n,
                d.k,
                dst.as_mut_ptr(),
                1,
                signed(d.n),
                false,
                l.add(b * lhs.batch_stride),
                signed(lhs.col_stride),
                signed(lhs.row_stride),
                r.add(b * rhs.batch_stride),
                signed(rhs.col_stride),
                signed(rhs.row_stride),
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use super::*;
    use chorus_core::kernel::Kernel;

    /// Element `[b, i, j]` of an operand.
    fn at(data: &[f32], op: &MatOperand, b: usize, i: usize, j: usize) -> f64 {
        f64::from(data[b * op.batch_stride + i * op.row_stride + j * op.col_stride])
    }

    /// Operand over `data` with `(batch_stride, row_stride, col_stride)`.
    fn operand(data: &[f32], (bs, rs, cs): (usize, usize, usize)) -> MatOperand {
        MatOperand {
            ptr: ptr(data),
            batch_stride: bs,
            row_stride: rs,
            col_stride: cs,
        }
    }

    /// Runs the kernel and compares with a naive f64 triple loop.
    fn check(d: Dims, ls: (usize, usize, usize), rs: (usize, usize, usize)) {
        let mut rng = Rng::new((d.batch * 1000 + d.m * 100 + d.n * 10 + d.k) as u64);
        let extent = |(bs, r, c): (usize, usize, usize), rows: usize, cols: usize| {
            1 + (d.batch.max(1) - 1) * bs + (rows.max(1) - 1) * r + (cols.max(1) - 1) * c
        };
        let (a, bm) = (
            rng.f32s(extent(ls, d.m, d.k)),
            rng.f32s(extent(rs, d.k, d.n)),
        );
        let (lhs, rhs) = (operand(&a, ls), operand(&bm, rs));
        let mut out = vec![f32::NAN; d.batch * d.m * d.n];
        let kernel = Kernel::Matmul {
            lhs,
            rhs,
            out: ptr_mut(&mut out),
            batch: d.batch,
            m: d.m,
            n: d.n,
            k: d.k,
        };
        // SAFETY: the operand buffers cover every offset the strides reach (`extent`), `out` has
        // `batch * m * n` slots.
        unsafe { execute(&kernel) };
        for b in 0..d.batch {
            for i in 0..d.m {
                for j in 0..d.n {
                    let expect: f64 = (0..d.k)
                        .map(|p| at(&a, &lhs, b, i, p) * at(&bm, &rhs, b, p, j))
                        .sum();
                    let got = f64::from(out[(b * d.m + i) * d.n + j]);
                    assert!(
                        (got - expect).abs() <= 1e-5 * (1.0 + expect.abs()),
                        "{d:?} {got} {expect}"
                    );
                }
            }
        }
        // Deterministic: a second run gives the same bits.
        let first = out.clone();
        // SAFETY: as above.
        unsafe { execute(&kernel) };
        assert_eq!(
            first.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn row_major_batched() {
        let d = Dims {
            batch: 3,
            m: 5,
            n: 7,
            k: 4,
        };
        check(d, (20, 4, 1), (28, 7, 1));
    }

    #[test]
    fn transposed_operands() {
        let d = Dims {
            batch: 2,
            m: 6,
            n: 3,
            k: 9,
        };
        check(d, (54, 1, 6), (27, 1, 9)); // both column-major
        check(d, (54, 9, 1), (27, 1, 9)); // rhs transposed only
        check(d, (54, 1, 6), (27, 3, 1)); // lhs transposed only
    }

    #[test]
    fn broadcast_batch_and_odd_sizes() {
        check(
            Dims {
                batch: 4,
                m: 3,
                n: 5,
                k: 2,
            },
            (0, 2, 1),
            (10, 5, 1),
        ); // lhs shared
        check(
            Dims {
                batch: 4,
                m: 3,
                n: 5,
                k: 2,
            },
            (6, 1, 3),
            (0, 1, 2),
        ); // rhs shared, transposed
        check(
            Dims {
                batch: 1,
                m: 1,
                n: 1,
                k: 1,
            },
            (1, 1, 1),
            (1, 1, 1),
        );
        check(
            Dims {
                batch: 2,
                m: 1,
                n: 37,
                k: 65,
            },
            (65, 65, 1),
            (0, 37, 1),
        ); // vector @ matrix
        check(
            Dims {
                batch: 1,
                m: 67,
                n: 1,
                k: 33,
            },
            (0, 33, 1),
            (0, 1, 1),
        ); // matrix @ vector
        check(
            Dims {
                batch: 1,
                m: 70,
                n: 50,
                k: 130,
            },
            (0, 130, 1),
            (0, 1, 130),
        );
    }

    #[test]
    fn zero_sizes() {
        let mut out = vec![f32::NAN; 6];
        let z = MatOperand {
            ptr: DevicePtr(0),
            batch_stride: 0,
            row_stride: 0,
            col_stride: 0,
        };
        let kernel = |m, n, batch, out: &mut [f32]| Kernel::Matmul {
            lhs: z,
            rhs: z,
            out: ptr_mut(out),
            batch,
            m,
            n,
            k: 0,
        };
        // SAFETY: with k == 0 the operands are never read; `out` has `batch * m * n` slots.
        unsafe { execute(&kernel(2, 3, 1, &mut out)) };
        assert_eq!(out, vec![0.0; 6]);
        // SAFETY: an empty output: nothing is read or written.
        unsafe {
            execute(&kernel(0, 3, 1, &mut []));
            execute(&kernel(2, 0, 1, &mut []));
            execute(&kernel(2, 3, 0, &mut []));
        }
        check(
            Dims {
                batch: 0,
                m: 2,
                n: 2,
                k: 2,
            },
            (4, 2, 1),
            (4, 2, 1),
        );
        check(
            Dims {
                batch: 2,
                m: 0,
                n: 2,
                k: 2,
            },
            (4, 2, 1),
            (4, 2, 1),
        );
    }
}
