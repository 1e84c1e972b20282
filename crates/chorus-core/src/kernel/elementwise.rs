//! Elementwise descriptors: fill, random normal numbers, unary and binary ops.

use super::ops::{BinaryOp, Scalar, UnaryOp};
use super::view::{coalesce, row_major_strides, DevicePtr, View};
use crate::dtype::DType;

/// `out[i] = value` for `i < len`; the dtype is the scalar's.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    /// Output, `len` contiguous elements.
    pub out: DevicePtr,
    /// Number of elements.
    pub len: usize,
    /// The value.
    pub value: Scalar,
}

/// `out[i]` = standard normal number `i` of the stream of numbers named by `seed`:
/// Philox4x32-10 with key `seed` and counter `i / 4` gives four 32-bit words; Box–Muller turns
/// words (0,1) into numbers 4c, 4c+1 and words (2,3) into 4c+2, 4c+3, computed in f32 with only
/// IEEE `+ - * / sqrt` in a fixed order (no libm, no fused multiply-add). The reference is
/// `chorus-cpu`'s `kernels/randn.rs`, which pins the exact bits of known seeds; every backend
/// reproduces them, so the same `(seed, i)` gives the same number on every backend, thread and
/// stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Randn {
    /// Output, `len` contiguous elements.
    pub out: DevicePtr,
    /// Number of elements.
    pub len: usize,
    /// Key of the generator.
    pub seed: u64,
    /// Element type of the output.
    pub dtype: DType,
}

impl Randn {
    /// Groups of four numbers one Philox call makes (the last one partly used).
    pub fn blocks(&self) -> usize {
        self.len.div_ceil(4)
    }
}

/// Elementwise `out[i] = op(src[i])` for `i < len`, both contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Unary {
    /// Operation.
    pub op: UnaryOp,
    /// Input.
    pub src: DevicePtr,
    /// Output.
    pub out: DevicePtr,
    /// Number of elements.
    pub len: usize,
    /// Element type of input and output.
    pub dtype: DType,
}

/// Elementwise `out = lhs op rhs`; both views are already broadcast to `lhs.shape` (equal to
/// `rhs.shape`), out is contiguous of that shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Binary {
    /// Operation.
    pub op: BinaryOp,
    /// Left operand.
    pub lhs: View,
    /// Right operand.
    pub rhs: View,
    /// Output.
    pub out: DevicePtr,
    /// Element type of all three.
    pub dtype: DType,
}

impl Binary {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.lhs.len()
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape with the strides of `lhs`, `rhs` and the contiguous output, coalesced
    /// ([`coalesce`]): what a backend walks.
    pub fn coalesced(&self) -> (Vec<usize>, [Vec<usize>; 3]) {
        let dense = row_major_strides(&self.lhs.shape);
        coalesce(
            &self.lhs.shape,
            [&self.lhs.strides, &self.rhs.strides, &dense],
        )
    }
}
