//! [`MultiheadAttention`]: PyTorch's `nn.MultiheadAttention` with `batch_first=True`.
//!
//! # Weights
//! `in_proj_weight` `[3E, E]` and `in_proj_bias` `[3E]` (query, key and value projections
//! packed in that order), `out_proj.weight` `[E, E]`, `out_proj.bias` `[E]`.
//!
//! # Protocol
//! Self-attention ([`MultiheadAttention::forward_masked`]) projects `x` `[B, L, E]` with one
//! linear kernel to `[B, L, 3E]`, views it as `[B, L, 3, H, Dh]`, permutes to
//! `[3, B, H, L, Dh]` (a view) and takes q, k and v from its first dimension, runs
//! [`Tensor::scaled_dot_product_attention`] (scale `1/sqrt(Dh)`, optional keep-mask and causal
//! mask), permutes back to `[B, L, H, Dh]`, reshapes to `[B, L, E]` and applies `out_proj`.
//! Where attention is one kernel (CUDA) it reads the heads in place and returns them in
//! `[B, L, H, Dh]` order, so neither permute copies; elsewhere attention copies each head
//! tensor once and the merge of the heads is one copy. Attention with different query, key
//! and value inputs ([`MultiheadAttention::attend`]) projects each with its slice of the packed
//! weight (a view, no copy). The module is immutable; see [`Module`].
//!
//! # Masks
//! The key-padding mask here is a *keep*-mask: i64 `[B, S]`, 1 = attend to that key, 0 =
//! ignore it. That is the opposite of PyTorch's `key_padding_mask` (`True` = ignore); it is
//! what `sdpa`'s boolean `attn_mask` means. A query whose keys are all masked attends to
//! nothing: its attention output is 0 (then the output projection's bias), as in PyTorch since
//! 2.5.

use crate::check::check_param;
use crate::error::{NnError, Result};
use crate::linear::Linear;
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::{DType, Tensor};

const NAME: &str = "MultiheadAttention";

/// Multi-head attention over batch-first inputs.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Linear, Module, MultiheadAttention};
/// # let device = chorus_cpu::device()?;
/// let e = 8;
/// let attn = MultiheadAttention::new(
///     2,
///     Tensor::randn(&device, &[3 * e, e], 1)?,
///     None,
///     Linear::new(Tensor::randn(&device, &[e, e], 2)?, None)?,
/// )?;
/// let x = Tensor::randn(&device, &[4, 5, e], 3)?; // [batch, length, embed]
/// assert_eq!(attn.forward(&x)?.shape(), &[4, 5, e]);
///
/// // Only the first 3 keys of every sequence are attended to.
/// let keep: Vec<i64> = (0..4).flat_map(|_| [1, 1, 1, 0, 0]).collect();
/// let keep = Tensor::from_slice(&device, &keep, &[4, 5])?;
/// let y = attn.forward_masked(&x, Some(&keep), false)?;
/// assert_eq!(y.shape(), &[4, 5, e]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    embed_dim: usize,
    num_heads: usize,
    in_proj_weight: Tensor,
    in_proj_bias: Option<Tensor>,
    out_proj: Linear,
}

impl MultiheadAttention {
    /// Attention with `num_heads` heads from the packed `in_proj_weight` `[3E, E]`, optional
    /// `in_proj_bias` `[3E]` and the output projection `[E, E]`.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] unless `E` is a non-zero multiple of a non-zero `num_heads`
    /// and `out_proj` is `E -> E`; [`NnError::TensorShape`] / [`NnError::TensorDType`] for
    /// unfit projections.
    pub fn new(
        num_heads: usize,
        in_proj_weight: Tensor,
        in_proj_bias: Option<Tensor>,
        out_proj: Linear,
    ) -> Result<MultiheadAttention> {
        let e = out_proj.out_features();
        check_config(e, num_heads)?;
        if out_proj.in_features() != e {
            return Err(NnError::InvalidConfig {
                what: NAME,
                reason: format!(
                    "out_proj must map {e} to {e} features, got {} to {e}",
                    out_proj.in_features()
                ),
            });
        }
        check_param("in_proj_weight", &in_proj_weight, &[3 * e, e])?;
        if let Some(b) = &in_proj_bias {
            check_param("in_proj_bias", b, &[3 * e])?;
        }
        Ok(MultiheadAttention {
            embed_dim: e,
            num_heads,
            in_proj_weight,
            in_proj_bias,
            out_proj,
        })
    }

    /// Loads `in_proj_weight`, `in_proj_bias`, `out_proj.weight` and `out_proj.bias` (PyTorch's
    /// default `bias=True`).
    ///
    /// # Errors
    /// As [`MultiheadAttention::new`]; the load errors of [`Weights::get`], naming the full name.
    pub fn load(
        weights: &Weights,
        embed_dim: usize,
        num_heads: usize,
    ) -> Result<MultiheadAttention> {
        check_config(embed_dim, num_heads)?;
        let e = embed_dim;
        let in_w = weights.get("in_proj_weight", &[3 * e, e])?;
        let in_b = weights.get("in_proj_bias", &[3 * e])?;
        let out_proj = Linear::load(&weights.sub("out_proj."), e, e, true)?;
        MultiheadAttention::new(num_heads, in_w, Some(in_b), out_proj)
    }

    /// Embedding size `E`.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }
    /// Number of heads `H`.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
    /// Size of one head, `E / H`.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Self-attention of `x` (`[B, L, E]`, or `[L, E]` unbatched) with an optional i64
    /// key-padding keep-mask `[B, L]` (`[L]` unbatched; 1 = attend) and an optional causal
    /// mask (query `i` attends to keys `j <= i`).
    ///
    /// # Errors
    /// [`NnError::InvalidInput`] for an unfit `x` or mask; [`NnError::Core`] for device errors.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        key_keep_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let (x3, unbatched) = self.batched(x, "x")?;
        let (b, l, e) = (x3.shape()[0], x3.shape()[1], self.embed_dim);
        let mask = self.mask(key_keep_mask, b, l, unbatched)?;
        let (h, dh) = (self.num_heads, self.head_dim());
        let qkv = x3.linear(&self.in_proj_weight, self.in_proj_bias.as_ref())?;
        // [B, L, 3E] -> [B, L, 3, H, Dh] -> [3, B, H, L, Dh], views: q, k and v are strided
        // `[B, H, L, Dh]` views into the projection (read in place where attention is one
        // kernel, copied by attention otherwise).
        let qkv = qkv
            .reshape(&[b as isize, l as isize, 3, h as isize, dh as isize])?
            .permute(&[2, 0, 3, 1, 4])?;
        let head = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(0, i, 1)?.squeeze(0)?) };
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let y = self.finish(&q, &k, &v, mask.as_ref(), causal)?;
        debug_assert_eq!(y.shape(), [b, l, e]);
        unbatch(y, unbatched)
    }

    /// Attention of `query` (`[B, L, E]`) over `key` and `value` (`[B, S, E]`; or all three
    /// unbatched), each projected with its slice of the packed input projection, with an
    /// optional i64 keep-mask `[B, S]` and an optional causal mask.
    ///
    /// # Errors
    /// [`NnError::InvalidInput`] for unfit inputs or mask; [`NnError::Core`] for device errors.
    pub fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_keep_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let (q3, unbatched) = self.batched(query, "query")?;
        let (k3, k_unbatched) = self.batched(key, "key")?;
        let (v3, v_unbatched) = self.batched(value, "value")?;
        let b = q3.shape()[0];
        let s = k3.shape()[1];
        if k_unbatched != unbatched
            || v_unbatched != unbatched
            || k3.shape()[0] != b
            || v3.shape() != k3.shape()
        {
            return Err(NnError::InvalidInput {
                module: NAME,
                shape: key.shape().to_vec(),
                reason: format!(
                    "key and value must both be [{b}, S, {e}] for a query of shape {:?}, got \
                     key {:?} and value {:?}",
                    query.shape(),
                    key.shape(),
                    value.shape(),
                    e = self.embed_dim
                ),
            });
        }
        let mask = self.mask(key_keep_mask, b, s, unbatched)?;
        let q = self.project(&q3, 0)?;
        let k = self.project(&k3, 1)?;
        let v = self.project(&v3, 2)?;
        let y = self.finish(&q, &k, &v, mask.as_ref(), causal)?;
        unbatch(y, unbatched)
    }

    /// `t` `[B, N, E]` through projection `i` (0 query, 1 key, 2 value), as a `[B, H, N, Dh]`
    /// view of the `[B, N, H, Dh]` projection.
    fn project(&self, t: &Tensor, i: usize) -> Result<Tensor> {
        let (e, h, dh) = (self.embed_dim, self.num_heads, self.head_dim());
        let (b, n) = (t.shape()[0], t.shape()[1]);
        // Row slices of a contiguous matrix are contiguous views: no copy.
        let w = self.in_proj_weight.narrow(0, i * e, e)?;
        let bias = self
            .in_proj_bias
            .as_ref()
            .map(|bias| bias.narrow(0, i * e, e))
            .transpose()?;
        let p = t.linear(&w, bias.as_ref())?;
        Ok(
            p.reshape(&[b as isize, n as isize, h as isize, dh as isize])?
                .permute(&[0, 2, 1, 3])?,
        )
    }

    /// Attention of the heads, merge of the heads and the output projection.
    fn finish(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let (b, l) = (q.shape()[0], q.shape()[2]);
        let o = Tensor::scaled_dot_product_attention(q, k, v, mask, causal)?;
        // [B, H, L, Dh] -> [B, L, H, Dh] -> [B, L, E]
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[
            b as isize,
            l as isize,
            self.embed_dim as isize,
        ])?;
        self.out_proj.forward(&o)
    }

    /// `x` as `[B, N, E]`, and whether it was unbatched `[N, E]`.
    fn batched(&self, x: &Tensor, what: &str) -> Result<(Tensor, bool)> {
        let e = self.embed_dim;
        match *x.shape() {
            [_, _, last] if last == e => Ok((x.clone(), false)),
            [n, last] if last == e => Ok((x.reshape(&[1, n as isize, e as isize])?, true)),
            _ => Err(NnError::InvalidInput {
                module: NAME,
                shape: x.shape().to_vec(),
                reason: format!("{what} must be [B, N, {e}] or [N, {e}]"),
            }),
        }
    }

    /// The keep-mask `[B, S]` (`[S]` unbatched) as `[B, 1, 1, S]`, broadcasting over heads
    /// and queries.
    fn mask(
        &self,
        mask: Option<&Tensor>,
        b: usize,
        s: usize,
        unbatched: bool,
    ) -> Result<Option<Tensor>> {
        let Some(m) = mask else { return Ok(None) };
        let want: &[usize] = if unbatched { &[s] } else { &[b, s] };
        if m.dtype() != DType::I64 || m.shape() != want {
            return Err(NnError::InvalidInput {
                module: NAME,
                shape: m.shape().to_vec(),
                reason: format!(
                    "the key keep-mask must be i64 of shape {want:?} (1 = attend), got {}",
                    m.dtype()
                ),
            });
        }
        Ok(Some(m.reshape(&[b as isize, 1, 1, s as isize])?))
    }
}

/// Drops the batch dimension added for an unbatched input.
fn unbatch(y: Tensor, unbatched: bool) -> Result<Tensor> {
    if unbatched {
        let (l, e) = (y.shape()[1], y.shape()[2]);
        Ok(y.reshape(&[l as isize, e as isize])?)
    } else {
        Ok(y)
    }
}

fn check_config(embed_dim: usize, num_heads: usize) -> Result<()> {
    if embed_dim == 0 || num_heads == 0 || !embed_dim.is_multiple_of(num_heads) {
        return Err(NnError::InvalidConfig {
            what: NAME,
            reason: format!(
                "embed_dim must be a non-zero multiple of num_heads, got {embed_dim} and \
                 {num_heads}"
            ),
        });
    }
    // The packed input projection has 3 × embed_dim rows.
    if embed_dim.checked_mul(3).is_none() {
        return Err(NnError::InvalidConfig {
            what: NAME,
            reason: format!("embed_dim {embed_dim} is too large"),
        });
    }
    Ok(())
}

impl Module for MultiheadAttention {
    /// Self-attention without masks.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None, false)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
