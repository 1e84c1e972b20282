//! Streams: the public handle, the scoped guard and (feature `testing`) the test-only gate. The
//! exclusive pool's slots, which streams threads bind to, are the runtime's
//! (`crate::runtime::slots`).

#[cfg(feature = "testing")]
mod gate;
mod id;

#[cfg(feature = "testing")]
pub use gate::Gate;
pub use id::StreamId;

use crate::error::{DeviceId, Error, Result};
use crate::event::Event;
use crate::runtime::{local, RuntimeObj};
use chorus_sync::Arc;
use std::marker::PhantomData;
use std::time::Duration;

/// An ordered queue of work on one device. Work on one stream runs in enqueue order; work on
/// different streams may overlap. Cheap to clone.
#[derive(Clone)]
pub struct Stream {
    rt: Arc<dyn RuntimeObj>,
    id: StreamId,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("device", &self.rt.id())
            .field("id", &self.id)
            .finish()
    }
}

impl PartialEq for Stream {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.rt.id() == other.rt.id()
    }
}
impl Eq for Stream {}

impl Stream {
    pub(crate) fn new(rt: Arc<dyn RuntimeObj>, id: StreamId) -> Result<Self> {
        if id.index() >= rt.num_streams() {
            return Err(Error::NoSuchStream {
                device: rt.id(),
                stream: id,
                streams: rt.num_streams(),
            });
        }
        Ok(Self { rt, id })
    }

    /// The stream's name on its device.
    pub fn id(&self) -> StreamId {
        self.id
    }
    /// Index in the device's pool (0 = default stream): `self.id().index()`.
    pub fn index(&self) -> usize {
        self.id.index()
    }
    /// The device the stream belongs to.
    pub fn device_id(&self) -> DeviceId {
        self.rt.id()
    }

    /// Hands pending work to the device without waiting.
    ///
    /// # Errors
    /// A closed device or a device error.
    pub fn flush(&self) -> Result<()> {
        self.rt.flush(self.id)
    }
    /// Blocks until all work enqueued on this stream has completed.
    ///
    /// # Errors
    /// The stream's device error.
    pub fn synchronize(&self) -> Result<()> {
        self.rt.synchronize_stream(self.id, None)
    }
    /// Like [`Stream::synchronize`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] or the stream's device error.
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<()> {
        self.rt.synchronize_stream(self.id, Some(timeout))
    }
    /// Makes later work on this stream wait for `event` (device-side; the host does not block).
    ///
    /// # Errors
    /// As [`Event::wait_on`].
    pub fn wait(&self, event: &Event) -> Result<()> {
        event.wait_on(self)
    }
    /// Runs `f` once all work enqueued on this stream before the call has completed.
    ///
    /// `f` runs on the device's completion thread, never under a runtime lock and never on the
    /// calling thread's stack; a panic in `f` is contained and counted in
    /// [`Device::handler_stats`](crate::Device::handler_stats). If the device shuts down before
    /// the work completes, `f` is dropped without running.
    ///
    /// # Errors
    /// A closed device or a broken stream (`f` is then dropped).
    pub fn on_complete(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.rt.on_complete(self.id, Box::new(f))
    }
}

/// Restores the thread's previous current stream when dropped (also during a panic).
/// Not `Send`: it belongs to the thread that made it.
#[derive(Debug)]
#[must_use = "the stream is current only while the guard lives"]
pub struct StreamGuard {
    token: u64,
    _not_send: PhantomData<*const ()>,
}

impl StreamGuard {
    pub(crate) fn new(instance: u64, stream: StreamId) -> Self {
        Self {
            token: local::push_override(instance, stream),
            _not_send: PhantomData,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        local::pop_override(self.token);
    }
}
