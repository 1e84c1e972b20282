//! `chorus bench batching`: the dynamic batching queue (`chorus::batch`) on the MLP
//! 512→1024→1024→512 (ReLU, the weights of `chorus bench`), against two direct baselines.
//!
//! - **Queue**: `--clients` threads each send `--requests` batch-1 requests one after another
//!   (`infer`, which returns once the request's rows are computed), through one queue per
//!   (`max_batch`, `max_delay`) of the sweep, with `--workers` workers.
//! - **(a) direct, many threads**: the same threads call the model directly with batch 1.
//! - **(b) direct, one thread, batch B**: one thread calls the model directly on B rows, for
//!   B = each `max_batch`.
//!
//! `--input` says where requests come from and results go, the same for all three:
//! - `host` (the default; what a server does): a request is a row of 512 f32 in host memory
//!   and its result is read back to host memory. Queue: `infer(HostTensor)`, which returns a
//!   `HostTensor`. Direct: `Tensor::from_slice`, forward, `to_vec` (which waits for the
//!   result).
//! - `device`: a request is `randn([1, 512])` made on the client's stream and its result stays
//!   on the device. Queue: `infer(Tensor)`. Direct: forward, then synchronize the thread's
//!   stream.
//!
//! With `--outstanding K` each client keeps K requests in the queue at once (`submit`, then
//! wait for the oldest before submitting the next), as a server with an asynchronous front end
//! would, so that `--clients C --outstanding K` keeps C × K requests in flight with only C
//! threads to wake; each request's latency is from its submission to its result. (a) stays
//! `--clients` threads each calling the model directly, one call at a time.
//!
//! With `--graphs` the queue runs its batches through graphs of the model, padded to powers of
//! two (`BatchConfigBuilder::graphs`), and its clients' warm-up is 50 requests each.
//!
//! With `--repeat N` every row ((a), each (b), each queue setting) is measured N times in a row
//! and the run of median throughput is reported, whole (its latencies, phases, allocator
//! counts), with every run's throughput in `runs`: a row lasts tens of milliseconds on a GPU,
//! short enough for one hiccup of the machine to move it by half.
//!
//! Each timed phase starts after a warm-up (5 requests per client, 3 forwards for (b)) and a
//! barrier, and stops when the last client has its last result. Throughput is samples (rows)
//! per second; latency is per request (per forward for (b)), from the call until its result is
//! computed: p50 and p99 over every request of the phase. Ratios are queue throughput over
//! (a) and over (b) at the same B; the latency bound of the target is
//! `max_delay + 3 × (b)'s forward time at B`. Each phase also reports the whole process's CPU
//! time per sample over the same span (all threads: clients, workers, the runtime's and the
//! driver's; Unix only), and the part of it spent on the threads that make the requests (the
//! clients; (b)'s one thread), since host CPU, not the GPU, is what limits the queue on the
//! machines measured (BENCHMARKS.md).
//!
//! This file holds the options and the sweep (which rows are measured, in what order);
//! `clients.rs` runs the client threads, `direct.rs` the baselines, `queue.rs` the queue rows,
//! `measure.rs` turns a phase into figures, `report.rs` prints them.

mod clients;
mod direct;
mod measure;
mod queue;
mod report;

use crate::device::{self, DeviceChoice};
use crate::workload;
use clap::{Args, ValueEnum};
use measure::{median_of, memory_delta, Measured};
use report::{QueueRow, Sweep};
use std::process::ExitCode;
use std::time::Duration;

/// Largest `--max-batch` (its rows are made in host memory: 2 KiB each).
const MAX_BATCH: usize = 1 << 20;

/// Options of `chorus bench batching` (ignored by the other suites).
#[derive(Debug, Args)]
pub(crate) struct BatchingArgs {
    /// Batching: client threads, each sending batch-1 requests one at a time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    clients: u64,
    /// Batching: the `max_batch` values to sweep (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "8,32,128,512",
        value_name = "LIST"
    )]
    max_batch: Vec<usize>,
    /// Batching: the `max_delay` values to sweep, in milliseconds (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.5,2",
        value_name = "LIST"
    )]
    max_delay_ms: Vec<f64>,
    /// Batching: requests per client in each timed phase.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,
    /// Batching: requests each client keeps in flight in the queue (`submit`, then wait for
    /// the oldest), as an asynchronous server front end would; 1 (the default) is one
    /// blocking `infer` at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    outstanding: u64,
    /// Batching: worker threads of the queue (each on its own stream).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    /// Batching: where requests come from and results go (host memory, or the device).
    #[arg(long, value_enum, default_value_t = InputKind::Host)]
    input: InputKind,
    /// Batching: the queue runs batches through graphs of the model, padded to powers of two
    /// (`BatchConfigBuilder::graphs`); clients send 50 warm-up requests instead of 5, during
    /// which the workers capture most of their graphs.
    #[arg(long)]
    graphs: bool,
}

/// Where a request's input and result live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InputKind {
    /// Rows in host memory; results read back to host memory.
    Host,
    /// Rows made on the client's stream; results stay on the device.
    Device,
}

/// Runs `chorus bench batching`; each row is the median of `repeat` runs.
///
/// # Errors
/// A device that cannot start, invalid sweep values, or a failed request or forward.
pub(crate) fn run(
    choice: &DeviceChoice,
    as_json: bool,
    repeat: usize,
    a: &BatchingArgs,
) -> anyhow::Result<ExitCode> {
    let mut delays = Vec::with_capacity(a.max_delay_ms.len());
    for &d in &a.max_delay_ms {
        match Duration::try_from_secs_f64(d / 1e3) {
            Ok(delay) if d.is_finite() => delays.push((d, delay)),
            _ => anyhow::bail!("--max-delay-ms: {d} is not a delay in milliseconds"),
        }
    }
    anyhow::ensure!(
        !a.max_batch.contains(&0),
        "--max-batch: 0 is not a batch size"
    );
    if let Some(b) = a.max_batch.iter().find(|&&b| b > MAX_BATCH) {
        anyhow::bail!("--max-batch: {b} is more than the {MAX_BATCH} rows this benchmark makes");
    }
    let device = device::build(choice)?;
    let model = workload::mlp(&device)?;
    let total = a.clients * a.requests;
    let rate = |m: &Measured| m.samples_per_s;
    let threads = median_of(repeat, rate, || direct::direct_threads(&device, &model, a))?;
    let mut per_batch = Vec::new();
    for &b in &a.max_batch {
        let (m, runs) = median_of(repeat, rate, || {
            direct::direct_batch(&device, &model, a.input, b, total)
        })?;
        per_batch.push((b, m, runs));
    }
    let mut rows = Vec::new();
    for &(max_batch, direct, _) in &per_batch {
        for &(delay_ms, delay) in &delays {
            let ((measured, stats, memory), runs) = median_of(
                repeat,
                |(m, _, _): &(Measured, _, _)| m.samples_per_s,
                || {
                    let before = device.memory_stats();
                    let (m, stats) = queue::queued(&device, &model, a, max_batch, delay)?;
                    Ok((m, stats, memory_delta(&before, &device.memory_stats())))
                },
            )?;
            rows.push(QueueRow {
                max_batch,
                delay_ms,
                delay,
                direct,
                measured,
                stats,
                memory,
                runs,
            });
        }
    }
    let sweep = Sweep {
        threads,
        per_batch,
        rows,
    };
    let out = report::json(&device, a, repeat, &sweep);
    if as_json {
        println!("{out}");
    } else {
        report::print_text(&out);
    }
    Ok(ExitCode::SUCCESS)
}
