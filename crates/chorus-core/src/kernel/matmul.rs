//! Matrix products: operands, the fused epilogue and the [`Matmul`] descriptor.

use super::ops::UnaryOp;
use super::view::DevicePtr;
use crate::derived::Derived;
use crate::dtype::DType;

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
    /// `[n]` bias added to every row (the product's dtype).
    pub bias: Option<DevicePtr>,
    /// Activation applied after the bias.
    pub act: Option<UnaryOp>,
}

/// Batched matmul: `out[b] = lhs[b] (m×k) @ rhs[b] (k×n)`, out contiguous `[batch, m, n]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matmul {
    /// Left operand.
    pub lhs: MatOperand,
    /// Right operand.
    pub rhs: MatOperand,
    /// Output.
    pub out: DevicePtr,
    /// Number of matrices.
    pub batch: usize,
    /// Rows of lhs and out.
    pub m: usize,
    /// Columns of rhs and out.
    pub n: usize,
    /// Columns of lhs, rows of rhs.
    pub k: usize,
    /// Fused epilogue: `out = act(out + bias)` with `bias` an `[n]` vector, if any.
    pub epilogue: Epilogue,
    /// The cache of `rhs`'s storage, when `rhs` is the same matrix for every batch entry and
    /// worth preparing once for many products (`linear`'s weight) and the backend asks for it
    /// (`Backend::prepares_weights`): it may keep `rhs` there in the layout its kernel reads
    /// ([`Derived`]).
    pub rhs_derived: Option<Derived>,
    /// Element type of operands, bias and output.
    pub dtype: DType,
}

impl Matmul {
    /// Elements of the output (`batch × m × n`).
    pub fn out_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// Rows of the output across the batch (`batch × m`), as an epilogue walks them.
    pub fn out_rows(&self) -> usize {
        self.batch * self.m
    }
}

impl Epilogue {
    /// Whether there is anything to apply.
    pub fn is_some(&self) -> bool {
        self.bias.is_some() || self.act.is_some()
    }
}
