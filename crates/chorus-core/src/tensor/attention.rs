//! Scaled dot-product attention: one kernel where the backend has it ([`fused`]), else a
//! matmul, a softmax and a matmul.
//!
//! The fused path reads `q`, `k`, `v` and the mask through their strides (no copies) and writes
//! its output in the order of `q`'s dims in memory, so that multi-head attention over a packed
//! projection (`[B, L, 3, H, Dh]` viewed as three `[B, H, L, Dh]`) gets `[B, L, H, Dh]`-ordered
//! heads back, which merge into `[B, L, H·Dh]` without a copy either.

use super::check::{need_dtype, same_device};
use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{self, row_major_strides, Attention, Kernel, View};
use crate::shape::{broadcast, broadcast_strides};

impl Tensor {
    /// Scaled dot-product attention of `q` `[.., L, E]`, `k` `[.., S, E]`, `v` `[.., S, Ev]`:
    /// `softmax(q k^T / sqrt(E)) v`, with an optional causal mask (top-left aligned) and an
    /// optional keep-mask (i64, 1 = attend, broadcastable to `[.., L, S]`), like PyTorch's
    /// `scaled_dot_product_attention` with a boolean `attn_mask`.
    ///
    /// Where the backend has one attention kernel ([`crate::Backend::fuses_attention`]) and
    /// `q`, `k`, `v` have the same batch dims, that kernel runs on the views as they are (the
    /// heads of a packed projection need no copy) and the result's memory follows `q`'s order
    /// of dims (the heads of `[B, L, H, Dh]`-ordered queries come out `[B, L, H, Dh]`-ordered,
    /// viewed as `[B, H, L, Dh]`); elsewhere it is a matmul, a softmax and a matmul.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for incompatible shapes; [`Error::DTypeMismatch`].
    pub fn scaled_dot_product_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        const OP: &str = "scaled_dot_product_attention";
        if q.rank() < 2 || k.rank() < 2 || v.rank() < 2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: q.shape.clone(),
                rhs: k.shape.clone(),
                reason: "q, k, v need at least 2 dimensions",
            });
        }
        if let Some(out) = fused(q, k, v, mask, causal)? {
            return Ok(out);
        }
        // Strided heads (such as views into a packed projection) are copied once each, so
        // that the products see the layouts they would from contiguous heads.
        let (q, k, v) = (&q.contiguous()?, &k.contiguous()?, &v.contiguous()?);
        let (l, e) = (q.shape[q.rank() - 2], q.shape[q.rank() - 1]);
        let scores = q.matmul(&k.transpose(-2, -1)?)?;
        let sr = scores.rank();
        let sdim = scores.shape[sr - 1];
        let mask = mask
            .map(|m| scores_mask(OP, q, m, &scores.shape))
            .transpose()?;
        let rt = q.rt();
        let s = rt.current_stream()?;
        let src = scores.input_on(s)?;
        let mask = mask.map(|m| m.input_on(s)).transpose()?;
        let outer = scores.len() / sdim.max(1);
        let probs = Tensor::empty_on(rt, s, &scores.shape, DType::F32, OP)?;
        let kern = Kernel::Softmax(kernel::Softmax {
            src: src.ptr(),
            out: probs.tensor.ptr(),
            outer,
            n: sdim,
            inner: 1,
            scale: 1.0 / (e as f32).sqrt(),
            log: false,
            causal: causal.then_some(l),
            mask: mask.as_ref().map(|m| crate::kernel::View {
                ptr: m.ptr(),
                shape: vec![outer, sdim],
                strides: row_major_strides(&[outer, sdim]),
            }),
            dtype: DType::F32,
        });
        let probs = Tensor::launch(
            rt,
            s,
            kern,
            probs,
            [Some(&src), mask.as_ref()].into_iter().flatten(),
        )?;
        probs.matmul(v)
    }
}

/// The keep-mask broadcast to the scores' shape `[.., L, S]`, as a view.
fn scores_mask(op: &'static str, q: &Tensor, m: &Tensor, scores: &[usize]) -> Result<Tensor> {
    same_device(op, q, m)?;
    need_dtype(op, m, DType::I64)?;
    let full = broadcast(op, &m.shape, scores)?;
    if full != scores {
        return Err(Error::ShapeMismatch {
            op,
            lhs: scores.to_vec(),
            rhs: m.shape.clone(),
            reason: "mask must broadcast to [.., L, S]",
        });
    }
    let strides = broadcast_strides(&m.shape, &m.strides, &full);
    Ok(m.restride(full, strides))
}

/// Attention as one [`Kernel::Attention`], or `None` where the backend has no such kernel for
/// these sizes or the operands need the general path (other dtypes, devices or batch dims,
/// which also reports their errors).
fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Result<Option<Tensor>> {
    const OP: &str = "scaled_dot_product_attention";
    let r = q.rank();
    let (l, e) = (q.shape[r - 2], q.shape[r - 1]);
    let batch = &q.shape[..r - 2];
    if k.rank() != r
        || v.rank() != r
        || &k.shape[..r - 2] != batch
        || &v.shape[..r - 2] != batch
        || k.shape[r - 1] != e
        || v.shape[r - 2] != k.shape[r - 2]
        || [q, k, v]
            .iter()
            .any(|t| t.dtype != DType::F32 || t.device_id() != q.device_id())
    {
        return Ok(None);
    }
    let (s_len, ev) = (k.shape[r - 2], v.shape[r - 1]);
    let rt = q.rt();
    if !rt.fuses_attention(s_len, e, ev) {
        return Ok(None);
    }
    let mut scores = batch.to_vec();
    scores.extend([l, s_len]);
    let mask = mask.map(|m| scores_mask(OP, q, m, &scores)).transpose()?;
    let s = rt.current_stream()?;
    for t in [q, k, v].into_iter().chain(mask.as_ref()) {
        t.use_on(s)?;
    }
    // The output's dims in memory: the batch dims and `L` in the order of `q`'s strides
    // (largest first; ties, such as dims of one element, keep their order), `Ev` last.
    let mut order: Vec<usize> = (0..r - 1).collect();
    order.sort_by_key(|&d| std::cmp::Reverse(q.strides[d]));
    let mut shape = batch.to_vec();
    shape.extend([l, ev]);
    let mut stored: Vec<usize> = order.iter().map(|&d| shape[d]).collect();
    stored.push(ev);
    let packed = row_major_strides(&stored);
    let mut strides = vec![1; r];
    for (at, &d) in order.iter().enumerate() {
        strides[d] = packed[at];
    }
    let out = Tensor::empty_on(rt, s, &stored, DType::F32, OP)?;
    let kernel = Kernel::Attention(Box::new(Attention {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        out: View {
            ptr: out.tensor.ptr(),
            shape: shape.clone(),
            strides: strides.clone(),
        },
        scale: 1.0 / (e as f32).sqrt(),
        causal,
        mask: mask.as_ref().map(Tensor::view),
        dtype: DType::F32,
    }));
    let out = Tensor::launch(
        rt,
        s,
        kernel,
        out,
        [Some(q), Some(k), Some(v), mask.as_ref()]
            .into_iter()
            .flatten(),
    )?;
    Ok(Some(out.restride(shape, strides)))
}
