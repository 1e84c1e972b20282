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
/// `[outer, count, inner]` output, `out[o, k, i] = src[o, indices[k], i]`.
///
/// This kernel can fail on the device: an index outside `0..n` is never read through (its
/// output elements are 0) and is reported in the *fault word* [`IndexSelect::fault`], the
/// kernel's error word, which the runtime reads back to poison the output (see
/// [`FaultWord`]). The stream goes on. When the output is empty (`outer` or `inner` is 0)
/// nothing is read and no index is checked, on every backend.
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
    /// The fault word this launch reports a bad index in ([`FaultWord`]).
    pub fault: DevicePtr,
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

/// The layout of a fault word: two little-endian u64, `[state, value]`, zeroed before the
/// launch of a kernel that can fail (16 bytes, 8-byte aligned, device memory like any other).
///
/// Protocol, for every kernel that writes one: the first failing thread claims the word
/// (`state` 0 → [`FaultWord::CLAIMED`] by compare-and-swap), writes `value` (the bad index, as
/// two's complement), makes it visible and then publishes (`state` = [`FaultWord::FAILED`]).
/// Later failures find the word claimed and write nothing, so one value is reported (which one
/// among several bad indices depends on timing on a parallel device; the outputs do not). The
/// host reads the word only after the kernel's stream has run it, and believes only
/// `FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultWord;

impl FaultWord {
    /// Size in bytes.
    pub const BYTES: usize = 16;
    /// `state` of a word a failing thread has claimed but not yet published.
    pub const CLAIMED: u64 = 1;
    /// `state` of a published failure: `value` is complete.
    pub const FAILED: u64 = 2;

    /// The value of the failure recorded in `bytes` (the word read back); `None` when the
    /// kernel did not fail.
    pub fn decode(bytes: &[u8]) -> Option<i64> {
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..][..8].try_into().expect("8 bytes"));
        (bytes.len() >= Self::BYTES && word(0) == Self::FAILED).then(|| word(1) as i64)
    }
}
