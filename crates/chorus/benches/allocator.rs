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

use chorus::{DType, Device, Tensor};
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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free_pairs");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (label, cache) in [("thread_cache", 1 << 20), ("shared_pool", 0)] {
        let device = Device::builder()
            .thread_cache_bytes(cache)
            .build()
            .expect("device");
        for threads in [1usize, 2, 8, 64] {
            g.throughput(Throughput::Elements(threads as u64));
            g.bench_with_input(BenchmarkId::new(label, threads), &threads, |b, &threads| {
                // One iteration = one pair on every thread (`threads` pairs in all).
                b.iter_custom(|iters| pairs(&device, threads, iters, &[256]));
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("handoff_pairs");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (label, cache) in [("returns", 1 << 20), ("shared_pool", 0)] {
        let device = Device::builder()
            .thread_cache_bytes(cache)
            .build()
            .expect("device");
        for producers in [1usize, 2, 8] {
            g.throughput(Throughput::Elements(producers as u64));
            g.bench_with_input(BenchmarkId::new(label, producers), &producers, |b, &p| {
                b.iter_custom(|iters| handoff(&device, p, iters, &[256]));
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
