//! The caching allocator through the public API: stats, limits, reclaim, cache, peaks.

use chorus::{DType, Error, Tensor};
use chorus_testing::{backend_tests, TestBackend};

backend_tests!(stats_track_allocations_and_reuse);
fn stats_track_allocations_and_reuse(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let before = dev.memory_stats();
            let t = Tensor::zeros(&dev, &[1000], DType::F32).unwrap();
            let st = dev.memory_stats();
            assert_eq!(st.allocated_bytes, 4096, "rounded to 512-byte blocks");
            assert!(st.reserved_bytes >= 2 << 20);
            assert_eq!(st.allocations, before.allocations + 1);
            drop(t);
            assert_eq!(dev.memory_stats().allocated_bytes, 0);
            // Same size again on the same thread and stream: a cache hit, no new segment.
            let hits = dev.memory_stats().cache_hits;
            let reserved = dev.memory_stats().reserved_bytes;
            let t = Tensor::zeros(&dev, &[1000], DType::F32).unwrap();
            let st = dev.memory_stats();
            assert_eq!(st.cache_hits, hits + 1);
            assert_eq!(st.reserved_bytes, reserved);
            assert_eq!(t.to_vec::<f32>().unwrap(), vec![0.0; 1000]);
            assert!(st.peak_allocated_bytes >= 4096);
            drop(t);
            dev.reset_peak_memory();
            assert_eq!(dev.memory_stats().peak_allocated_bytes, 0);
            dev.empty_cache();
            let st = dev.memory_stats();
            assert_eq!((st.reserved_bytes, st.segments), (0, 0), "{st:?}");
        },
    );
}

backend_tests!(large_and_huge_blocks_split_and_return);
fn large_and_huge_blocks_split_and_return(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let large = Tensor::zeros(&dev, &[1 << 20], DType::F32).unwrap(); // 4 MiB: large class
            let huge = Tensor::zeros(&dev, &[4 << 20], DType::F32).unwrap(); // 16 MiB: huge class
            let st = dev.memory_stats();
            assert!(st.reserved_bytes >= (20 << 20) + (16 << 20), "{st:?}");
            assert_eq!(large.sum_all().unwrap().item::<f32>().unwrap(), 0.0);
            drop((large, huge));
            dev.empty_cache();
            assert_eq!(dev.memory_stats().reserved_bytes, 0);
        },
    );
}

backend_tests!(limit_reclaims_cached_memory_before_failing);
fn limit_reclaims_cached_memory_before_failing(backend: TestBackend) {
    backend.with_device(
        |b| b.memory_limit(Some(24 << 20)).thread_cache_bytes(0),
        |dev| {
            // Fill the cache with a freed 16 MiB block, then ask for a different 20 MiB one: the
            // allocator must release the cached segment rather than fail.
            let a = Tensor::zeros(&dev, &[4 << 20], DType::F32).unwrap();
            drop(a);
            let b = Tensor::zeros(&dev, &[5 << 20], DType::F32).unwrap();
            assert_eq!(b.len(), 5 << 20);
            let st = dev.memory_stats();
            assert!(st.reserved_bytes <= 24 << 20, "{st:?}");
            // Truly over the limit: a typed error, and accounting unchanged.
            let before = dev.memory_stats().allocated_bytes;
            let err = Tensor::zeros(&dev, &[4 << 20], DType::F32).unwrap_err();
            assert!(
                matches!(err, Error::OutOfMemory { requested, .. } if requested == 16 << 20),
                "{err}"
            );
            assert_eq!(dev.memory_stats().allocated_bytes, before);
            assert!(dev.memory_stats().oom_retries >= 1);
        },
    );
}

backend_tests!(memory_of_another_stream_is_reclaimed_by_synchronizing);
fn memory_of_another_stream_is_reclaimed_by_synchronizing(backend: TestBackend) {
    backend.with_device(
        |b| b.memory_limit(Some(12 << 20)).thread_cache_bytes(0),
        |dev| {
            let (a, b) = (dev.stream(1).unwrap(), dev.stream(2).unwrap());
            // Stream 1 takes 8 MiB in two 4 MiB blocks and frees them (its work may still run).
            let x = dev.with_stream(&a, || Tensor::zeros(&dev, &[1 << 20], DType::F32).unwrap());
            let y = dev.with_stream(&a, || x.add(&x).unwrap());
            drop((x, y));
            // Stream 2 needs 8 MiB in one block: only releasing stream 1's cached segments, once
            // their last uses are known complete, makes room under the 12 MiB limit.
            let z = dev.with_stream(&b, || Tensor::zeros(&dev, &[2 << 20], DType::F32).unwrap());
            assert_eq!(
                dev.with_stream(&b, || z.sum_all().unwrap().item::<f32>().unwrap()),
                0.0
            );
            assert!(dev.memory_stats().reserved_bytes <= 12 << 20);
        },
    );
}

backend_tests!(thread_cache_counts_survive_thread_exit);
/// Allocations and frees served by a thread's cache are counted while the thread lives and
/// still counted, once, after it exits and its cache is retired.
fn thread_cache_counts_survive_thread_exit(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let before = dev.memory_stats();
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..5 {
                        drop(Tensor::zeros(&dev, &[64], DType::F32).unwrap());
                    }
                    let live = dev.memory_stats();
                    assert_eq!(live.allocations - before.allocations, 5);
                    assert!(
                        live.thread_cache_hits - before.thread_cache_hits >= 4,
                        "{live:?}"
                    );
                });
            });
            let after = dev.memory_stats();
            assert_eq!(after.allocations - before.allocations, 5);
            assert_eq!(after.frees - before.frees, 5);
            assert!(
                after.thread_cache_hits - before.thread_cache_hits >= 4,
                "{after:?}"
            );
            assert_eq!(after.allocated_bytes, 0);
        },
    );
}

backend_tests!(running_out_empties_other_threads_caches);
/// Memory another (still running) thread keeps in its cache of small blocks is given back when
/// an allocation would otherwise fail, and that thread then goes on with a new cache.
fn running_out_empties_other_threads_caches(backend: TestBackend) {
    backend.with_device(
        |b| b.memory_limit(Some(8 << 20)).thread_cache_bytes(8 << 20),
        |dev| {
            let (cached, go_on) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
            let (cached_tx, cached_rx) = cached;
            let (go_tx, go_rx) = go_on;
            std::thread::scope(|s| {
                let dev = &dev;
                // Owned by this closure: should it panic, the helper's wait ends too.
                let go_tx = go_tx;
                s.spawn(move || {
                    // Six 512 KiB tensors, freed into this thread's cache (their segments stay).
                    let ts: Vec<_> = (0..6)
                        .map(|_| Tensor::zeros(dev, &[128 << 10], DType::F32).unwrap())
                        .collect();
                    dev.current_stream().unwrap().synchronize().unwrap();
                    drop(ts);
                    cached_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    // Still working, with a new cache.
                    let t = Tensor::full(dev, &[128 << 10], 2.0).unwrap();
                    assert_eq!(t.sum_all().unwrap().item::<f32>().unwrap(), 262_144.0);
                });
                cached_rx.recv().unwrap();
                assert!(dev.memory_stats().reserved_bytes >= 3 << 20);
                // 6 MiB in one block fits under the limit only once those segments are released.
                let big = Tensor::zeros(dev, &[3 << 19], DType::F32).unwrap();
                assert_eq!(big.sum_all().unwrap().item::<f32>().unwrap(), 0.0);
                assert!(dev.memory_stats().reserved_bytes <= 8 << 20);
                drop(big);
                go_tx.send(()).unwrap();
            });
        },
    );
}

backend_tests!(blocks_freed_on_another_thread_return_to_their_stream);
/// A tensor made on one thread's stream and dropped on another thread (a batching worker's
/// output dropped by its client, a pipeline stage's hand-off) goes into its stream's returns:
/// the stream's next allocation of that size takes it back without a new segment, and
/// `empty_cache` and running out of memory give such blocks back too.
fn blocks_freed_on_another_thread_return_to_their_stream(backend: TestBackend) {
    backend.with_device(
        |b| b.memory_limit(Some(8 << 20)).thread_cache_bytes(4 << 20),
        |dev| {
            let stream = dev.stream(2).unwrap();
            let make = || {
                dev.with_stream(&stream, || {
                    let t = Tensor::full(&dev, &[1000], 1.0).unwrap();
                    stream.synchronize().unwrap();
                    t
                })
            };
            let t = make();
            std::thread::scope(|s| {
                s.spawn(move || drop(t));
            });
            let before = dev.memory_stats();
            let again = make();
            let after = dev.memory_stats();
            assert_eq!(after.returns_hits - before.returns_hits, 1, "{after:?}");
            assert_eq!(after.cache_hits - before.cache_hits, 1);
            assert_eq!(after.segments, before.segments);
            // (Read on its own stream: used by stream 2 alone, it goes to the returns again.)
            let sum = dev.with_stream(&stream, || again.sum_all().unwrap().item::<f32>());
            assert_eq!(sum.unwrap(), 1000.0);
            // Kept blocks go back with `empty_cache`: every segment is released.
            std::thread::scope(|s| {
                s.spawn(move || drop(again));
            });
            dev.empty_cache();
            assert_eq!(dev.memory_stats().segments, 0);
            assert_eq!(dev.memory_stats().allocated_bytes, 0);
            // And when an allocation would fail: six 512 KiB blocks of stream 2 (two 2 MiB
            // segments) are kept in its returns; a 6 MiB block fits under the 8 MiB limit only
            // once those segments are released.
            let ts: Vec<Tensor> = dev.with_stream(&stream, || {
                (0..6)
                    .map(|_| Tensor::zeros(&dev, &[128 << 10], DType::F32).unwrap())
                    .collect()
            });
            stream.synchronize().unwrap();
            std::thread::scope(|s| {
                s.spawn(move || drop(ts));
            });
            assert!(dev.memory_stats().reserved_bytes >= 3 << 20);
            let big = Tensor::zeros(&dev, &[3 << 19], DType::F32).unwrap();
            assert_eq!(big.sum_all().unwrap().item::<f32>().unwrap(), 0.0);
            assert!(dev.memory_stats().reserved_bytes <= 8 << 20);
        },
    );
}

backend_tests!(finished_deferred_blocks_go_back_to_their_stream);
/// A tensor of one stream that another stream read waits, once dropped, for that read (a
/// deferred free); when the allocator then finds it finished while serving another stream, it
/// goes to its own stream's returns, where that stream's next tensor of its size comes from.
fn finished_deferred_blocks_go_back_to_their_stream(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (s2, s3) = (dev.stream(2).unwrap(), dev.stream(3).unwrap());
            let t = dev.with_stream(&s2, || Tensor::full(&dev, &[1000], 1.0).unwrap());
            let sum = dev.with_stream(&s3, || t.sum_all().unwrap().item::<f32>().unwrap());
            assert_eq!(sum, 1000.0);
            let before = dev.memory_stats();
            drop(t);
            assert_eq!(dev.memory_stats().deferred_frees, before.deferred_frees + 1);
            s2.synchronize().unwrap();
            s3.synchronize().unwrap();
            // Stream 3 needs a size nothing caches: the pools, which find the finished free.
            let other =
                dev.with_stream(&s3, || Tensor::zeros(&dev, &[77_777], DType::F32).unwrap());
            let hits = dev.memory_stats().returns_hits;
            let again = dev.with_stream(&s2, || Tensor::full(&dev, &[1000], 2.0).unwrap());
            assert_eq!(dev.memory_stats().returns_hits, hits + 1);
            let sum = dev.with_stream(&s2, || again.sum_all().unwrap().item::<f32>().unwrap());
            assert_eq!(sum, 2000.0);
            drop(other);
        },
    );
}
