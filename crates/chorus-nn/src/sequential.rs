//! [`Sequential`]: modules run one after the other (PyTorch's `nn.Sequential`).
//!
//! # Protocol
//! The layers are fixed at build time (`new`, `push`, `from_layers`) and only read afterwards;
//! `forward` feeds each layer's output to the next. Every layer is `Send + Sync` (a
//! [`Module`] bound), so the whole is too.

use crate::error::{NnError, Result};
use crate::module::Module;
use chorus_core::Tensor;

/// Layers applied in order.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Flatten, Module, Relu, Sequential};
/// # let device = chorus_cpu::device()?;
/// let model = Sequential::new().push(Relu).push(Flatten::default());
/// let x = Tensor::from_slice(&device, &[-1.0_f32, 2.0, -3.0, 4.0], &[1, 2, 2])?;
/// let y = model.forward(&x)?;
/// assert_eq!(y.shape(), &[1, 4]);
/// assert_eq!(y.to_vec::<f32>()?, vec![0.0, 2.0, 0.0, 4.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|l| l.name()))
            .finish()
    }
}

impl Sequential {
    /// No layers (forward fails until one is pushed).
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// From boxed layers.
    pub fn from_layers(layers: Vec<Box<dyn Module>>) -> Sequential {
        Sequential { layers }
    }
    /// With `layer` appended.
    #[must_use]
    pub fn push(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }
    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    /// # Errors
    /// [`NnError::InvalidConfig`] for an empty `Sequential`; the first layer's error.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((first, rest)) = self.layers.split_first() else {
            return Err(NnError::InvalidConfig {
                what: "Sequential",
                reason: "has no layers".into(),
            });
        };
        let mut y = first.forward(x)?;
        for layer in rest {
            y = layer.forward(&y)?;
        }
        Ok(y)
    }
    /// When every layer's are.
    fn rows_independent(&self) -> bool {
        self.layers.iter().all(|l| l.rows_independent())
    }
}
