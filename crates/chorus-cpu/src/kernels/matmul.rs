//! The `Matmul` kernel: batched f32 matrix products, one call per batch entry: products of at
//! least `packed::MIN_ROWS` rows through `packed` on AVX-512, products with fewer rows (at most 64
//! where there is no AVX-512) in `linear`'s layout through `rowdot`, the others through the `gemm`
//! crate. A large product may use several cores when its stream is alone on the device
//! (`super::gemm_parallelism`); `gemm` splits rows and columns, never the sum over `k`, so the
//! bits are the same either way (tested below).
//!
//! A fused epilogue (`out = act(out + bias)`, `linear`'s bias and activation) runs row by row
//! right after the GEMM of each batch entry, while that entry's output is still in cache.

use super::mem::{host, slice, slice_mut};
#[cfg(target_arch = "x86_64")]
use super::packed;
use super::{rowdot, unary};
use chorus_core::kernel::{Derived, DevicePtr, Epilogue, MatOperand, Matmul};

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

/// `out[b] = act(lhs[b] @ rhs[b] + bias)` for `b < batch`, out contiguous `[batch, m, n]`;
/// `rhs_derived` is `rhs`'s storage's cache, where `packed` may keep `rhs` packed.
///
/// # Safety
/// `lhs` (`rhs`) is readable, aligned f32 at every `[b, i, p]` (`[b, p, j]`) offset with
/// `b < batch`, `i < m`, `p < k`, `j < n`; the epilogue's bias, if any, is `n` readable, aligned
/// f32; `out` is valid and aligned for `batch * m * n` f32 writes, overlaps no input and is not
/// otherwise accessed during the call.
pub(super) unsafe fn matmul(k: &Matmul) {
    let d = Dims {
        batch: k.batch,
        m: k.m,
        n: k.n,
        k: k.k,
    };
    // SAFETY: forwarded contract.
    unsafe { product(&k.lhs, &k.rhs, k.out, d, k.epilogue, k.rhs_derived.as_ref()) }
}

/// [`matmul`] with the descriptor's pieces.
///
/// # Safety
/// As [`matmul`].
unsafe fn product(
    lhs: &MatOperand,
    rhs: &MatOperand,
    out: DevicePtr,
    d: Dims,
    epilogue: Epilogue,
    rhs_derived: Option<&Derived>,
) {
    let len = d.batch * d.m * d.n;
    // SAFETY: caller's contract: `out` holds `batch * m * n` writable, unaliased f32.
    let out = unsafe { slice_mut::<f32>(out, len) };
    if len == 0 {
        return;
    }
    // SAFETY: caller's contract: a bias is `n` readable f32, not written during the call.
    let bias = epilogue.bias.map(|b| unsafe { slice::<f32>(b, d.n) });
    let fused = bias.is_some() || epilogue.act.is_some();
    let finish = |dst: &mut [f32]| {
        if fused {
            for row in dst.chunks_exact_mut(d.n) {
                unary::bias_act(row, bias, epilogue.act);
            }
        }
    };
    if d.k == 0 {
        out.fill(0.0);
        for dst in out.chunks_exact_mut(d.m * d.n) {
            finish(dst);
        }
        return;
    }
    let (l, r) = (
        host::<f32>(lhs.ptr).cast_const(),
        host::<f32>(rhs.ptr).cast_const(),
    );
    for (b, dst) in out.chunks_exact_mut(d.m * d.n).enumerate() {
        #[cfg(target_arch = "x86_64")]
        if d.m >= packed::MIN_ROWS && packed::available() {
            let mat = |base: *const f32, b: usize, op: &MatOperand| packed::Mat {
                ptr: base.wrapping_add(b * op.batch_stride),
                rs: op.row_stride,
                cs: op.col_stride,
            };
            // SAFETY: AVX-512F checked; operands readable at every in-range element of batch
            // entry `b`, `dst` `m * n` writable and unaliased, bias `n` readable (caller's
            // contract).
            unsafe {
                packed::matmul(
                    mat(l, b, lhs),
                    mat(r, b, rhs),
                    dst.as_mut_ptr(),
                    (d.m, d.n, d.k),
                    epilogue,
                    super::parallelism(),
                    rhs_derived.filter(|_| d.batch == 1 || rhs.batch_stride == 0),
                )
            };
            continue;
        }
        if rowdot::applies(d.m, lhs.col_stride, rhs.row_stride) {
            // SAFETY: lhs rows are `k` contiguous f32 at `row_stride`; `rhs` is `Wᵀ` with W's
            // rows `k` contiguous f32 at `col_stride` (caller's contract for batch entry `b`);
            // `dst` is `m * n` writable, unaliased f32; the bias is `n` readable f32.
            unsafe {
                rowdot::matmul(
                    l.add(b * lhs.batch_stride),
                    lhs.row_stride,
                    r.add(b * rhs.batch_stride),
                    rhs.col_stride,
                    dst.as_mut_ptr(),
                    (d.m, d.n, d.k),
                    epilogue,
                    super::parallelism(),
                )
            };
            continue;
        }
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
                super::gemm_parallelism(d.m, d.n, d.k),
            );
        }
        finish(dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use super::*;
    use chorus_core::kernel::{Kernel, UnaryOp};

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
        check_epilogue(d, ls, rs, false, None);
    }

    /// The activation in f64.
    fn act_f64(act: Option<UnaryOp>, v: f64) -> f64 {
        match act {
            None => v,
            Some(UnaryOp::Relu) => v.max(0.0),
            Some(UnaryOp::Gelu) => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
            Some(op) => panic!("no reference for {op:?}"),
        }
    }

    /// As [`check`], with a fused bias (when `with_bias`) and activation.
    fn check_epilogue(
        d: Dims,
        ls: (usize, usize, usize),
        rs: (usize, usize, usize),
        with_bias: bool,
        act: Option<UnaryOp>,
    ) {
        let mut rng = Rng::new((d.batch * 1000 + d.m * 100 + d.n * 10 + d.k) as u64);
        let extent = |(bs, r, c): (usize, usize, usize), rows: usize, cols: usize| {
            1 + (d.batch.max(1) - 1) * bs + (rows.max(1) - 1) * r + (cols.max(1) - 1) * c
        };
        let (a, bm) = (
            rng.f32s(extent(ls, d.m, d.k)),
            rng.f32s(extent(rs, d.k, d.n)),
        );
        let bias = rng.f32s(d.n);
        let (lhs, rhs) = (operand(&a, ls), operand(&bm, rs));
        let mut out = vec![f32::NAN; d.batch * d.m * d.n];
        let kernel = Kernel::Matmul(chorus_core::kernel::Matmul {
            lhs,
            rhs,
            out: ptr_mut(&mut out),
            batch: d.batch,
            m: d.m,
            n: d.n,
            k: d.k,
            epilogue: Epilogue {
                bias: with_bias.then(|| ptr(&bias)),
                act,
            },
            rhs_derived: None,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: the operand buffers cover every offset the strides reach (`extent`), the bias
        // has `n` elements, `out` has `batch * m * n` slots.
        unsafe { execute(&kernel) };
        for b in 0..d.batch {
            for i in 0..d.m {
                for j in 0..d.n {
                    let dot: f64 = (0..d.k)
                        .map(|p| at(&a, &lhs, b, i, p) * at(&bm, &rhs, b, p, j))
                        .sum();
                    let shift = if with_bias { f64::from(bias[j]) } else { 0.0 };
                    let expect = act_f64(act, dot + shift);
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
        let kernel = |m, n, batch, out: &mut [f32]| {
            Kernel::Matmul(chorus_core::kernel::Matmul {
                lhs: z,
                rhs: z,
                out: ptr_mut(out),
                batch,
                m,
                n,
                k: 0,
                epilogue: Epilogue::default(),
                rhs_derived: None,
                dtype: chorus_core::DType::F32,
            })
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

    #[test]
    fn fused_bias_and_activation() {
        let d = Dims {
            batch: 3,
            m: 5,
            n: 7,
            k: 4,
        };
        for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::Gelu)] {
            check_epilogue(d, (20, 4, 1), (28, 7, 1), true, act);
            check_epilogue(d, (0, 1, 5), (0, 7, 1), act.is_none(), act); // shared, transposed
        }
        let big = Dims {
            batch: 1,
            m: 33,
            n: 70,
            k: 65,
        };
        check_epilogue(big, (0, 65, 1), (0, 1, 65), true, Some(UnaryOp::Relu));
        // k == 0: the product is 0, the epilogue still applies.
        let bias = [-1.0f32, 2.0];
        let mut out = vec![f32::NAN; 4];
        let z = MatOperand {
            ptr: DevicePtr(0),
            batch_stride: 0,
            row_stride: 0,
            col_stride: 0,
        };
        let kernel = Kernel::Matmul(chorus_core::kernel::Matmul {
            lhs: z,
            rhs: z,
            out: ptr_mut(&mut out),
            batch: 2,
            m: 1,
            n: 2,
            k: 0,
            epilogue: Epilogue {
                bias: Some(ptr(&bias)),
                act: Some(UnaryOp::Relu),
            },
            rhs_derived: None,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: with k == 0 the operands are never read; the bias has `n` elements, `out` has
        // `batch * m * n` slots.
        unsafe { execute(&kernel) };
        assert_eq!(out, vec![0.0, 2.0, 0.0, 2.0]);
    }

    /// Large products may run on several cores; the bits must not change (the runtime promises
    /// results independent of how many threads run), including transposed operands.
    #[test]
    fn parallel_gemm_gives_the_serial_bits() {
        for (m, n, k, transposed) in [
            (256, 256, 256, false),
            (256, 512, 128, true),
            (300, 97, 700, false),
        ] {
            let mut rng = Rng::new((m * n + k) as u64);
            let a: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.f32()).collect();
            let rhs = if transposed {
                operand(&b, (0, 1, k))
            } else {
                operand(&b, (0, n, 1))
            };
            let run = |cores: usize| {
                let mut out = vec![0f32; m * n];
                super::super::set_parallelism(cores);
                let kernel = Kernel::Matmul(chorus_core::kernel::Matmul {
                    lhs: operand(&a, (0, k, 1)),
                    rhs,
                    out: ptr_mut(&mut out),
                    batch: 1,
                    m,
                    n,
                    k,
                    epilogue: Default::default(),
                    rhs_derived: None,
                    dtype: chorus_core::DType::F32,
                });
                // SAFETY: the operands and the output are live Vecs of the described extents.
                unsafe { execute(&kernel) };
                super::super::set_parallelism(1);
                out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            };
            assert!(matches!(
                super::super::gemm_parallelism(m, n, k),
                gemm::Parallelism::None
            ));
            let serial = run(1);
            assert_eq!(run(2), serial, "{m}x{n}x{k}");
            assert_eq!(run(4), serial, "{m}x{n}x{k}");
        }
    }
}
