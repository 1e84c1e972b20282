//! Kernel descriptors: the work the op front-end hands to a backend.
//!
//! The front-end (`crate::tensor`) checks shapes and dtypes, allocates outputs, and turns every
//! op into one or more [`Kernel`]s with raw [`DevicePtr`]s. A backend executes a kernel in stream
//! order (`crate::Backend::launch`). Descriptors are plain data so that one enum serves every
//! backend: the CPU backend runs them on its stream workers, CUDA maps each to a cuBLAS call or an
//! NVRTC kernel, wgpu to a compute pass.
//!
//! Conventions: strides and lengths count *elements*, not bytes; a pointer points at the first
//! element of the view; a broadcast dimension has stride 0; outputs are contiguous (row-major)
//! and never overlap inputs.

use crate::dtype::DType;

/// An address in a device's memory. Its meaning belongs to the backend: a host address on the
/// CPU backend, a `CUdeviceptr` on CUDA, a (segment, offset) pair on wgpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    ///
    /// # Panics
    /// On address overflow, which the allocator rules out for every block it hands out.
    pub fn byte_add(self, bytes: usize) -> DevicePtr {
        DevicePtr(
            self.0
                .checked_add(bytes as u64)
                .expect("device address overflow"),
        )
    }
}

/// A strided view of `shape` elements starting at `ptr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// First element.
    pub ptr: DevicePtr,
    /// Extent of each dimension.
    pub shape: Vec<usize>,
    /// Step between neighbours along each dimension, in elements (0 = broadcast).
    pub strides: Vec<usize>,
}

impl View {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the view is row-major contiguous.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expect {
                return false;
            }
            expect *= n;
        }
        true
    }
}

/// One matrix operand of a batched matmul: element `[b, i, j]` is at
/// `ptr + b * batch_stride + i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatOperand {
    /// Element `[0, 0, 0]`.
    pub ptr: DevicePtr,
    /// Step between matrices of the batch (0 = the same matrix for every batch entry).
    pub batch_stride: usize,
    /// Step between rows.
    pub row_stride: usize,
    /// Step between columns.
    pub col_stride: usize,
}

/// Elementwise binary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

/// Reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReduceOp {
    /// Sum of the reduced elements.
    Sum,
    /// Arithmetic mean of the reduced elements (float only).
    Mean,
}

/// A fill value.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Scalar {
    /// An f32 value.
    F32(f32),
    /// An i64 value.
    I64(i64),
}

/// One unit of device work. See the module docs for conventions.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Kernel {
    /// `out[i] = value` for `i < len`; the dtype is the scalar's.
    Fill {
        /// Output, `len` contiguous elements.
        out: DevicePtr,
        /// Number of elements.
        len: usize,
        /// The value.
        value: Scalar,
    },
    /// `out[i]` = standard normal f32 number `i` of the stream of numbers named by `seed`:
    /// Philox4x32-10 with key `seed` and counter `i / 4` gives four 32-bit words; Box–Muller
    /// turns words (0,1) into numbers 4c, 4c+1 and words (2,3) into 4c+2, 4c+3, computed in
    /// f32 with only IEEE `+ - * / sqrt` in a fixed order (no libm, no fused multiply-add).
    /// The reference is `chorus-cpu`'s `kernels/randn.rs`, which pins the exact bits of known
    /// seeds; every backend reproduces them, so the same `(seed, i)` gives the same number on
    /// every backend, thread and stream.
    Randn {
        /// Output, `len` contiguous f32.
        out: DevicePtr,
        /// Number of elements.
        len: usize,
        /// Key of the generator.
        seed: u64,
    },
    /// Strided gather into a contiguous buffer: `out[k] = src[k-th element in row-major order]`.
    Copy {
        /// Source view.
        src: View,
        /// Output, `src.len()` contiguous elements.
        out: DevicePtr,
        /// Element type of both.
        dtype: DType,
    },
    /// Batched f32 matmul: `out[b] = lhs[b] (m×k) @ rhs[b] (k×n)`, out contiguous `[batch, m, n]`.
    Matmul {
        /// Left operand.
        lhs: MatOperand,
        /// Right operand.
        rhs: MatOperand,
        /// Output.
        out: DevicePtr,
        /// Number of matrices.
        batch: usize,
        /// Rows of lhs and out.
        m: usize,
        /// Columns of rhs and out.
        n: usize,
        /// Columns of lhs, rows of rhs.
        k: usize,
    },
    /// Elementwise `out = lhs op rhs`; both views are already broadcast to `lhs.shape` (equal
    /// to `rhs.shape`), out is contiguous of that shape.
    Binary {
        /// Operation.
        op: BinaryOp,
        /// Left operand.
        lhs: View,
        /// Right operand.
        rhs: View,
        /// Output.
        out: DevicePtr,
        /// Element type of all three.
        dtype: DType,
    },
    /// Reduction of the contiguous tensor `src` of `shape` over `dims` (sorted, distinct) into
    /// the contiguous `out` whose shape is `shape` without `dims`. For every output element the
    /// reduced elements are combined in row-major order (f32 accumulates in f64), so the result
    /// is the same on every run.
    Reduce {
        /// Operation.
        op: ReduceOp,
        /// Input, contiguous.
        src: DevicePtr,
        /// Input shape.
        shape: Vec<usize>,
        /// Reduced dimensions, sorted and distinct.
        dims: Vec<usize>,
        /// Output.
        out: DevicePtr,
        /// Element type of input and output.
        dtype: DType,
    },
}

impl Kernel {
    /// Short name for errors and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Fill { .. } => "fill",
            Kernel::Randn { .. } => "randn",
            Kernel::Copy { .. } => "copy",
            Kernel::Matmul { .. } => "matmul",
            Kernel::Binary { .. } => "binary",
            Kernel::Reduce { .. } => "reduce",
        }
    }
}
