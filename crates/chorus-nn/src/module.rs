//! The [`Module`] trait: one forward pass from one input.
//!
//! # Protocol
//! A module is immutable once built: `forward` takes `&self`, holds no lock and mutates
//! nothing, so one instance (behind an `Arc` or a plain reference in scoped threads) serves
//! every thread at once. Each call issues its ops on the calling thread's current stream and
//! returns as soon as they are enqueued; reading the result (`to_vec`) waits. The same input
//! gives bit-identical output whichever thread or stream runs it, as the kernels are
//! deterministic.

use crate::error::Result;
use chorus_core::Tensor;

/// A layer or model with one input and one output.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Module, Relu, Result};
///
/// /// `relu(x) * 2`.
/// #[derive(Debug)]
/// struct DoubleRelu;
///
/// impl Module for DoubleRelu {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         let y = Relu.forward(x)?;
///         Ok(y.add(&y)?)
///     }
/// }
///
/// # let device = chorus_cpu::device()?;
/// let x = Tensor::from_slice(&device, &[-1.0_f32, 2.0], &[2])?;
/// assert_eq!(DoubleRelu.forward(&x)?.to_vec::<f32>()?, vec![0.0, 4.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
pub trait Module: Send + Sync {
    /// Runs the module on `x`, enqueuing its ops on the calling thread's current stream.
    ///
    /// # Errors
    /// [`NnError::InvalidInput`](crate::NnError::InvalidInput) when `x` does not fit the
    /// module, [`NnError::Core`](crate::NnError::Core) for op and device errors.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// A short name for debug output (the type name by default).
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Whether each row of the output along dimension 0 depends only on the same row of the
    /// input, for the batched input a batching queue gives it (`[batch, ...]`): a batch of
    /// independent samples. `false` by default; every `chorus-nn` layer but a
    /// [`Flatten`](crate::Flatten) from dimension 0 says `true`. The batching queue uses it when
    /// a batch's output is poisoned (a kernel failed on one request's rows, an index out of
    /// range): with independent rows it fails only the requests whose rows fail on their own,
    /// else the whole batch.
    fn rows_independent(&self) -> bool {
        false
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn rows_independent(&self) -> bool {
        (**self).rows_independent()
    }
}

impl<M: Module + ?Sized> Module for chorus_sync::Arc<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn rows_independent(&self) -> bool {
        (**self).rows_independent()
    }
}

impl<M: Module + ?Sized> Module for &M {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn rows_independent(&self) -> bool {
        (**self).rows_independent()
    }
}
