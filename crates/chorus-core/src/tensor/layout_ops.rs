//! Views and data movement: permute, narrow, split, concatenation, index selection, embedding;
//! and the max/min/prod reductions (with indices along one dim).

use super::check::{need_dtype, same_device, same_dtype, split_at};
use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::row_major_strides;
use crate::kernel::{self, ArgOp, Kernel, ReduceOp, View};
use crate::runtime::poison;
use crate::shape::{axis, dim};
use chorus_sync::Arc;

impl Tensor {
    /// Reorders the dimensions (a view): dimension `i` of the result is dimension `dims[i]`.
    ///
    /// # Errors
    /// [`Error::InvalidDim`] unless `dims` is a permutation of `0..rank`.
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if dims.len() != r {
            return Err(Error::InvalidShape {
                op: "permute",
                shape: self.shape.clone(),
                reason: format!("{dims:?} is not a permutation of 0..{r}"),
            });
        }
        for &d in dims {
            if d >= r || std::mem::replace(&mut seen[d], true) {
                return Err(Error::InvalidDim {
                    op: "permute",
                    dim: d as isize,
                    rank: r,
                });
            }
        }
        let shape = dims.iter().map(|&d| self.shape[d]).collect();
        let strides = dims.iter().map(|&d| self.strides[d]).collect();
        Ok(self.restride(shape, strides))
    }

    /// Elements `start .. start + len` along `d` (a view).
    ///
    /// # Errors
    /// [`Error::InvalidDim`]; [`Error::InvalidShape`] when the range leaves the dimension.
    pub fn narrow(&self, d: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = axis("narrow", d, self.rank())?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[d]) {
            return Err(Error::InvalidShape {
                op: "narrow",
                shape: self.shape.clone(),
                reason: format!(
                    "range {start}..{} is outside dimension {d}",
                    start.saturating_add(len)
                ),
            });
        }
        let mut shape = self.shape.clone();
        shape[d] = len;
        Ok(self.view_at(
            shape,
            self.strides.clone(),
            self.offset + start * self.strides[d],
        ))
    }

    /// Without dimension `d` when its size is 1 (a view, as PyTorch's `squeeze(d)`); a dimension
    /// of another size stays.
    ///
    /// # Errors
    /// [`Error::InvalidDim`].
    pub fn squeeze(&self, d: isize) -> Result<Tensor> {
        let d = dim("squeeze", d, self.rank())?;
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        // A 0-d tensor (dimension 0 or -1 accepted, as by PyTorch) stays as it is.
        if shape.get(d) == Some(&1) {
            shape.remove(d);
            strides.remove(d);
        }
        Ok(self.restride(shape, strides))
    }

    /// Splits along `d` into pieces of the given sizes (views), which must add up to the
    /// dimension.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] when the sizes do not add up.
    pub fn split(&self, sizes: &[usize], d: isize) -> Result<Vec<Tensor>> {
        let dd = axis("split", d, self.rank())?;
        let total = sizes.iter().try_fold(0usize, |a, &n| a.checked_add(n));
        if total != Some(self.shape[dd]) {
            return Err(Error::InvalidShape {
                op: "split",
                shape: self.shape.clone(),
                reason: format!("sizes {sizes:?} do not add up to dimension {dd}"),
            });
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let t = self.narrow(d, start, n);
                start += n;
                t
            })
            .collect()
    }

    /// Splits along `d` into `chunks` nearly equal views (the last may be smaller), like
    /// PyTorch's `chunk`.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] for zero chunks.
    pub fn chunk(&self, chunks: usize, d: isize) -> Result<Vec<Tensor>> {
        let dd = axis("chunk", d, self.rank())?;
        if chunks == 0 {
            return Err(Error::InvalidShape {
                op: "chunk",
                shape: self.shape.clone(),
                reason: "zero chunks".into(),
            });
        }
        let n = self.shape[dd];
        let step = n.div_ceil(chunks).max(1);
        let sizes: Vec<usize> = (0..n).step_by(step).map(|s| step.min(n - s)).collect();
        self.split(&sizes, d)
    }

    /// Concatenates tensors of one device and dtype along `d`; all other dimensions must match.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] for an empty list; [`Error::ShapeMismatch`],
    /// [`Error::DTypeMismatch`], [`Error::DeviceMismatch`] between the parts.
    pub fn cat(tensors: &[&Tensor], d: isize) -> Result<Tensor> {
        const OP: &str = "cat";
        let first = *tensors.first().ok_or(Error::InvalidShape {
            op: OP,
            shape: vec![],
            reason: "no tensors".into(),
        })?;
        let dd = axis(OP, d, first.rank())?;
        let mut shape = first.shape.clone();
        shape[dd] = 0;
        for t in tensors {
            same_device(OP, first, t)?;
            same_dtype(OP, first, t)?;
            let same = t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == dd || t.shape[i] == first.shape[i]);
            if !same {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: first.shape.clone(),
                    rhs: t.shape.clone(),
                    reason: "dimensions other than the concatenated one differ",
                });
            }
            shape[dd] = shape[dd]
                .checked_add(t.shape[dd])
                .ok_or(Error::SizeOverflow { what: OP })?;
        }
        let rt = first.rt();
        let s = rt.current_stream()?;
        let out = Tensor::empty_on(rt, s, &shape, first.dtype, OP)?;
        let strides = row_major_strides(&shape);
        let poison = poison::union(tensors.iter().filter_map(|t| t.storage.poison()));
        // Poisoned even when no part has an element to copy (no launch below).
        if let Some(p) = &poison {
            out.tensor.storage.set_poison(Arc::clone(p));
        }
        let mut at = 0;
        let mut last = Ok(());
        for t in tensors {
            t.use_on(s)?;
            let region = View {
                ptr: out
                    .tensor
                    .ptr()
                    .byte_add(at * strides[dd] * first.dtype.size()),
                shape: t.shape.clone(),
                strides: strides.clone(),
            };
            at += t.shape[dd];
            if t.is_empty() {
                continue;
            }
            let k = Kernel::Copy(kernel::StridedCopy {
                src: t.view(),
                dst: region,
                dtype: first.dtype,
            });
            // `region` lies inside `out`'s fresh block (its extent along `dd` is the part's
            // slot, the other extents equal `out`'s), regions of different parts are disjoint,
            // and `t` is a live tensor ordered on `s`, as `Tensor::launch_poisoned` requires.
            last = Tensor::launch_poisoned(rt, s, k, &[&out.tensor], poison.clone());
            if last.is_err() {
                break;
            }
        }
        last.map(|()| out.tensor)
    }

    /// Rows (along `d`) picked by the 1-D i64 `indices`, like PyTorch's `index_select`. An
    /// index out of range fails the kernel on the device: the result is *poisoned*, and reading
    /// it (or anything computed from it) back returns [`Error::Kernel`] naming the index and
    /// the number of rows; the stream goes on working (`crate::runtime::poison`).
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] for non-i64 indices; [`Error::InvalidShape`] unless 1-D.
    pub fn index_select(&self, d: isize, indices: &Tensor) -> Result<Tensor> {
        self.select_rows("index_select", d, indices)
    }

    /// [`Tensor::index_select`] as op `op` (which its errors name).
    fn select_rows(&self, op: &'static str, d: isize, indices: &Tensor) -> Result<Tensor> {
        const KERNEL: &str = "index_select";
        let dd = axis(op, d, self.rank())?;
        need_dtype(op, indices, DType::I64)?;
        if indices.rank() != 1 {
            return Err(Error::InvalidShape {
                op,
                shape: indices.shape.clone(),
                reason: "indices must be 1-D".into(),
            });
        }
        same_device(op, self, indices)?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let idx = indices.input_on(s)?;
        let (outer, n, inner) = split_at(&self.shape, dd);
        let mut shape = self.shape.clone();
        shape[dd] = indices.len();
        let out = Tensor::empty_on(rt, s, &shape, self.dtype, op)?;
        let dst = out.tensor.ptr();
        let k = |fault| {
            Kernel::IndexSelect(kernel::IndexSelect {
                src: src.ptr(),
                indices: idx.ptr(),
                out: dst,
                outer,
                n,
                inner,
                count: indices.len(),
                dtype: self.dtype,
                fault,
            })
        };
        let inputs = [self, indices];
        Tensor::launch_fallible(rt, s, k, out, inputs, (op, KERNEL, n))
    }

    /// Embedding lookup: rows of `weight` (`[vocab, dim]`) for i64 `indices` of any shape;
    /// the result has shape `indices.shape + [dim]`.
    ///
    /// # Errors
    /// As [`Tensor::index_select`]; [`Error::InvalidShape`] unless `weight` is 2-D.
    pub fn embedding(indices: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if weight.rank() != 2 {
            return Err(Error::InvalidShape {
                op: "embedding",
                shape: weight.shape.clone(),
                reason: "weight must be [vocab, dim]".into(),
            });
        }
        let flat = indices.reshape(&[-1])?;
        let rows = weight.select_rows("embedding", 0, &flat)?;
        let mut shape = indices.shape.clone();
        shape.push(weight.shape[1]);
        let strides = row_major_strides(&shape);
        Ok(rows.restride(shape, strides))
    }

    /// Largest elements over `dims` (empty = all), like PyTorch's `amax`; NaN propagates.
    ///
    /// # Errors
    /// [`Error::InvalidDim`]; [`Error::InvalidShape`] for an empty reduction.
    pub fn amax(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.nonempty("amax")?
            .reduce(ReduceOp::Max, "amax", dims, keepdim)
    }
    /// Smallest elements over `dims`, like [`Tensor::amax`].
    ///
    /// # Errors
    /// As [`Tensor::amax`].
    pub fn amin(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.nonempty("amin")?
            .reduce(ReduceOp::Min, "amin", dims, keepdim)
    }
    /// Product over `dims` (empty = all).
    ///
    /// # Errors
    /// [`Error::InvalidDim`].
    pub fn prod(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Prod, "prod", dims, keepdim)
    }
    /// The largest element (0-d).
    ///
    /// # Errors
    /// [`Error::InvalidShape`] for an empty tensor.
    pub fn max_all(&self) -> Result<Tensor> {
        self.amax(&[], false)
    }
    /// The smallest element (0-d).
    ///
    /// # Errors
    /// [`Error::InvalidShape`] for an empty tensor.
    pub fn min_all(&self) -> Result<Tensor> {
        self.amin(&[], false)
    }

    fn nonempty(&self, op: &'static str) -> Result<&Tensor> {
        if self.is_empty() {
            return Err(Error::InvalidShape {
                op,
                shape: self.shape.clone(),
                reason: "reduction of an empty tensor has no identity".into(),
            });
        }
        Ok(self)
    }

    fn arg_reduce(
        &self,
        op: ArgOp,
        name: &'static str,
        d: isize,
        keepdim: bool,
    ) -> Result<(Tensor, Tensor)> {
        need_dtype(name, self, DType::F32)?;
        let dd = dim(name, d, self.rank())?;
        self.nonempty(name)?;
        let rt = self.rt();
        let s = rt.current_stream()?;
        let src = self.input_on(s)?;
        let (outer, n, inner) = split_at(&self.shape, dd);
        let mut shape = self.shape.clone();
        if self.rank() > 0 {
            if keepdim {
                shape[dd] = 1;
            } else {
                shape.remove(dd);
            }
        }
        let values = Tensor::empty_on(rt, s, &shape, DType::F32, name)?;
        let indices = Tensor::empty_on(rt, s, &shape, DType::I64, name)?;
        let k = Kernel::ArgReduce(kernel::ArgReduce {
            op,
            src: src.ptr(),
            values: values.tensor.ptr(),
            indices: indices.tensor.ptr(),
            outer,
            n,
            inner,
            dtype: self.dtype,
        });
        let poison = poison::union(self.storage.poison());
        Tensor::launch_poisoned(rt, s, k, &[&values.tensor, &indices.tensor], poison)?;
        Ok((values.tensor, indices.tensor))
    }

    /// Largest values along `d` and their i64 indices (the first among equals), like
    /// PyTorch's `max(dim)`.
    ///
    /// # Errors
    /// [`Error::InvalidDim`]; [`Error::DTypeMismatch`] unless f32; [`Error::InvalidShape`] if empty.
    pub fn max_dim(&self, d: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.arg_reduce(ArgOp::Max, "max", d, keepdim)
    }
    /// Smallest values along `d` and their i64 indices, like [`Tensor::max_dim`].
    ///
    /// # Errors
    /// As [`Tensor::max_dim`].
    pub fn min_dim(&self, d: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.arg_reduce(ArgOp::Min, "min", d, keepdim)
    }
}
