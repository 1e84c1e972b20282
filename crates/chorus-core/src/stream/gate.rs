//! A test-only gate that holds a stream's later work back (feature `testing`).
//!
//! Nothing in the public API can make a stream wait on the host's say-so, yet a test of an
//! asynchronous hazard (a read still pending when memory is freed, an event whose record is not
//! complete) must be able to keep work pending for as long as it looks, or it only passes by
//! timing. [`Stream::gate`] enqueues a backend host callback that blocks until the [`Gate`] is
//! opened: on the CPU backend it runs on the stream's worker thread in stream order, on CUDA it
//! is a `cuLaunchHostFunc`; either way the stream's work enqueued after it does not start until
//! the callback returns.
//!
//! **Test-only.** The backend contract says host callbacks do not block; this one does, on
//! purpose, and it exists only with the cargo feature `testing` (off by default; the facade's
//! own tests turn it on through their dev-dependency on `chorus-core`).
//!
//! # State
//! `closed` (from [`Stream::gate`]) → `open` ([`Gate::open`] or dropping the gate, also while a
//! panic unwinds). Opening is required: until then, everything that waits for the gated stream
//! waits for the gate: `Stream::synchronize`, `Device::synchronize`, reading back a tensor
//! written after the gate, an allocation that runs out of memory (it synchronizes the device),
//! the device's shutdown (bounded by its timeout). The thread that holds the gate must not make
//! such a call before opening it, or it waits for itself.
//!
//! # Fields
//! `release`: the sending half of a channel whose receiving half the callback owns; opening
//! drops it, which ends the callback's `recv`. The gate keeps no reference to the runtime.
//!
//! # Locks
//! The callback blocks on the backend's thread holding no runtime lock, and it takes none, nor
//! calls the runtime in any way: it only waits on its channel. On CUDA the driver may run the
//! host functions of every stream of the context on one thread, so while a gate is closed the
//! host functions of *other* streams may be held back too, and with them the work those streams
//! enqueued after one (a completion handler, a thread's slot hand-back): do not synchronize
//! another stream that has such work while a gate is held.

use super::{Stream, StreamId};
use crate::error::{DeviceId, Result};
use std::sync::mpsc;

/// Holds the work enqueued on a stream after [`Stream::gate`] until opened (test-only, feature
/// `testing`; see the module docs).
#[derive(Debug)]
#[must_use = "a gate holds its stream back until it is opened or dropped"]
pub struct Gate {
    device: DeviceId,
    stream: StreamId,
    release: Option<mpsc::Sender<()>>,
}

impl Stream {
    /// Enqueues a gate: work enqueued on this stream after the call waits until the returned
    /// [`Gate`] is opened (or dropped). Work enqueued before it runs as usual. Test-only
    /// (feature `testing`); read the module docs of `gate` for what waits for it meanwhile.
    ///
    /// # Examples
    /// ```
    /// # fn demo(device: &chorus_core::Device) -> chorus_core::Result<()> {
    /// let stream = device.current_stream()?;
    /// let gate = stream.gate()?;
    /// let done = device.event()?;
    /// done.record(&stream)?;
    /// assert!(!done.query()?, "held back by the gate");
    /// gate.open();
    /// done.synchronize(std::time::Duration::from_secs(10))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A closed device or a broken stream (no gate is then enqueued).
    pub fn gate(&self) -> Result<Gate> {
        let (release, wait) = mpsc::channel();
        self.rt.gate(self.id, wait)?;
        Ok(Gate {
            device: self.rt.id(),
            stream: self.id,
            release: Some(release),
        })
    }
}

impl Gate {
    /// Lets the gated stream go on; returns at once (it does not wait for the stream).
    pub fn open(self) {
        drop(self);
    }
    /// The device of the gated stream.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }
    /// The gated stream.
    pub fn stream(&self) -> StreamId {
        self.stream
    }
}

impl Drop for Gate {
    /// Opens the gate (dropping the sender ends the callback's wait).
    fn drop(&mut self) {
        drop(self.release.take());
    }
}
