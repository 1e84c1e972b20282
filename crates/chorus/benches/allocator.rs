//! Allocator throughput: alloc/free pairs per second from 1, 2, 8 and 64 threads.
//!
//! Each pair is `Tensor::empty` (allocation only, nothing enqueued) of a small tensor followed
//! by its drop, so this measures the caching allocator and the tensor layer around it: the
//! thread-cache fast path, the shared pool under its lock, stream binding.
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
