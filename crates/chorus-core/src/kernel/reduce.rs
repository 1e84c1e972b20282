//! Reductions: over any dims ([`Reduce`]), and the arg-max/min along one axis ([`ArgReduce`]).

use super::ops::{ArgOp, ReduceOp};
use super::view::{coalesce, row_major_strides, DevicePtr};
use crate::dtype::DType;

/// Reduction of the contiguous tensor `src` of `shape` over `dims` (sorted, distinct) into the
/// contiguous `out` whose shape is `shape` without `dims`. For every output element the
/// reduced elements are combined in row-major order (f32 accumulates in f64), so the result is
/// the same on every run.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduce {
    /// Operation.
    pub op: ReduceOp,
    /// Input, contiguous.
    pub src: DevicePtr,
    /// Input shape.
    pub shape: Vec<usize>,
    /// Reduced dimensions, sorted and distinct.
    pub dims: Vec<usize>,
    /// Output.
    pub out: DevicePtr,
    /// Element type of input and output.
    pub dtype: DType,
}

/// A reduction's input as a backend walks it: the kept dimensions (one output element each
/// combination) and the reduced ones, each coalesced, with their strides in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReduceSplit {
    /// Kept dimensions' extents and input strides.
    pub kept: (Vec<usize>, Vec<usize>),
    /// Reduced dimensions' extents and input strides.
    pub reduced: (Vec<usize>, Vec<usize>),
}

impl Reduce {
    fn is_reduced(&self, d: usize) -> bool {
        self.dims.contains(&d)
    }

    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements of the output: the product of the kept dimensions.
    pub fn out_len(&self) -> usize {
        (0..self.shape.len())
            .filter(|&d| !self.is_reduced(d))
            .map(|d| self.shape[d])
            .product()
    }

    /// Elements combined into each output element: the product of the reduced dimensions.
    pub fn reduced_len(&self) -> usize {
        self.dims.iter().map(|&d| self.shape[d]).product()
    }

    /// The output's strides laid over the input's dimensions: 0 for a reduced dimension, for a
    /// kept one the product of the kept extents inside it.
    pub fn out_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.shape.len()];
        let mut step = 1;
        for d in (0..self.shape.len()).rev().filter(|&d| !self.is_reduced(d)) {
            strides[d] = step;
            step *= self.shape[d];
        }
        strides
    }

    /// The kept and the reduced dimensions apart, each coalesced ([`ReduceSplit`]).
    pub fn split(&self) -> ReduceSplit {
        let strides = row_major_strides(&self.shape);
        let part = |keep: bool| {
            let (shape, st): (Vec<usize>, Vec<usize>) = (0..self.shape.len())
                .filter(|&d| self.is_reduced(d) != keep)
                .map(|d| (self.shape[d], strides[d]))
                .unzip();
            let (shape, [st]) = coalesce(&shape, [&st]);
            (shape, st)
        };
        ReduceSplit {
            kept: part(true),
            reduced: part(false),
        }
    }
}

/// Values and i64 indices of the max/min along the middle axis of the contiguous tensor
/// `[outer, n, inner]`, written contiguous as `[outer, inner]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgReduce {
    /// Max or min.
    pub op: ArgOp,
    /// Input.
    pub src: DevicePtr,
    /// Values output (the input's dtype).
    pub values: DevicePtr,
    /// Indices output (i64).
    pub indices: DevicePtr,
    /// Product of the dims before.
    pub outer: usize,
    /// Size of the reduced dim (>= 1).
    pub n: usize,
    /// Product of the dims after.
    pub inner: usize,
    /// Element type of the input and the values.
    pub dtype: DType,
}

impl ArgReduce {
    /// Output elements (`outer × inner`), one per reduced row.
    pub fn rows(&self) -> usize {
        self.outer * self.inner
    }

    /// Elements of the input.
    pub fn src_len(&self) -> usize {
        self.outer * self.n * self.inner
    }
}
