//! Measuring one phase of `chorus bench batching`: the CPU-time clocks, a phase's throughput,
//! latency percentiles and CPU time per sample, the median of repeated runs, and the
//! allocator's counts over a row.

use serde_json::{json, Value};
use std::time::Duration;

/// Throughput and latency of one timed phase, and the CPU time it took.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) samples_per_s: f64,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    /// CPU time of the whole process (every thread) per sample, in µs, where known.
    pub(super) cpu_us_per_sample: Option<f64>,
    /// Of that, the CPU time of the threads that make the requests (the clients), where known.
    pub(super) client_cpu_us_per_sample: Option<f64>,
}

/// What one timed phase took: its wall time, the process's and the calling threads' CPU time
/// over it, and every request's latency.
pub(super) struct Phase {
    pub(super) elapsed: Duration,
    pub(super) cpu: Option<Duration>,
    pub(super) client_cpu: Option<Duration>,
    pub(super) latencies: Vec<Duration>,
}

/// Whose CPU time [`cpu_time`] reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum CpuClock {
    /// The whole process: every thread, exited ones too (`CLOCK_PROCESS_CPUTIME_ID`).
    Process,
    /// The calling thread (`CLOCK_THREAD_CPUTIME_ID`).
    Thread,
}

/// The CPU time used so far on `clock`, where the platform says.
pub(super) fn cpu_time(clock: CpuClock) -> Option<Duration> {
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
pub(super) fn cpu_since(clock: CpuClock, since: Option<Duration>) -> Option<Duration> {
    Some(cpu_time(clock)?.saturating_sub(since?))
}

impl Measured {
    pub(super) fn from(samples: u64, phase: Phase) -> Measured {
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

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `measure` `repeat` times (at least once) and returns the run of median throughput, with
/// every run's throughput in run order.
pub(super) fn median_of<T>(
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

/// What the allocator did during one row (warm-up included): counts between two snapshots,
/// and the segments held at its end.
pub(super) fn memory_delta(before: &chorus::MemoryStats, after: &chorus::MemoryStats) -> Value {
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
