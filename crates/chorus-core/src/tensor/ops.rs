//! The op front-end: checks, output allocation and kernel descriptors for each op.
//!
//! Every op follows the same steps: (1) check devices, dtypes and shapes, before anything is
//! allocated or enqueued; (2) take the calling thread's current stream `s`; (3) order every
//! input's storage on `s` (`Storage::use_on`); (4) allocate the output on `s`; (5) enqueue the
//! kernel. A failure in (3)-(5) drops what was allocated; inputs are never modified.

use super::check::{need_dtype, same_device, same_dtype, supported};
use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::row_major_strides;
use crate::kernel::{
    self, BinaryOp, DevicePtr, Epilogue, Kernel, MatOperand, ReduceOp, StridedCopy,
};
use crate::shape::{broadcast, broadcast_strides, dims, flatten_run, numel};
use crate::stream::StreamId;

impl Tensor {
    /// A contiguous tensor with the same elements (this tensor itself if already contiguous).
    ///
    /// # Errors
    /// Allocation or device errors.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let s = self.rt().current_stream()?;
        self.contiguous_on(s)
    }

    pub(crate) fn contiguous_on(&self, s: StreamId) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let rt = self.rt();
        self.use_on(s)?;
        let out = Tensor::empty_on(rt, s, &self.shape, self.dtype, "contiguous")?;
        let k = Kernel::Copy(StridedCopy::to_contiguous(
            self.view(),
            out.tensor.storage.ptr(),
            self.dtype,
        ));
        Tensor::launch(rt, s, k, out, [self])
    }

    /// The same elements with another shape; one entry may be `-1` (inferred). A view when the
    /// tensor is contiguous, else a contiguous copy.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the element counts differ or several entries are `-1`.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let bad = |reason: String| Error::InvalidShape {
            op: "reshape",
            shape: self.shape.clone(),
            reason,
        };
        let known = shape
            .iter()
            .filter(|&&d| d >= 0)
            .try_fold(1usize, |a, &d| a.checked_mul(d as usize))
            .ok_or(Error::SizeOverflow { what: "reshape" })?;
        let infer = shape.iter().filter(|&&d| d < 0).count();
        if infer > 1 || shape.iter().any(|&d| d < -1) {
            return Err(bad(format!(
                "target {shape:?}: at most one -1 and no other negative size"
            )));
        }
        let new: Vec<usize> = shape
            .iter()
            .map(|&d| {
                if d < 0 {
                    self.len().checked_div(known).unwrap_or(0)
                } else {
                    d as usize
                }
            })
            .collect();
        if numel("reshape", &new)? != self.len() {
            return Err(bad(format!(
                "target {shape:?} does not hold {} elements",
                self.len()
            )));
        }
        let base = self.contiguous()?;
        let strides = row_major_strides(&new);
        Ok(base.restride(new, strides))
    }

    /// Swaps two dimensions (a view; no data moves).
    ///
    /// # Errors
    /// [`Error::InvalidDim`].
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (
            crate::shape::dim("transpose", d0, self.rank())?,
            crate::shape::dim("transpose", d1, self.rank())?,
        );
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        // A 0-d tensor (dimensions 0 and -1 accepted, as by PyTorch) has nothing to swap.
        if self.rank() > 0 {
            shape.swap(a, b);
            strides.swap(a, b);
        }
        Ok(self.restride(shape, strides))
    }

    /// Matrix product with PyTorch's `matmul` rules: 1-D operands are promoted (and the added
    /// dimension removed afterwards), leading dimensions are batch dimensions and broadcast.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the inner dimensions differ or batch dimensions do not
    /// broadcast; [`Error::DTypeMismatch`] for non-f32 operands; [`Error::DeviceMismatch`].
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        same_device(OP, self, rhs)?;
        need_dtype(OP, self, DType::F32)?;
        need_dtype(OP, rhs, DType::F32)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape.clone(),
                rhs: rhs.shape.clone(),
                reason: "both operands need at least one dimension",
            });
        }
        // Promote 1-D operands: lhs [k] -> [1, k], rhs [k] -> [k, 1].
        let a = if self.rank() == 1 {
            self.restride(vec![1, self.shape[0]], vec![0, self.strides[0]])
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.restride(vec![rhs.shape[0], 1], vec![rhs.strides[0], 0])
        } else {
            rhs.clone()
        };
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
        let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape.clone(),
                rhs: rhs.shape.clone(),
                reason: "inner dimensions differ",
            });
        }
        let batch_shape = broadcast(OP, &a.shape[..ra - 2], &b.shape[..rb - 2]).map_err(|_| {
            Error::ShapeMismatch {
                op: OP,
                lhs: self.shape.clone(),
                rhs: rhs.shape.clone(),
                reason: "batch dimensions do not broadcast",
            }
        })?;
        let batch = numel(OP, &batch_shape)?;
        let mut out_shape = batch_shape.clone();
        out_shape.extend([m, n]);

        let rt = self.rt();
        let s = rt.current_stream()?;
        let a = operand(&a, &batch_shape, s)?;
        let b = operand(&b, &batch_shape, s)?;
        let out = Tensor::empty_on(rt, s, &out_shape, DType::F32, OP)?;
        let k = Kernel::Matmul(kernel::Matmul {
            lhs: a.0,
            rhs: b.0,
            out: out.tensor.storage.ptr(),
            batch,
            m,
            n,
            k,
            epilogue: Epilogue::default(),
            rhs_derived: None,
            dtype: DType::F32,
        });
        let t = Tensor::launch(rt, s, k, out, [self, rhs])?;
        drop((a.1, b.1));
        // Remove the promoted dimensions.
        let mut final_shape = out_shape;
        if rhs.rank() == 1 {
            final_shape.remove(final_shape.len() - 1);
        }
        if self.rank() == 1 {
            final_shape.remove(final_shape.len() - if rhs.rank() == 1 { 1 } else { 2 });
        }
        let strides = row_major_strides(&final_shape);
        Ok(t.restride(final_shape, strides))
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        same_device(name, self, rhs)?;
        same_dtype(name, self, rhs)?;
        supported(name, self)?;
        let shape = broadcast(name, &self.shape, &rhs.shape)?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        self.use_on(s)?;
        rhs.use_on(s)?;
        let mut lv = self.view();
        lv.strides = broadcast_strides(&self.shape, &self.strides, &shape);
        lv.shape.clone_from(&shape);
        let mut rv = rhs.view();
        rv.strides = broadcast_strides(&rhs.shape, &rhs.strides, &shape);
        rv.shape.clone_from(&shape);
        let out = Tensor::empty_on(rt, s, &shape, self.dtype, name)?;
        let k = Kernel::Binary(kernel::Binary {
            op,
            lhs: lv,
            rhs: rv,
            out: out.tensor.storage.ptr(),
            dtype: self.dtype,
        });
        Tensor::launch(rt, s, k, out, [self, rhs])
    }

    /// Elementwise sum with broadcasting.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not broadcast; [`Error::DTypeMismatch`];
    /// [`Error::DeviceMismatch`].
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }
    /// Elementwise difference with broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::add`].
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }
    /// Elementwise product with broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::add`].
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }
    /// Elementwise quotient with broadcasting (i64: truncating, and 0 where dividing by 0).
    ///
    /// # Errors
    /// As [`Tensor::add`].
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div, "div")
    }

    pub(super) fn reduce(
        &self,
        op: ReduceOp,
        name: &'static str,
        ds: &[isize],
        keepdim: bool,
    ) -> Result<Tensor> {
        supported(name, self)?;
        if op == ReduceOp::Mean && !self.dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op: name,
                dtype: self.dtype,
            });
        }
        let ds = dims(name, ds, self.rank())?;
        let kept: Vec<usize> = (0..self.rank())
            .filter(|d| !ds.contains(d))
            .map(|d| self.shape[d])
            .collect();
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.contiguous_on(s)?;
        src.use_on(s)?;
        let out = Tensor::empty_on(rt, s, &kept, self.dtype, name)?;
        let k = Kernel::Reduce(kernel::Reduce {
            op,
            src: src.view().ptr,
            shape: self.shape.clone(),
            dims: ds.clone(),
            out: out.tensor.storage.ptr(),
            dtype: self.dtype,
        });
        let t = Tensor::launch(rt, s, k, out, [self])?;
        if keepdim {
            let shape: Vec<usize> = (0..self.rank())
                .map(|d| if ds.contains(&d) { 1 } else { self.shape[d] })
                .collect();
            let strides = row_major_strides(&shape);
            return Ok(t.restride(shape, strides));
        }
        Ok(t)
    }

    /// Sum over `dims` (negative counts from the end; empty = all), keeping them as size 1
    /// when `keepdim`.
    ///
    /// # Errors
    /// [`Error::InvalidDim`] for an out-of-range or repeated dimension.
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, "sum", dims, keepdim)
    }
    /// Sum of all elements (a 0-d tensor).
    ///
    /// # Errors
    /// Device errors.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, "sum", &[], false)
    }
    /// Mean over `dims` (float tensors), like [`Tensor::sum`].
    ///
    /// # Errors
    /// [`Error::InvalidDim`]; [`Error::UnsupportedDType`] for integer tensors.
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, "mean", dims, keepdim)
    }
    /// Mean of all elements (a 0-d tensor).
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for integer tensors.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, "mean", &[], false)
    }
}

/// A matmul operand over `batch_shape`: the kernel operand and the tensor keeping it alive
/// (a contiguous copy when its broadcast batch dims do not flatten to one stride).
fn operand(t: &Tensor, batch_shape: &[usize], s: StreamId) -> Result<(MatOperand, Tensor)> {
    let r = t.rank();
    let bstrides = broadcast_strides(&t.shape[..r - 2], &t.strides[..r - 2], batch_shape);
    let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
    let blas_ok = MatOperand {
        ptr: DevicePtr(0),
        batch_stride: 0,
        row_stride: t.strides[r - 2],
        col_stride: t.strides[r - 1],
    }
    .blas_layout(rows, cols)
    .is_some();
    let t = match flatten_run(batch_shape, &bstrides) {
        Some(_) if blas_ok => t.clone(),
        _ => {
            // Materialize the broadcast (or a matrix layout no BLAS takes, such as a strided
            // column slice): a contiguous copy of the expanded view.
            let mut shape = batch_shape.to_vec();
            shape.extend_from_slice(&t.shape[r - 2..]);
            let mut strides = bstrides.clone();
            strides.extend_from_slice(&t.strides[r - 2..]);
            t.restride(shape, strides).contiguous_on(s)?
        }
    };
    let r = t.rank();
    let bstrides = broadcast_strides(&t.shape[..r - 2], &t.strides[..r - 2], batch_shape);
    let (_, batch_stride) =
        flatten_run(batch_shape, &bstrides).expect("flattenable after materializing");
    t.use_on(s)?;
    let v = t.view();
    Ok((
        MatOperand {
            ptr: v.ptr,
            batch_stride,
            row_stride: t.strides[r - 2],
            col_stride: t.strides[r - 1],
        },
        t,
    ))
}
