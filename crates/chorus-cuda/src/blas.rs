//! cuBLAS: one handle per stream, never shared between streams, each with its own workspace.
//!
//! A handle is bound to its stream once (`cublasSetStream`) and never reconfigured, so two host
//! threads that share a stream (the shared stream policy) may call it concurrently, which
//! cuBLAS allows for an unchanging handle. Each handle gets its own workspace
//! (`cublasSetWorkspace`): with the default shared workspace cuBLAS does not promise bitwise
//! reproducibility across streams; with a private one of fixed size the same GEMM on any stream
//! picks the same algorithm and gives the same bits.
//!
//! Row-major to column-major: chorus matrices are row-major with arbitrary strides. cuBLAS is
//! column-major, so `C = A B` (m×n) is computed as `Cᵀ = Bᵀ Aᵀ` (n×m, column-major with leading
//! dimension n is exactly row-major C). A row-major operand whose columns are adjacent
//! (`col_stride == 1`) is its own transpose in column-major (`op N`, ld = row stride); one
//! whose rows are adjacent (`row_stride == 1`) is a column-major matrix (`op T`, ld = column
//! stride). The front-end makes any other operand contiguous first (see
//! `chorus_core::tensor`'s matmul).

use crate::driver::Context;
use crate::lt::Lt;
use crate::memory::Segment;
use chorus_core::kernel::MatOperand;
use chorus_core::{BackendError, BackendResult, DevicePtr};
use chorus_sync::Arc;
use cudarc::cublas::sys::{
    self as cublas, cublasComputeType_t, cublasOperation_t, cublasStatus_t, cudaDataType,
};
use cudarc::driver::sys::CUstream;

/// Workspace per handle (cuBLAS recommends 32 MiB on Hopper for best performance; 8 MiB keeps
/// 32 streams at 256 MiB while leaving the algorithms for small and medium GEMMs unchanged).
const WORKSPACE_BYTES: usize = 8 << 20;

/// Checks that cuBLAS and cuBLASLt can be loaded and initializes cuBLAS once (a throwaway
/// handle), so that the first GEMM of a stream does not pay for loading the library.
pub(crate) fn warm_up(ctx: &Arc<Context>) -> BackendResult<()> {
    for (present, lib) in [
        (crate::driver::cublas_present(), "libcublas"),
        (crate::driver::cublaslt_present(), "libcublasLt"),
    ] {
        if !present {
            return Err(BackendError::Call {
                api: "dlopen",
                message: format!("{lib} (cuBLAS) is not installed on this machine"),
            });
        }
    }
    ctx.bind()?;
    // Destroying a handle synchronizes the device: not during another device's capture.
    let _no_capture = crate::graph::building().shared();
    let mut handle = std::ptr::null_mut();
    // SAFETY: the context is current; the handle is created and destroyed here.
    unsafe {
        status(cublas::cublasCreate_v2(&mut handle), "cublasCreate")?;
        let _ = cublas::cublasDestroy_v2(handle);
    }
    Ok(())
}

/// A cuBLAS handle bound to one stream.
#[derive(Debug)]
pub(crate) struct Blas {
    handle: cublas::cublasHandle_t,
    /// cuBLASLt for GEMMs with a fused epilogue, sharing the workspace (same stream).
    pub(crate) lt: Lt,
    _workspace: Segment,
    /// Operands of the first products (`first_products`).
    _scratch: Option<Segment>,
    ctx: Arc<Context>,
}

// SAFETY: the handle is configured once in `new` and only used for GEMM calls afterwards,
// which cuBLAS allows from several threads at once for an unchanging handle.
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

fn status(s: cublasStatus_t, api: &'static str) -> BackendResult<()> {
    match s {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => Err(BackendError::OutOfMemory { bytes: 0 }),
        other => Err(BackendError::Call {
            api,
            message: format!("{other:?}"),
        }),
    }
}

impl Blas {
    /// A handle bound to `stream`.
    pub(crate) fn new(ctx: &Arc<Context>, stream: CUstream) -> BackendResult<Blas> {
        // cuBLAS and cuBLASLt are present: the backend checked in `warm_up` when it started.
        ctx.bind()?;
        let (workspace, ws_ptr) = Segment::alloc(ctx, WORKSPACE_BYTES)?;
        let mut handle = std::ptr::null_mut();
        status(
            // SAFETY: the context is current; writes one handle, destroyed in Drop.
            unsafe { cublas::cublasCreate_v2(&mut handle) },
            "cublasCreate",
        )?;
        let lt = match Lt::new(ctx, (ws_ptr.0, WORKSPACE_BYTES)) {
            Ok(lt) => lt,
            Err(e) => {
                // SAFETY: created above, not used yet.
                let _ = unsafe { cublas::cublasDestroy_v2(handle) };
                return Err(e);
            }
        };
        let blas = Blas {
            handle,
            lt,
            _workspace: workspace,
            _scratch: None,
            ctx: Arc::clone(ctx),
        };
        // SAFETY: live handle and stream; the workspace is device memory of the given size
        // owned by `blas` for the handle's lifetime.
        unsafe {
            status(
                cublas::cublasSetStream_v2(blas.handle, stream.cast()),
                "cublasSetStream",
            )?;
            status(
                cublas::cublasSetWorkspace_v2(
                    blas.handle,
                    ws_ptr.0 as *mut std::ffi::c_void,
                    WORKSPACE_BYTES,
                ),
                "cublasSetWorkspace",
            )?;
        }
        let mut blas = blas;
        // Best effort: the handle works without them; a later capture would then report an
        // invalidated capture as a typed error rather than this handle failing every product.
        let _ = blas.first_products(ctx, stream);
        Ok(blas)
    }

    /// One small product through cuBLASLt and one through cuBLAS: a handle's first products
    /// synchronize the device (inside the call), so they happen here, at creation, where the
    /// caller holds the graph-build lock shared (`crate::graph`), never inside a capture.
    fn first_products(&mut self, ctx: &Arc<Context>, stream: CUstream) -> BackendResult<()> {
        // 1×8 @ 8×8 + bias and relu, then 2×2 @ 2×2: operands in one small segment, every
        // pointer 256-byte aligned (values unspecified; the results are not read). The
        // segment lives as long as the handle (the products run after this returns).
        let (seg, p) = Segment::alloc(ctx, 4096)?;
        self._scratch = Some(seg);
        let op = |offset: u64, row_stride, col_stride| MatOperand {
            ptr: DevicePtr(p.0 + offset),
            batch_stride: 0,
            row_stride,
            col_stride,
        };
        let out = DevicePtr(p.0 + 1024);
        let bias = Some(DevicePtr(p.0 + 2048));
        // SAFETY: every operand, the bias and the output lie in the segment (at most 256
        // bytes each from 256-aligned offsets below 4096), which the handle keeps until it is
        // dropped, after its stream was synchronized; the context is current (bound by `new`).
        unsafe {
            let relu = Some(chorus_core::UnaryOp::Relu);
            self.lt.matmul(
                stream,
                &op(0, 8, 1),
                &op(256, 1, 8),
                out,
                [1, 8, 8],
                bias,
                relu,
                false,
                |e| e,
            )?;
            self.sgemm(
                &op(0, 2, 1),
                &op(256, 2, 1),
                out,
                [1, 2, 2, 2],
                false,
                |e| e,
            )?;
        }
        Ok(())
    }

    /// `out[b] = lhs[b] @ rhs[b]` for f32 operands, `out` contiguous `[batch, m, n]`.
    ///
    /// Extents cuBLAS cannot take are reported before anything is enqueued; only the failure
    /// of the enqueueing call itself goes through `failed` (the caller's stream makes it
    /// sticky), so bad input does not break the stream.
    ///
    /// # Safety
    /// The operands address live device memory of their extents; `out` is writable for
    /// `batch * m * n` f32 and overlaps neither; both are ordered on this handle's stream. The
    /// context is current on the calling thread (`Backend::launch` bound it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm(
        &self,
        lhs: &MatOperand,
        rhs: &MatOperand,
        out: DevicePtr,
        [batch, m, n, k]: [usize; 4],
        tf32: bool,
        failed: impl FnOnce(BackendError) -> BackendError,
    ) -> BackendResult<()> {
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| BackendError::Call {
                api: "cublasGemmStridedBatchedEx",
                message: format!("{what} = {v} exceeds cuBLAS's 32-bit limit"),
            })
        };
        // Cᵀ (n×m) = Bᵀ (n×k) · Aᵀ (k×m): cuBLAS's "A" is our rhs, its "B" our lhs.
        let (op_a, lda) = layout(rhs, k, n)?;
        let (op_b, ldb) = layout(lhs, m, k)?;
        let (cm, cn, ck) = (int(n, "n")?, int(m, "m")?, int(k, "k")?);
        let batch = int(batch, "batch")?;
        let (lda, ldb, ldc) = (int(lda, "lda")?, int(ldb, "ldb")?, int(n.max(1), "ldc")?);
        let stride = |s: usize| i64::try_from(s).unwrap_or(i64::MAX);
        let compute = if tf32 {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        status(
            // SAFETY: caller's contract for the pointers and extents; `layout` checked that each
            // leading dimension covers its matrix; alpha/beta are host scalars (the handle's
            // default pointer mode) that outlive the call.
            unsafe {
                cublas::cublasGemmStridedBatchedEx(
                    self.handle,
                    op_a,
                    op_b,
                    cm,
                    cn,
                    ck,
                    (&alpha as *const f32).cast(),
                    rhs.ptr.0 as *const std::ffi::c_void,
                    cudaDataType::CUDA_R_32F,
                    lda,
                    stride(rhs.batch_stride),
                    lhs.ptr.0 as *const std::ffi::c_void,
                    cudaDataType::CUDA_R_32F,
                    ldb,
                    stride(lhs.batch_stride),
                    (&beta as *const f32).cast(),
                    out.0 as *mut std::ffi::c_void,
                    cudaDataType::CUDA_R_32F,
                    ldc,
                    stride(m * n),
                    batch,
                    compute,
                    cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            },
            "cublasGemmStridedBatchedEx",
        )
        .map_err(failed)
    }
}

/// cuBLAS operation and leading dimension of a row-major `rows × cols` operand, seen as the
/// column-major transpose cuBLAS multiplies with ([`MatOperand::blas_layout`]).
fn layout(op: &MatOperand, rows: usize, cols: usize) -> BackendResult<(cublasOperation_t, usize)> {
    match op.blas_layout(rows, cols) {
        Some((false, ld)) => Ok((cublasOperation_t::CUBLAS_OP_N, ld)),
        Some((true, ld)) => Ok((cublasOperation_t::CUBLAS_OP_T, ld)),
        None => Err(BackendError::Call {
            api: "cublasGemmStridedBatchedEx",
            message: format!(
                "operand {rows}×{cols} with strides ({}, {}) has no BLAS layout (the front-end makes such operands contiguous)",
                op.row_stride, op.col_stride
            ),
        }),
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // Destroying a handle synchronizes the device, so the owner drops it under the
            // graph-build lock, shared (`CudaStream`'s drop; `new` and `CudaStream::blas` hold it).
            // SAFETY: created once in `new`, destroyed once; the stream was synchronized by the
            // runtime before streams are dropped.
            let _ = unsafe { cublas::cublasDestroy_v2(self.handle) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(rs: usize, cs: usize) -> MatOperand {
        MatOperand {
            ptr: DevicePtr(0),
            batch_stride: 0,
            row_stride: rs,
            col_stride: cs,
        }
    }

    #[test]
    fn layouts() {
        use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};
        // Contiguous 3×4: op N, ld 4.
        assert_eq!(layout(&op(4, 1), 3, 4).unwrap(), (N, 4));
        // A transposed view of a contiguous 4×3 (strides (1, 3)): op T, ld 3.
        assert_eq!(layout(&op(1, 3), 3, 4).unwrap(), (T, 3));
        // A row of a larger matrix: padded rows are fine.
        assert_eq!(layout(&op(10, 1), 3, 4).unwrap(), (N, 10));
        // A broadcast row (stride 0) of one row: ld is free.
        assert_eq!(layout(&op(0, 1), 1, 4).unwrap(), (N, 4));
        // A column vector k×1 with any column stride.
        assert_eq!(layout(&op(1, 0), 5, 1).unwrap(), (N, 1));
        // Neither stride is 1: no layout.
        assert!(layout(&op(8, 2), 3, 4).is_err());
        // Overlapping rows (broadcast along rows): no layout.
        assert!(layout(&op(0, 1), 3, 4).is_err());
    }
}
