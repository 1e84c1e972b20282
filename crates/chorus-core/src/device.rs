//! The public device handle.

use crate::alloc::MemoryStats;
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{DeviceId, Result};
use crate::event::Event;
#[cfg(any(debug_assertions, feature = "fault-injection"))]
use crate::faults::{FaultPlan, FaultSite};
use crate::runtime::{HandlerStats, Health, Runtime, RuntimeObj};
use crate::stream::{Stream, StreamGuard, StreamId};
use chorus_sync::Arc;
use std::time::Duration;

/// A handle to one device. Cloning is cheap; all clones share the device.
///
/// Dropping the last `Device` handle shuts the device down (see [`Device::shutdown`]) even
/// while tensors, streams or events of it are still alive: those keep the memory they need,
/// and calls on them that would enqueue work return [`Error::DeviceClosed`](crate::Error::DeviceClosed).
///
/// The facade crate `chorus` has the constructors (`Device::cpu()`, `Device::cuda(i)`,
/// `Device::builder()`, ... from its `DeviceExt` trait); here, a device is opened from a
/// [`ConfigBuilder`](crate::ConfigBuilder) with an [`Opener`](crate::Opener)
/// ([`ConfigBuilder::open`](crate::ConfigBuilder::open)) or by a backend crate
/// ([`Device::with_backend`]).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Owner>,
}

/// The shared owner whose drop shuts the device down.
struct Owner {
    rt: Arc<dyn RuntimeObj>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.rt.shutdown();
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Device {
    /// Starts a device over `backend` (backend crates and the facade call this).
    ///
    /// # Errors
    /// The backend could not create its streams or the completion thread could not start.
    pub fn with_backend<B: Backend>(backend: B, config: Config) -> Result<Device> {
        let rt: Arc<dyn RuntimeObj> = Runtime::new(backend, config)?;
        Ok(Device {
            inner: Arc::new(Owner { rt }),
        })
    }

    pub(crate) fn rt(&self) -> &Arc<dyn RuntimeObj> {
        &self.inner.rt
    }

    /// The device's identity.
    pub fn id(&self) -> DeviceId {
        self.inner.rt.id()
    }
    /// Its settings.
    pub fn config(&self) -> &Config {
        self.inner.rt.config()
    }
    /// One line describing the hardware.
    pub fn describe(&self) -> String {
        self.inner.rt.describe()
    }
    /// Total device memory in bytes, if the backend knows it.
    pub fn total_memory(&self) -> Option<usize> {
        self.inner.rt.total_memory()
    }
    /// The device's state: working, shut down, or lost to a fatal fault (with its cause).
    ///
    /// A device is *lost* when the backend reports a fault it cannot recover from (on CUDA an
    /// illegal address, an ECC error, a launch failure that broke the context). From then on
    /// every call on it and on its tensors, streams and events returns
    /// [`Error::DeviceLost`](crate::Error::DeviceLost) naming the cause, waiting threads wake
    /// with it, and memory accounting stays consistent (dropped tensors free their bytes). The
    /// device cannot be repaired: open a new `Device` for the same hardware and load the
    /// models again onto it (their weights live in the lost device's memory).
    pub fn health(&self) -> Health {
        self.inner.rt.health()
    }

    /// Sets the fault-injection plan of this device, replacing the last one and restarting
    /// its counts (`FaultPlan::new()`: no faults). Debug builds and the `fault-injection`
    /// feature only; see [`FaultPlan`] for what fails and how.
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    pub fn inject_faults(&self, plan: FaultPlan) {
        self.inner.rt.inject_faults(plan);
    }

    /// How many failures the plan injected at each site since it was set.
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    pub fn injected_faults(&self) -> Vec<(FaultSite, u64)> {
        self.inner.rt.injected_faults()
    }

    /// Whether the device was shut down.
    pub fn is_closed(&self) -> bool {
        self.inner.rt.is_closed()
    }

    /// Stream `index` of the device's pool (0 is the default stream), named
    /// [`StreamId::new(index)`](crate::StreamId::new).
    ///
    /// # Errors
    /// [`Error::NoSuchStream`](crate::Error::NoSuchStream) when out of range.
    pub fn stream(&self, index: usize) -> Result<Stream> {
        Stream::new(Arc::clone(self.rt()), StreamId::new(index))
    }
    /// The default stream (stream 0).
    pub fn default_stream(&self) -> Stream {
        Stream::new(Arc::clone(self.rt()), StreamId::DEFAULT).expect("stream 0 exists")
    }
    /// The calling thread's current stream: a guard's stream, else the thread's bound stream,
    /// which is bound by the device's policy on first use.
    ///
    /// # Errors
    /// [`Error::StreamsExhausted`](crate::Error::StreamsExhausted) (exclusive policy) or
    /// [`Error::DeviceClosed`](crate::Error::DeviceClosed).
    pub fn current_stream(&self) -> Result<Stream> {
        let s = self.rt().current_stream()?;
        Stream::new(Arc::clone(self.rt()), s)
    }
    /// Makes `stream` the calling thread's current stream until the guard drops (also on panic).
    ///
    /// # Panics
    /// If `stream` belongs to another device.
    pub fn set_stream(&self, stream: &Stream) -> StreamGuard {
        assert_eq!(
            stream.device_id(),
            self.id(),
            "set_stream: stream of another device"
        );
        StreamGuard::new(self.id().instance, stream.id())
    }
    /// Runs `f` with `stream` as the calling thread's current stream, then restores the
    /// previous one (also if `f` panics).
    ///
    /// # Panics
    /// If `stream` belongs to another device.
    pub fn with_stream<R>(&self, stream: &Stream, f: impl FnOnce() -> R) -> R {
        let _g = self.set_stream(stream);
        f()
    }

    /// Waits until all work on all streams has completed.
    ///
    /// # Errors
    /// A stream's device error.
    pub fn synchronize(&self) -> Result<()> {
        self.rt().synchronize(None)
    }
    /// Like [`Device::synchronize`], giving up after `timeout` in all.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) or a stream's device error.
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<()> {
        self.rt().synchronize(Some(timeout))
    }

    /// A new event (from the device's pool), without timing.
    ///
    /// # Errors
    /// [`Error::DeviceClosed`](crate::Error::DeviceClosed) or a backend failure.
    pub fn event(&self) -> Result<Event> {
        Ok(Event::new(self.rt().new_event(false)?))
    }
    /// A new timing event, for [`Event::elapsed`].
    ///
    /// # Errors
    /// As [`Device::event`].
    pub fn timing_event(&self) -> Result<Event> {
        Ok(Event::new(self.rt().new_event(true)?))
    }

    /// The allocator's statistics.
    pub fn memory_stats(&self) -> MemoryStats {
        self.rt().memory_stats()
    }
    /// Resets the peak counters to the current values.
    pub fn reset_peak_memory(&self) {
        self.rt().reset_peak();
    }
    /// Flushes the calling thread's block cache, waits for the device and returns every
    /// cached segment to the device, and whatever else the backend keeps idle for reuse (on
    /// CUDA, the streams of dropped graphs with their cuBLAS workspaces).
    pub fn empty_cache(&self) {
        self.rt().empty_cache();
    }
    /// Counters of completion handlers (ran, panicked).
    pub fn handler_stats(&self) -> HandlerStats {
        self.rt().handler_stats()
    }

    /// Shuts the device down now (it also happens when the last handle drops): waits (bounded
    /// by the configured shutdown timeout) for in-flight work, runs the completion handlers it
    /// produced, takes back cached blocks and releases cached memory. Later calls that would
    /// enqueue work or allocate fail with [`Error::DeviceClosed`](crate::Error::DeviceClosed).
    /// A call while another thread's shutdown is in progress returns once that one has
    /// finished; from a completion handler it returns at once (the shutdown in progress waits
    /// for the handlers). So a handler must not wait for a thread that calls `shutdown` while
    /// another shutdown runs: that shutdown waits for the handler, the thread for that
    /// shutdown.
    pub fn shutdown(&self) {
        self.rt().shutdown();
    }
}
