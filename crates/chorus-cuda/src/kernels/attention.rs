//! Scaled dot-product attention as one kernel (`attention_f32` in `attention.cu`): which sizes
//! run it ([`fuses`]) and its launch ([`launch`]).
//!
//! One warp per query row keeps the row's `s` scores in shared memory, up to [`WARPS`] warps
//! (rows) per block, fewer when `s` is long: the kernel takes the sizes whose `s` f32 fit the
//! 48 KiB a launch gets by default ([`MAX_SHARED_F32`]); longer attention is a matmul, a
//! softmax and a matmul. Few blocks of several rows each rather than a block per row: small
//! attention is mostly scheduling, not arithmetic (measured on the H100 at 64 threads, before
//! the larger thread caches: 13.2–14.6k transformer forwards/s with a block of 128 threads per
//! row, 16.9–17.4k with a warp per row). `CHORUS_CUDA_ATTENTION` = `fused` (the default) or
//! `unfused` (matmul, softmax, matmul: to measure what the kernel saves); another value is an
//! error when the device is created ([`mode`]).
//!
//! Launch (WARP ROWS, not a shape of [`super::common`]): `warps` = min(max([`MAX_SHARED_F32`] /
//! `s`, 1), [`WARPS`]) rows per block, `32 * warps` threads, `warps * s` f32 of dynamic shared
//! memory, min(ceil(rows / warps), 65535) blocks that grid-stride over the `batch * l` query rows.
//!
//! The views go to the kernel as they are, batch dims uncoalesced: `q`, `k`, `v`, the output
//! and the mask share their batch dims, and a multi-head projection's heads are strided.

use super::common::{arg, raw_with, MAX_DIMS};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::Attention;
use chorus_core::{BackendError, BackendResult};

/// Most warps (query rows at a time) per block.
const WARPS: usize = 4;
/// Most f32 of dynamic shared memory per block (48 KiB).
const MAX_SHARED_F32: usize = 48 * 1024 / 4;

/// `struct Attn` in attention.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Attn {
    nb: i64,
    shape: [i64; MAX_DIMS],
    /// Per view (q, k, v, out, mask): its batch dims' strides, then its rows', then its
    /// columns'.
    strides: [[i64; MAX_DIMS + 2]; 5],
    l: u64,
    s: u64,
    e: u64,
    ev: u64,
    scale: f32,
    causal: i32,
}

/// Whether the kernel is on, from `CHORUS_CUDA_ATTENTION` (read once).
///
/// # Errors
/// A value other than `fused`, `unfused` or nothing.
pub(crate) fn mode() -> BackendResult<bool> {
    // sync-shim: allowed (computed once; reading it is a plain load)
    static ON: std::sync::OnceLock<BackendResult<bool>> = std::sync::OnceLock::new();
    ON.get_or_init(|| {
        let v = std::env::var("CHORUS_CUDA_ATTENTION").unwrap_or_default();
        match v.trim() {
            "" | "fused" => Ok(true),
            "unfused" => Ok(false),
            _ => Err(BackendError::Call {
                api: "CHORUS_CUDA_ATTENTION",
                message: format!("`{v}` is not fused or unfused"),
            }),
        }
    })
    .clone()
}

/// Whether the kernel runs attention over `s` keys of `e` features with values of `ev`.
pub(crate) fn fuses(s: usize, e: usize, ev: usize) -> bool {
    mode().unwrap_or(false) && s > 0 && e > 0 && ev > 0 && s <= MAX_SHARED_F32
}

/// Enqueues `Kernel::Attention` on `stream`.
///
/// # Safety
/// As `kernels::launch` for the descriptor: the views address live device memory of this
/// context over their extents until the stream has run the kernel, `out`'s elements are
/// disjoint and overlap no input, and the sizes are ones [`fuses`] accepts.
pub(super) unsafe fn launch(
    stream: &CudaStream,
    module: &Module,
    attention: &Attention,
) -> BackendResult<()> {
    let Attention {
        q,
        k,
        v,
        out,
        scale,
        causal,
        mask,
        ..
    } = attention;
    let mask = mask.as_ref();
    let nb = q.shape.len() - 2;
    let (l, s, e, ev) = attention.sizes();
    let rows = (attention.batch() * l) as u64;
    if rows == 0 || ev == 0 {
        return Ok(());
    }
    if nb > MAX_DIMS || !fuses(s, e, ev) {
        return Err(BackendError::Kernel {
            kernel: "attention",
            message: format!(
                "no attention kernel for {nb} batch dims, {s} keys of {e}, values of {ev}"
            ),
        });
    }
    let mut a = Attn {
        nb: nb as i64,
        shape: [0; MAX_DIMS],
        strides: [[0; MAX_DIMS + 2]; 5],
        l: l as u64,
        s: s as u64,
        e: e as u64,
        ev: ev as u64,
        scale: *scale,
        causal: i32::from(*causal),
    };
    for (d, &n) in q.shape[..nb].iter().enumerate() {
        a.shape[d] = n as i64;
    }
    for (t, view) in [Some(q), Some(k), Some(v), Some(out), mask]
        .into_iter()
        .enumerate()
    {
        if let Some(view) = view {
            let to = &mut a.strides[t];
            for (d, &st) in view.strides[..nb].iter().enumerate() {
                to[d] = st as i64;
            }
            to[MAX_DIMS] = view.strides[nb] as i64;
            to[MAX_DIMS + 1] = view.strides[nb + 1] as i64;
        }
    }
    let (mut qp, mut kp, mut vp, mut op) = (q.ptr.0, k.ptr.0, v.ptr.0, out.ptr.0);
    let mut mp = mask.map_or(0, |m| m.ptr.0);
    let warps = (MAX_SHARED_F32 / s).clamp(1, WARPS);
    let blocks = rows.div_ceil(warps as u64).min(65_535) as u32;
    let (threads, shared) = ((32 * warps) as u32, (warps * s * 4) as u32);
    // SAFETY: the parameters follow `attention_f32` (five pointers, then `struct Attn` by
    // value, laid out alike by #[repr(C)]); the views' extents are the caller's contract; the
    // kernel uses `s` f32 of dynamic shared memory per warp, within 48 KiB (`fuses`, `warps`).
    unsafe {
        raw_with(
            stream,
            module,
            Func::AttentionF32,
            (blocks, threads, shared),
            &mut [
                arg(&mut qp),
                arg(&mut kp),
                arg(&mut vp),
                arg(&mut op),
                arg(&mut mp),
                arg(&mut a),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attn_is_laid_out_as_in_attention_cu() {
        // i64 nb, i64 shape[16], i64 strides[5][18], u64 l, s, e, ev, float scale, int causal.
        assert_eq!(
            std::mem::size_of::<Attn>(),
            8 + 16 * 8 + 5 * 18 * 8 + 4 * 8 + 4 + 4
        );
        assert_eq!(std::mem::align_of::<Attn>(), 8);
    }

    #[test]
    fn sizes_that_fit_shared_memory_fuse() {
        assert!(fuses(32, 64, 64));
        assert!(fuses(MAX_SHARED_F32, 4096, 128));
        assert!(!fuses(0, 64, 64));
        assert!(!fuses(32, 0, 64));
        assert!(!fuses(MAX_SHARED_F32 + 1, 1, 64));
    }
}
