//! The output of `chorus bench batching`: the measured sweep as one JSON object (`--json`) and
//! as text tables.

use super::measure::{ms, Measured};
use super::BatchingArgs;
use chorus::batch::BatchStats;
use chorus::Device;
use serde_json::{json, Value};
use std::time::Duration;

/// One queue setting's row: its median run and what it is compared with.
#[derive(Debug)]
pub(super) struct QueueRow {
    pub(super) max_batch: usize,
    /// `max_delay` as given, in milliseconds.
    pub(super) delay_ms: f64,
    pub(super) delay: Duration,
    /// (b) at the same batch size.
    pub(super) direct: Measured,
    pub(super) measured: Measured,
    pub(super) stats: BatchStats,
    /// The allocator's counts over the row ([`super::measure::memory_delta`]).
    pub(super) memory: Value,
    /// Every run's throughput.
    pub(super) runs: Vec<f64>,
}

/// Everything the sweep measured: (a), each (b), each queue setting, each with every run's
/// throughput.
#[derive(Debug)]
pub(super) struct Sweep {
    pub(super) threads: (Measured, Vec<f64>),
    pub(super) per_batch: Vec<(usize, Measured, Vec<f64>)>,
    pub(super) rows: Vec<QueueRow>,
}

/// One queue row as JSON, with its ratios to (a) and (b) and its latency bound.
fn row_json(r: &QueueRow, threads: &Measured) -> Value {
    let (m, stats) = (&r.measured, &r.stats);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p = stats.phases;
    let bound = r.delay + 3 * r.direct.p50;
    json!({
        "max_batch": r.max_batch,
        "max_delay_ms": r.delay_ms,
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
        "vs_direct_batch": m.samples_per_s / r.direct.samples_per_s,
        "p99_bound_ms": ms(bound),
        "p99_within_bound": m.p99 <= bound,
        "cpu_us_per_sample": m.cpu_us_per_sample,
        "client_cpu_us_per_sample": m.client_cpu_us_per_sample,
        "memory": r.memory,
        "runs": r.runs,
    })
}

/// The whole output object.
pub(super) fn json(device: &Device, a: &BatchingArgs, repeat: usize, sweep: &Sweep) -> Value {
    let (threads, threads_runs) = &sweep.threads;
    json!({
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
        "direct_batch": sweep.per_batch.iter().map(|(b, m, runs)| json!({
            "batch": b,
            "samples_per_s": m.samples_per_s,
            "forward_ms": ms(m.p50),
            "cpu_us_per_sample": m.cpu_us_per_sample,
            "client_cpu_us_per_sample": m.client_cpu_us_per_sample,
            "runs": runs,
        })).collect::<Vec<_>>(),
        "batching": sweep.rows.iter().map(|r| row_json(r, threads)).collect::<Vec<_>>(),
    })
}

/// The output object as text tables.
pub(super) fn print_text(out: &Value) {
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
