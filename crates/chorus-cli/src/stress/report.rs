//! What `chorus stress` shows: the progress bars and error messages on stderr, and the
//! summary on stdout (text, or one JSON object with `--json`).

use super::verify::Verification;
use super::StressArgs;
use crate::human;
use crate::workload::Params;
use chorus::{Device, MemoryStats};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal as _;
use std::time::Duration;

/// How many messages of each kind (op errors, mismatches) are printed.
const SHOWN: usize = 5;

/// Prints the first [`SHOWN`] messages to stderr, and how many more there were.
pub(super) fn report_errors(kind: &str, messages: &[String]) {
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
pub(super) fn progress_bar(len: u64, what: &'static str) -> ProgressBar {
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
pub(super) struct Summary<'a> {
    pub(super) args: &'a StressArgs,
    pub(super) params: Params<'a>,
    pub(super) device: &'a Device,
    pub(super) ops: u64,
    pub(super) seconds: Duration,
    /// Allocator statistics at the end of the parallel phase.
    pub(super) memory: MemoryStats,
    /// Errors of the parallel phase.
    pub(super) op_errors: usize,
    pub(super) check: &'a Verification,
}

impl Summary<'_> {
    /// Every error: of the parallel phase, of verification, and mismatches.
    pub(super) fn errors(&self) -> usize {
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

    pub(super) fn json(&self) -> serde_json::Value {
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

    pub(super) fn print(&self) {
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
