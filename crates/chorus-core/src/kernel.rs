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

pub use crate::derived::Derived;
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

/// Row-major contiguous strides of `shape` (in elements).
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (1..shape.len()).rev() {
        strides[d - 1] = strides[d] * shape[d];
    }
    strides
}

/// `shape` with the strides of `N` operands over it simplified, for backends walking views:
/// size-1 dimensions are dropped and neighbours that step as one in every operand (outer
/// stride = inner stride × inner extent) are merged. Row-major element order and every
/// element's offsets are unchanged; a contiguous operand ends up as one dimension of stride 1.
///
/// # Panics
/// When a stride list's length differs from the shape's.
pub fn coalesce<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
) -> (Vec<usize>, [Vec<usize>; N]) {
    for s in &strides {
        assert_eq!(
            s.len(),
            shape.len(),
            "strides {s:?} do not match shape {shape:?}"
        );
    }
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out: [Vec<usize>; N] = std::array::from_fn(|_| Vec::with_capacity(shape.len()));
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides
                .iter()
                .zip(&out)
                .all(|(s, merged)| s[d].checked_mul(n) == merged.last().copied());
        if mergeable {
            *out_shape.last_mut().expect("non-empty") *= n;
        } else {
            out_shape.push(n);
        }
        for (s, merged) in strides.iter().zip(&mut out) {
            match merged.last_mut() {
                Some(last) if mergeable => *last = s[d],
                _ => merged.push(s[d]),
            }
        }
    }
    (out_shape, out)
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

impl MatOperand {
    /// How a BLAS library (column-major) sees this row-major `rows × cols` operand, if it can:
    /// `Some((false, ld))` when its columns are adjacent (the row-major matrix is the
    /// column-major `cols × rows` with leading dimension `ld`, BLAS `op N`), `Some((true, ld))`
    /// when its rows are adjacent (column-major `rows × cols`, used transposed, `op T`), `None`
    /// when neither stride is 1 or rows overlap (the front-end makes such operands contiguous
    /// before a matmul). A dimension of size 1 places no constraint on its stride.
    pub fn blas_layout(&self, rows: usize, cols: usize) -> Option<(bool, usize)> {
        let (rs, cs) = (self.row_stride, self.col_stride);
        if cs == 1 || cols <= 1 {
            let ld = if rows <= 1 { cols.max(1) } else { rs };
            if ld >= cols.max(1) {
                return Some((false, ld));
            }
        }
        if rs == 1 || rows <= 1 {
            let ld = if cols <= 1 { rows.max(1) } else { cs };
            if ld >= rows.max(1) {
                return Some((true, ld));
            }
        }
        None
    }
}

/// What a matmul applies to its output before writing it (fusing `linear`'s bias and
/// activation into the GEMM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epilogue {
    /// `[n]` f32 bias added to every row.
    pub bias: Option<DevicePtr>,
    /// Activation applied after the bias.
    pub act: Option<UnaryOp>,
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
    /// Largest element (NaN if any is NaN, as PyTorch).
    Max,
    /// Smallest element (NaN if any is NaN).
    Min,
    /// Product of the reduced elements (f32 accumulates in f64).
    Prod,
}

/// Elementwise unary operation (f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnaryOp {
    /// `max(x, 0)`
    Relu,
    /// `x Φ(x)` with the exact normal CDF (`erf`), PyTorch's `gelu(approximate="none")`.
    Gelu,
    /// PyTorch's `gelu(approximate="tanh")`.
    GeluTanh,
    /// `tanh(x)`
    Tanh,
    /// `e^x`
    Exp,
}

/// Which element a [`Kernel::ArgReduce`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgOp {
    /// The largest (first index among equals; a NaN wins, as in PyTorch).
    Max,
    /// The smallest, likewise.
    Min,
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

/// [`Kernel::Attention`]: for every batch index `b` (row-major over the batch dims) and query
/// `i < l`, `out[b, i, :] = Σ_{j < s} p_j v[b, j, :]` with
/// `p = softmax(scale · (q[b, i, :] · k[b, j, :]))` over `j`, entries dropped as
/// [`Kernel::Softmax`] drops them (causal: `j > i`; mask: where it is 0) and a query with every
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
        /// Fused epilogue: `out = act(out + bias)` with `bias` an `[n]` vector, if any.
        epilogue: Epilogue,
        /// The cache of `rhs`'s storage, when `rhs` is the same matrix for every batch entry
        /// and worth preparing once for many products (`linear`'s weight) and the backend asks
        /// for it (`Backend::prepares_weights`): it may keep `rhs` there in the layout its
        /// kernel reads ([`Derived`]).
        rhs_derived: Option<Derived>,
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
    /// Elementwise `out[i] = op(src[i])` for `i < len`, f32, both contiguous.
    Unary {
        /// Operation.
        op: UnaryOp,
        /// Input.
        src: DevicePtr,
        /// Output.
        out: DevicePtr,
        /// Number of elements.
        len: usize,
    },
    /// Softmax (or log-softmax) of `scale * src` along the middle axis of the contiguous f32
    /// tensor `[outer, n, inner]`. Masks (which need `inner == 1`) drop entries `(row, j)`,
    /// `row < outer`, `j < n`: `causal: Some(q)` drops `j > row % q` (PyTorch's `is_causal`
    /// for `q` queries per attention matrix), `mask` (i64, 0 = drop) drops where it is 0. A
    /// dropped entry is 0 in the softmax (−∞ in log-softmax); a row with every entry dropped
    /// is 0 in the softmax (as PyTorch's attention, which is where masks come from), NaN in
    /// the log-softmax. Without masks a row of −∞ is NaN, as in PyTorch. Statistics (max, sum of exponentials) per row in f32 then f64.
    Softmax {
        /// Input.
        src: DevicePtr,
        /// Output (same shape).
        out: DevicePtr,
        /// Product of the dims before the softmax dim.
        outer: usize,
        /// Size of the softmax dim.
        n: usize,
        /// Product of the dims after it.
        inner: usize,
        /// Factor applied to the input first.
        scale: f32,
        /// Log-softmax instead of softmax.
        log: bool,
        /// Causal masking: `Some(q)` with `q` query rows per attention matrix (row index taken
        /// modulo `q`); entry `(i, j)` is kept when `j <= i`.
        causal: Option<usize>,
        /// Keep-mask view, i64, shaped `[outer, n]` (broadcast with zero strides).
        mask: Option<View>,
    },
    /// Scaled dot-product attention in one kernel, for backends that have it
    /// (`Backend::fuses_attention`); boxed, as it is much larger than the other kernels.
    Attention(Box<Attention>),
    /// Values and i64 indices of the max/min along the middle axis of the contiguous tensor
    /// `[outer, n, inner]` (f32), written contiguous as `[outer, inner]`.
    ArgReduce {
        /// Max or min.
        op: ArgOp,
        /// Input.
        src: DevicePtr,
        /// Values output (f32).
        values: DevicePtr,
        /// Indices output (i64).
        indices: DevicePtr,
        /// Product of the dims before.
        outer: usize,
        /// Size of the reduced dim (>= 1).
        n: usize,
        /// Product of the dims after.
        inner: usize,
    },
    /// Layer norm over the last axis of the contiguous f32 `[rows, n]`: `(x - mean) /
    /// sqrt(var + eps) * weight + bias` with the biased variance; statistics in f64.
    LayerNorm {
        /// Input.
        src: DevicePtr,
        /// Added to the input element by element before normalizing (`[rows, n]` like it),
        /// if any: a residual connection fused into the norm.
        residual: Option<DevicePtr>,
        /// Output.
        out: DevicePtr,
        /// `[n]` scale, if any.
        weight: Option<DevicePtr>,
        /// `[n]` shift, if any.
        bias: Option<DevicePtr>,
        /// Rows.
        rows: usize,
        /// Normalized size.
        n: usize,
        /// Added to the variance.
        eps: f32,
    },
    /// Group norm of the contiguous f32 `[batch, channels, spatial]`: each of `groups` groups
    /// of `channels / groups` channels is normalized over its channels and spatial positions,
    /// then scaled and shifted per channel; statistics in f64.
    GroupNorm {
        /// Input.
        src: DevicePtr,
        /// Output.
        out: DevicePtr,
        /// `[channels]` scale, if any.
        weight: Option<DevicePtr>,
        /// `[channels]` shift, if any.
        bias: Option<DevicePtr>,
        /// Batch size.
        batch: usize,
        /// Channels (a multiple of `groups`).
        channels: usize,
        /// Number of groups.
        groups: usize,
        /// Spatial size (H × W).
        spatial: usize,
        /// Added to the variance.
        eps: f32,
    },
    /// 2-D convolution (cross-correlation, PyTorch's `conv2d`, dilation 1) of the contiguous
    /// f32 input `[batch, c_in, h, w]` with weight `[c_out, c_in / groups, kh, kw]` and optional
    /// bias `[c_out]`, zero padding; out contiguous `[batch, c_out, oh, ow]` with
    /// `oh = (h + 2 pad_h - kh) / stride_h + 1`, likewise `ow`.
    Conv2d {
        /// Input.
        src: DevicePtr,
        /// Weight.
        weight: DevicePtr,
        /// Bias.
        bias: Option<DevicePtr>,
        /// Output.
        out: DevicePtr,
        /// Batch size.
        batch: usize,
        /// Input channels.
        c_in: usize,
        /// Input height and width.
        hw: [usize; 2],
        /// Output channels.
        c_out: usize,
        /// Kernel height and width.
        khw: [usize; 2],
        /// Stride (height, width).
        stride: [usize; 2],
        /// Zero padding (height, width).
        padding: [usize; 2],
        /// Groups (divides `c_in` and `c_out`).
        groups: usize,
        /// Output height and width.
        out_hw: [usize; 2],
    },
    /// Adaptive average pooling of the contiguous f32 `[planes, h, w]` to `[planes, oh, ow]`:
    /// output cell `(i, j)` averages rows `⌊i h / oh⌋ .. ⌈(i + 1) h / oh⌉` and likewise columns.
    AdaptiveAvgPool2d {
        /// Input.
        src: DevicePtr,
        /// Output.
        out: DevicePtr,
        /// N × C.
        planes: usize,
        /// Input height and width.
        hw: [usize; 2],
        /// Output height and width.
        out_hw: [usize; 2],
    },
    /// Gather along the middle axis: the contiguous `[outer, n, inner]` source gives the
    /// contiguous `[outer, count, inner]` output, `out[o, k, i] = src[o, indices[k], i]`. An
    /// index outside `0..n` makes the kernel fail (a sticky stream error naming it).
    IndexSelect {
        /// Source.
        src: DevicePtr,
        /// `count` i64 indices, contiguous.
        indices: DevicePtr,
        /// Output.
        out: DevicePtr,
        /// Product of the dims before.
        outer: usize,
        /// Size of the indexed dim.
        n: usize,
        /// Product of the dims after.
        inner: usize,
        /// Number of indices.
        count: usize,
        /// Element type of source and output.
        dtype: DType,
    },
    /// Strided copy between two views of the same shape: `dst[idx] = src[idx]` (`dst` may be a
    /// region of a larger contiguous tensor, as for concatenation; views never overlap).
    CopyInto {
        /// Source view.
        src: View,
        /// Destination view.
        dst: View,
        /// Element type of both.
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
            Kernel::Unary { .. } => "unary",
            Kernel::Softmax { .. } => "softmax",
            Kernel::Attention(_) => "attention",
            Kernel::ArgReduce { .. } => "arg_reduce",
            Kernel::LayerNorm { .. } => "layer_norm",
            Kernel::GroupNorm { .. } => "group_norm",
            Kernel::Conv2d { .. } => "conv2d",
            Kernel::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            Kernel::IndexSelect { .. } => "index_select",
            Kernel::CopyInto { .. } => "copy_into",
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
