//! `chorus stress`: many threads run rounds of a [`Workload`] on one device at once; the run is
//! timed, then every round is recomputed on the main thread alone and compared bit-for-bit.
//! This file holds the options and the order of the phases; `threads.rs` runs the parallel
//! phase, `verify.rs` the verification, `report.rs` shows progress, errors and the summary.
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

mod report;
mod threads;
mod verify;

use crate::device::{self, DeviceChoice};
use crate::workload::{self, Params, Workload};
use anyhow::Context as _;
use report::{progress_bar, report_errors, Summary};
use std::process::ExitCode;

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
    #[arg(long, default_value = "matmul", value_parser = Workload::parse, value_name = "NAME")]
    scenario: Workload,
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
        workload::Models::build(&device, args.scenario).context("building the scenario's model")?;
    let params = Params {
        size,
        seed: args.seed,
        with_mean: args.with_mean,
        models: models.as_ref(),
    };
    let ops = args.threads * args.iters;

    // Parallel phase, timed.
    let bar = progress_bar(ops, "stress");
    let (runs, start) = threads::run_threads(&device, args, &params, &bar)?;
    let mut op_errors: Vec<String> = runs.iter().flat_map(|r| r.errors.iter().cloned()).collect();
    if let Err(e) = device.synchronize() {
        op_errors.push(format!("device synchronize: {e}"));
    }
    let seconds = start.elapsed();
    bar.finish_and_clear();
    let memory = device.memory_stats();

    // Verification, not timed.
    let kept = runs.iter().map(|r| r.results.len() as u64).sum();
    let check = if args.scenario == Workload::Batching {
        verify::batches(&device, &params, &runs, kept)
    } else {
        verify::rounds(&device, args.scenario, &params, &runs, kept)
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
