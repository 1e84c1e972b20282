//! The queue rows of `chorus bench batching`: the clients' requests through one
//! [`BatchQueue`] of a given `max_batch` and `max_delay`, each client keeping `--outstanding`
//! requests in flight.

use super::clients::{clients, host_rows, seed};
use super::measure::Measured;
use super::{BatchingArgs, InputKind};
use chorus::batch::{BatchConfig, BatchQueue, BatchStats, HostTensor, ShutdownMode, Ticket};
use chorus::nn;
use chorus::{Device, Tensor};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// One queue configuration: its throughput and client-side latency, and the queue's
/// statistics.
pub(super) fn queued(
    device: &Device,
    model: &nn::Mlp,
    a: &BatchingArgs,
    max_batch: usize,
    max_delay: Duration,
) -> anyhow::Result<(Measured, BatchStats)> {
    let cfg = BatchConfig::builder(device)
        .max_batch(max_batch)
        .max_delay(max_delay)
        .workers(usize::try_from(a.workers)?)
        .max_queue(usize::try_from(a.clients * a.outstanding)?.max(1) * 2)
        .input_shape(Some(vec![512]))
        .graphs(a.graphs)
        .build()?;
    let queue = BatchQueue::new(model.clone(), cfg)?;
    // Each client keeps `outstanding` requests in flight (`submit`, then wait for the oldest
    // before the next), each timed from its submission to its result; with one, that is a
    // blocking `infer`.
    let in_flight = usize::try_from(a.outstanding)?;
    let run = |c: u64, requests: Range<u64>| -> anyhow::Result<Vec<Duration>> {
        let mut latencies = Vec::with_capacity(requests.clone().count());
        let mut pending = VecDeque::<InFlight>::with_capacity(in_flight);
        for i in requests {
            if pending.len() == in_flight {
                if let Some(oldest) = pending.pop_front() {
                    latencies.push(oldest.finish()?);
                }
            }
            let request = match a.input {
                InputKind::Host => {
                    let x = HostTensor::new(&host_rows(seed(c, i), 1), &[1, 512])?;
                    InFlight::Host(Instant::now(), queue.submit(x)?)
                }
                InputKind::Device => {
                    let x = Tensor::randn(device, &[1, 512], seed(c, i))?;
                    InFlight::Device(Instant::now(), queue.submit(x)?)
                }
            };
            pending.push_back(request);
        }
        while let Some(oldest) = pending.pop_front() {
            latencies.push(oldest.finish()?);
        }
        Ok(latencies)
    };
    let warmup = if a.graphs { 50 } else { 5 };
    let phase = clients(a.clients, warmup, a.requests, &run, &|| queue.reset_stats())?;
    let stats = queue.stats();
    queue.shutdown(ShutdownMode::Drain);
    Ok((Measured::from(a.clients * a.requests, phase), stats))
}

/// A submitted request and when it was submitted.
enum InFlight {
    Host(Instant, Ticket<HostTensor>),
    Device(Instant, Ticket<Tensor>),
}

impl InFlight {
    /// Waits for the request's result (read back to host memory for a host request) and
    /// returns its latency from submission.
    fn finish(self) -> anyhow::Result<Duration> {
        match self {
            InFlight::Host(t0, ticket) => {
                std::hint::black_box(ticket.wait()?.to_vec::<f32>()?);
                Ok(t0.elapsed())
            }
            InFlight::Device(t0, ticket) => {
                ticket.wait()?;
                Ok(t0.elapsed())
            }
        }
    }
}
