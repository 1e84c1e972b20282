//! Statistics of a batch queue: batches and their sizes, outcomes of requests, queue depth
//! and request latency (submission to result).
//!
//! # Fields
//! The counters are under one lock (`BATCH_STATS`), taken once per batch by the worker that ran
//! it (before it completes the batch's tickets, so that a caller who has its result also sees
//! it counted; the time spent completing them is added right after, `Phases::complete`), once
//! per rejection by the submitter, and by readers to copy a
//! [`BatchStats`]. Latencies go into a log-linear histogram (32 buckets per power of two of
//! nanoseconds), so percentiles are exact to about 3% and memory stays fixed however long the
//! queue runs.

use chorus_sync::{rank, RankedMutex};
use std::time::Duration;

/// Sub-buckets per power of two: 2^5 = 32, a relative resolution of 1/32.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) << SUB_BITS;

/// Latency histogram over nanoseconds.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < SUB {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
        let mantissa = (ns >> (exp - SUB_BITS)) & (SUB - 1);
        (((exp - SUB_BITS + 1) as u64) << SUB_BITS | mantissa) as usize
    }

    /// The middle of bucket `b`'s range of values.
    fn value(b: usize) -> u64 {
        let b = b as u64;
        if b < SUB {
            return b;
        }
        let exp = (b >> SUB_BITS) + u64::from(SUB_BITS) - 1;
        let mantissa = b & (SUB - 1);
        let width = 1u64 << (exp - u64::from(SUB_BITS));
        ((SUB | mantissa) << (exp - u64::from(SUB_BITS))) + width / 2
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// The `q` quantile (0..=1): the value of the bucket holding the `ceil(q * count)`-th
    /// smallest sample, capped at the exact maximum (which the largest rank returns).
    fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return Duration::from_nanos(self.max_ns);
        }
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Self::value(b).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    fn mean(&self) -> Duration {
        mean(self.sum_ns, self.count)
    }
}

/// `sum_ns / n` as a duration (zero when `n` is).
fn mean(sum_ns: u128, n: u64) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(u64::try_from(sum_ns / u128::from(n)).unwrap_or(u64::MAX))
}

/// Latency of the requests that got their result, from submission until their batch's
/// output was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median (to about 3%).
    pub p50: Duration,
    /// 95th percentile (to about 3%).
    pub p95: Duration,
    /// 99th percentile (to about 3%).
    pub p99: Duration,
    /// Largest (exact).
    pub max: Duration,
}

/// A snapshot of a batch queue's statistics ([`BatchQueue::stats`](crate::BatchQueue::stats)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Batches run (forward passes attempted), failed ones included.
    pub batches: u64,
    /// Batches that ran through a graph ([`BatchConfigBuilder::graphs`](crate::BatchConfigBuilder::graphs)).
    pub graph_batches: u64,
    /// Rows run in those batches.
    pub rows: u64,
    /// Requests that got their result.
    pub requests: u64,
    /// Requests failed by their batch (model error or panic, device error).
    pub failed: u64,
    /// Requests that waited past their timeout.
    pub timed_out: u64,
    /// Waiting requests failed by [`ShutdownMode::Fail`](crate::ShutdownMode::Fail).
    pub shut_down: u64,
    /// Requests rejected at submission (queue full, shut down, malformed).
    pub rejected: u64,
    /// Mean rows per batch (0 before the first batch).
    pub mean_batch_size: f64,
    /// Histogram of batch sizes: `(rows, batches)` for every size that occurred, ascending.
    pub batch_sizes: Vec<(usize, u64)>,
    /// Requests waiting now.
    pub queue_depth: usize,
    /// Most requests waiting at once since the queue started or the stats were reset.
    pub peak_queue_depth: usize,
    /// Latency of the requests that got their result.
    pub latency: Latency,
    /// Where the time went, as means (0 before the first batch).
    pub phases: Phases,
}

/// Where a batch queue's time goes ([`BatchStats::phases`]): how long requests wait for a
/// worker, and the steps of a worker's batch (see the worker's protocol in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Phases {
    /// Mean per request: from submission until a worker took its batch.
    pub queued: Duration,
    /// Mean per batch: concatenating the inputs (device requests) or uploading them in one
    /// copy (host requests).
    pub gather: Duration,
    /// Mean per batch: the model's forward pass as seen by the host (enqueueing its work).
    pub forward: Duration,
    /// Mean per batch: splitting the output and waiting for the worker's stream (device
    /// requests), or reading the output back and cutting it (host requests).
    pub finish: Duration,
    /// Mean per batch: completing the requests' tickets (waking their threads). Added once the
    /// batch's tickets are completed, so it may lag the other statistics by that batch: a
    /// caller woken by its ticket can read the statistics first.
    pub complete: Duration,
}

#[derive(Debug, Clone)]
struct Counters {
    batches: u64,
    graph_batches: u64,
    rows: u64,
    requests: u64,
    failed: u64,
    timed_out: u64,
    shut_down: u64,
    rejected: u64,
    /// Batches by rows (index = rows; grown to the largest batch seen, so that a huge
    /// `max_batch` costs nothing up front).
    sizes: Vec<u64>,
    latency: Histogram,
    /// Sums over batches (`queued`: over requests) of the phases, and batches completed.
    phases: Phases,
    completed: u64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            batches: 0,
            graph_batches: 0,
            rows: 0,
            requests: 0,
            failed: 0,
            timed_out: 0,
            shut_down: 0,
            rejected: 0,
            sizes: Vec::new(),
            latency: Histogram::new(),
            phases: Phases::default(),
            completed: 0,
        }
    }
}

/// The queue's counters.
#[derive(Debug)]
pub(crate) struct Stats {
    inner: RankedMutex<Counters>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            inner: RankedMutex::new(rank::BATCH_STATS, Counters::new()),
        }
    }

    /// A batch of `rows` rows ran (through a graph if `graph`); `latencies` of its requests if
    /// it succeeded, else it failed `requests` requests; `phases` are its times (`queued`
    /// summed over its requests).
    pub(crate) fn batch(
        &self,
        rows: usize,
        requests: usize,
        latencies: Option<&[Duration]>,
        phases: &Phases,
        graph: bool,
    ) {
        let mut c = self.inner.lock();
        c.batches += 1;
        c.graph_batches += u64::from(graph);
        c.phases.queued += phases.queued;
        c.phases.gather += phases.gather;
        c.phases.forward += phases.forward;
        c.phases.finish += phases.finish;
        c.rows += rows as u64;
        if c.sizes.len() <= rows {
            c.sizes.resize(rows + 1, 0);
        }
        c.sizes[rows] += 1;
        match latencies {
            Some(ls) => {
                c.requests += ls.len() as u64;
                for &l in ls {
                    c.latency.record(l);
                }
            }
            None => c.failed += requests as u64,
        }
    }

    /// A batch's tickets were completed in `d`.
    pub(crate) fn completed(&self, d: Duration) {
        let mut c = self.inner.lock();
        c.phases.complete += d;
        c.completed += 1;
    }

    pub(crate) fn timed_out(&self, n: usize) {
        self.inner.lock().timed_out += n as u64;
    }

    pub(crate) fn shut_down(&self, n: usize) {
        self.inner.lock().shut_down += n as u64;
    }

    pub(crate) fn rejected(&self) {
        self.inner.lock().rejected += 1;
    }

    pub(crate) fn reset(&self) {
        *self.inner.lock() = Counters::new();
    }

    pub(crate) fn snapshot(&self, queue_depth: usize, peak_queue_depth: usize) -> BatchStats {
        let c = self.inner.lock().clone();
        let h = &c.latency;
        BatchStats {
            batches: c.batches,
            graph_batches: c.graph_batches,
            rows: c.rows,
            requests: c.requests,
            failed: c.failed,
            timed_out: c.timed_out,
            shut_down: c.shut_down,
            rejected: c.rejected,
            mean_batch_size: if c.batches == 0 {
                0.0
            } else {
                c.rows as f64 / c.batches as f64
            },
            batch_sizes: c
                .sizes
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .map(|(rows, &n)| (rows, n))
                .collect(),
            queue_depth,
            peak_queue_depth,
            latency: Latency {
                count: h.count,
                mean: h.mean(),
                p50: h.quantile(0.50),
                p95: h.quantile(0.95),
                p99: h.quantile(0.99),
                max: Duration::from_nanos(h.max_ns),
            },
            phases: {
                let per = |d: Duration, n: u64| mean(d.as_nanos(), n);
                let p = &c.phases;
                // Requests of failed batches waited too: count them with the others.
                let waited = c.requests + c.failed;
                Phases {
                    queued: per(p.queued, waited),
                    gather: per(p.gather, c.batches),
                    forward: per(p.forward, c.batches),
                    finish: per(p.finish, c.batches),
                    complete: per(p.complete, c.completed),
                }
            },
        }
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let b = Histogram::bucket(ns);
            assert!(b >= last && b < BUCKETS, "{ns}: bucket {b}");
            last = b;
            let v = Histogram::value(b);
            let err = v.abs_diff(ns) as f64 / (ns.max(1)) as f64;
            assert!(err <= 1.0 / 32.0, "{ns}: value {v}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let close = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() <= us / 30.0;
        assert!(close(h.quantile(0.5), 50.0), "{:?}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 99.0), "{:?}", h.quantile(0.99));
        assert_eq!(h.quantile(1.0), Duration::from_micros(100));
        assert_eq!(h.mean(), Duration::from_nanos(50_500));
    }
}
