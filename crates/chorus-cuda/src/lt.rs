//! cuBLASLt GEMMs with a fused epilogue: `linear`'s `act(x Wᵀ + b)` in one kernel (bias, ReLU
//! or tanh-GELU applied by the GEMM itself), instead of a GEMM plus a bias/activation kernel.
//! On the small-batch, many-thread workloads chorus exists for, the host-side launch rate is
//! the limit, so one launch less per layer is throughput gained.
//!
//! The algorithm of each GEMM shape is asked of cuBLASLt's heuristic once per device and kept in
//! the device's [`Algos`]: every stream then runs the algorithm stored first for that shape, so
//! the same shape gives the same bits on every stream and in every run, and a stream that meets
//! a shape another stream met (a batching worker meets new batch sizes often) does not ask
//! again (`CHORUS_CUDA_TRACE=1` prints each query and its time). Each stream's [`Lt`] keeps a
//! plan per shape (its descriptors and that algorithm); the plan's bias pointer changes per
//! call, so a plan is used under the stream's plan lock (threads sharing a stream take turns;
//! different streams never contend). Shapes the epilogues cannot express (erf-GELU, tanh, exp,
//! batched GEMMs) take the plain cuBLAS path.

use crate::driver::Context;
use chorus_core::kernel::{MatOperand, UnaryOp};
use chorus_core::{BackendError, BackendResult, DevicePtr};
use chorus_sync::{rank, Arc, RankedMutex};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::sys::{
    self as lt, cublasComputeType_t, cublasLtEpilogue_t, cublasLtMatmulDescAttributes_t as Desc,
    cublasLtMatmulPreferenceAttributes_t as Pref, cublasStatus_t, cudaDataType,
};
use std::collections::HashMap;
use std::ffi::c_void;

/// What a fused epilogue does after the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Epi {
    Bias,
    ReluBias,
    GeluTanhBias,
    Relu,
    GeluTanh,
}

impl Epi {
    /// The epilogue for `bias` and `act`, if cuBLASLt has one (`None` for a plain GEMM too).
    fn of(bias: bool, act: Option<UnaryOp>) -> Option<Epi> {
        Some(match (bias, act) {
            (true, None) => Epi::Bias,
            (true, Some(UnaryOp::Relu)) => Epi::ReluBias,
            (true, Some(UnaryOp::GeluTanh)) => Epi::GeluTanhBias,
            (false, Some(UnaryOp::Relu)) => Epi::Relu,
            (false, Some(UnaryOp::GeluTanh)) => Epi::GeluTanh,
            _ => return None,
        })
    }

    fn raw(self) -> cublasLtEpilogue_t {
        use cublasLtEpilogue_t as E;
        match self {
            Epi::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Epi::ReluBias => E::CUBLASLT_EPILOGUE_RELU_BIAS,
            Epi::GeluTanhBias => E::CUBLASLT_EPILOGUE_GELU_BIAS,
            Epi::Relu => E::CUBLASLT_EPILOGUE_RELU,
            Epi::GeluTanh => E::CUBLASLT_EPILOGUE_GELU,
        }
    }
}

/// A GEMM shape: cuBLAS-side (column-major) m, n, k, operations and leading dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    trans_a: bool,
    lda: u64,
    trans_b: bool,
    ldb: u64,
    epi: Epi,
    tf32: bool,
    /// Workspace bytes the algorithm may use.
    workspace: u64,
}

/// The algorithm of each GEMM shape on one device (`None`: the heuristic has none), shared by
/// the device's streams (module docs). The heuristic runs without the lock held; when two
/// streams ask for a new shape at once, both query and the first to store its answer wins.
#[derive(Debug)]
pub(crate) struct Algos(RankedMutex<HashMap<Key, Option<lt::cublasLtMatmulAlgo_t>>>);

impl Default for Algos {
    fn default() -> Self {
        Algos(RankedMutex::new(rank::BACKEND_GEMM_ALGOS, HashMap::new()))
    }
}

impl Algos {
    /// The stored algorithm of `key`, or `query`'s answer, stored unless another stream stored
    /// one first (then that one).
    fn get_or_query(
        &self,
        key: &Key,
        query: impl FnOnce() -> BackendResult<Option<lt::cublasLtMatmulAlgo_t>>,
    ) -> BackendResult<Option<lt::cublasLtMatmulAlgo_t>> {
        if let Some(algo) = self.0.lock().get(key) {
            return Ok(*algo);
        }
        let found = query()?;
        Ok(*self.0.lock().entry(*key).or_insert(found))
    }

    /// Shapes stored so far.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// Descriptors and algorithm of one shape.
#[derive(Debug)]
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created once by `Lt::plan`, destroyed once; no call uses them any more (the
        // owner is being dropped after its stream was synchronized). A plan whose building
        // failed part way has null layouts for what was not made: those are skipped.
        unsafe {
            let _ = lt::cublasLtMatmulDescDestroy(self.desc);
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = lt::cublasLtMatrixLayoutDestroy(l);
                }
            }
        }
    }
}

/// A stream's cuBLASLt handle and plans.
#[derive(Debug)]
pub(crate) struct Lt {
    handle: lt::cublasLtHandle_t,
    plans: RankedMutex<HashMap<Key, Option<Plan>>>,
    workspace: (u64, usize),
    ctx: Arc<Context>,
}

// SAFETY: the handle is only used under `plans`' lock or for plan creation (also under it);
// plans are plain descriptor handles owned by this value.
unsafe impl Send for Lt {}
// SAFETY: as above.
unsafe impl Sync for Lt {}

fn status(s: cublasStatus_t, api: &'static str) -> BackendResult<()> {
    match s {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        other => Err(BackendError::Call {
            api,
            message: format!("{other:?}"),
        }),
    }
}

/// Sets one attribute from a value.
///
/// # Safety
/// `T` is the attribute's type, as cuBLASLt documents it.
unsafe fn set_desc<T>(desc: lt::cublasLtMatmulDesc_t, attr: Desc, v: &T) -> BackendResult<()> {
    status(
        // SAFETY: `v` points at a live value of the attribute's size.
        unsafe {
            lt::cublasLtMatmulDescSetAttribute(
                desc,
                attr,
                (v as *const T).cast(),
                std::mem::size_of::<T>(),
            )
        },
        "cublasLtMatmulDescSetAttribute",
    )
}

impl Lt {
    /// A handle for one stream, sharing that stream's cuBLAS workspace (`(address, bytes)`).
    pub(crate) fn new(ctx: &Arc<Context>, workspace: (u64, usize)) -> BackendResult<Lt> {
        // The library is present: the backend checked in `blas::warm_up` when it started.
        ctx.bind()?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: the context is current; writes one handle, destroyed in Drop.
        status(unsafe { lt::cublasLtCreate(&mut handle) }, "cublasLtCreate")?;
        Ok(Lt {
            handle,
            plans: RankedMutex::new(rank::BACKEND_PLANS, HashMap::new()),
            workspace,
            ctx: Arc::clone(ctx),
        })
    }

    /// `out = act(lhs @ rhs + bias)` (batch 1, f32) with the epilogue fused, on `stream`.
    /// Returns `Ok(false)` when this GEMM has no fused form (the caller runs the plain path).
    /// Only the failure of the enqueueing call goes through `failed` (the caller's stream makes
    /// it sticky); a descriptor or heuristic failure enqueued nothing and leaves the stream as
    /// it was.
    ///
    /// # Safety
    /// As `Blas::sgemm` (the context is current), plus `bias` (if any) readable for `n` f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul(
        &self,
        stream: cudarc::driver::sys::CUstream,
        lhs: &MatOperand,
        rhs: &MatOperand,
        out: DevicePtr,
        [m, n, k]: [usize; 3],
        bias: Option<DevicePtr>,
        act: Option<UnaryOp>,
        tf32: bool,
        failed: impl FnOnce(BackendError) -> BackendError,
    ) -> BackendResult<bool> {
        let Some(epi) = Epi::of(bias.is_some(), act) else {
            return Ok(false);
        };
        // The heuristic assumes 256-byte aligned pointers (cuBLASLt's default preference);
        // views at other offsets take the plain path.
        let aligned = [lhs.ptr.0, rhs.ptr.0, out.0, bias.map_or(0, |b| b.0)]
            .iter()
            .all(|p| p % 256 == 0);
        if !aligned {
            return Ok(false);
        }
        // Cᵀ (n×m) = Bᵀ Aᵀ, as in blas.rs: cuBLAS's A is our rhs, its B our lhs.
        let (Some((ta, lda)), Some((tb, ldb))) = (rhs.blas_layout(k, n), lhs.blas_layout(m, k))
        else {
            return Ok(false);
        };
        let key = Key {
            m: n as u64,
            n: m as u64,
            k: k as u64,
            trans_a: ta,
            lda: lda as u64,
            trans_b: tb,
            ldb: ldb as u64,
            epi,
            tf32,
            workspace: self.workspace.1 as u64,
        };
        let mut plans = self.plans.lock();
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            // A shape the heuristic has no algorithm for is remembered as `None`.
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(&key)?),
        };
        let Some(plan) = plan.as_ref() else {
            return Ok(false);
        };
        let bias_ptr = bias.map_or(0u64, |b| b.0);
        if bias.is_some() {
            // SAFETY: the bias pointer attribute is a device pointer (u64 here).
            unsafe {
                set_desc(
                    plan.desc,
                    Desc::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias_ptr,
                )?
            };
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        status(
            // SAFETY: caller's contract for the operands, bias and output; the plan's layouts
            // describe exactly these extents; the workspace belongs to this stream; alpha and
            // beta are host scalars outliving the call (host pointer mode, the default).
            unsafe {
                lt::cublasLtMatmul(
                    self.handle,
                    plan.desc,
                    (&alpha as *const f32).cast(),
                    rhs.ptr.0 as *const c_void,
                    plan.a,
                    lhs.ptr.0 as *const c_void,
                    plan.b,
                    (&beta as *const f32).cast(),
                    out.0 as *const c_void,
                    plan.c,
                    out.0 as *mut c_void,
                    plan.c,
                    &plan.algo,
                    self.workspace.0 as *mut c_void,
                    self.workspace.1,
                    stream.cast(),
                )
            },
            "cublasLtMatmul",
        )
        .map_err(failed)?;
        Ok(true)
    }

    /// Builds the descriptors of `key` with the device's algorithm for it (`None` when the
    /// heuristic has none).
    fn plan(&self, key: &Key) -> BackendResult<Option<Plan>> {
        let compute = if key.tf32 {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let layout = |rows: u64, cols: u64, ld: u64| -> BackendResult<lt::cublasLtMatrixLayout_t> {
            let mut l = std::ptr::null_mut();
            status(
                // SAFETY: writes one layout handle, owned by the plan.
                unsafe {
                    lt::cublasLtMatrixLayoutCreate(
                        &mut l,
                        cudaDataType::CUDA_R_32F,
                        rows,
                        cols,
                        ld as i64,
                    )
                },
                "cublasLtMatrixLayoutCreate",
            )?;
            Ok(l)
        };
        let mut desc = std::ptr::null_mut();
        status(
            // SAFETY: writes one descriptor handle, owned by the plan.
            unsafe { lt::cublasLtMatmulDescCreate(&mut desc, compute, cudaDataType::CUDA_R_32F) },
            "cublasLtMatmulDescCreate",
        )?;
        // Stored layouts: A is m×k (op N) or k×m (op T), likewise B; C is m×n, ld m.
        let (ar, ac) = if key.trans_a {
            (key.k, key.m)
        } else {
            (key.m, key.k)
        };
        let (br, bc) = if key.trans_b {
            (key.n, key.k)
        } else {
            (key.k, key.n)
        };
        // Owned by `plan` from here, so that a failure below destroys what was made.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        plan.a = layout(ar, ac, key.lda)?;
        plan.b = layout(br, bc, key.ldb)?;
        plan.c = layout(key.m, key.n, key.m)?;
        // SAFETY: attribute types as documented: cublasOperation_t (i32 enum) for TRANSA/B,
        // cublasLtEpilogue_t (u32 enum) for EPILOGUE.
        unsafe {
            set_desc(
                plan.desc,
                Desc::CUBLASLT_MATMUL_DESC_TRANSA,
                &op(key.trans_a),
            )?;
            set_desc(
                plan.desc,
                Desc::CUBLASLT_MATMUL_DESC_TRANSB,
                &op(key.trans_b),
            )?;
            set_desc(
                plan.desc,
                Desc::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &key.epi.raw(),
            )?;
        }
        let Some(algo) = self
            .ctx
            .gemm_algos
            .get_or_query(key, || self.heuristic(&plan))?
        else {
            return Ok(None);
        };
        plan.algo = algo;
        Ok(Some(plan))
    }

    /// The algorithm cuBLASLt's heuristic picks for `plan`'s descriptors within this stream's
    /// workspace (`None` when it has none).
    fn heuristic(&self, plan: &Plan) -> BackendResult<Option<lt::cublasLtMatmulAlgo_t>> {
        let mut pref = std::ptr::null_mut();
        let mut result: lt::cublasLtMatmulHeuristicResult_t =
            // SAFETY: a plain C struct for which all-zero bytes are a valid value.
            unsafe { std::mem::zeroed() };
        let mut found = 0;
        // SAFETY: the preference is created, configured and destroyed here; the heuristic
        // writes at most one result into `result`; the descriptors are live (owned by `plan`).
        unsafe {
            status(
                lt::cublasLtMatmulPreferenceCreate(&mut pref),
                "cublasLtMatmulPreferenceCreate",
            )?;
            let ws = self.workspace.1 as u64;
            let r = lt::cublasLtMatmulPreferenceSetAttribute(
                pref,
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            );
            let h = crate::driver::traced("cuBLASLt heuristic", || {
                lt::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    pref,
                    1,
                    &mut result,
                    &mut found,
                )
            });
            let _ = lt::cublasLtMatmulPreferenceDestroy(pref);
            status(r, "cublasLtMatmulPreferenceSetAttribute")?;
            if h != cublasStatus_t::CUBLAS_STATUS_SUCCESS || found == 0 {
                return Ok(None);
            }
        }
        Ok(Some(result.algo))
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            self.plans.lock().clear();
            // SAFETY: created once in `new`, destroyed once, after its plans.
            let _ = unsafe { lt::cublasLtDestroy(self.handle) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: u64) -> Key {
        Key {
            m,
            n: 1,
            k: 512,
            trans_a: true,
            lda: 512,
            trans_b: false,
            ldb: 512,
            epi: Epi::ReluBias,
            tf32: false,
            workspace: 8 << 20,
        }
    }

    fn algo(tag: u64) -> lt::cublasLtMatmulAlgo_t {
        lt::cublasLtMatmulAlgo_t { data: [tag; 8] }
    }

    #[test]
    fn a_shape_is_queried_once_and_its_first_answer_kept() {
        let algos = Algos::default();
        assert_eq!(
            algos.get_or_query(&key(1), || Ok(Some(algo(7)))).unwrap(),
            Some(algo(7))
        );
        // Stored: the query is not asked again.
        let again = algos
            .get_or_query(&key(1), || panic!("queried twice"))
            .unwrap();
        assert_eq!(again, Some(algo(7)));
        // "No algorithm" is remembered too; another shape is asked.
        assert_eq!(algos.get_or_query(&key(2), || Ok(None)).unwrap(), None);
        assert_eq!(
            algos
                .get_or_query(&key(2), || panic!("queried twice"))
                .unwrap(),
            None
        );
        assert_eq!(algos.len(), 2);
        // A failed query stores nothing.
        let failed = algos.get_or_query(&key(3), || {
            Err(BackendError::Call {
                api: "test",
                message: "no".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(algos.len(), 2);
    }

    #[test]
    fn when_two_streams_race_on_a_new_shape_both_use_the_first_stored_answer() {
        let algos = Algos::default();
        // The second stream's query runs while the first's is in flight (both missed) and
        // stores first: the first stream gets the second's answer, not its own.
        let first = algos
            .get_or_query(&key(4), || {
                let second = algos.get_or_query(&key(4), || Ok(Some(algo(2)))).unwrap();
                assert_eq!(second, Some(algo(2)));
                Ok(Some(algo(1)))
            })
            .unwrap();
        assert_eq!(first, Some(algo(2)));
    }
}
