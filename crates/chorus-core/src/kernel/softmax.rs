//! Softmax and log-softmax along one axis, with the attention masks.

use super::view::{DevicePtr, View};
use crate::dtype::DType;

/// Softmax (or log-softmax) of `scale * src` along the middle axis of the contiguous tensor
/// `[outer, n, inner]`. Masks (which need `inner == 1`) drop entries `(row, j)`, `row < outer`,
/// `j < n`: `causal: Some(q)` drops `j > row % q` (PyTorch's `is_causal` for `q` queries per
/// attention matrix), `mask` (i64, 0 = drop) drops where it is 0. A dropped entry is 0 in the
/// softmax (−∞ in log-softmax); a row with every entry dropped is 0 in the softmax (as
/// PyTorch's attention, which is where masks come from), NaN in the log-softmax. Without masks
/// a row of −∞ is NaN, as in PyTorch. Statistics (max, sum of exponentials) per row in f32
/// then f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Softmax {
    /// Input.
    pub src: DevicePtr,
    /// Output (same shape).
    pub out: DevicePtr,
    /// Product of the dims before the softmax dim.
    pub outer: usize,
    /// Size of the softmax dim.
    pub n: usize,
    /// Product of the dims after it.
    pub inner: usize,
    /// Factor applied to the input first.
    pub scale: f32,
    /// Log-softmax instead of softmax.
    pub log: bool,
    /// Causal masking: `Some(q)` with `q` query rows per attention matrix (row index taken
    /// modulo `q`); entry `(i, j)` is kept when `j <= i`.
    pub causal: Option<usize>,
    /// Keep-mask view, i64, shaped `[outer, n]` (broadcast with zero strides).
    pub mask: Option<View>,
    /// Element type of input and output.
    pub dtype: DType,
}

impl Softmax {
    /// Rows normalized (`outer × inner`).
    pub fn rows(&self) -> usize {
        self.outer * self.inner
    }

    /// Elements of input and output.
    pub fn len(&self) -> usize {
        self.outer * self.n * self.inner
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
