//! Kernel descriptors: the seam every kernel crosses, from the op front-end to a backend.
//!
//! The front-end (`crate::tensor`) checks shapes and dtypes, allocates outputs, and turns every
//! op into one or more [`Kernel`]s with raw [`DevicePtr`]s. A backend executes a kernel in stream
//! order (`crate::Backend::launch`). Each variant carries one descriptor struct per kernel
//! family (`Kernel::Conv2d(Conv2d)`), plain data owned by core, whose methods work out the
//! geometry a backend needs (lengths, coalesced strides, a reduction's kept and reduced
//! dimensions, a convolution's column spans) once, so that a backend adds kernels, not copies
//! of the unpacking. Every descriptor that reads or writes data carries its [`DType`]; a backend
//! that cannot run a descriptor (a dtype or op it lacks) refuses it at launch with
//! `BackendError::Unsupported`, before anything is enqueued.
//!
//! The files mirror the backends' kernel modules: `elementwise` (fill, randn, unary, binary),
//! `copy` (strided copies, gathers), `matmul`, `reduce` (reductions, arg-reductions), `softmax`,
//! `norm` (layer and group norm), `conv` (convolution, pooling), `attention`; `view` holds
//! addresses and strided views, `ops` the operation enums.
//!
//! Conventions: strides and lengths count *elements*, not bytes; a pointer points at the first
//! element of the view; a broadcast dimension has stride 0; outputs are contiguous (row-major)
//! unless a descriptor says otherwise, and never overlap inputs.

mod attention;
mod conv;
mod copy;
mod elementwise;
mod matmul;
mod norm;
mod ops;
mod reduce;
mod softmax;
mod view;

pub use crate::derived::Derived;
pub use attention::Attention;
pub use conv::{AdaptiveAvgPool2d, ColSpan, Conv2d};
pub use copy::{FaultWord, IndexSelect, StridedCopy};
pub use elementwise::{Binary, Fill, Randn, Unary};
pub use matmul::{Epilogue, MatOperand, Matmul};
pub use norm::{GroupNorm, LayerNorm};
pub use ops::{ArgOp, BinaryOp, ReduceOp, Scalar, UnaryOp};
pub use reduce::{ArgReduce, Reduce, ReduceSplit};
pub use softmax::Softmax;
pub use view::{coalesce, row_major_strides, DevicePtr, View};

use crate::dtype::DType;

/// One unit of device work: one descriptor per kernel family (see the module docs).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Kernel {
    /// [`Fill`].
    Fill(Fill),
    /// [`Randn`].
    Randn(Randn),
    /// [`StridedCopy`].
    Copy(StridedCopy),
    /// [`Matmul`].
    Matmul(Matmul),
    /// [`Binary`].
    Binary(Binary),
    /// [`Reduce`].
    Reduce(Reduce),
    /// [`Unary`].
    Unary(Unary),
    /// [`Softmax`].
    Softmax(Softmax),
    /// [`Attention`], for backends that have it (`Backend::fuses_attention`); boxed, as it is
    /// much larger than the other descriptors.
    Attention(Box<Attention>),
    /// [`ArgReduce`].
    ArgReduce(ArgReduce),
    /// [`LayerNorm`].
    LayerNorm(LayerNorm),
    /// [`GroupNorm`].
    GroupNorm(GroupNorm),
    /// [`Conv2d`].
    Conv2d(Conv2d),
    /// [`AdaptiveAvgPool2d`].
    AdaptiveAvgPool2d(AdaptiveAvgPool2d),
    /// [`IndexSelect`].
    IndexSelect(IndexSelect),
}

impl Kernel {
    /// Short name for errors and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Fill(_) => "fill",
            Kernel::Randn(_) => "randn",
            Kernel::Copy(_) => "copy",
            Kernel::Matmul(_) => "matmul",
            Kernel::Binary(_) => "binary",
            Kernel::Reduce(_) => "reduce",
            Kernel::Unary(_) => "unary",
            Kernel::Softmax(_) => "softmax",
            Kernel::Attention(_) => "attention",
            Kernel::ArgReduce(_) => "arg_reduce",
            Kernel::LayerNorm(_) => "layer_norm",
            Kernel::GroupNorm(_) => "group_norm",
            Kernel::Conv2d(_) => "conv2d",
            Kernel::AdaptiveAvgPool2d(_) => "adaptive_avg_pool2d",
            Kernel::IndexSelect(_) => "index_select",
        }
    }

    /// Whether a backend whose float kernels compute in `floats` can run this descriptor:
    /// copies and gathers move words of any element size; fills, binary ops and reductions
    /// also take i64; every other kernel computes in one of `floats`. A convolution's geometry
    /// is checked too ([`Conv2d::validate`]).
    ///
    /// # Errors
    /// What the backend lacks, for its `BackendError::Unsupported`.
    pub fn supported_by(&self, floats: &[DType]) -> Result<(), String> {
        if let Kernel::Conv2d(c) = self {
            c.validate()?;
        }
        let dtype = self.dtype();
        let ok = match self {
            Kernel::Copy(_) | Kernel::IndexSelect(_) => true,
            Kernel::Fill(_) | Kernel::Binary(_) | Kernel::Reduce(_) => {
                dtype == DType::I64 || floats.contains(&dtype)
            }
            _ => floats.contains(&dtype),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{dtype} {}", self.name()))
        }
    }

    /// The element type the kernel computes in (an arg-reduce's input; the indices of a gather
    /// or a mask are always i64).
    pub fn dtype(&self) -> DType {
        match self {
            Kernel::Fill(k) => k.value.dtype(),
            Kernel::Randn(k) => k.dtype,
            Kernel::Copy(k) => k.dtype,
            Kernel::Matmul(k) => k.dtype,
            Kernel::Binary(k) => k.dtype,
            Kernel::Reduce(k) => k.dtype,
            Kernel::Unary(k) => k.dtype,
            Kernel::Softmax(k) => k.dtype,
            Kernel::Attention(k) => k.dtype,
            Kernel::ArgReduce(k) => k.dtype,
            Kernel::LayerNorm(k) => k.dtype,
            Kernel::GroupNorm(k) => k.dtype,
            Kernel::Conv2d(k) => k.dtype,
            Kernel::AdaptiveAvgPool2d(k) => k.dtype,
            Kernel::IndexSelect(k) => k.dtype,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_and_drops() {
        let (s, v) = coalesce(&[2, 1, 3, 4], [&[12, 99, 4, 1], &[0, 7, 0, 1]]);
        assert_eq!((s, v), (vec![6, 4], [vec![4, 1], vec![0, 1]]));
        let (s, v) = coalesce(&[2, 3, 4], [&row_major_strides(&[2, 3, 4])]);
        assert_eq!((s, v), (vec![24], [vec![1]]));
        // Nothing merges in a transposed view.
        let (s, v) = coalesce(&[3, 2], [&[1, 3], &[2, 1]]);
        assert_eq!((s, v), (vec![3, 2], [vec![1, 3], vec![2, 1]]));
        // A broadcast scalar against a contiguous output: one dim of stride 0.
        let (s, v) = coalesce(&[2, 1, 5], [&[0, 0, 0], &[5, 5, 1]]);
        assert_eq!((s, v), (vec![10], [vec![0], vec![1]]));
        // All ones: rank 0.
        let (s, v) = coalesce(&[1, 1], [&[7, 3]]);
        assert_eq!((s, v), (vec![], [vec![]]));
    }

    #[test]
    fn row_major() {
        assert_eq!(row_major_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(row_major_strides(&[]), Vec::<usize>::new());
    }
}
