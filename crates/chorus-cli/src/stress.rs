//! `chorus stress`: many threads run rounds of a [`Scenario`] on one device at once; the run is
//! timed, then every round is recomputed on the main thread alone and compared bit-for-bit.
//!
//! # Phases
//! 1. **Parallel** (timed): `--threads` scoped threads each run `--iters` rounds, keeping the
//!    result tensors and synchronizing their current stream every `--sync-every` rounds. An op
//!    error is counted and the thread goes on with its next round. The clock stops once every
//!    thread has finished and `Device::synchronize` has returned, as in the PyTorch baseline
//!    (`ops/s = threads × iters / seconds`). With `--warmup N` each thread first runs `N`
//!    untimed rounds (capturing its graph, with `--graph`, before them), synchronizes its
//!    stream and waits until every thread has done so; the clock starts then. Without it
//!    (the default) the clock starts before the threads do, so the time includes thread
//!    start-up and what a stream's first use costs (on CUDA, creating the stream's cuBLAS
//!    handle: up to ~0.16 s when 64 threads start at once on the H100).
//! 2. **Verification** (not timed): each kept result is read back, and its round is run again
//!    on the main thread, one after another, with the same seeds; any difference in the bits of
//!    a value is an error.
//!
//! The summary goes to stdout (text, or one JSON object with `--json`); error messages and the
//! progress bar (only when stderr is a terminal) go to stderr. The exit status is 1 when any
//! error was found.

use crate::device::{self, DeviceChoice};
use crate::human;
use crate::scenario::{self, Params, RoundKey, Scenario};
use anyhow::Context as _;
use chorus::{Device, MemoryStats, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How many messages of each kind (op errors, mismatches) are printed.
const SHOWN: usize = 5;

/// Options of `chorus stress`.
#[derive(Debug, clap::Args)]
pub(crate) struct StressArgs {
    /// Number of threads running rounds at the same time.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    threads: u64,
    /// Rounds per thread.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    iters: u64,
    /// Synchronize the thread's current stream every K rounds (0: never).
    #[arg(long, default_value_t = 20, value_name = "K")]
    sync_every: u64,
    /// Side of the square operands.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    size: u64,
    /// Device to run on: a compiled-in backend (`cpu`, `cuda`) or `auto`.
    #[arg(long, default_value = "cpu", value_parser = device::parse, value_name = "DEVICE")]
    device: DeviceChoice,
    /// Base seed of every random input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also compute the mean of each product (the seed's second round).
    #[arg(long)]
    with_mean: bool,
    /// Round of work each thread repeats.
    #[arg(long, default_value = "matmul", value_parser = Scenario::parse, value_name = "NAME")]
    scenario: Scenario,
    /// Run the model of the `mlp` or `transformer` scenario through a graph that each thread
    /// captures before its rounds (`chorus::Graph`); verification still calls the model
    /// directly, so every result must equal the direct call bit for bit.
    #[arg(long)]
    graph: bool,
    /// Untimed rounds each thread runs before the clock starts (module docs).
    #[arg(long, default_value_t = 0, value_name = "N")]
    warmup: u64,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// A worker's side of the meeting before the clock starts (`--warmup`): it reports that it is
/// ready (also when it unwinds or returns early: on drop) and waits for the start.
struct Gate {
    ready: Option<mpsc::Sender<()>>,
    start: mpsc::Receiver<()>,
}

impl Gate {
    /// Reports this thread ready and waits until the clock starts (or the phase is called off:
    /// the main thread dropped its sender).
    fn ready_and_wait(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let _ = self.start.recv();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }
}

/// What one thread of the parallel phase produced.
#[derive(Debug, Default)]
struct ThreadRun {
    /// The results of each round that enqueued without error.
    results: Vec<(RoundKey, Vec<Tensor>)>,
    /// One message per error.
    errors: Vec<String>,
}

/// The outcome of the verification phase.
#[derive(Debug, Default)]
struct Verification {
    /// Rounds whose every value matched the single-threaded run.
    verified: u64,
    /// Results that could not be read back, or rounds that could not be recomputed.
    errors: Vec<String>,
    /// Values that differ from the single-threaded run.
    mismatches: Vec<String>,
}

/// Runs `chorus stress`.
///
/// # Errors
/// An invalid `CHORUS_*` variable, a device that cannot start or a thread that cannot be
/// spawned. Errors of the work itself are counted and reported instead (exit status 1).
pub(crate) fn run(args: &StressArgs) -> anyhow::Result<ExitCode> {
    if args.graph && !args.scenario.is_model() {
        anyhow::bail!(
            "--graph runs a model's forward through a graph: use it with --scenario mlp or \
             transformer, not {}",
            args.scenario.name()
        );
    }
    let device = device::build(&args.device)?;
    let size = usize::try_from(args.size).context("--size does not fit in memory")?;
    let models =
        scenario::Models::build(&device, args.scenario).context("building the scenario's model")?;
    let params = Params {
        size,
        seed: args.seed,
        with_mean: args.with_mean,
        models: models.as_ref(),
    };
    let ops = args.threads * args.iters;

    // Parallel phase, timed.
    let bar = progress_bar(ops, "stress");
    let (runs, start) = run_threads(&device, args, &params, &bar)?;
    let mut op_errors: Vec<String> = runs.iter().flat_map(|r| r.errors.iter().cloned()).collect();
    if let Err(e) = device.synchronize() {
        op_errors.push(format!("device synchronize: {e}"));
    }
    let seconds = start.elapsed();
    bar.finish_and_clear();
    let memory = device.memory_stats();

    // Verification, not timed.
    let kept = runs.iter().map(|r| r.results.len() as u64).sum();
    let check = if args.scenario == Scenario::Batching {
        verify_batching(&device, &params, &runs, kept)
    } else {
        verify(&device, args.scenario, &params, &runs, kept)
    };
    drop(runs);

    report_errors("error", &op_errors);
    report_errors("error", &check.errors);
    report_errors("mismatch", &check.mismatches);

    let summary = Summary {
        args,
        params,
        device: &device,
        ops,
        seconds,
        memory,
        op_errors: op_errors.len(),
        check: &check,
    };
    if args.json {
        println!("{}", summary.json());
    } else {
        summary.print();
    }
    Ok(if summary.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the parallel phase: one scoped thread per `--threads`, joined before returning; also
/// returns when the clock started (module docs).
fn run_threads(
    device: &Device,
    args: &StressArgs,
    params: &Params<'_>,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<ThreadRun>, Instant)> {
    let mut start = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    let runs = std::thread::scope(|s| -> anyhow::Result<Vec<ThreadRun>> {
        let mut handles = Vec::new();
        let mut starts = Vec::new();
        for thread in 0..args.threads {
            let gate = (args.warmup > 0).then(|| {
                let (start_tx, start_rx) = mpsc::channel();
                starts.push(start_tx);
                Gate {
                    ready: Some(ready_tx.clone()),
                    start: start_rx,
                }
            });
            // A failed spawn returns at once: dropping `starts` releases the waiting threads.
            let handle = std::thread::Builder::new()
                .name(format!("stress-{thread}"))
                .spawn_scoped(s, move || worker(device, args, params, thread, bar, gate))
                .with_context(|| format!("spawning stress thread {thread}"))?;
            handles.push(handle);
        }
        if args.warmup > 0 {
            for _ in 0..args.threads {
                let _ = ready_rx.recv();
            }
            start = Instant::now();
            for s in &starts {
                let _ = s.send(());
            }
        }
        Ok(handles
            .into_iter()
            .enumerate()
            .map(|(thread, h)| {
                // The panic message was already printed by the panic hook.
                h.join().unwrap_or_else(|_| ThreadRun {
                    results: Vec::new(),
                    errors: vec![format!("thread {thread} panicked; its results are lost")],
                })
            })
            .collect())
    })?;
    Ok((runs, start))
}

/// The rounds of one thread: its warm-up rounds (`--warmup`; seeds after those of its timed
/// rounds, results dropped), then the timed ones.
fn worker(
    device: &Device,
    args: &StressArgs,
    params: &Params<'_>,
    thread: u64,
    bar: &ProgressBar,
    mut gate: Option<Gate>,
) -> ThreadRun {
    let mut run = ThreadRun {
        // Grown as rounds complete beyond this (a huge `--iters` reserves nothing up front).
        results: Vec::with_capacity(args.iters.min(4096).try_into().unwrap_or(0)),
        errors: Vec::new(),
    };
    let graph = if args.graph {
        match args.scenario.capture(device, params) {
            Ok(g) => Some(g),
            Err(e) => {
                run.errors
                    .push(format!("thread {thread}: capturing the graph: {e}"));
                bar.inc(args.iters);
                return run;
            }
        }
    } else {
        None
    };
    let round = |key| match &graph {
        Some(g) => args.scenario.graph_round(device, params, key, g),
        None => args.scenario.round(device, params, key),
    };
    if let Some(gate) = &mut gate {
        for i in 0..args.warmup {
            let iter = args.iters.saturating_add(i);
            if let Err(e) = round(RoundKey { thread, iter }) {
                run.errors
                    .push(format!("thread {thread}, warm-up round {i}: {e}"));
            }
        }
        if let Err(e) = device.current_stream().and_then(|s| s.synchronize()) {
            run.errors
                .push(format!("thread {thread}, after warm-up: synchronize: {e}"));
        }
        gate.ready_and_wait();
    }
    for iter in 0..args.iters {
        let key = RoundKey { thread, iter };
        match round(key) {
            Ok(out) => run.results.push((key, out)),
            Err(e) => run
                .errors
                .push(format!("thread {thread}, iteration {iter}: {e}")),
        }
        if args.sync_every > 0 && (iter + 1) % args.sync_every == 0 {
            if let Err(e) = device
                .current_stream()
                .and_then(|stream| stream.synchronize())
            {
                run.errors.push(format!(
                    "thread {thread}, iteration {iter}: synchronize: {e}"
                ));
            }
        }
        bar.inc(1);
    }
    run
}

/// Reads every kept result and compares it with the same round run again on this thread.
fn verify(
    device: &Device,
    scenario: Scenario,
    params: &Params<'_>,
    runs: &[ThreadRun],
    kept: u64,
) -> Verification {
    let names = scenario.outputs(params);
    let bar = progress_bar(kept, "verify");
    let mut v = Verification::default();
    for (key, results) in runs.iter().flat_map(|r| r.results.iter()) {
        let at = format!("thread {}, iteration {}", key.thread, key.iter);
        let got = match results
            .iter()
            .map(scenario::read)
            .collect::<chorus::Result<Vec<_>>>()
        {
            Ok(got) => got,
            Err(e) => {
                v.errors.push(format!("{at}: reading the result: {e}"));
                bar.inc(1);
                continue;
            }
        };
        let want = scenario.round(device, params, *key).and_then(|ts| {
            ts.iter()
                .map(scenario::read)
                .collect::<chorus::Result<Vec<_>>>()
        });
        match want {
            Ok(want) => {
                let before = v.mismatches.len();
                compare(&at, names, &got, &want, &mut v.mismatches);
                if v.mismatches.len() == before {
                    v.verified += 1;
                }
            }
            Err(e) => v
                .errors
                .push(format!("{at}: recomputing on the main thread: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    v
}

/// Verification of [`Scenario::Batching`]: the rounds are regrouped by the batch they ran in
/// (their `batch` result: batch number, row offset, rows of the batch), and each batch is
/// recomputed on the main thread by a direct call of the model on the concatenation of its
/// rounds' inputs, which must give the same bits; each round's output must also be within the
/// op tolerance (rtol = atol = 1e-4, as the golden MLP cases) of a direct call on its input
/// alone, since a different batch may round differently.
fn verify_batching(
    device: &Device,
    params: &Params<'_>,
    runs: &[ThreadRun],
    kept: u64,
) -> Verification {
    /// One round's output and where it ran.
    struct Placed {
        offset: i64,
        rows: i64,
        key: RoundKey,
        output: Vec<f32>,
    }
    let bar = progress_bar(kept, "verify");
    let mut v = Verification::default();
    let at = |key: &RoundKey| format!("thread {}, iteration {}", key.thread, key.iter);
    let mut batches: BTreeMap<i64, Vec<Placed>> = BTreeMap::new();
    for (key, results) in runs.iter().flat_map(|r| r.results.iter()) {
        let read = match results.as_slice() {
            [y, place] => y
                .to_vec::<f32>()
                .and_then(|y| Ok((y, place.to_vec::<i64>()?))),
            _ => {
                v.errors
                    .push(format!("{}: {} results, want 2", at(key), results.len()));
                bar.inc(1);
                continue;
            }
        };
        match read {
            Ok((output, place)) if place.len() == 3 => {
                batches.entry(place[0]).or_default().push(Placed {
                    offset: place[1],
                    rows: place[2],
                    key: *key,
                    output,
                });
            }
            Ok(_) => v
                .errors
                .push(format!("{}: malformed batch result", at(key))),
            Err(e) => v
                .errors
                .push(format!("{}: reading the result: {e}", at(key))),
        }
    }
    for (batch, mut members) in batches {
        members.sort_by_key(|m| m.offset);
        let rows = members[0].rows;
        let contiguous = members
            .iter()
            .enumerate()
            .all(|(i, m)| m.offset == i as i64 && m.rows == rows);
        if !contiguous || members.len() as i64 != rows {
            v.errors.push(format!(
                "batch {batch}: rows do not add up ({} rounds for {rows} rows)",
                members.len()
            ));
            bar.inc(members.len() as u64);
            continue;
        }
        let keys: Vec<RoundKey> = members.iter().map(|m| m.key).collect();
        match Scenario::batch_reference(device, params, &keys) {
            Ok((whole, alone)) => {
                let width = whole.len() / members.len().max(1);
                for (i, m) in members.iter().enumerate() {
                    let here = format!("{} (batch {batch}, row {i})", at(&m.key));
                    let before = v.mismatches.len();
                    let want = whole[i * width..(i + 1) * width].to_vec();
                    compare(
                        &here,
                        &["output"],
                        std::slice::from_ref(&m.output),
                        &[want],
                        &mut v.mismatches,
                    );
                    if beyond_op_tolerance(&m.output, &alone[i]) {
                        v.mismatches.push(format!(
                            "{here}: differs from a direct batch-1 call beyond the op tolerance"
                        ));
                    }
                    if v.mismatches.len() == before {
                        v.verified += 1;
                    }
                }
            }
            Err(e) => v.errors.push(format!(
                "batch {batch}: recomputing on the main thread: {e}"
            )),
        }
        bar.inc(members.len() as u64);
    }
    bar.finish_and_clear();
    v
}

/// Whether `got` differs from `want` beyond the op tolerance (`1e-4 + 1e-4 |want|`), in length,
/// or by a NaN on either side (a difference that is NaN compares false with any bound).
fn beyond_op_tolerance(got: &[f32], want: &[f32]) -> bool {
    got.len() != want.len()
        || got.iter().zip(want).any(|(g, w)| {
            let d = (g - w).abs();
            d.is_nan() || d > 1e-4 + 1e-4 * w.abs()
        })
}

/// Compares the values of one round bit-for-bit, adding one message per differing value (or
/// per differing length).
fn compare(at: &str, names: &[&str], got: &[Vec<f32>], want: &[Vec<f32>], out: &mut Vec<String>) {
    if got.len() != want.len() {
        out.push(format!("{at}: {} results, want {}", got.len(), want.len()));
        return;
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let name = names.get(k).copied().unwrap_or("result");
        if g.len() != w.len() {
            out.push(format!(
                "{at}, {name}: {} values, want {}",
                g.len(),
                w.len()
            ));
            continue;
        }
        let scalar = w.len() == 1;
        for (j, (&g, &w)) in g.iter().zip(w).enumerate() {
            if g.to_bits() != w.to_bits() {
                let index = if scalar {
                    String::new()
                } else {
                    format!("[{j}]")
                };
                out.push(format!(
                    "{at}, {name}{index}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                    g.to_bits(),
                    w.to_bits()
                ));
            }
        }
    }
}

/// Prints the first [`SHOWN`] messages to stderr, and how many more there were.
fn report_errors(kind: &str, messages: &[String]) {
    for m in messages.iter().take(SHOWN) {
        eprintln!("chorus stress: {kind}: {m}");
    }
    if messages.len() > SHOWN {
        eprintln!(
            "chorus stress: ... and {} more of this kind",
            messages.len() - SHOWN
        );
    }
}

/// A progress bar on stderr counting `len` steps, hidden unless stderr is a terminal.
fn progress_bar(len: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>6} {elapsed_precise} {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// Everything the summary reports.
#[derive(Debug)]
struct Summary<'a> {
    args: &'a StressArgs,
    params: Params<'a>,
    device: &'a Device,
    ops: u64,
    seconds: Duration,
    /// Allocator statistics at the end of the parallel phase.
    memory: MemoryStats,
    /// Errors of the parallel phase.
    op_errors: usize,
    check: &'a Verification,
}

impl Summary<'_> {
    /// Every error: of the parallel phase, of verification, and mismatches.
    fn errors(&self) -> usize {
        self.op_errors + self.check.errors.len() + self.check.mismatches.len()
    }

    fn ops_per_s(&self) -> f64 {
        let s = self.seconds.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }

    fn cache_hit_rate(&self) -> f64 {
        if self.memory.allocations == 0 {
            0.0
        } else {
            self.memory.cache_hits as f64 / self.memory.allocations as f64
        }
    }

    fn json(&self) -> serde_json::Value {
        let a = self.args;
        let m = &self.memory;
        json!({
            "scenario": a.scenario.name(),
            "threads": a.threads,
            "iters": a.iters,
            "ops": self.ops,
            "seconds": self.seconds.as_secs_f64(),
            "ops_per_s": self.ops_per_s(),
            "errors": self.errors(),
            "op_errors": self.op_errors,
            "verify_errors": self.check.errors.len(),
            "mismatches": self.check.mismatches.len(),
            "verified": self.check.verified,
            "size": a.size,
            "sync_every": a.sync_every,
            "seed": a.seed,
            "with_mean": a.with_mean,
            "graph": a.graph,
            "warmup": a.warmup,
            "device": a.device.name,
            "device_id": self.device.id().to_string(),
            "device_description": self.device.describe(),
            "streams": self.device.config().streams(),
            "stream_policy": human::policy(self.device.config().policy()),
            "cache_hit_rate": self.cache_hit_rate(),
            "memory": {
                "allocated_bytes": m.allocated_bytes,
                "reserved_bytes": m.reserved_bytes,
                "peak_allocated_bytes": m.peak_allocated_bytes,
                "peak_reserved_bytes": m.peak_reserved_bytes,
                "segments": m.segments,
                "allocations": m.allocations,
                "frees": m.frees,
                "cache_hits": m.cache_hits,
                "thread_cache_hits": m.thread_cache_hits,
                "returns_hits": m.returns_hits,
                "deferred_frees": m.deferred_frees,
                "fences": m.fences,
                "oom_retries": m.oom_retries,
            },
        })
    }

    fn print(&self) {
        let a = self.args;
        let m = &self.memory;
        let cfg = self.device.config();
        let sync = if a.sync_every == 0 {
            "never".to_string()
        } else {
            format!("every {} iterations", a.sync_every)
        };
        let outputs = a.scenario.outputs(&self.params).join("+");
        println!(
            "scenario: {} ({}x{}, {outputs}), seed {}{}",
            a.scenario.name(),
            a.size,
            a.size,
            a.seed,
            if a.graph {
                ", through a graph per thread"
            } else {
                ""
            }
        );
        println!(
            "device: {} ({}), {} streams, {} policy",
            self.device.id(),
            self.device.describe(),
            cfg.streams(),
            human::policy(cfg.policy())
        );
        println!("synchronize: {sync}");
        println!("threads: {}", a.threads);
        println!("iterations per thread: {}", a.iters);
        if a.warmup > 0 {
            println!("untimed warm-up rounds per thread: {}", a.warmup);
        }
        println!("total operations: {}", self.ops);
        println!("seconds: {:.3}", self.seconds.as_secs_f64());
        println!("ops/s: {:.1}", self.ops_per_s());
        println!(
            "verified: {} of {} rounds bit-identical to a single-threaded run",
            self.check.verified, self.ops
        );
        println!("errors: {}", self.errors());
        println!(
            "cache hit rate: {:.2}% ({} of {} allocations, {} from thread caches, {} from streams' returns)",
            100.0 * self.cache_hit_rate(),
            m.cache_hits,
            m.allocations,
            m.thread_cache_hits,
            m.returns_hits
        );
        println!(
            "peak allocated: {}",
            human::bytes_exact(m.peak_allocated_bytes)
        );
        println!(
            "peak reserved: {}",
            human::bytes_exact(m.peak_reserved_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_is_beyond_the_op_tolerance() {
        assert!(!beyond_op_tolerance(&[1.0, 2.0], &[1.0, 2.0001]));
        assert!(beyond_op_tolerance(&[1.0, 2.0], &[1.0, 2.01]));
        assert!(beyond_op_tolerance(&[f32::NAN, 2.0], &[1.0, 2.0]));
        assert!(beyond_op_tolerance(&[1.0, 2.0], &[1.0, f32::NAN]));
        assert!(beyond_op_tolerance(&[1.0], &[1.0, 2.0]));
    }

    #[test]
    fn compare_is_bitwise() {
        let mut out = Vec::new();
        compare("t", &["sum"], &[vec![1.0]], &[vec![1.0]], &mut out);
        compare(
            "t",
            &["sum"],
            &[vec![f32::NAN]],
            &[vec![f32::NAN]],
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        compare("t", &["sum"], &[vec![-0.0]], &[vec![0.0]], &mut out);
        assert_eq!(
            out,
            ["t, sum: got -0e0 (0x80000000), want 0e0 (0x00000000)"]
        );
        out.clear();
        compare(
            "t",
            &["sum", "mean"],
            &[vec![1.0], vec![2.0, 3.0]],
            &[vec![1.0], vec![2.0, 3.5]],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("t, mean[1]: got 3e0"), "{out:?}");
        out.clear();
        compare(
            "t",
            &["sum"],
            &[vec![1.0]],
            &[vec![1.0], vec![2.0]],
            &mut out,
        );
        assert_eq!(out, ["t: 1 results, want 2"]);
    }
}
