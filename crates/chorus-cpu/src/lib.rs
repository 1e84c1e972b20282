//! The CPU backend of chorus.
//!
//! Every stream is a worker thread that runs its commands in order, asynchronously from the
//! thread that enqueued them: `a.matmul(&b)` returns before the product is computed, so every
//! hazard that exists on a GPU (use after free across streams, missing waits, reuse before
//! completion) exists here too and is exercised by the tests. Memory is 256-byte aligned host
//! memory handed out in segments; events are (stream, command count) pairs; host callbacks run
//! on the stream's worker.
//!
//! Matmul (`kernels/matmul.rs`): products of 24 rows or more run the packed register-tile
//! kernel on AVX-512 (`kernels/packed.rs`), fewer rows `rowdot`, other machines the `gemm`
//! crate; a product may share its chunks with idle cores when its stream is alone on the
//! device. Every output is computed the same way whichever thread computes it, so results do
//! not depend on how many threads or streams run. A weight `linear` multiplies with 24 rows or
//! more (on AVX-512) is packed once and kept in its storage's cache (`chorus_core::kernel::Derived`):
//! host memory as large as the weight, outside the allocator and its statistics, freed with
//! the weight.
//!
//! # Examples
//! ```
//! let device = chorus_cpu::device()?;
//! let x = chorus_core::Tensor::randn(&device, &[64, 64], 7)?;
//! let s = x.matmul(&x)?.sum_all()?;
//! assert!(s.item::<f32>()?.is_finite());
//! # Ok::<(), chorus_core::Error>(())
//! ```

mod event;
mod kernels;
mod memory;
mod stream;

use chorus_core::{
    Backend, BackendError, BackendResult, Config, DevicePtr, HostCallback, Kernel, StreamId,
};
use chorus_sync::{rank, Arc, RankedMutex};
use std::time::Duration;

pub use event::CpuEvent;
pub use memory::{segment_bytes, Segment};
use stream::Command;
pub use stream::CpuStream;

/// The CPU backend (one per `Device`).
#[derive(Debug, Default)]
pub struct CpuBackend {
    /// Stream workers running commands right now: a stream alone on the device may use every
    /// core for a large GEMM.
    busy: Arc<chorus_sync::atomic::AtomicUsize>,
}

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A CPU device with the settings of the `CHORUS_*` environment variables.
///
/// # Errors
/// An invalid environment variable, or a worker thread that could not start.
pub fn device() -> chorus_core::Result<chorus_core::Device> {
    device_with(Config::from_env()?)
}

/// A CPU device with explicit settings (the runtime's; [`Config::backend`], the ordinal and
/// the CUDA options are not read). An [`Opener`](chorus_core::Opener).
///
/// # Errors
/// A worker thread that could not start.
pub fn device_with(config: Config) -> chorus_core::Result<chorus_core::Device> {
    chorus_core::Device::with_backend(CpuBackend::new(), config)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend for CpuBackend {
    type Stream = CpuStream;
    type Event = CpuEvent;
    type Segment = Segment;
    type Graph = Arc<Vec<Kernel>>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn ordinal(&self) -> u32 {
        0
    }
    fn describe(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("{} ({cores} cores)", cpu_model())
    }
    fn prepares_weights(&self) -> bool {
        kernels::prepares_weights()
    }

    fn total_memory(&self) -> Option<usize> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: usize = info
            .lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        kb.checked_mul(1024)
    }

    fn create_stream(&self, id: StreamId) -> BackendResult<CpuStream> {
        CpuStream::spawn(id, Arc::clone(&self.busy))
    }
    fn create_event(&self, timing: bool) -> BackendResult<CpuEvent> {
        Ok(CpuEvent::new(timing))
    }
    fn alloc_segment(&self, bytes: usize) -> BackendResult<(Segment, DevicePtr)> {
        Segment::alloc(bytes)
    }
    unsafe fn free_segment(&self, segment: Segment) {
        drop(segment);
    }

    unsafe fn launch(&self, stream: &CpuStream, kernel: Kernel) -> BackendResult<()> {
        kernels::check(&kernel)?;
        stream.shared.push_work(Command::Kernel(kernel)).map(drop)
    }
    unsafe fn build_graph(&self, kernels: &[Kernel]) -> BackendResult<Option<Arc<Vec<Kernel>>>> {
        kernels.iter().try_for_each(kernels::check)?;
        Ok(Some(Arc::new(kernels.to_vec())))
    }
    unsafe fn launch_graph(
        &self,
        stream: &CpuStream,
        graph: &Arc<Vec<Kernel>>,
    ) -> BackendResult<()> {
        stream
            .shared
            .push_work(Command::Graph(Arc::clone(graph)))
            .map(drop)
    }
    unsafe fn write(&self, stream: &CpuStream, dst: DevicePtr, data: Vec<u8>) -> BackendResult<()> {
        stream
            .shared
            .push_work(Command::Write {
                dst: dst.0 as usize,
                data,
            })
            .map(drop)
    }
    unsafe fn read(
        &self,
        stream: &CpuStream,
        src: DevicePtr,
        len: usize,
    ) -> BackendResult<Vec<u8>> {
        let reply = Arc::new(RankedMutex::new(rank::BACKEND_REPLY, None));
        let target = stream.shared.push_work(Command::Read {
            src: src.0 as usize,
            len,
            reply: Arc::clone(&reply),
        })?;
        stream.shared.wait_until(target, None);
        if let Some(e) = stream.shared.error() {
            return Err(e);
        }
        let bytes = reply.lock().take();
        bytes.ok_or(BackendError::Call {
            api: "read",
            message: "the worker did not deliver the bytes".into(),
        })
    }

    fn flush(&self, stream: &CpuStream) -> BackendResult<()> {
        // Commands are visible to the worker as soon as they are pushed.
        stream.shared.error().map_or(Ok(()), Err)
    }
    fn synchronize(&self, stream: &CpuStream, timeout: Option<Duration>) -> BackendResult<bool> {
        let done = stream.shared.wait_until(stream.shared.enqueued(), timeout);
        // Work still running is reported as such, whatever the stream's error: a caller that
        // gets an error takes the stream's work for finished (shutdown).
        if !done {
            return Ok(false);
        }
        stream.shared.error().map_or(Ok(true), Err)
    }
    fn stream_error(&self, stream: &CpuStream) -> Option<BackendError> {
        stream.shared.error()
    }

    fn record(&self, event: &CpuEvent, stream: &CpuStream) -> BackendResult<()> {
        event.record(&stream.shared);
        Ok(())
    }
    fn wait(&self, stream: &CpuStream, event: &CpuEvent) -> BackendResult<()> {
        match event.target() {
            Some((src, target)) if src.id != stream.shared.id && !src.is_done(target) => {
                stream.shared.push(Command::WaitFor {
                    stream: src,
                    target,
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn query(&self, event: &CpuEvent) -> BackendResult<bool> {
        Ok(event.target().is_none_or(|(s, t)| s.is_done(t)))
    }
    fn event_synchronize(
        &self,
        event: &CpuEvent,
        timeout: Option<Duration>,
    ) -> BackendResult<bool> {
        Ok(event.target().is_none_or(|(s, t)| s.wait_until(t, timeout)))
    }
    fn elapsed(&self, start: &CpuEvent, end: &CpuEvent) -> BackendResult<Duration> {
        match (start.time(), end.time()) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(a)),
            _ => Err(BackendError::Call {
                api: "elapsed",
                message: "events not recorded with timing, or not complete".into(),
            }),
        }
    }
    fn reset_event(&self, event: &CpuEvent) {
        event.reset();
    }

    fn host_callback(&self, stream: &CpuStream, callback: HostCallback) -> BackendResult<()> {
        stream.shared.push(Command::Callback(callback));
        Ok(())
    }
}
