//! Scaled dot-product attention as one kernel, for backends that have it.

use super::view::View;
use crate::dtype::DType;

/// [`Kernel::Attention`](super::Kernel::Attention): for every batch index `b` (row-major over the batch dims) and query
/// `i < l`, `out[b, i, :] = Σ_{j < s} p_j v[b, j, :]` with
/// `p = softmax(scale · (q[b, i, :] · k[b, j, :]))` over `j`, entries dropped as
/// [`Softmax`](super::Softmax) drops them (causal: `j > i`; mask: where it is 0) and a query with every
/// key dropped all 0 (PyTorch's attention since 2.5). Views may have any strides (the heads of a packed projection are read
/// in place); `out` is a view into a fresh block, its elements disjoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    /// Queries `[batch.., l, e]`.
    pub q: View,
    /// Keys `[batch.., s, e]`.
    pub k: View,
    /// Values `[batch.., s, ev]`.
    pub v: View,
    /// Output `[batch.., l, ev]`.
    pub out: View,
    /// Factor applied to every score before the softmax.
    pub scale: f32,
    /// Causal masking (`j <= i` kept).
    pub causal: bool,
    /// Keep-mask, i64 `[batch.., l, s]` (broadcast with zero strides).
    pub mask: Option<View>,
    /// Element type of queries, keys, values and output.
    pub dtype: DType,
}

impl Attention {
    /// `(l, s, e, ev)`: queries, keys, features of queries and keys, features of values.
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let r = self.q.shape.len();
        (
            self.q.shape[r - 2],
            self.k.shape[r - 2],
            self.q.shape[r - 1],
            self.v.shape[r - 1],
        )
    }

    /// Attention matrices: the product of the batch dimensions.
    pub fn batch(&self) -> usize {
        let r = self.q.shape.len();
        self.q.shape[..r - 2].iter().product()
    }
}
