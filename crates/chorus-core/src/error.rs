//! Errors of the runtime and the op front-end.

use crate::dtype::DType;
use crate::stream::StreamId;
use std::time::Duration;

/// Identity of one device instance: backend name, hardware ordinal and a process-unique
/// instance number (two `Device::cpu()` calls make two devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceId {
    /// Backend name (`cpu`, `cuda`, `wgpu`).
    pub backend: &'static str,
    /// Hardware ordinal (`cuda:1` has ordinal 1).
    pub ordinal: u32,
    /// Process-unique instance number, never reused.
    pub instance: u64,
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}#{}", self.backend, self.ordinal, self.instance)
    }
}

/// A failure reported by a backend (driver call, OS allocation, worker).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not allocate device memory.
    #[error("device allocation of {bytes} bytes failed")]
    OutOfMemory {
        /// Size of the failed allocation.
        bytes: usize,
    },
    /// A backend call failed.
    #[error("{api} failed: {message}")]
    Call {
        /// The failing call (`cuMemAlloc`, `spawn worker`, ...).
        api: &'static str,
        /// What the backend said.
        message: String,
    },
    /// The backend cannot run this descriptor (a dtype or op it lacks); refused at launch,
    /// before anything is enqueued.
    #[error("the {backend} backend cannot run `{kernel}`: {what}")]
    Unsupported {
        /// The backend (`cpu`, `cuda`, ...).
        backend: &'static str,
        /// Kernel name.
        kernel: &'static str,
        /// What it lacks.
        what: String,
    },
    /// Work that was already enqueued failed; the stream reports it at its next call.
    #[error("kernel `{kernel}` failed: {message}")]
    Kernel {
        /// Kernel name.
        kernel: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The device hit a fault it cannot recover from; the runtime puts it in the `Lost` state
    /// ([`Error::DeviceLost`]).
    #[error("the device is lost: {cause}")]
    Lost {
        /// What the backend saw (an illegal address, an ECC error, ...).
        cause: String,
    },
    /// A failure injected by a fault plan (`crate::faults`, debug builds and the
    /// `fault-injection` feature): the call was not made.
    #[error("injected fault: {site} #{call} failed")]
    Injected {
        /// The kind of call.
        site: crate::faults::FaultSite,
        /// Its number among that site's calls since the plan was set.
        call: u64,
    },
}

/// Everything that can go wrong in chorus-core. Errors carry the data needed to act on them.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands' shapes do not fit the op.
    #[error("{op}: shapes {lhs:?} and {rhs:?} are incompatible ({reason})")]
    ShapeMismatch {
        /// The op.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand.
        rhs: Vec<usize>,
        /// Which rule failed.
        reason: &'static str,
    },
    /// A shape argument is invalid for the op (reshape to a different size, empty dims, ...).
    #[error("{op}: invalid shape {shape:?} ({reason})")]
    InvalidShape {
        /// The op.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
        /// Why.
        reason: String,
    },
    /// A dimension index is out of range.
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    InvalidDim {
        /// The op.
        op: &'static str,
        /// The dimension asked for (negative counts from the end).
        dim: isize,
        /// Rank of the tensor.
        rank: usize,
    },
    /// An operand has the wrong element type.
    #[error("{op}: expected dtype {expected}, got {got}")]
    DTypeMismatch {
        /// The op.
        op: &'static str,
        /// The dtype the op needs.
        expected: DType,
        /// The dtype it got.
        got: DType,
    },
    /// The op does not support this element type on this backend.
    #[error("{op}: dtype {dtype} is not supported")]
    UnsupportedDType {
        /// The op.
        op: &'static str,
        /// The dtype.
        dtype: DType,
    },
    /// A slice's length does not match the shape it should fill.
    #[error("{op}: {len} values do not fill shape {shape:?}")]
    LengthMismatch {
        /// The op.
        op: &'static str,
        /// Number of values given.
        len: usize,
        /// The shape.
        shape: Vec<usize>,
    },
    /// Operands live on different devices.
    #[error("{op}: operands live on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        /// The op.
        op: &'static str,
        /// Device of the first operand.
        lhs: DeviceId,
        /// Device of the second operand.
        rhs: DeviceId,
    },
    /// A size computation overflowed `usize`.
    #[error("{what}: size overflows usize")]
    SizeOverflow {
        /// What was being computed.
        what: &'static str,
    },
    /// Allocation failed after reclaiming deferred frees, releasing cached segments and
    /// synchronizing the device.
    #[error(
        "out of memory on {device}: requested {requested} bytes with {allocated} allocated, \
         {cached} cached, limit {}",
        limit.map_or_else(|| "none".to_string(), |l| l.to_string())
    )]
    OutOfMemory {
        /// The device.
        device: DeviceId,
        /// Bytes asked for.
        requested: usize,
        /// Bytes held by live tensors.
        allocated: usize,
        /// Bytes reserved from the device but not in use.
        cached: usize,
        /// The configured limit, if any.
        limit: Option<usize>,
    },
    /// The device was shut down (its last `Device` handle dropped).
    #[error("device {device} is shut down")]
    DeviceClosed {
        /// The device.
        device: DeviceId,
    },
    /// Every pooled stream is bound to a thread (exclusive policy).
    #[error("all {slots} pooled streams of {device} are taken (waited {waited:?})")]
    StreamsExhausted {
        /// The device.
        device: DeviceId,
        /// Number of pooled streams.
        slots: usize,
        /// How long the thread waited before giving up.
        waited: Duration,
    },
    /// The stream index does not exist on this device.
    #[error("{stream} does not exist on {device} ({streams} streams)")]
    NoSuchStream {
        /// The device.
        device: DeviceId,
        /// The stream asked for.
        stream: StreamId,
        /// Number of streams.
        streams: usize,
    },
    /// A host wait ran out of time.
    #[error("{what} on {device} did not complete within {timeout:?}")]
    Timeout {
        /// The device.
        device: DeviceId,
        /// What was waited for (`event 17`, `stream 3`).
        what: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A timing query on events that were not both recorded with timing enabled.
    #[error("elapsed time needs two recorded timing events ({reason})")]
    NotTiming {
        /// Why the query failed.
        reason: &'static str,
    },
    /// A backend failure, with the stream it belongs to.
    #[error("device error on {device}, {stream}: {source}")]
    Device {
        /// The device.
        device: DeviceId,
        /// The stream.
        stream: StreamId,
        /// What the backend said.
        #[source]
        source: BackendError,
    },
    /// A kernel failed on the device (an index out of range, say), reported when a tensor it
    /// poisoned is read back: by that tensor and by everything computed from it, on any stream
    /// or thread. The stream it ran on keeps working, and other tensors are unaffected.
    #[error("{op} on {device}, {stream}: kernel `{kernel}` failed: {message}")]
    Kernel {
        /// The device.
        device: DeviceId,
        /// The stream the failing kernel ran on.
        stream: StreamId,
        /// The op that launched it (`index_select`; `embedding` goes through it).
        op: &'static str,
        /// The failing kernel.
        kernel: &'static str,
        /// What was wrong, e.g. "index 31000 out of range for 30522 rows".
        message: String,
    },
    /// The device hit a fault it cannot recover from (on CUDA an illegal address, an ECC
    /// error, or a launch failure that broke the context; on the CPU a kernel that panicked,
    /// a bug). Every later call on it returns this; waiting threads wake with it; a new
    /// `Device` for the same hardware can be opened (models must be loaded again).
    #[error("device {device} is lost: {cause}")]
    DeviceLost {
        /// The device.
        device: DeviceId,
        /// The first fault that lost it.
        cause: String,
    },
    /// A backend could not start: no driver, no such device, or a driver failure at start.
    #[error("{backend} device {ordinal} is not available: {source}")]
    Unavailable {
        /// The backend (`cuda`, `wgpu`).
        backend: &'static str,
        /// The device ordinal asked for.
        ordinal: u32,
        /// What the backend said.
        #[source]
        source: BackendError,
    },
    /// An op that cannot be part of a graph was called while capturing one (or a capture or
    /// run where none can be).
    #[error("{op} cannot be captured in a graph: {reason}")]
    Capture {
        /// The op.
        op: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A tensor made while capturing a graph (it lives in the graph's memory, which every run
    /// rewrites) was used outside that capture.
    #[error("a tensor made while capturing a graph is usable only inside that capture")]
    GraphTensor,
    /// A graph was run with another number of inputs than it was captured with.
    #[error("the graph takes {expected} inputs, got {got}")]
    GraphInputs {
        /// Inputs of the capture.
        expected: usize,
        /// Inputs given.
        got: usize,
    },
    /// A graph input differs in shape or dtype from the capture's.
    #[error("graph input {index}: captured as {expected_dtype:?} {expected:?}, got {got_dtype:?} {got:?}")]
    GraphInput {
        /// Position of the input.
        index: usize,
        /// Shape of the capture's input.
        expected: Vec<usize>,
        /// Dtype of the capture's input.
        expected_dtype: DType,
        /// Shape given.
        got: Vec<usize>,
        /// Dtype given.
        got_dtype: DType,
    },
    /// A configuration value (builder or environment variable) is invalid.
    #[error("invalid configuration {key}={value:?}: {reason}")]
    Config {
        /// Setting or environment variable name.
        key: &'static str,
        /// The rejected value.
        value: String,
        /// What would be valid.
        reason: &'static str,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
