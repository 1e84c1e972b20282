//! Tensors: (storage, shape, strides, offset, dtype) on one device, and their constructors.
//!
//! Every op is issued on the calling thread's current stream of the tensor's device and returns
//! at once; only reading values back ([`Tensor::to_vec`]) waits. Shape and dtype errors are
//! found before anything is enqueued. Tensors are immutable: an op never changes its inputs, so
//! a tensor (model weights, say) can be shared by any number of threads without a lock.

mod attention;
mod check;
mod layout_ops;
mod nn_ops;
mod ops;

use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{DeviceId, Error, Result};
use crate::kernel::row_major_strides;
use crate::kernel::{self, Kernel, Scalar, View};
use crate::runtime::poison::{self, Fault, Poison};
use crate::runtime::{RuntimeObj, Storage};
use crate::shape::numel;
use crate::stream::StreamId;
use chorus_sync::Arc;

/// An n-dimensional array on a device. Cloning is cheap (the storage is shared).
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// # let device = chorus_cpu::device()?;
/// let a = Tensor::from_slice(&device, &[1.0_f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// let b = a.matmul(&a)?; // returns before the product is computed
/// assert_eq!(b.to_vec::<f32>()?, vec![7.0, 10.0, 15.0, 22.0]);
/// # Ok::<(), chorus_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("device", &self.device_id())
            .field("shape", &self.shape)
            .field("strides", &self.strides)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// An output being made: its block is allocated on stream `s`, its kernel not yet enqueued.
pub(crate) struct Out {
    pub(crate) tensor: Tensor,
}

impl Tensor {
    /// Allocates an uninitialized contiguous tensor on stream `s` (the caller enqueues its write):
    /// an op's output (`Storage::new_output`, which a graph's capture hooks into).
    pub(crate) fn empty_on(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        shape: &[usize],
        dtype: DType,
        op: &'static str,
    ) -> Result<Out> {
        let n = numel(op, shape)?;
        let bytes = n
            .checked_mul(dtype.size())
            .ok_or(Error::SizeOverflow { what: op })?;
        let storage = Arc::new(Storage::new_output(rt, bytes, s)?);
        Ok(Out {
            tensor: Tensor::whole(storage, shape, dtype),
        })
    }

    /// The contiguous tensor of `shape` filling `storage` from its start.
    fn whole(storage: Arc<Storage>, shape: &[usize], dtype: DType) -> Tensor {
        Tensor {
            storage,
            shape: shape.to_vec(),
            strides: row_major_strides(shape),
            offset: 0,
            dtype,
        }
    }

    /// Runs `kernel`, which reads `inputs`, writing `out` on stream `s`. On failure the output
    /// is dropped (its block goes back to the allocator) and the error returned.
    pub(crate) fn launch<'a>(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        kernel: Kernel,
        out: Out,
        inputs: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<Tensor> {
        let poison = poison::union(inputs.into_iter().filter_map(|t| t.storage.poison()));
        Tensor::launch_poisoned(rt, s, kernel, &[&out.tensor], poison)?;
        Ok(out.tensor)
    }

    /// Runs `kernel` writing `outs` on stream `s`, poisoning them with `poison` (its inputs'
    /// faults, `crate::runtime::poison`); when one of those is known to have failed, nothing
    /// is computed.
    pub(crate) fn launch_poisoned(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        kernel: Kernel,
        outs: &[&Tensor],
        poison: Option<Poison>,
    ) -> Result<()> {
        if let Some(p) = poison {
            let failed = poison::known_failed(&p);
            for o in outs {
                o.storage.set_poison(Arc::clone(&p));
            }
            if failed {
                return Ok(());
            }
        }
        // SAFETY: every op builds `kernel` from (a) its outputs' fresh blocks, sized by
        // `empty_on` for their contiguous shapes and written by nothing else, and (b) inputs
        // that are live tensors of this device whose views lie inside their storages (checked
        // at view creation) and that were ordered on `s` by `Storage::use_on`. The `Arc`s of
        // inputs and outputs are held until after the enqueue, and a storage's block is only
        // reused after its users' work has completed (allocator protocol), so the memory stays
        // valid until the stream has run the kernel. A fault word (a fallible kernel's) is a
        // fresh 16-byte block of its own, zeroed on `s` before the kernel.
        // (While the thread records a graph, the runtime appends it to the recording instead.)
        unsafe { rt.launch(s, kernel) }
    }

    /// Runs the fallible kernel `make(fault word)`, which reads `inputs`, writing `out` on
    /// stream `s`: allocates the launch's fault word, zeroes it on `s`, and poisons `out` with
    /// its fault (named `op`, `kernel`, `bound`) besides the inputs' (`crate::runtime::poison`).
    pub(crate) fn launch_fallible<'a>(
        rt: &Arc<dyn RuntimeObj>,
        s: StreamId,
        make: impl FnOnce(kernel::DevicePtr) -> Kernel,
        out: Out,
        inputs: impl IntoIterator<Item = &'a Tensor>,
        (op, name, bound): (&'static str, &'static str, usize),
    ) -> Result<Tensor> {
        let word = Tensor::empty_on(rt, s, &[2], DType::I64, op)?.tensor;
        let zero = Kernel::Fill(kernel::Fill {
            out: word.storage.ptr(),
            len: 2,
            value: Scalar::I64(0),
        });
        // SAFETY: `word` is a fresh block of two i64, written only by this fill (and then by
        // the fallible kernel, after it in stream order).
        unsafe { rt.launch(s, zero)? };
        let fault = Fault::new(Arc::clone(&word.storage), s, op, name, bound);
        let own: Poison = Arc::new([fault]);
        let poison = poison::union(
            inputs
                .into_iter()
                .filter_map(|t| t.storage.poison())
                .chain([&own]),
        );
        let k = make(word.storage.ptr());
        Tensor::launch_poisoned(rt, s, k, &[&out.tensor], poison)?;
        Ok(out.tensor)
    }

    /// The storage (for the graph module).
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Orders stream `s` after this tensor's write (`Storage::use_on`).
    pub(crate) fn use_on(&self, s: StreamId) -> Result<()> {
        Storage::use_on(&self.storage, s)
    }

    /// A tensor holding `data` with `shape`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] if `data.len()` is not the product of `shape`; allocation errors.
    pub fn from_slice<T: Element>(device: &Device, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let n = numel("from_slice", shape)?;
        if n != data.len() {
            return Err(Error::LengthMismatch {
                op: "from_slice",
                len: data.len(),
                shape: shape.to_vec(),
            });
        }
        Tensor::from_bytes(device, T::to_bytes(data), shape, T::DTYPE)
    }

    /// A tensor of `dtype` with `shape` holding `bytes`: its elements in row-major order,
    /// little-endian, as [`Tensor::to_bytes`] returns them. One copy to the device, on the
    /// current stream.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for f16/bf16 (as [`Tensor::empty`]);
    /// [`Error::LengthMismatch`] (`len` counted in bytes) if `bytes` is not `shape`'s element
    /// count times the element size; allocation errors.
    pub fn from_bytes(
        device: &Device,
        bytes: Vec<u8>,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        if !matches!(dtype, DType::F32 | DType::I64) {
            return Err(Error::UnsupportedDType {
                op: "from_bytes",
                dtype,
            });
        }
        let n = numel("from_bytes", shape)?;
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return Err(Error::LengthMismatch {
                op: "from_bytes",
                len: bytes.len(),
                shape: shape.to_vec(),
            });
        }
        let rt = device.rt();
        let s = rt.current_stream()?;
        // Not from a capture's memory: data from the host is written now, once, and a graph
        // that uses it keeps it as a constant (`Storage::new_upload`).
        let storage = Arc::new(Storage::new_upload(rt, bytes.len(), s)?);
        // SAFETY: the destination is the fresh block of `storage`, exactly `bytes.len()` bytes
        // long (checked above), written only by this copy and kept alive by `storage`.
        unsafe { rt.write(s, storage.ptr(), bytes)? };
        Ok(Tensor::whole(storage, shape, dtype))
    }

    /// A tensor whose contents are unspecified (whatever the reused memory held; never
    /// uninitialized host memory). Allocation only: nothing is enqueued.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for f16/bf16 on a backend without them; allocation errors.
    pub fn empty(device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if !matches!(dtype, DType::F32 | DType::I64) {
            return Err(Error::UnsupportedDType { op: "empty", dtype });
        }
        let rt = device.rt();
        let s = rt.current_stream()?;
        Ok(Tensor::empty_on(rt, s, shape, dtype, "empty")?.tensor)
    }

    /// A tensor of `shape` filled with `value`.
    ///
    /// # Errors
    /// Allocation errors.
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        Self::fill(device, shape, Scalar::F32(value), DType::F32)
    }

    /// A tensor of zeros.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for f16/bf16 on a backend without them; allocation errors.
    pub fn zeros(device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let value = match dtype {
            DType::F32 => Scalar::F32(0.0),
            DType::I64 => Scalar::I64(0),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "zeros",
                    dtype: other,
                })
            }
        };
        Self::fill(device, shape, value, dtype)
    }

    fn fill(device: &Device, shape: &[usize], value: Scalar, dtype: DType) -> Result<Tensor> {
        let rt = device.rt();
        let s = rt.current_stream()?;
        let out = Tensor::empty_on(rt, s, shape, dtype, "fill")?;
        let k = Kernel::Fill(kernel::Fill {
            out: out.tensor.storage.ptr(),
            len: out.tensor.len(),
            value,
        });
        Tensor::launch(rt, s, k, out, [])
    }

    /// Standard normal f32 numbers from the counter-based generator keyed by `seed`: element
    /// `i` depends only on `(seed, i)`, so the same seed gives the same tensor on every thread,
    /// stream and backend.
    ///
    /// # Errors
    /// Allocation errors.
    pub fn randn(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        let rt = device.rt();
        let s = rt.current_stream()?;
        let out = Tensor::empty_on(rt, s, shape, DType::F32, "randn")?;
        let k = Kernel::Randn(kernel::Randn {
            out: out.tensor.storage.ptr(),
            len: out.tensor.len(),
            seed,
            dtype: DType::F32,
        });
        Tensor::launch(rt, s, k, out, [])
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The device the tensor lives on.
    pub fn device_id(&self) -> DeviceId {
        self.storage.rt().id()
    }
    /// Device address of the first element (for debugging and tests; never dereference it).
    pub fn data_ptr(&self) -> u64 {
        self.view().ptr.0
    }
    /// Whether the elements are row-major contiguous.
    pub fn is_contiguous(&self) -> bool {
        self.view().is_contiguous()
    }

    pub(crate) fn rt(&self) -> &Arc<dyn RuntimeObj> {
        self.storage.rt()
    }

    /// The strided view of this tensor, for a kernel.
    pub(crate) fn view(&self) -> View {
        View {
            ptr: self.storage.ptr().byte_add(self.offset * self.dtype.size()),
            shape: self.shape.clone(),
            strides: self.strides.clone(),
        }
    }

    /// A view sharing the storage (shape/strides checked by the caller to stay inside it).
    pub(crate) fn restride(&self, shape: Vec<usize>, strides: Vec<usize>) -> Tensor {
        self.view_at(shape, strides, self.offset)
    }

    /// A view sharing the storage at element `offset` (checked by the caller to stay inside it).
    pub(crate) fn view_at(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor {
            storage: Arc::clone(&self.storage),
            shape,
            strides,
            offset,
            dtype: self.dtype,
        }
    }

    /// This tensor contiguous and ordered on stream `s`: what a kernel reading it needs.
    pub(crate) fn input_on(&self, s: StreamId) -> Result<Tensor> {
        let t = self.contiguous_on(s)?;
        t.use_on(s)?;
        Ok(t)
    }

    /// Device address of the first element.
    pub(crate) fn ptr(&self) -> crate::kernel::DevicePtr {
        self.view().ptr
    }

    /// Copies the elements to the host, waiting for the work that produces them.
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] if `T` is not the tensor's dtype; a device error.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                expected: self.dtype,
                got: T::DTYPE,
            });
        }
        Ok(T::from_bytes(&self.to_bytes()?))
    }

    /// Copies the elements to the host as bytes (row-major order, little-endian; what
    /// [`Tensor::from_bytes`] takes), waiting for the work that produces them: one copy from
    /// the device on the current stream, after making a strided view contiguous there.
    ///
    /// # Errors
    /// [`Error::Kernel`], the original error, when a kernel this tensor depends on failed on
    /// the device (the tensor is poisoned); a device error; [`Error::Capture`] while capturing
    /// a graph of this device; [`Error::GraphTensor`] for a tensor made during a capture.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let rt = self.rt();
        if rt.capturing() {
            return Err(Error::Capture {
                op: "to_bytes",
                reason: "nothing runs during a capture, so there is nothing to read back",
            });
        }
        let s = rt.current_stream()?;
        // A poisoned tensor gives its original error, never values (`crate::runtime::poison`).
        self.storage.check_poison(s)?;
        let t = self.contiguous_on(s)?;
        t.use_on(s)?;
        let bytes = t.len() * t.dtype.size();
        // SAFETY: `t` is contiguous, so its `bytes` bytes from the view's first element lie
        // inside its storage, which `t` keeps alive during this blocking read; `use_on`
        // ordered `s` after the write.
        unsafe { rt.read(s, t.view().ptr, bytes) }
    }

    /// Whether this tensor is sound: waits until the device has run the kernels that can fail
    /// (an `index_select` and what uses it) that this tensor depends on, and returns the
    /// original error of one that failed, which makes the tensor *poisoned*: reading it back
    /// would return that error. `Ok` at once for a tensor that depends on none. Reads nothing
    /// but the kernels' 16-byte fault words.
    ///
    /// # Errors
    /// [`Error::Kernel`] for a poisoned tensor; device errors of the read.
    ///
    /// # Examples
    /// ```
    /// use chorus_core::{Error, Tensor};
    /// # let device = chorus_cpu::device()?;
    /// let table = Tensor::from_slice(&device, &[1.0_f32, 2.0, 3.0], &[3, 1])?;
    /// let ids = Tensor::from_slice(&device, &[2_i64, 7], &[2])?;
    /// let rows = Tensor::embedding(&ids, &table)?; // returns before the kernel runs
    /// match rows.check() {
    ///     Err(Error::Kernel { message, .. }) => {
    ///         assert_eq!(message, "index 7 out of range for 3 rows")
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), chorus_core::Error>(())
    /// ```
    pub fn check(&self) -> Result<()> {
        let Some(poison) = self.storage.poison() else {
            return Ok(());
        };
        let rt = self.rt();
        if rt.capturing() {
            return Err(Error::Capture {
                op: "check",
                reason: "nothing runs during a capture, so there is nothing to check",
            });
        }
        poison::check(poison, rt.current_stream()?)
    }

    /// The single value of a one-element tensor.
    ///
    /// # Errors
    /// [`Error::InvalidShape`] if the tensor has more or fewer than one element; as [`Tensor::to_vec`].
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.len() != 1 {
            return Err(Error::InvalidShape {
                op: "item",
                shape: self.shape.clone(),
                reason: "needs exactly one element".into(),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }
}
