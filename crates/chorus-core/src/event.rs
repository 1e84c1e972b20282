//! The public event handle.

use crate::error::{DeviceId, Error, Result};
use crate::runtime::EventObj;
use crate::stream::Stream;
use std::time::Duration;

/// A marker in a stream. Leased from the device's pool; dropping it returns it.
///
/// Every event has a unique, never reused, non-zero [`Event::id`]. A never-recorded event is
/// complete.
///
/// # Examples
/// ```no_run
/// # fn demo(device: &chorus_core::Device) -> chorus_core::Result<()> {
/// let stream = device.current_stream()?;
/// let done = device.event()?;
/// done.record(&stream)?;
/// done.synchronize(std::time::Duration::from_secs(1))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Event {
    obj: Box<dyn EventObj>,
}

impl Event {
    pub(crate) fn new(obj: Box<dyn EventObj>) -> Self {
        Self { obj }
    }

    /// Unique id (never zero, never reused).
    pub fn id(&self) -> u64 {
        self.obj.id()
    }

    fn same_device(&self, op: &'static str, s: &Stream) -> Result<()> {
        if s.device_id() == self.obj.device() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                lhs: self.obj.device(),
                rhs: s.device_id(),
            })
        }
    }

    /// Records the event at the current end of `stream` (replacing any earlier record).
    ///
    /// # Errors
    /// Another device's stream, a closed device, or a device error.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.same_device("record", stream)?;
        self.obj.record(stream.id())
    }

    /// Makes later work on `stream` wait for this event; the host does not block.
    ///
    /// # Errors
    /// As [`Event::record`].
    pub fn wait_on(&self, stream: &Stream) -> Result<()> {
        self.same_device("wait", stream)?;
        self.obj.wait_on(stream.id())
    }

    /// Whether the work before the event's last record has completed.
    ///
    /// # Errors
    /// A device error.
    pub fn query(&self) -> Result<bool> {
        self.obj.query()
    }

    /// Blocks until the event completes, at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the time runs out; a device error.
    pub fn synchronize(&self, timeout: Duration) -> Result<()> {
        self.obj.synchronize(Some(timeout))
    }

    /// Blocks until the event completes, however long that takes.
    ///
    /// # Errors
    /// A device error.
    pub fn synchronize_forever(&self) -> Result<()> {
        self.obj.synchronize(None)
    }

    /// Time from this event to `end`; both must be timing events, recorded and complete.
    ///
    /// # Errors
    /// [`Error::NotTiming`] or [`Error::DeviceMismatch`].
    pub fn elapsed(&self, end: &Event) -> Result<Duration> {
        self.obj.elapsed(&*end.obj)
    }

    /// The device the event belongs to.
    pub fn device_id(&self) -> DeviceId {
        self.obj.device()
    }
}
