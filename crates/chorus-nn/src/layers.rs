//! Layers without parameters: [`Relu`], [`Flatten`] and [`AdaptiveAvgPool2d`].
//!
//! # Protocol
//! Each is a plain value with no weights; `forward` is one op ([`Flatten`] is a view of a
//! contiguous input, no kernel at all).

use crate::error::{NnError, Result};
use crate::module::Module;
use chorus_core::Tensor;

/// `max(x, 0)` elementwise (PyTorch's `nn.ReLU`).
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Module, Relu};
/// # let device = chorus_cpu::device()?;
/// let x = Tensor::from_slice(&device, &[-1.0_f32, 0.5], &[2])?;
/// assert_eq!(Relu.forward(&x)?.to_vec::<f32>()?, vec![0.0, 0.5]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

impl Module for Relu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// Merges the dimensions from `start_dim` on into one (PyTorch's `nn.Flatten`, whose default
/// `start_dim` is 1 and `end_dim` is -1).
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Flatten, Module};
/// # let device = chorus_cpu::device()?;
/// let x = Tensor::zeros(&device, &[2, 3, 1, 1], chorus_core::DType::F32)?;
/// assert_eq!(Flatten::default().forward(&x)?.shape(), &[2, 3]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten {
    start_dim: usize,
}

impl Flatten {
    /// Flattens dimensions `start_dim..` into one.
    pub fn new(start_dim: usize) -> Flatten {
        Flatten { start_dim }
    }
    /// The first flattened dimension.
    pub fn start_dim(&self) -> usize {
        self.start_dim
    }
}

impl Default for Flatten {
    /// `start_dim` 1, as PyTorch.
    fn default() -> Flatten {
        Flatten { start_dim: 1 }
    }
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape();
        if self.start_dim >= shape.len().max(1) {
            return Err(NnError::InvalidInput {
                module: "Flatten",
                shape: shape.to_vec(),
                reason: format!("needs more than {} dimensions", self.start_dim),
            });
        }
        let mut new: Vec<isize> = shape[..self.start_dim]
            .iter()
            .map(|&d| d as isize)
            .collect();
        new.push(shape[self.start_dim..].iter().product::<usize>() as isize);
        Ok(x.reshape(&new)?)
    }
    /// Unless it flattens from dimension 0 (which mixes the rows).
    fn rows_independent(&self) -> bool {
        self.start_dim > 0
    }
}

/// Average pooling of `[.., H, W]` to a fixed `[oh, ow]` (PyTorch's `nn.AdaptiveAvgPool2d`).
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{AdaptiveAvgPool2d, Module};
/// # let device = chorus_cpu::device()?;
/// let x = Tensor::from_slice(&device, &[1.0_f32, 2.0, 3.0, 6.0], &[1, 1, 2, 2])?;
/// let y = AdaptiveAvgPool2d::new([1, 1]).forward(&x)?;
/// assert_eq!(y.to_vec::<f32>()?, vec![3.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    output_size: [usize; 2],
}

impl AdaptiveAvgPool2d {
    /// Pools to `output_size` `[oh, ow]`.
    pub fn new(output_size: [usize; 2]) -> AdaptiveAvgPool2d {
        AdaptiveAvgPool2d { output_size }
    }
    /// The output size `[oh, ow]`.
    pub fn output_size(&self) -> [usize; 2] {
        self.output_size
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.adaptive_avg_pool2d(self.output_size)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
