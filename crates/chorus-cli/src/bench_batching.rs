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

use crate::device::{self, DeviceChoice};
use chorus::batch::HostTensor;
use chorus::batch::{BatchConfig, BatchQueue, Ticket};
use chorus::nn::{self, Module};
use chorus::{Device, Tensor};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::ops::Range;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

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

/// Throughput and latency of one timed phase, and the CPU time it took.
#[derive(Debug, Clone, Copy)]
struct Measured {
    samples_per_s: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the whole process (every thread) per sample, in µs, where known.
    cpu_us_per_sample: Option<f64>,
    /// Of that, the CPU time of the threads that make the requests (the clients), where known.
    client_cpu_us_per_sample: Option<f64>,
}

/// What one timed phase took: its wall time, the process's and the calling threads' CPU time
/// over it, and every request's latency.
struct Phase {
    elapsed: Duration,
    cpu: Option<Duration>,
    client_cpu: Option<Duration>,
    latencies: Vec<Duration>,
}

/// Whose CPU time [`cpu_time`] reads.
#[derive(Debug, Clone, Copy)]
enum CpuClock {
    /// The whole process: every thread, exited ones too (`CLOCK_PROCESS_CPUTIME_ID`).
    Process,
    /// The calling thread (`CLOCK_THREAD_CPUTIME_ID`).
    Thread,
}

/// The CPU time used so far on `clock`, where the platform says.
fn cpu_time(clock: CpuClock) -> Option<Duration> {
    #[cfg(unix)]
    {
        let id = match clock {
            CpuClock::Process => libc::CLOCK_PROCESS_CPUTIME_ID,
            CpuClock::Thread => libc::CLOCK_THREAD_CPUTIME_ID,
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable `timespec` for the call, which writes only it.
        let r = unsafe { libc::clock_gettime(id, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u32::try_from(ts.tv_nsec).ok()?;
        (r == 0).then(|| Duration::new(secs, nanos))
    }
    #[cfg(not(unix))]
    {
        let _ = clock;
        None
    }
}

/// The CPU time used on `clock` since `since` (a [`cpu_time`] reading of the same clock).
fn cpu_since(clock: CpuClock, since: Option<Duration>) -> Option<Duration> {
    Some(cpu_time(clock)?.saturating_sub(since?))
}

impl Measured {
    fn from(samples: u64, phase: Phase) -> Measured {
        let Phase {
            elapsed,
            cpu,
            client_cpu,
            mut latencies,
        } = phase;
        let per_sample = |c: Duration| c.as_secs_f64() * 1e6 / samples.max(1) as f64;
        latencies.sort_unstable();
        let q = |q: f64| {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let i = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[i - 1]
        };
        Measured {
            samples_per_s: samples as f64 / elapsed.as_secs_f64().max(1e-9),
            p50: q(0.50),
            p99: q(0.99),
            cpu_us_per_sample: cpu.map(per_sample),
            client_cpu_us_per_sample: client_cpu.map(per_sample),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The MLP of `chorus bench` (same seeds, same scaling) as an `nn::Mlp`.
fn mlp(device: &Device) -> anyhow::Result<nn::Mlp> {
    let sizes = [512usize, 1024, 1024, 512];
    let layers = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| -> anyhow::Result<nn::Linear> {
            let scale = Tensor::full(device, &[1], 1.0 / (w[0] as f32).sqrt())?;
            let weight = Tensor::randn(device, &[w[1], w[0]], 100 + i as u64)?.mul(&scale)?;
            let bias = Tensor::randn(device, &[w[1]], 200 + i as u64)?.mul(&scale)?;
            Ok(nn::Linear::new(weight, Some(bias))?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(nn::Mlp::new(layers)?)
}

/// A client's run of requests: `run(client, requests)` makes the requests numbered `requests`
/// and returns their latencies.
type Run<'a> = dyn Fn(u64, Range<u64>) -> anyhow::Result<Vec<Duration>> + Sync + 'a;

/// Runs `clients` threads, each making `warmup` untimed then `requests` timed requests through
/// `run`. Returns the timed phase (barrier to last result): its wall time, the process's CPU
/// time and the client threads' own over the same span, and every latency.
fn clients(
    clients: u64,
    warmup: u64,
    requests: u64,
    run: &Run<'_>,
    after_warmup: &(dyn Fn() + Sync),
) -> anyhow::Result<Phase> {
    let n = usize::try_from(clients)?;
    let start = Barrier::new(n + 1);
    let warm = Barrier::new(n + 1);
    type Client = (Vec<Duration>, Option<Duration>);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (start, warm) = (&start, &warm);
                s.spawn(move || -> anyhow::Result<Client> {
                    // The barriers are passed whatever happens, so that no thread waits for
                    // one that failed.
                    let warmed = run(c, 1_000_000..1_000_000 + warmup);
                    warm.wait();
                    start.wait();
                    let cpu0 = cpu_time(CpuClock::Thread);
                    let timed = run(c, 0..requests);
                    let cpu = cpu_since(CpuClock::Thread, cpu0);
                    warmed?;
                    Ok((timed?, cpu))
                })
            })
            .collect();
        warm.wait();
        after_warmup();
        let cpu0 = cpu_time(CpuClock::Process);
        start.wait();
        let t0 = Instant::now();
        let mut latencies = Vec::new();
        let mut client_cpu = Some(Duration::ZERO);
        let mut failure = None;
        for h in handles {
            match h.join() {
                Ok(Ok((ls, cpu))) => {
                    latencies.extend(ls);
                    client_cpu = client_cpu.zip(cpu).map(|(a, b)| a + b);
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(anyhow::anyhow!("a client thread panicked"));
                }
            }
        }
        let phase = Phase {
            elapsed: t0.elapsed(),
            cpu: cpu_since(CpuClock::Process, cpu0),
            client_cpu,
            latencies,
        };
        failure.map_or(Ok(phase), Err)
    })
}

/// The seed of client `c`'s request `i`.
fn seed(c: u64, i: u64) -> u64 {
    c * 10_000_000 + i
}

/// `rows` host rows of 512 values in [-1, 1) from `seed` (a xorshift generator: cheap, so that
/// making a request's data costs the client next to nothing).
fn host_rows(seed: u64, rows: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..rows * 512)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A direct forward on `rows` rows made from `seed`, timed from the call until the result is
/// there (on the host for `Host`, computed on the device for `Device`).
fn direct_call(
    device: &Device,
    model: &nn::Mlp,
    kind: InputKind,
    seed: u64,
    rows: usize,
) -> anyhow::Result<Duration> {
    match kind {
        InputKind::Host => {
            let data = host_rows(seed, rows);
            let t0 = Instant::now();
            let x = Tensor::from_slice(device, &data, &[rows, 512])?;
            std::hint::black_box(model.forward(&x)?.to_vec::<f32>()?);
            Ok(t0.elapsed())
        }
        InputKind::Device => {
            let x = Tensor::randn(device, &[rows, 512], seed)?;
            let stream = device.current_stream()?;
            stream.synchronize()?; // the input is made before the clock starts
            let t0 = Instant::now();
            model.forward(&x)?;
            stream.synchronize()?;
            Ok(t0.elapsed())
        }
    }
}

/// (a): every client calls the model directly with batch 1.
fn direct_threads(device: &Device, model: &nn::Mlp, a: &BatchingArgs) -> anyhow::Result<Measured> {
    let run = |c: u64, requests: Range<u64>| {
        requests
            .map(|i| direct_call(device, model, a.input, seed(c, i), 1))
            .collect()
    };
    let phase = clients(a.clients, 5, a.requests, &run, &|| {})?;
    Ok(Measured::from(a.clients * a.requests, phase))
}

/// (b): one thread, direct calls on batch `b`.
fn direct_batch(
    device: &Device,
    model: &nn::Mlp,
    kind: InputKind,
    b: usize,
    samples: u64,
) -> anyhow::Result<Measured> {
    for i in 0..3 {
        direct_call(device, model, kind, 7 + i, b)?;
    }
    let n = (samples / b as u64).clamp(10, 2000);
    let mut latencies = Vec::with_capacity(n as usize);
    let mut busy = Duration::ZERO;
    let (cpu0, thread0) = (cpu_time(CpuClock::Process), cpu_time(CpuClock::Thread));
    for i in 0..n {
        let l = direct_call(device, model, kind, 7 + i, b)?;
        busy += l;
        latencies.push(l);
    }
    // Throughput over the timed calls only (making the input is the client's business); the
    // CPU times include making the inputs.
    let phase = Phase {
        elapsed: busy,
        cpu: cpu_since(CpuClock::Process, cpu0),
        client_cpu: cpu_since(CpuClock::Thread, thread0),
        latencies,
    };
    Ok(Measured::from(n * b as u64, phase))
}

/// One queue configuration: its throughput and client-side latency, and the queue's
/// statistics.
fn queued(
    device: &Device,
    model: &nn::Mlp,
    a: &BatchingArgs,
    max_batch: usize,
    max_delay: Duration,
) -> anyhow::Result<(Measured, chorus::batch::BatchStats)> {
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
    queue.shutdown(chorus::batch::ShutdownMode::Drain);
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

/// Runs `measure` `repeat` times (at least once) and returns the run of median throughput, with
/// every run's throughput in run order.
fn median_of<T>(
    repeat: usize,
    rate: impl Fn(&T) -> f64,
    mut measure: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<f64>)> {
    let mut runs = (0..repeat.max(1))
        .map(|_| measure())
        .collect::<anyhow::Result<Vec<T>>>()?;
    let rates: Vec<f64> = runs.iter().map(&rate).collect();
    Ok((runs.swap_remove(crate::bench::median_index(&rates)), rates))
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
    let model = mlp(&device)?;
    let total = a.clients * a.requests;
    let rate = |m: &Measured| m.samples_per_s;
    let (threads, threads_runs) = median_of(repeat, rate, || direct_threads(&device, &model, a))?;
    let mut per_batch = Vec::new();
    for &b in &a.max_batch {
        let (m, runs) = median_of(repeat, rate, || {
            direct_batch(&device, &model, a.input, b, total)
        })?;
        per_batch.push((b, m, runs));
    }
    let mut rows = Vec::new();
    for (b, direct, _) in &per_batch {
        let (b, direct) = (*b, *direct);
        for &(d, delay) in &delays {
            let ((m, stats, memory), runs) = median_of(
                repeat,
                |(m, _, _): &(Measured, _, _)| m.samples_per_s,
                || {
                    let before = device.memory_stats();
                    let (m, stats) = queued(&device, &model, a, b, delay)?;
                    Ok((m, stats, memory_delta(&before, &device.memory_stats())))
                },
            )?;
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let p = stats.phases;
            let bound = delay + 3 * direct.p50;
            rows.push(json!({
                "max_batch": b,
                "max_delay_ms": d,
                "samples_per_s": m.samples_per_s,
                "p50_ms": ms(m.p50),
                "p99_ms": ms(m.p99),
                "mean_batch": stats.mean_batch_size,
                "batches": stats.batches,
                "graph_batches": stats.graph_batches,
                "phases_us": {
                    "queued": us(p.queued),
                    "gather": us(p.gather),
                    "forward": us(p.forward),
                    "finish": us(p.finish),
                    "complete": us(p.complete),
                },
                "vs_direct_threads": m.samples_per_s / threads.samples_per_s,
                "vs_direct_batch": m.samples_per_s / direct.samples_per_s,
                "p99_bound_ms": ms(bound),
                "p99_within_bound": m.p99 <= bound,
                "cpu_us_per_sample": m.cpu_us_per_sample,
                "client_cpu_us_per_sample": m.client_cpu_us_per_sample,
                "memory": memory,
                "runs": runs,
            }));
        }
    }
    let out = json!({
        "device": device.id().to_string(),
        "device_description": device.describe(),
        "model": "mlp 512-1024-1024-512",
        "clients": a.clients,
        "requests_per_client": a.requests,
        "workers": a.workers,
        "outstanding": a.outstanding,
        "input": format!("{:?}", a.input).to_lowercase(),
        "graphs": a.graphs,
        "repeat": repeat.max(1),
        "direct_threads": {
            "threads": a.clients,
            "samples_per_s": threads.samples_per_s,
            "p50_ms": ms(threads.p50),
            "p99_ms": ms(threads.p99),
            "cpu_us_per_sample": threads.cpu_us_per_sample,
            "client_cpu_us_per_sample": threads.client_cpu_us_per_sample,
            "runs": threads_runs,
        },
        "direct_batch": per_batch.iter().map(|(b, m, runs)| json!({
            "batch": b,
            "samples_per_s": m.samples_per_s,
            "forward_ms": ms(m.p50),
            "cpu_us_per_sample": m.cpu_us_per_sample,
            "client_cpu_us_per_sample": m.client_cpu_us_per_sample,
            "runs": runs,
        })).collect::<Vec<_>>(),
        "batching": rows,
    });
    if as_json {
        println!("{out}");
    } else {
        print_text(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the allocator did during one row (warm-up included): counts between two snapshots,
/// and the segments held at its end.
fn memory_delta(before: &chorus::MemoryStats, after: &chorus::MemoryStats) -> Value {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    json!({
        "allocations": d(after.allocations, before.allocations),
        "cache_hits": d(after.cache_hits, before.cache_hits),
        "thread_cache_hits": d(after.thread_cache_hits, before.thread_cache_hits),
        "returns_hits": d(after.returns_hits, before.returns_hits),
        "deferred_frees": d(after.deferred_frees, before.deferred_frees),
        "fences": d(after.fences, before.fences),
        "oom_retries": d(after.oom_retries, before.oom_retries),
        "segments": after.segments,
    })
}

fn print_text(out: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "Dynamic batching, MLP 512-1024-1024-512, on {} ({})",
        out["device"].as_str().unwrap_or("?"),
        out["device_description"].as_str().unwrap_or("?")
    );
    println!(
        "{} clients x {} batch-1 requests per configuration{}, {} workers, {} input{}{}",
        out["clients"],
        out["requests_per_client"],
        match out["outstanding"].as_u64() {
            Some(n) if n > 1 => format!(" ({n} in flight per client)"),
            _ => String::new(),
        },
        out["workers"],
        out["input"].as_str().unwrap_or("?"),
        if out["graphs"].as_bool() == Some(true) {
            ", batches through graphs"
        } else {
            ""
        },
        match out["repeat"].as_u64() {
            Some(n) if n > 1 => format!("; every row the median of {n} runs"),
            _ => String::new(),
        }
    );
    let t = &out["direct_threads"];
    println!(
        "(a) {} threads calling the model directly, batch 1: {:.0} samples/s, p50 {:.3} ms, p99 {:.3} ms, CPU {:.1} us per sample",
        t["threads"],
        f(&t["samples_per_s"]),
        f(&t["p50_ms"]),
        f(&t["p99_ms"]),
        f(&t["cpu_us_per_sample"])
    );
    for b in out["direct_batch"].as_array().into_iter().flatten() {
        println!(
            "(b) one thread, batch {:>4}: {:>9.0} samples/s, {:.3} ms per forward, CPU {:.2} us per sample",
            b["batch"].as_u64().unwrap_or(0),
            f(&b["samples_per_s"]),
            f(&b["forward_ms"]),
            f(&b["cpu_us_per_sample"])
        );
    }
    println!(
        "{:>9} {:>9} {:>11} {:>8} {:>8} {:>10} {:>7} {:>7} {:>12}",
        "max_batch",
        "delay ms",
        "samples/s",
        "p50 ms",
        "p99 ms",
        "mean batch",
        "x (a)",
        "x (b)",
        "p99 bound ms"
    );
    for r in out["batching"].as_array().into_iter().flatten() {
        println!(
            "{:>9} {:>9} {:>11.0} {:>8.3} {:>8.3} {:>10.1} {:>7.2} {:>7.2} {:>12.3} {}",
            r["max_batch"].as_u64().unwrap_or(0),
            f(&r["max_delay_ms"]),
            f(&r["samples_per_s"]),
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["mean_batch"]),
            f(&r["vs_direct_threads"]),
            f(&r["vs_direct_batch"]),
            f(&r["p99_bound_ms"]),
            if r["p99_within_bound"].as_bool() == Some(true) {
                "ok"
            } else {
                "over"
            }
        );
    }
    println!(
        "where the time went (queue statistics, means in us: per request for queued, per batch \
         otherwise; CPU: the whole process's CPU time per request, and the clients' part of it)"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "max_batch",
        "delay ms",
        "queued",
        "gather",
        "forward",
        "finish",
        "complete",
        "CPU",
        "clients"
    );
    for r in out["batching"].as_array().into_iter().flatten() {
        let p = &r["phases_us"];
        println!(
            "{:>9} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            r["max_batch"].as_u64().unwrap_or(0),
            f(&r["max_delay_ms"]),
            f(&p["queued"]),
            f(&p["gather"]),
            f(&p["forward"]),
            f(&p["finish"]),
            f(&p["complete"]),
            f(&r["cpu_us_per_sample"]),
            f(&r["client_cpu_us_per_sample"])
        );
    }
    println!(
        "the allocator in each row (warm-up included): allocations per request, where they came \
         from, deferred frees per request"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "max_batch", "delay ms", "allocs", "thr cache", "returns", "pools", "deferred", "segments"
    );
    let requests = f(&out["clients"]) * f(&out["requests_per_client"]);
    for r in out["batching"].as_array().into_iter().flatten() {
        let m = &r["memory"];
        let allocs = f(&m["allocations"]).max(1.0);
        let (cache, returns) = (f(&m["thread_cache_hits"]), f(&m["returns_hits"]));
        println!(
            "{:>9} {:>9} {:>9.2} {:>8.0}% {:>8.0}% {:>8.0}% {:>9.2} {:>9}",
            r["max_batch"].as_u64().unwrap_or(0),
            f(&r["max_delay_ms"]),
            allocs / requests,
            100.0 * cache / allocs,
            100.0 * returns / allocs,
            100.0 * (allocs - cache - returns) / allocs,
            f(&m["deferred_frees"]) / requests,
            m["segments"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_row_is_its_median_run_with_every_run_listed() {
        let mut next = [30.0, 10.0, 20.0].into_iter();
        let (m, runs) = median_of(3, |&r: &f64| r, || Ok(next.next().unwrap())).unwrap();
        assert_eq!(m, 20.0);
        assert_eq!(runs, vec![30.0, 10.0, 20.0]);
        let (m, runs) = median_of(0, |&r: &f64| r, || Ok(5.0)).unwrap();
        assert_eq!((m, runs), (5.0, vec![5.0]));
        assert!(median_of(2, |&r: &f64| r, || anyhow::bail!("failed")).is_err());
    }
}
