//! Events leased from the pool, behind the backend-erased [`EventObj`].

use super::{Runtime, RuntimeObj};
use crate::backend::Backend;
use crate::error::{DeviceId, Error, Result};
use crate::stream::StreamId;
use chorus_sync::Arc;
use std::any::Any;
use std::time::Duration;

/// A leased event (backend-erased). Dropping it returns the raw event to the pool.
pub(crate) trait EventObj: Send + Sync + std::fmt::Debug {
    fn id(&self) -> u64;
    fn device(&self) -> DeviceId;
    fn record(&self, stream: StreamId) -> Result<()>;
    fn wait_on(&self, stream: StreamId) -> Result<()>;
    fn query(&self) -> Result<bool>;
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()>;
    fn elapsed(&self, end: &dyn EventObj) -> Result<Duration>;
    fn as_any(&self) -> &dyn Any;
}

struct Lease<B: Backend> {
    rt: Arc<Runtime<B>>,
    raw: Option<B::Event>,
    id: u64,
    timing: bool,
}

impl<B: Backend> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("device", &self.rt.id)
            .field("timing", &self.timing)
            .finish()
    }
}

pub(super) fn lease<B: Backend>(rt: Arc<Runtime<B>>, timing: bool) -> Result<Box<dyn EventObj>> {
    let (raw, id) = rt
        .events
        .acquire(timing, || rt.backend.create_event(timing))
        .map_err(|source| Error::Device {
            device: rt.id,
            stream: StreamId::DEFAULT,
            source,
        })?;
    Ok(Box::new(Lease {
        rt,
        raw: Some(raw),
        id,
        timing,
    }))
}

impl<B: Backend> Lease<B> {
    fn raw(&self) -> &B::Event {
        self.raw.as_ref().expect("raw event present until drop")
    }
}

impl<B: Backend> EventObj for Lease<B> {
    fn id(&self) -> u64 {
        self.id
    }
    fn device(&self) -> DeviceId {
        self.rt.id
    }
    fn record(&self, stream: StreamId) -> Result<()> {
        self.rt.check_open()?;
        let s = self.rt.stream(stream)?;
        (self.rt.inject(crate::faults::FaultSite::Record))
            .and_then(|()| self.rt.backend.record(self.raw(), s))
            .map_err(self.rt.dev_err(stream))
    }
    fn wait_on(&self, stream: StreamId) -> Result<()> {
        self.rt.check_open()?;
        self.rt
            .backend
            .wait(self.rt.stream(stream)?, self.raw())
            .map_err(self.rt.dev_err(stream))
    }
    fn query(&self) -> Result<bool> {
        self.rt
            .backend
            .query(self.raw())
            .map_err(self.rt.dev_err(StreamId::DEFAULT))
    }
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        match self
            .rt
            .backend
            .event_synchronize(self.raw(), timeout)
            .map_err(self.rt.dev_err(StreamId::DEFAULT))?
        {
            true => Ok(()),
            false => Err(Error::Timeout {
                device: self.rt.id,
                what: format!("event {}", self.id),
                timeout: timeout.unwrap_or_default(),
            }),
        }
    }
    fn elapsed(&self, end: &dyn EventObj) -> Result<Duration> {
        let end = end
            .as_any()
            .downcast_ref::<Lease<B>>()
            .filter(|e| e.rt.id == self.rt.id)
            .ok_or(Error::DeviceMismatch {
                op: "elapsed",
                lhs: self.rt.id,
                rhs: end.device(),
            })?;
        if !self.timing || !end.timing {
            return Err(Error::NotTiming {
                reason: "an event was created without timing",
            });
        }
        self.rt
            .backend
            .elapsed(self.raw(), end.raw())
            .map_err(|_| Error::NotTiming {
                reason: "both events must be recorded and complete",
            })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<B: Backend> Drop for Lease<B> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            let backend = &self.rt.backend;
            self.rt
                .events
                .release(raw, self.timing, |e| backend.reset_event(e));
        }
    }
}
