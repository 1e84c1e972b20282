//! chorus-core: the backend-agnostic runtime of chorus.
//!
//! - [`Backend`]: the low-level contract every backend implements (and how its concepts map
//!   onto CPU worker threads, CUDA streams and wgpu command buffers).
//! - [`Device`], [`Stream`] (named by a [`StreamId`]), [`Event`]: handles over the runtime that is written once for every
//!   backend: a stream pool with per-thread binding, an event pool, a stream-ordered caching
//!   allocator with per-thread caches, completion handlers and shutdown.
//! - [`Tensor`]: the op front-end (checks, broadcasting) that turns ops into [`Kernel`]s.
//! - [`Graph`]: a function of tensors captured once as its kernels and run as one unit (one
//!   CUDA graph launch on CUDA).
//!
//! Users normally depend on the facade crate `chorus`, which adds the device constructors.

mod alloc;
mod backend;
mod completion;
mod config;
mod derived;
mod device;
pub mod dtype;
mod error;
mod event;
mod event_pool;
mod faults;
mod graph;
pub mod kernel;
mod runtime;
mod shape;
mod stream;
mod tensor;

#[cfg(all(test, chorus_loom))]
mod tests;

pub use alloc::{Block, MemoryStats};
pub use backend::{Backend, BackendResult, HostCallback};
pub use config::{Config, ConfigBuilder, Exhaustion, Opener, StreamPolicy, AUTO_BACKEND};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{BackendError, DeviceId, Error, Result};
pub use event::Event;
pub use faults::{FaultPlan, FaultSite};
pub use graph::Graph;
pub use kernel::{DevicePtr, Kernel, UnaryOp};
pub use runtime::{HandlerStats, Health};
#[cfg(feature = "testing")]
pub use stream::Gate;
pub use stream::{Stream, StreamGuard, StreamId};
pub use tensor::Tensor;
