//! Events: a `CUevent` plus a "recorded" flag.
//!
//! CUDA cannot un-record an event, but the core's event pool needs a recycled event to behave
//! as never recorded (`Backend::reset_event`). The flag does that: a reset clears it, and an
//! event whose flag is clear answers "complete" without asking the driver and is not waited
//! for. A later `record` replaces the driver's capture, so no earlier record can become
//! visible through the recycled event. Timing events are created without
//! `CU_EVENT_DISABLE_TIMING`; all others with it (cheaper to record and wait for).

use crate::driver::{check, Context};
use crate::stream::{poll, CudaStream};
use chorus_core::{BackendError, BackendResult};
use chorus_sync::atomic::{AtomicBool, Ordering};
use chorus_sync::Arc;
use cudarc::driver::sys::{self, CUresult};
use std::time::Duration;

/// A pool event.
#[derive(Debug)]
pub struct CudaEvent {
    raw: sys::CUevent,
    timing: bool,
    recorded: AtomicBool,
    ctx: Arc<Context>,
}

// SAFETY: CUevent handles may be used from any thread with the context current; the flag is
// atomic.
unsafe impl Send for CudaEvent {}
// SAFETY: as above.
unsafe impl Sync for CudaEvent {}

impl CudaEvent {
    pub(crate) fn create(ctx: &Arc<Context>, timing: bool) -> BackendResult<CudaEvent> {
        ctx.bind()?;
        let flags = if timing {
            sys::CUevent_flags::CU_EVENT_DEFAULT
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
        };
        let mut raw = std::ptr::null_mut();
        check(
            // SAFETY: the context is current; writes one event handle, destroyed in Drop.
            unsafe { sys::cuEventCreate(&mut raw, flags as u32) },
            "cuEventCreate",
        )?;
        Ok(CudaEvent {
            raw,
            timing,
            recorded: AtomicBool::new(false),
            ctx: Arc::clone(ctx),
        })
    }

    pub(crate) fn record(&self, stream: &CudaStream) -> BackendResult<()> {
        stream.bind()?;
        stream.track(
            // SAFETY: live event and stream of the same context, context current.
            unsafe { sys::cuEventRecord(self.raw, stream.raw) },
            "cuEventRecord",
        )?;
        self.recorded.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn wait_on(&self, stream: &CudaStream) -> BackendResult<()> {
        if !self.recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        stream.bind()?;
        stream.track(
            // SAFETY: live stream and event, context current. The driver captures the event's
            // current record, as the Backend contract requires.
            unsafe { sys::cuStreamWaitEvent(stream.raw, self.raw, 0) },
            "cuStreamWaitEvent",
        )
    }

    pub(crate) fn query(&self) -> BackendResult<bool> {
        if !self.recorded.load(Ordering::Acquire) {
            return Ok(true);
        }
        self.ctx.bind()?;
        // SAFETY: live event, context current.
        match unsafe { sys::cuEventQuery(self.raw) } {
            CUresult::CUDA_SUCCESS => Ok(true),
            CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            other => check(other, "cuEventQuery").map(|()| false),
        }
    }

    pub(crate) fn synchronize(&self, timeout: Option<Duration>) -> BackendResult<bool> {
        if !self.recorded.load(Ordering::Acquire) {
            return Ok(true);
        }
        match timeout {
            None => {
                self.ctx.bind()?;
                check(
                    // SAFETY: live event, context current.
                    unsafe { sys::cuEventSynchronize(self.raw) },
                    "cuEventSynchronize",
                )
                .map(|()| true)
            }
            Some(t) => poll(t, || self.query()),
        }
    }

    pub(crate) fn elapsed(&self, end: &CudaEvent) -> BackendResult<Duration> {
        let usable = |e: &CudaEvent| e.timing && e.recorded.load(Ordering::Acquire);
        if !usable(self) || !usable(end) {
            return Err(BackendError::Call {
                api: "elapsed",
                message: "events not recorded with timing".into(),
            });
        }
        self.ctx.bind()?;
        let mut ms = 0f32;
        check(
            // SAFETY: two live timing events of this context; writes one float.
            unsafe { sys::cuEventElapsedTime_v2(&mut ms, self.raw, end.raw) },
            "cuEventElapsedTime",
        )?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }

    pub(crate) fn reset(&self) {
        self.recorded.store(false, Ordering::Release);
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: created once, destroyed once; the driver releases a pending record's
            // resources when it completes.
            let _ = unsafe { sys::cuEventDestroy_v2(self.raw) };
        }
    }
}
