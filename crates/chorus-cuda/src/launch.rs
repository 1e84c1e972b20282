//! Kernel descriptors to CUDA work: GEMMs go to the stream's cuBLAS handle, everything else to
//! the NVRTC kernels of `kernels.cu` (see that file for each kernel's launch shape).
//!
//! Strided views are passed as [`Dims`] after *coalescing* (`chorus_core::kernel::coalesce`):
//! size-1 dimensions are dropped and neighbours that step as one in every view of the kernel
//! are merged, so a contiguous operand arrives as one dimension of stride 1 and the
//! kernels' index arithmetic stays short. A view that still has more than [`MAX_DIMS`]
//! dimensions is refused with an error naming the kernel.

use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{
    coalesce, row_major_strides, ArgOp, BinaryOp, Kernel, ReduceOp, Scalar, UnaryOp, View,
};
use chorus_core::{BackendError, BackendResult, DType, DevicePtr};
use std::ffi::c_void;

/// Dimensions a [`Dims`] can carry (as `MAX_DIMS` in kernels.cu).
pub(crate) const MAX_DIMS: usize = 16;

/// Threads per block of every kernel.
const BLOCK: u32 = 256;

/// A coalesced strided layout, `struct Dims` in kernels.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    rank: i64,
    shape: [i64; MAX_DIMS],
    strides: [i64; MAX_DIMS],
}

impl Dims {
    fn new(kernel: &'static str, shape: &[usize], strides: &[usize]) -> BackendResult<Dims> {
        if shape.len() > MAX_DIMS {
            return Err(BackendError::Kernel {
                kernel,
                message: format!(
                    "a view with {} non-mergeable dimensions (the CUDA kernels take at most {MAX_DIMS})",
                    shape.len()
                ),
            });
        }
        let mut d = Dims {
            rank: shape.len() as i64,
            shape: [0; MAX_DIMS],
            strides: [0; MAX_DIMS],
        };
        for (i, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            d.shape[i] = n as i64;
            d.strides[i] = s as i64;
        }
        Ok(d)
    }
}

/// A pointer to one kernel argument, for cuLaunchKernel's parameter array.
pub(crate) fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

fn ptr(p: Option<DevicePtr>) -> u64 {
    p.map_or(0, |p| p.0)
}

fn unsupported(kernel: &'static str, what: String) -> BackendError {
    BackendError::Kernel {
        kernel,
        message: format!("the CUDA backend has no {what}"),
    }
}

fn unary_code(kernel: &'static str, op: UnaryOp) -> BackendResult<i32> {
    Ok(match op {
        UnaryOp::Relu => 0,
        UnaryOp::Gelu => 1,
        UnaryOp::GeluTanh => 2,
        UnaryOp::Tanh => 3,
        UnaryOp::Exp => 4,
        other => return Err(unsupported(kernel, format!("{other:?}"))),
    })
}

/// Word type of an element size: the copy and gather kernels move bits, not values.
fn word(kernel: &'static str, dtype: DType, funcs: [Func; 3]) -> BackendResult<Func> {
    match dtype.size() {
        2 => Ok(funcs[0]),
        4 => Ok(funcs[1]),
        8 => Ok(funcs[2]),
        n => Err(unsupported(kernel, format!("{n}-byte element type"))),
    }
}

/// Blocks for `n` independent items (grid-stride kernels take any grid).
fn grid(n: u64) -> u32 {
    n.div_ceil(u64::from(BLOCK)).clamp(1, 1 << 20) as u32
}

/// Blocks for `rows` rows (one block per row, grid-stride over rows).
fn row_grid(rows: u64) -> u32 {
    rows.clamp(1, 65_535) as u32
}

/// Launches `f` with `params` on `stream`.
///
/// # Safety
/// `params` matches the kernel's parameter list in kernels.cu (count, order, types), every
/// pointer argument addresses device memory valid for the kernel's extents until the stream
/// has run it, outputs overlap no inputs, and the context is current.
unsafe fn raw(
    stream: &CudaStream,
    module: &Module,
    f: Func,
    blocks: u32,
    params: &mut [*mut c_void],
) -> BackendResult<()> {
    // SAFETY: forwarded contract.
    unsafe { raw_with(stream, module, f, (blocks, BLOCK, 0), params) }
}

/// As [`raw`] with `threads` per block (a multiple of 32, at most 1024: what the ROW kernels
/// accept) and `shared` bytes of dynamic shared memory per block.
///
/// # Safety
/// As [`raw`]; `shared` is what the kernel reads and writes of its dynamic shared memory, and
/// within the device's limit for a default launch (48 KiB).
pub(crate) unsafe fn raw_with(
    stream: &CudaStream,
    module: &Module,
    f: Func,
    (blocks, threads, shared): (u32, u32, u32),
    params: &mut [*mut c_void],
) -> BackendResult<()> {
    // SAFETY: caller's contract; the function belongs to the loaded module of this context.
    let r = unsafe {
        cudarc::driver::sys::cuLaunchKernel(
            module.func(f),
            blocks,
            1,
            1,
            threads,
            1,
            1,
            shared,
            stream.raw,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    stream.track(r, "cuLaunchKernel")
}

/// Enqueues `kernel` on `stream`.
///
/// # Safety
/// As `Backend::launch`: every pointer of the descriptor addresses live device memory of this
/// context valid for the kernel's extents until the stream has run it; outputs overlap no
/// inputs. The context is current on the calling thread.
pub(crate) unsafe fn launch(
    stream: &CudaStream,
    module: &Module,
    kernel: &Kernel,
    tf32: bool,
) -> BackendResult<()> {
    let name = kernel.name();
    // SAFETY: for every `raw` call below, the parameter lists follow kernels.cu exactly, and
    // the pointers come from the descriptor, whose extents the caller guarantees.
    unsafe {
        match kernel {
            Kernel::Fill { out, len, value } => {
                let (mut o, mut n) = (out.0, *len as u64);
                if n == 0 {
                    return Ok(());
                }
                match *value {
                    Scalar::F32(mut v) => raw(
                        stream,
                        module,
                        Func::FillF32,
                        grid(n),
                        &mut [arg(&mut o), arg(&mut n), arg(&mut v)],
                    ),
                    Scalar::I64(mut v) => raw(
                        stream,
                        module,
                        Func::FillI64,
                        grid(n),
                        &mut [arg(&mut o), arg(&mut n), arg(&mut v)],
                    ),
                    other => Err(unsupported(name, format!("fill value {other:?}"))),
                }
            }
            Kernel::Randn { out, len, seed } => {
                let (mut o, mut n, mut s) = (out.0, *len as u64, *seed);
                if n == 0 {
                    return Ok(());
                }
                raw(
                    stream,
                    module,
                    Func::RandnF32,
                    grid(n.div_ceil(4)),
                    &mut [arg(&mut o), arg(&mut n), arg(&mut s)],
                )
            }
            Kernel::Copy { src, out, dtype } => {
                let dst = View {
                    ptr: *out,
                    shape: src.shape.clone(),
                    strides: row_major_strides(&src.shape),
                };
                copy(stream, module, name, src, &dst, *dtype)
            }
            Kernel::CopyInto { src, dst, dtype } => copy(stream, module, name, src, dst, *dtype),
            Kernel::Matmul {
                lhs,
                rhs,
                out,
                batch,
                m,
                n,
                k,
                epilogue,
                ..
            } => {
                let count = (*batch as u64) * (*m as u64) * (*n as u64);
                if count == 0 {
                    return Ok(());
                }
                if *k == 0 {
                    let (mut o, mut c, mut z) = (out.0, count, 0f32);
                    raw(
                        stream,
                        module,
                        Func::FillF32,
                        grid(c),
                        &mut [arg(&mut o), arg(&mut c), arg(&mut z)],
                    )?;
                } else {
                    let blas = stream.blas()?;
                    if *batch == 1 && (epilogue.bias.is_some() || epilogue.act.is_some()) {
                        let fused = blas.lt.matmul(
                            stream.raw,
                            lhs,
                            rhs,
                            *out,
                            [*m, *n, *k],
                            epilogue.bias,
                            epilogue.act,
                            tf32,
                            |e| stream.fail(e),
                        )?;
                        if fused {
                            return Ok(());
                        }
                    }
                    blas.sgemm(lhs, rhs, *out, [*batch, *m, *n, *k], tf32, |e| {
                        stream.fail(e)
                    })?;
                }
                if epilogue.bias.is_none() && epilogue.act.is_none() {
                    return Ok(());
                }
                let mut act = match epilogue.act {
                    Some(op) => unary_code(name, op)?,
                    None => -1,
                };
                let (mut o, mut b) = (out.0, ptr(epilogue.bias));
                let (mut rows, mut cols) = ((*batch as u64) * (*m as u64), *n as u64);
                raw(
                    stream,
                    module,
                    Func::BiasActF32,
                    grid(count),
                    &mut [
                        arg(&mut o),
                        arg(&mut b),
                        arg(&mut rows),
                        arg(&mut cols),
                        arg(&mut act),
                    ],
                )
            }
            Kernel::Binary {
                op,
                lhs,
                rhs,
                out,
                dtype,
            } => {
                let f = match dtype {
                    DType::F32 => Func::BinaryF32,
                    DType::I64 => Func::BinaryI64,
                    other => return Err(unsupported(name, format!("{other} arithmetic"))),
                };
                let mut code: i32 = match op {
                    BinaryOp::Add => 0,
                    BinaryOp::Sub => 1,
                    BinaryOp::Mul => 2,
                    BinaryOp::Div => 3,
                    other => return Err(unsupported(name, format!("{other:?}"))),
                };
                let mut n = lhs.len() as u64;
                if n == 0 {
                    return Ok(());
                }
                let dense = row_major_strides(&lhs.shape);
                let (shape, s) = coalesce(&lhs.shape, [&lhs.strides, &rhs.strides, &dense]);
                let mut ad = Dims::new(name, &shape, &s[0])?;
                let mut bd = Dims::new(name, &shape, &s[1])?;
                let (mut a, mut b, mut o) = (lhs.ptr.0, rhs.ptr.0, out.0);
                raw(
                    stream,
                    module,
                    f,
                    grid(n),
                    &mut [
                        arg(&mut code),
                        arg(&mut a),
                        arg(&mut ad),
                        arg(&mut b),
                        arg(&mut bd),
                        arg(&mut o),
                        arg(&mut n),
                    ],
                )
            }
            Kernel::Reduce {
                op,
                src,
                shape,
                dims,
                out,
                dtype,
            } => {
                let f = match dtype {
                    DType::F32 => Func::ReduceF32,
                    DType::I64 => Func::ReduceI64,
                    other => return Err(unsupported(name, format!("{other} reduction"))),
                };
                let mut code: i32 = match op {
                    ReduceOp::Sum => 0,
                    ReduceOp::Mean => 1,
                    ReduceOp::Max => 2,
                    ReduceOp::Min => 3,
                    ReduceOp::Prod => 4,
                    other => return Err(unsupported(name, format!("{other:?}"))),
                };
                let strides = row_major_strides(shape);
                let split = |keep: bool| {
                    let (sh, st): (Vec<usize>, Vec<usize>) = (0..shape.len())
                        .filter(|d| dims.contains(d) != keep)
                        .map(|d| (shape[d], strides[d]))
                        .unzip();
                    let (sh, [st]) = coalesce(&sh, [&st]);
                    (sh, st)
                };
                let (ks, kst) = split(true);
                let (rs, rst) = split(false);
                let mut n_out: u64 = ks.iter().map(|&n| n as u64).product();
                let mut n_red: u64 = rs.iter().map(|&n| n as u64).product();
                if shape.contains(&0) {
                    // Empty input: the kept dims may still have elements (reduced to the
                    // identity / NaN by the kernel with n_red == 0), or none at all.
                    n_out = (0..shape.len())
                        .filter(|d| !dims.contains(d))
                        .map(|d| shape[d] as u64)
                        .product();
                    n_red = 0;
                    if n_out == 0 {
                        return Ok(());
                    }
                }
                let mut kept = Dims::new(name, &ks, &kst)?;
                let mut red = Dims::new(name, &rs, &rst)?;
                let (mut s, mut o) = (src.0, out.0);
                if f == Func::ReduceF32 && n_out <= SPLIT_MAX_OUTPUTS && n_red >= SPLIT_MIN_REDUCED
                {
                    return split_reduce(stream, module, code, s, kept, red, o, n_out, n_red);
                }
                // Few long rows: a full-size block per row reads four times as fast.
                let threads = if n_out <= 64 && n_red >= 4096 {
                    1024
                } else {
                    BLOCK
                };
                raw_with(
                    stream,
                    module,
                    f,
                    (row_grid(n_out), threads, 0),
                    &mut [
                        arg(&mut code),
                        arg(&mut s),
                        arg(&mut kept),
                        arg(&mut red),
                        arg(&mut o),
                        arg(&mut n_out),
                        arg(&mut n_red),
                    ],
                )
            }
            Kernel::Unary { op, src, out, len } => {
                let mut code = unary_code(name, *op)?;
                let (mut s, mut o, mut n) = (src.0, out.0, *len as u64);
                if n == 0 {
                    return Ok(());
                }
                raw(
                    stream,
                    module,
                    Func::UnaryF32,
                    grid(n),
                    &mut [arg(&mut code), arg(&mut s), arg(&mut o), arg(&mut n)],
                )
            }
            Kernel::Softmax {
                src,
                out,
                outer,
                n,
                inner,
                scale,
                log,
                causal,
                mask,
            } => {
                let rows = (*outer as u64) * (*inner as u64);
                if rows == 0 || *n == 0 {
                    return Ok(());
                }
                let (mut s, mut o) = (src.0, out.0);
                let (mut outer, mut n, mut inner) = (*outer as u64, *n as u64, *inner as u64);
                let (mut scale, mut log) = (*scale, i32::from(*log));
                let mut causal = causal.map_or(0, |q| q as u64);
                let (mut m, mut s0, mut s1) = match mask {
                    Some(v) => (v.ptr.0, v.strides[0] as i64, v.strides[1] as i64),
                    None => (0, 0, 0),
                };
                raw(
                    stream,
                    module,
                    Func::SoftmaxF32,
                    row_grid(rows),
                    &mut [
                        arg(&mut s),
                        arg(&mut o),
                        arg(&mut outer),
                        arg(&mut n),
                        arg(&mut inner),
                        arg(&mut scale),
                        arg(&mut log),
                        arg(&mut causal),
                        arg(&mut m),
                        arg(&mut s0),
                        arg(&mut s1),
                    ],
                )
            }
            Kernel::ArgReduce {
                op,
                src,
                values,
                indices,
                outer,
                n,
                inner,
            } => {
                let mut code: i32 = match op {
                    ArgOp::Max => 0,
                    ArgOp::Min => 1,
                    other => return Err(unsupported(name, format!("{other:?}"))),
                };
                let rows = (*outer as u64) * (*inner as u64);
                if rows == 0 {
                    return Ok(());
                }
                let (mut s, mut v, mut i) = (src.0, values.0, indices.0);
                let (mut outer, mut n, mut inner) = (*outer as u64, *n as u64, *inner as u64);
                raw(
                    stream,
                    module,
                    Func::ArgReduceF32,
                    row_grid(rows),
                    &mut [
                        arg(&mut code),
                        arg(&mut s),
                        arg(&mut v),
                        arg(&mut i),
                        arg(&mut outer),
                        arg(&mut n),
                        arg(&mut inner),
                    ],
                )
            }
            Kernel::LayerNorm {
                src,
                residual,
                out,
                weight,
                bias,
                rows,
                n,
                eps,
            } => {
                if *rows == 0 {
                    return Ok(());
                }
                let (mut s, mut o, mut w, mut b) = (src.0, out.0, ptr(*weight), ptr(*bias));
                let mut r = ptr(*residual);
                let (mut rows, mut n, mut eps) = (*rows as u64, *n as u64, *eps);
                raw(
                    stream,
                    module,
                    Func::LayerNormF32,
                    row_grid(rows),
                    &mut [
                        arg(&mut s),
                        arg(&mut r),
                        arg(&mut o),
                        arg(&mut w),
                        arg(&mut b),
                        arg(&mut rows),
                        arg(&mut n),
                        arg(&mut eps),
                    ],
                )
            }
            Kernel::GroupNorm {
                src,
                out,
                weight,
                bias,
                batch,
                channels,
                groups,
                spatial,
                eps,
            } => {
                let rows = (*batch as u64) * (*groups as u64);
                if rows == 0 {
                    return Ok(());
                }
                let (mut s, mut o, mut w, mut b) = (src.0, out.0, ptr(*weight), ptr(*bias));
                let (mut batch, mut c, mut g, mut sp, mut eps) = (
                    *batch as u64,
                    *channels as u64,
                    *groups as u64,
                    *spatial as u64,
                    *eps,
                );
                raw(
                    stream,
                    module,
                    Func::GroupNormF32,
                    row_grid(rows),
                    &mut [
                        arg(&mut s),
                        arg(&mut o),
                        arg(&mut w),
                        arg(&mut b),
                        arg(&mut batch),
                        arg(&mut c),
                        arg(&mut g),
                        arg(&mut sp),
                        arg(&mut eps),
                    ],
                )
            }
            Kernel::Conv2d {
                src,
                weight,
                bias,
                out,
                batch,
                c_in,
                hw,
                c_out,
                khw,
                stride,
                padding,
                groups,
                out_hw,
            } => {
                let count = [*batch, *c_out, out_hw[0], out_hw[1]]
                    .iter()
                    .map(|&v| v as u64)
                    .product::<u64>();
                if count == 0 {
                    return Ok(());
                }
                let (mut s, mut w, mut b, mut o) = (src.0, weight.0, ptr(*bias), out.0);
                let mut v: [u64; 14] = [
                    *batch, *c_in, hw[0], hw[1], *c_out, khw[0], khw[1], stride[0], stride[1],
                    padding[0], padding[1], *groups, out_hw[0], out_hw[1],
                ]
                .map(|x| x as u64);
                let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = &mut v;
                raw(
                    stream,
                    module,
                    Func::Conv2dF32,
                    grid(count),
                    &mut [
                        arg(&mut s),
                        arg(&mut w),
                        arg(&mut b),
                        arg(&mut o),
                        arg(a0),
                        arg(a1),
                        arg(a2),
                        arg(a3),
                        arg(a4),
                        arg(a5),
                        arg(a6),
                        arg(a7),
                        arg(a8),
                        arg(a9),
                        arg(a10),
                        arg(a11),
                        arg(a12),
                        arg(a13),
                    ],
                )
            }
            Kernel::AdaptiveAvgPool2d {
                src,
                out,
                planes,
                hw,
                out_hw,
            } => {
                let count = (*planes as u64) * (out_hw[0] as u64) * (out_hw[1] as u64);
                if count == 0 {
                    return Ok(());
                }
                let (mut s, mut o) = (src.0, out.0);
                let mut v = [*planes, hw[0], hw[1], out_hw[0], out_hw[1]].map(|x| x as u64);
                let [p, h, w, oh, ow] = &mut v;
                raw(
                    stream,
                    module,
                    Func::AdaptiveAvgPool2dF32,
                    grid(count),
                    &mut [
                        arg(&mut s),
                        arg(&mut o),
                        arg(p),
                        arg(h),
                        arg(w),
                        arg(oh),
                        arg(ow),
                    ],
                )
            }
            Kernel::IndexSelect {
                src,
                indices,
                out,
                outer,
                n,
                inner,
                count,
                dtype,
            } => {
                let f = word(
                    name,
                    *dtype,
                    [
                        Func::IndexSelectU16,
                        Func::IndexSelectU32,
                        Func::IndexSelectU64,
                    ],
                )?;
                let total = (*outer as u64) * (*count as u64) * (*inner as u64);
                if total == 0 {
                    return Ok(());
                }
                let (mut s, mut i, mut o, mut e) = (src.0, indices.0, out.0, stream.err_dev);
                let mut v = [*outer, *n, *inner, *count].map(|x| x as u64);
                let [a0, a1, a2, a3] = &mut v;
                raw(
                    stream,
                    module,
                    f,
                    grid(total),
                    &mut [
                        arg(&mut s),
                        arg(&mut i),
                        arg(&mut o),
                        arg(a0),
                        arg(a1),
                        arg(a2),
                        arg(a3),
                        arg(&mut e),
                    ],
                )
            }
            Kernel::Attention(a) => crate::attention::launch(stream, module, a),
            other => Err(unsupported(name, format!("kernel {}", other.name()))),
        }
    }
}

/// Reductions with at most this many outputs ...
const SPLIT_MAX_OUTPUTS: u64 = 512;
/// ... and at least this many reduced elements per output run in two passes, so that more than
/// one block works on each output.
const SPLIT_MIN_REDUCED: u64 = 1 << 17;

/// An f32 reduction in two passes (`reduce_partial_f32`, `reduce_finish_f32`): each output's
/// reduced elements are split into `parts` chunks folded by separate blocks into double partial
/// results in the stream's scratch buffer, then folded per output. The split depends only on
/// the shape, so the result is the same on every run.
///
/// # Safety
/// As [`launch`], for the reduction's `src` (readable over `kept` × `red`) and `out` (`n_out`
/// f32).
#[allow(clippy::too_many_arguments)]
unsafe fn split_reduce(
    stream: &CudaStream,
    module: &Module,
    mut code: i32,
    mut src: u64,
    mut kept: Dims,
    mut red: Dims,
    mut out: u64,
    mut n_out: u64,
    mut n_red: u64,
) -> BackendResult<()> {
    let mut chunk = n_red.div_ceil(1024).max(4096);
    let mut parts = n_red.div_ceil(chunk);
    let bytes = usize::try_from(n_out * parts * 8).expect("at most 512 × 1024 partials");
    // The scratch lock is held until both passes are enqueued, so another thread sharing this
    // stream cannot slip its own partials in between.
    stream.with_scratch(bytes, |scratch| {
        let mut partial = scratch;
        let mut rows = n_out * parts;
        // SAFETY: caller's contract for src/out; `partial` is this stream's scratch buffer of at
        // least `bytes` bytes, used only by kernels of this stream, in stream order.
        unsafe {
            raw(
                stream,
                module,
                Func::ReducePartialF32,
                row_grid(rows),
                &mut [
                    arg(&mut code),
                    arg(&mut src),
                    arg(&mut kept),
                    arg(&mut red),
                    arg(&mut partial),
                    arg(&mut n_out),
                    arg(&mut n_red),
                    arg(&mut parts),
                    arg(&mut chunk),
                ],
            )?;
            rows = n_out;
            raw(
                stream,
                module,
                Func::ReduceFinishF32,
                row_grid(rows),
                &mut [
                    arg(&mut code),
                    arg(&mut partial),
                    arg(&mut out),
                    arg(&mut n_out),
                    arg(&mut n_red),
                    arg(&mut parts),
                ],
            )
        }
    })
}

/// `dst[idx] = src[idx]` over two views of one shape.
///
/// # Safety
/// As [`launch`].
unsafe fn copy(
    stream: &CudaStream,
    module: &Module,
    name: &'static str,
    src: &View,
    dst: &View,
    dtype: DType,
) -> BackendResult<()> {
    let f = word(name, dtype, [Func::CopyU16, Func::CopyU32, Func::CopyU64])?;
    let mut n = src.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let (shape, s) = coalesce(&src.shape, [&src.strides, &dst.strides]);
    let mut sd = Dims::new(name, &shape, &s[0])?;
    let mut dd = Dims::new(name, &shape, &s[1])?;
    let (mut a, mut b) = (src.ptr.0, dst.ptr.0);
    // SAFETY: caller's contract; parameters as `copy_strided_*` in kernels.cu.
    unsafe {
        raw(
            stream,
            module,
            f,
            grid(n),
            &mut [
                arg(&mut a),
                arg(&mut sd),
                arg(&mut b),
                arg(&mut dd),
                arg(&mut n),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_refuse_too_many() {
        let shape = vec![2; MAX_DIMS + 1];
        assert!(Dims::new("copy", &shape, &shape).is_err());
        assert!(Dims::new("copy", &shape[..MAX_DIMS], &shape[..MAX_DIMS]).is_ok());
    }
}
