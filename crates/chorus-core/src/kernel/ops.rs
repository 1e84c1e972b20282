//! The operations a descriptor names (which binary op, which reduction, ...) and fill values.

use crate::dtype::DType;

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

/// Elementwise unary operation (float).
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

/// Which element a [`ArgReduce`](super::ArgReduce) looks for.
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

impl Scalar {
    /// The element type of the value.
    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::I64(_) => DType::I64,
        }
    }
}
