//! chorus: thread-safe parallel inference on one device.
//!
//! Many application threads run tensor work on the same device at the same time, each on its
//! own stream, sharing one stream-ordered caching allocator, with results bit-identical to the
//! same work run alone.
//!
//! # Devices
//! There is one device type, [`Device`] (chorus-core's); the facade adds its constructors
//! through [`DeviceExt`] (in [`prelude`]):
//! ```
//! use chorus::prelude::*;
//! use chorus::{BackendKind, StreamPolicy};
//! let cpu = Device::cpu()?; // the CPU, with the CHORUS_* environment's settings
//! let best = Device::auto()?; // CUDA device 0 when compiled in and present, else the CPU
//! let configured = Device::builder() // core's ConfigBuilder, with the facade's opener
//!     .backend(BackendKind::Cpu)
//!     .streams(8)
//!     .policy(StreamPolicy::Exclusive)
//!     .open()?;
//! # let _ = (cpu, best, configured);
//! # Ok::<(), chorus::Error>(())
//! ```
//! `Device::cuda(i)` opens CUDA device `i` (feature `cuda`). Code that writes a backend finds
//! the low-level interface under [`backend`].
//!
//! # Examples
//! ```
//! use chorus::prelude::*;
//! let device = Device::cpu()?;
//! let handles: Vec<_> = (0..4)
//!     .map(|t| {
//!         let device = device.clone();
//!         std::thread::spawn(move || -> chorus::Result<f32> {
//!             let a = Tensor::randn(&device, &[32, 32], t)?;
//!             a.matmul(&a)?.sum_all()?.item::<f32>()
//!         })
//!     })
//!     .collect();
//! for h in handles {
//!     assert!(h.join().unwrap()?.is_finite());
//! }
//! # Ok::<(), chorus::Error>(())
//! ```
//!
//! # Graphs
//! A function of fixed shapes (a model's forward) can be captured once and run as one unit
//! ([`Graph`]; on CUDA one CUDA graph launch), with the same bits as the direct call:
//! ```
//! use chorus::nn::{Linear, Module, NnError};
//! use chorus::{DType, Device, DeviceExt, Graph, Tensor};
//! let device = Device::cpu()?;
//! let layer = Linear::new(Tensor::randn(&device, &[8, 4], 1)?, None)?;
//! let graph = Graph::capture(&device, &[(&[2, 4], DType::F32)], |x| {
//!     Ok::<_, NnError>(vec![layer.forward(&x[0])?])
//! })?;
//! let x = Tensor::randn(&device, &[2, 4], 2)?;
//! let y = graph.run(&[&x])?;
//! assert_eq!(y[0].to_vec::<f32>()?, layer.forward(&x)?.to_vec::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Settings
//! [`Device::cpu`](DeviceExt::cpu) reads `CHORUS_STREAMS`, `CHORUS_STREAM_POLICY`,
//! `CHORUS_STREAM_WAIT_MS`, `CHORUS_MEMORY_LIMIT`, `CHORUS_THREAD_CACHE` and the CUDA options
//! `CHORUS_CUDA_TF32`, `CHORUS_CUDA_LAZY_BLAS` (see [`Config`]);
//! [`Device::builder`](DeviceExt::builder) sets them in code.

mod device;

/// The README's Rust blocks, compiled (and run, unless marked `no_run`) as doctests of this
/// crate, so that the snippets a user copies first keep compiling.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// Test-only: holds a stream's later work back until opened (feature `testing`).
#[cfg(feature = "testing")]
pub use chorus_core::Gate;
pub use chorus_core::{
    Config, ConfigBuilder, DType, Device, DeviceId, Element, Error, Event, Exhaustion, FaultPlan,
    FaultSite, Graph, HandlerStats, Health, MemoryStats, Result, Stream, StreamGuard, StreamId,
    StreamPolicy, Tensor, UnaryOp,
};
pub use device::{BackendKind, DeviceExt};

/// What an application needs in scope: the device constructors ([`DeviceExt`]), [`Device`],
/// [`Tensor`], [`DType`], and the [`Module`](crate::nn::Module) trait of `nn` layers.
///
/// ```
/// use chorus::prelude::*;
/// let x = Tensor::randn(&Device::cpu()?, &[2, 2], 0)?;
/// assert_eq!(x.dtype(), DType::F32);
/// # Ok::<(), chorus::Error>(())
/// ```
pub mod prelude {
    pub use crate::nn::Module;
    pub use crate::{DType, Device, DeviceExt, Tensor};
}

/// The low-level interface, for people who write a backend: the [`Backend`](backend::Backend)
/// trait and what crosses it (the [`Kernel`](backend::Kernel) descriptors, raw
/// [`DevicePtr`](backend::DevicePtr)s, [`HostCallback`](backend::HostCallback)s,
/// [`BackendError`](backend::BackendError)), and the [`Opener`](backend::Opener) a builder
/// opens its device with. Applications do not need it.
pub mod backend {
    pub use crate::device::open;
    pub use chorus_core::kernel::{self, DevicePtr, Kernel};
    pub use chorus_core::{
        Backend, BackendError, BackendResult, Block, HostCallback, Opener, AUTO_BACKEND,
    };
}

// `__if_cpu!`/`__if_cuda!` expand their items only when that backend is compiled in. They are
// for macros of other crates that must follow this crate's backend features (chorus-testing's
// `backend_tests!` makes a `_cuda` test only where CUDA is compiled in): a
// `#[cfg(feature = "cuda")]` in such a macro's expansion would test the features of the crate
// that calls it, not this crate's. Not part of the API.

#[cfg(feature = "cpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cpu {
    ($($item:item)*) => { $($item)* };
}
#[cfg(not(feature = "cpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cpu {
    ($($item:item)*) => {};
}
#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cuda {
    ($($item:item)*) => { $($item)* };
}
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_cuda {
    ($($item:item)*) => {};
}

/// The CUDA backend (`chorus-cuda`): [`cuda::gpus`], [`cuda::is_available`], kernel
/// compilation counts.
#[cfg(feature = "cuda")]
pub use chorus_cuda as cuda;

/// Modules (Linear, attention, transformer, conv, norms) and PyTorch `state_dict` loading:
/// the `chorus-nn` crate.
pub use chorus_nn as nn;

/// Dynamic batching across threads (`BatchQueue`): the `chorus-batch` crate.
pub use chorus_batch as batch;

/// Sentence encoders (`SentenceEncoder`: BERT-family models from a sentence-transformers
/// folder, with their tokenizer): the `chorus-text` crate.
pub use chorus_text as text;
