//! Requests and results in host memory: [`HostTensor`], and [`Input`], what a request carries.
//!
//! A server's requests arrive on the host and its answers leave from there. A request made of
//! a [`HostTensor`] is batched with the other host requests of its shape: the worker copies the
//! batch's rows into one buffer, uploads it with one copy on its stream, runs the model, and
//! reads the whole output back with one copy, which also waits for the batch's kernels. Each
//! request then gets its own rows as a [`HostTensor`]. So a host request costs the device no
//! work of its own (no per-request copy, event or stream wait), which is what lets one batch
//! serve many threads on a GPU.

use crate::error::{BatchError, Result};
use chorus_core::{DType, Device, Element, Tensor};

/// A tensor in host memory: a shape, a dtype and the elements in row-major order (their
/// little-endian bytes, as [`Tensor::to_bytes`] gives them).
///
/// # Examples
/// ```
/// use chorus_batch::HostTensor;
/// let x = HostTensor::new(&[1.0_f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// assert_eq!(x.shape(), &[2, 2]);
/// assert_eq!(x.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), chorus_batch::BatchError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTensor {
    bytes: Vec<u8>,
    shape: Vec<usize>,
    dtype: DType,
}

impl HostTensor {
    /// A host tensor holding `data` with `shape`.
    ///
    /// # Errors
    /// [`BatchError::InvalidInput`] if `data.len()` is not the product of `shape`.
    pub fn new<T: Element>(data: &[T], shape: &[usize]) -> Result<HostTensor> {
        HostTensor::from_bytes(T::to_bytes(data), shape, T::DTYPE)
    }

    /// A host tensor of `dtype` with `shape` holding `bytes` (little-endian elements in
    /// row-major order).
    ///
    /// # Errors
    /// [`BatchError::InvalidInput`] if `bytes.len()` is not `shape`'s element count times the
    /// element size.
    pub fn from_bytes(bytes: Vec<u8>, shape: &[usize], dtype: DType) -> Result<HostTensor> {
        if byte_len(shape, dtype) != Some(bytes.len()) {
            return Err(BatchError::InvalidInput {
                shape: shape.to_vec(),
                reason: "the data's length is not the shape's element count",
            });
        }
        Ok(HostTensor {
            bytes,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A host tensor of rows cut from a batch's output: `bytes` fill `shape` by construction.
    pub(crate) fn from_rows(bytes: Vec<u8>, shape: &[usize], dtype: DType) -> HostTensor {
        debug_assert_eq!(byte_len(shape, dtype), Some(bytes.len()));
        HostTensor {
            bytes,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Copies a device tensor to the host (waiting for the work that produces it).
    ///
    /// # Errors
    /// A device error.
    pub fn from_tensor(tensor: &Tensor) -> chorus_core::Result<HostTensor> {
        Ok(HostTensor {
            bytes: tensor.to_bytes()?,
            shape: tensor.shape().to_vec(),
            dtype: tensor.dtype(),
        })
    }

    /// Copies the tensor to `device` (on the current stream).
    ///
    /// # Errors
    /// As [`Tensor::from_bytes`].
    pub fn to_device(&self, device: &Device) -> chorus_core::Result<Tensor> {
        Tensor::from_bytes(device, self.bytes.clone(), &self.shape, self.dtype)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The elements' bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The elements' bytes, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The elements as `T`.
    ///
    /// # Errors
    /// [`BatchError::DTypeMismatch`] if `T` is not the tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(BatchError::DTypeMismatch {
                expected: self.dtype,
                got: T::DTYPE,
            });
        }
        Ok(T::from_bytes(&self.bytes))
    }
}

/// Bytes of a tensor of `shape` and `dtype`; `None` if that overflows.
fn byte_len(shape: &[usize], dtype: DType) -> Option<usize> {
    shape
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
}

/// What a request carries: a tensor on the queue's device, or one in host memory. Requests of
/// the two kinds are never put in one batch; each gets its result where its input was.
#[derive(Debug, Clone)]
pub enum Input {
    /// On the queue's device; the result is a view of the batch's output there.
    Device(Tensor),
    /// In host memory; the result is a [`HostTensor`] too.
    Host(HostTensor),
}

impl Input {
    /// The input's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Input::Device(t) => t.shape(),
            Input::Host(h) => h.shape(),
        }
    }

    /// The input's element type.
    pub fn dtype(&self) -> DType {
        match self {
            Input::Device(t) => t.dtype(),
            Input::Host(h) => h.dtype(),
        }
    }

    /// The device tensor, if the input is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Input::Device(t) => Some(t),
            Input::Host(_) => None,
        }
    }

    /// The host tensor, if the input is one.
    pub fn as_host(&self) -> Option<&HostTensor> {
        match self {
            Input::Host(h) => Some(h),
            Input::Device(_) => None,
        }
    }

    /// The device tensor, if the input is one.
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Input::Device(t) => Some(t),
            Input::Host(_) => None,
        }
    }

    /// The host tensor, if the input is one.
    pub fn into_host(self) -> Option<HostTensor> {
        match self {
            Input::Host(h) => Some(h),
            Input::Device(_) => None,
        }
    }
}

impl From<Tensor> for Input {
    fn from(t: Tensor) -> Input {
        Input::Device(t)
    }
}

impl From<HostTensor> for Input {
    fn from(h: HostTensor) -> Input {
        Input::Host(h)
    }
}

/// What [`BatchQueue::submit`](crate::BatchQueue::submit) takes: a [`Tensor`] (the result is
/// a [`Tensor`] on the device) or a [`HostTensor`] (the result is a [`HostTensor`]).
pub trait BatchInput: sealed::Sealed + Into<Input> {
    /// The type of the request's result.
    type Output: BatchOutput;
}

impl BatchInput for Tensor {
    type Output = Tensor;
}

impl BatchInput for HostTensor {
    type Output = HostTensor;
}

/// The result type of a request: [`Tensor`] or [`HostTensor`].
pub trait BatchOutput: sealed::Sealed + Sized {
    /// The result out of a worker's output; `None` if it is of the other kind (never, since a
    /// request's result is of its input's kind).
    #[doc(hidden)]
    fn from_input(rows: Input) -> Option<Self>;
}

impl BatchOutput for Tensor {
    fn from_input(rows: Input) -> Option<Tensor> {
        rows.into_tensor()
    }
}

impl BatchOutput for HostTensor {
    fn from_input(rows: Input) -> Option<HostTensor> {
        rows.into_host()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for chorus_core::Tensor {}
    impl Sealed for super::HostTensor {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_length_and_dtype() {
        assert!(matches!(
            HostTensor::new(&[1.0_f32, 2.0, 3.0], &[2, 2]),
            Err(BatchError::InvalidInput { .. })
        ));
        assert!(matches!(
            HostTensor::from_bytes(vec![0; 7], &[2], DType::F32),
            Err(BatchError::InvalidInput { .. })
        ));
        assert!(matches!(
            HostTensor::from_bytes(vec![0; 8], &[usize::MAX, 2], DType::F32),
            Err(BatchError::InvalidInput { .. })
        ));
        let x = HostTensor::new(&[3_i64, -4], &[2]).unwrap();
        assert_eq!(x.to_vec::<i64>().unwrap(), vec![3, -4]);
        assert!(matches!(
            x.to_vec::<f32>(),
            Err(BatchError::DTypeMismatch { .. })
        ));
    }
}
