//! The client side of `chorus bench batching`: client threads making timed requests behind a
//! barrier, and the rows of host data a request is made from.

use super::measure::{cpu_since, cpu_time, CpuClock, Phase};
use std::ops::Range;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A client's run of requests: `run(client, requests)` makes the requests numbered `requests`
/// and returns their latencies.
pub(super) type Run<'a> = dyn Fn(u64, Range<u64>) -> anyhow::Result<Vec<Duration>> + Sync + 'a;

/// Runs `clients` threads, each making `warmup` untimed then `requests` timed requests through
/// `run`. Returns the timed phase (barrier to last result): its wall time, the process's CPU
/// time and the client threads' own over the same span, and every latency.
pub(super) fn clients(
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
pub(super) fn seed(c: u64, i: u64) -> u64 {
    c * 10_000_000 + i
}

/// `rows` host rows of 512 values in [-1, 1) from `seed` (a xorshift generator: cheap, so that
/// making a request's data costs the client next to nothing).
pub(super) fn host_rows(seed: u64, rows: usize) -> Vec<f32> {
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
