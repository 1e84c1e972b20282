//! chorus: thread-safe parallel inference on one device.
//!
//! Many application threads run tensor work on the same device at the same time, each on its
//! own stream, sharing one stream-ordered caching allocator, with results bit-identical to the
//! same work run alone.
//!
//! # Examples
//! ```
//! use chorus::{Device, Tensor};
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
//! use chorus::{DType, Device, Graph, Tensor};
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
//! [`Device::cpu`] reads `CHORUS_STREAMS`, `CHORUS_STREAM_POLICY`, `CHORUS_STREAM_WAIT_MS`,
//! `CHORUS_MEMORY_LIMIT` and `CHORUS_THREAD_CACHE` (see [`Config`]); [`Device::builder`] sets
//! them in code.

mod device;

/// Test-only: holds a stream's later work back until opened (feature `testing`).
#[cfg(feature = "testing")]
pub use chorus_core::Gate;
pub use chorus_core::{
    kernel, Backend, BackendError, Config, ConfigBuilder, DType, DeviceId, Element, Error, Event,
    Exhaustion, Graph, HandlerStats, MemoryStats, Result, Stream, StreamGuard, StreamId,
    StreamPolicy, Tensor, UnaryOp,
};
pub use device::{BackendKind, Device, DeviceBuilder};

/// The CUDA backend (`chorus-cuda`): [`cuda::gpus`], [`cuda::CudaOptions`], kernel
/// compilation counts.
#[cfg(feature = "cuda")]
pub use chorus_cuda as cuda;

/// Modules (Linear, attention, transformer, conv, norms) and PyTorch `state_dict` loading:
/// the `chorus-nn` crate.
pub use chorus_nn as nn;

/// Dynamic batching across threads (`BatchQueue`): the `chorus-batch` crate.
pub use chorus_batch as batch;
