//! Allocator throughput: alloc/free pairs per second from 1, 2, 8 and 64 threads.
//!
//! Each pair is `Tensor::empty` (allocation only, nothing enqueued) of a small tensor followed
//! by its drop, so this measures the caching allocator and the tensor layer around it: the
//! thread-cache fast path, the shared pool under its lock, stream binding.
//!
//! `handoff`: the same pairs, but each tensor is dropped by another thread (1, 2 or 8 producer
//! threads, each on its own stream, send their tensors to one consumer that drops them, as a
//! batching queue's clients drop the rows a worker made): a free the freeing thread cannot cache,
//! which goes to the stream's returns (or, with the caches off, to the shared pool).
//!
//! `cargo bench -p chorus --bench allocator`

use chorus::{DType, Device, DeviceExt, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

fn pairs(device: &Device, threads: usize, per_thread: u64, shape: &[usize]) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    drop(Tensor::empty(device, shape, DType::F32).expect("alloc"));
                }
            });
        }
    });
    start.elapsed()
}

/// `per_thread` tensors from each of `producers` threads, dropped by one consumer thread.
fn handoff(device: &Device, producers: usize, per_thread: u64, shape: &[usize]) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Tensor>(256);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || rx.into_iter().for_each(drop));
        for _ in 0..producers {
            let tx = tx.clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    tx.send(Tensor::empty(device, shape, DType::F32).expect("alloc"))
                        .expect("consumer alive");
                }
            });
        }
        drop(tx);
    });
    start.elapsed()
}

/// What one benchmark iteration runs: `(device, threads, iterations per thread, shape)`.
type Run = fn(&Device, usize, u64, &[usize]) -> Duration;

/// Benchmark group `name`: `run` from each count of `threads`, on a device with each
/// `(label, thread cache bytes)`; one iteration is one pair on every thread.
fn group(c: &mut Criterion, name: &str, caches: [(&str, usize); 2], threads: &[usize], run: Run) {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (label, cache) in caches {
        let device = Device::builder()
            .thread_cache_bytes(cache)
            .open()
            .expect("device");
        for &n in threads {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.iter_custom(|iters| run(&device, n, iters, &[256]));
            });
        }
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let caches = |cached| [(cached, 1 << 20), ("shared_pool", 0)];
    group(
        c,
        "alloc_free_pairs",
        caches("thread_cache"),
        &[1, 2, 8, 64],
        pairs,
    );
    group(c, "handoff_pairs", caches("returns"), &[1, 2, 8], handoff);
}

criterion_group!(benches, bench);
criterion_main!(benches);
