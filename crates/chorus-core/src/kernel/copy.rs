//! Data movement: strided copies between views and gathers by index.

use super::view::{coalesce, row_major_strides, DevicePtr, View};
use crate::dtype::DType;

/// Strided copy between two views of the same shape: `dst[idx] = src[idx]`. `dst` is a fresh
/// contiguous block ([`StridedCopy::to_contiguous`]) or a region of a larger contiguous tensor
/// (concatenation); the views never overlap.
#[derive(Debug, Clone, PartialEq)]
pub struct StridedCopy {
    /// Source view.
    pub src: View,
    /// Destination view, of `src`'s shape.
    pub dst: View,
    /// Element type of both.
    pub dtype: DType,
}

impl StridedCopy {
    /// A gather of `src` into the contiguous buffer at `out`.
    pub fn to_contiguous(src: View, out: DevicePtr, dtype: DType) -> StridedCopy {
        let dst = View {
            ptr: out,
            strides: row_major_strides(&src.shape),
            shape: src.shape.clone(),
        };
        StridedCopy { src, dst, dtype }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape with the strides of `src` and `dst`, coalesced ([`coalesce`]).
    pub fn coalesced(&self) -> (Vec<usize>, [Vec<usize>; 2]) {
        coalesce(&self.src.shape, [&self.src.strides, &self.dst.strides])
    }
}

/// Gather along the middle axis: the contiguous `[outer, n, inner]` source gives the contiguous
/// `[outer, count, inner]` output, `out[o, k, i] = src[o, indices[k], i]`. An index outside
/// `0..n` makes the kernel fail (a sticky stream error naming it).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSelect {
    /// Source.
    pub src: DevicePtr,
    /// `count` i64 indices, contiguous.
    pub indices: DevicePtr,
    /// Output.
    pub out: DevicePtr,
    /// Product of the dims before.
    pub outer: usize,
    /// Size of the indexed dim.
    pub n: usize,
    /// Product of the dims after.
    pub inner: usize,
    /// Number of indices.
    pub count: usize,
    /// Element type of source and output.
    pub dtype: DType,
}

impl IndexSelect {
    /// Elements of the source.
    pub fn src_len(&self) -> usize {
        self.outer * self.n * self.inner
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.outer * self.count * self.inner
    }
}
