//! Named tensors from a safetensors file, looked up by PyTorch `state_dict` names.
//!
//! # State
//! A [`Weights`] is built once ([`Weights::from_file`], [`Weights::from_bytes`] or
//! [`Weights::from_tensors`]) and never changes afterwards. Loading is eager: every f32 and i64
//! tensor of the file is copied to the device at load time, on the loading thread's current
//! stream; tensors of other dtypes are remembered by name and dtype only, so a file that also
//! holds (say) bf16 tensors loads, and asking for one of those gives
//! [`NnError::TensorDType`].
//!
//! # Fields
//! The name → tensor map sits behind an `Arc` shared by every handle made from it:
//! [`Weights::with_prefix`] and [`Weights::sub`] copy the handle (the `Arc` and a prefix
//! string), never a tensor. Nothing is mutated after load, so handles and the tensors they give
//! out can be used from any number of threads without a lock; tensors are immutable and order
//! themselves across streams (see `chorus_core::Tensor`).
//!
//! # Names
//! A handle has a prefix (empty at load). `get("weight", ..)` on a handle with prefix
//! `"encoder.layers.0.linear1."` looks up `"encoder.layers.0.linear1.weight"`, and every error
//! names that full name.

use crate::error::{NnError, Result};
use chorus_core::{DType, Device, Element, Tensor};
use chorus_sync::Arc;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// One stored name.
enum Entry {
    /// A tensor on the device.
    Tensor(Tensor),
    /// A tensor of a dtype chorus does not load: its safetensors dtype name and shape.
    Unsupported { dtype: String, shape: Vec<usize> },
}

/// The shared, immutable map of a load.
struct Store {
    /// Where the tensors came from (a path, `bytes` or `tensors`), for `Debug`.
    source: String,
    entries: HashMap<String, Entry>,
}

/// Tensors by their PyTorch `state_dict` names, with a prefix for nesting.
///
/// Cloning, [`Weights::with_prefix`] and [`Weights::sub`] are cheap: all handles share one map.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Linear, Weights};
/// # let device = chorus_cpu::device()?;
/// let w = Tensor::from_slice(&device, &[1.0_f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
/// let b = Tensor::from_slice(&device, &[0.5_f32, 0.0, -1.0], &[3])?;
/// let weights = Weights::from_tensors([
///     ("head.proj.weight".to_string(), w),
///     ("head.proj.bias".to_string(), b),
/// ]);
/// let proj = weights.sub("head.").sub("proj.");
/// assert_eq!(proj.get("weight", &[3, 2])?.shape(), &[3, 2]);
/// let linear = Linear::load(&proj, 2, 3, true)?;
/// assert_eq!(linear.out_features(), 3);
///
/// // Errors name the full tensor name.
/// let err = proj.get("weight", &[2, 3]).unwrap_err();
/// assert!(err.to_string().contains("head.proj.weight"));
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Clone)]
pub struct Weights {
    store: Arc<Store>,
    prefix: String,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("source", &self.store.source)
            .field("prefix", &self.prefix)
            .field("tensors", &self.names().len())
            .finish()
    }
}

impl Weights {
    /// Loads every tensor of the safetensors file at `path` onto `device` (f32 and i64; other
    /// dtypes are listed but fail when asked for). The copies are enqueued on the calling
    /// thread's current stream; the call does not wait for them.
    ///
    /// # Examples
    /// ```no_run
    /// use chorus_nn::{Mlp, Weights};
    /// let device = chorus_cpu::device()?;
    /// let weights = Weights::from_file(&device, "mlp.safetensors")?;
    /// let mlp = Mlp::load(&weights, &[512, 1024, 1024, 512])?;
    /// # Ok::<(), chorus_nn::NnError>(())
    /// ```
    ///
    /// # Errors
    /// [`NnError::Io`] when the file cannot be read, [`NnError::Safetensors`] when it is not a
    /// valid safetensors file, [`NnError::Core`] for allocation or device errors.
    pub fn from_file(device: &Device, path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| NnError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::load(device, &bytes, path.display().to_string())
    }

    /// Like [`Weights::from_file`], from the bytes of a safetensors file.
    ///
    /// # Errors
    /// [`NnError::Safetensors`] for an invalid buffer, [`NnError::Core`] for allocation or
    /// device errors.
    pub fn from_bytes(device: &Device, bytes: &[u8]) -> Result<Weights> {
        Self::load(device, bytes, "bytes".to_string())
    }

    /// Weights from tensors already on a device (for models built in code and for tests).
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Weights {
        let entries = tensors
            .into_iter()
            .map(|(name, t)| (name, Entry::Tensor(t)))
            .collect();
        Weights {
            store: Arc::new(Store {
                source: "tensors".to_string(),
                entries,
            }),
            prefix: String::new(),
        }
    }

    fn load(device: &Device, bytes: &[u8], source: String) -> Result<Weights> {
        if let Some(message) = data_end_overflows(bytes) {
            return Err(NnError::Safetensors {
                what: source,
                message,
            });
        }
        let file = SafeTensors::deserialize(bytes).map_err(|e| NnError::Safetensors {
            what: source.clone(),
            message: e.to_string(),
        })?;
        let mut entries = HashMap::with_capacity(file.len());
        for (name, view) in file.iter() {
            let shape = view.shape().to_vec();
            let entry = match view.dtype() {
                Dtype::F32 => Entry::Tensor(Tensor::from_slice(
                    device,
                    &f32::from_bytes(view.data()),
                    &shape,
                )?),
                Dtype::I64 => Entry::Tensor(Tensor::from_slice(
                    device,
                    &i64::from_bytes(view.data()),
                    &shape,
                )?),
                other => Entry::Unsupported {
                    dtype: format!("{other:?}"),
                    shape,
                },
            };
            entries.insert(name.to_string(), entry);
        }
        Ok(Weights {
            store: Arc::new(Store { source, entries }),
            prefix: String::new(),
        })
    }

    /// A handle over the same tensors whose prefix is `prefix` (replacing this handle's).
    pub fn with_prefix(&self, prefix: &str) -> Weights {
        Weights {
            store: Arc::clone(&self.store),
            prefix: prefix.to_string(),
        }
    }

    /// A handle for a nested module: this handle's prefix followed by `prefix`
    /// (`w.sub("layers.0.")`; include the trailing dot).
    pub fn sub(&self, prefix: &str) -> Weights {
        Weights {
            store: Arc::clone(&self.store),
            prefix: format!("{}{prefix}", self.prefix),
        }
    }

    /// This handle's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name `name` stands for under this handle's prefix.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether a tensor (of any dtype) named `name` exists under the prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.store.entries.contains_key(&self.full_name(name))
    }

    /// The names under this handle's prefix, without the prefix, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .entries
            .keys()
            .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
            .map(str::to_string)
            .collect();
        names.sort_unstable();
        names
    }

    /// The f32 tensor `name`, which must have shape `expected`.
    ///
    /// # Errors
    /// [`NnError::MissingTensor`], [`NnError::TensorShape`] or [`NnError::TensorDType`], each
    /// naming the full name.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_typed(name, expected, DType::F32)
    }

    /// The i64 tensor `name`, which must have shape `expected`.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get_i64(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_typed(name, expected, DType::I64)
    }

    /// Like [`Weights::get`], but `Ok(None)` when the tensor is absent (an optional bias).
    ///
    /// # Errors
    /// [`NnError::TensorShape`] or [`NnError::TensorDType`] when present but unfit.
    pub fn get_optional(&self, name: &str, expected: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, expected).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The tensor `name` whatever its shape (f32 or i64).
    ///
    /// # Errors
    /// [`NnError::MissingTensor`]; [`NnError::TensorDType`] for a dtype chorus does not load.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        match self.store.entries.get(&full) {
            None => Err(NnError::MissingTensor { name: full }),
            Some(Entry::Tensor(t)) => Ok(t.clone()),
            Some(Entry::Unsupported { dtype, .. }) => Err(NnError::TensorDType {
                name: full,
                expected: "f32 or i64",
                got: dtype.clone(),
            }),
        }
    }

    fn get_typed(&self, name: &str, expected: &[usize], dtype: DType) -> Result<Tensor> {
        let full = self.full_name(name);
        let (tensor, shape, got) = match self.store.entries.get(&full) {
            None => return Err(NnError::MissingTensor { name: full }),
            Some(Entry::Tensor(t)) => (Some(t), t.shape(), t.dtype().name()),
            Some(Entry::Unsupported { dtype, shape }) => (None, shape.as_slice(), dtype.as_str()),
        };
        if shape != expected {
            return Err(NnError::TensorShape {
                name: full,
                expected: expected.to_vec(),
                got: shape.to_vec(),
            });
        }
        match tensor {
            Some(t) if t.dtype() == dtype => Ok(t.clone()),
            _ => Err(NnError::TensorDType {
                name: full,
                expected: dtype.name(),
                got: got.to_string(),
            }),
        }
    }
}

/// Why a safetensors buffer's stated end (8 + header + the largest data offset) does not fit
/// in 64 bits, if it does not: the parser (safetensors 0.8) adds these unchecked, which panics
/// in builds with overflow checks instead of reporting the file as malformed. Anything else
/// wrong with the buffer is left to the parser.
fn data_end_overflows(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    let tensors: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let end = tensors
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()?;
    match end.checked_add(8).and_then(|e| e.checked_add(n)) {
        Some(_) => None,
        None => Some(format!(
            "the data's end (offset {end} after a header of {n} bytes) overflows 64 bits"
        )),
    }
}
