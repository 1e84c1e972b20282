//! `chorus`: the command-line tool of the chorus runtime.
//!
//! - `chorus info`: the compiled-in backends, the chosen device and its settings, and the
//!   `CHORUS_*` environment variables.
//! - `chorus stress`: many threads running the same round of tensor work on one device, timed,
//!   then checked bit-for-bit against the same work run alone on the main thread.
//! - `chorus bench`: the MLP benchmark on the CPU (as `../shared/bench/torch_cpu_baseline.py`
//!   measures it), the GPU suite with `--device cuda`, and `chorus bench batching` (the batch
//!   queue against direct calls).
//!
//! - `chorus embed`: sentence embeddings of a text file with a sentence-transformers folder.
//!
//! The workloads `stress` and `bench` run are defined once, in `workload/`.
//!
//! Exit status: 0 on success, 1 on an error (or when a stress run found errors), 2 for a
//! command-line usage error (from clap).

mod bench;
mod device;
mod embed;
mod human;
mod info;
mod stress;
mod workload;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Thread-safe parallel inference runtime: device information and stress runs.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the compiled-in backends, a device and its settings.
    Info(info::InfoArgs),
    /// Run a round of tensor work on many threads at once, time it and check the results
    /// bit-for-bit against the same work run on one thread.
    Stress(stress::StressArgs),
    /// Benchmark the MLP 512→1024→1024→512 (batch sweep, thread sweep) like the PyTorch
    /// baseline script, for a side-by-side ratio.
    Bench(bench::BenchArgs),
    /// Embed sentences (one per line) with a sentence-transformers model folder.
    Embed(embed::EmbedArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Info(args) => info::run(args),
        Command::Stress(args) => stress::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Embed(args) => embed::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chorus: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
