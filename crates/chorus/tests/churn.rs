//! Thread churn: many short-lived threads; every slot comes back, every byte is returned.

use chorus::{Error, Exhaustion, StreamPolicy, Tensor};
use chorus_testing::{backend_tests, TestBackend};

backend_tests!(thousand_short_lived_threads_return_slots_and_memory);
fn thousand_short_lived_threads_return_slots_and_memory(backend: TestBackend) {
    backend.with_device(
        |b| {
            b.streams(8)
                .policy(StreamPolicy::Exclusive)
                .exhaustion(Exhaustion::WaitForever)
        },
        |dev| {
            // The test's own thread works on the default stream, so that it holds no pooled slot.
            let _main = dev.set_stream(&dev.default_stream());
            let x = Tensor::randn(&dev, &[16, 16], 1).unwrap();
            let want = x
                .matmul(&x)
                .unwrap()
                .sum_all()
                .unwrap()
                .item::<f32>()
                .unwrap()
                .to_bits();
            let threads = 1000;
            let wave = 25;
            for w in 0..threads / wave {
                std::thread::scope(|s| {
                    for _ in 0..wave {
                        s.spawn(|| {
                            let y = x.matmul(&x).unwrap();
                            let z = y.add(&x).unwrap().sub(&x).unwrap();
                            let got = z.sum_all().unwrap().item::<f32>().unwrap().to_bits();
                            assert_eq!(got, want, "wave {w}");
                        });
                    }
                });
            }
            drop(x);
            dev.synchronize().unwrap();
            let st = dev.memory_stats();
            assert_eq!(st.allocated_bytes, 0, "all tensors dropped: {st:?}");
            assert_eq!(st.allocations, st.frees);
            // Every one of the 7 pooled slots is free again: 7 threads can hold one each at once,
            // an 8th is refused.
            assert_eq!(dev.config().exhaustion(), Exhaustion::WaitForever);
            let barrier = std::sync::Barrier::new(7);
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..7)
                    .map(|_| {
                        s.spawn(|| {
                            let r = dev.current_stream().map(|st| st.index());
                            barrier.wait();
                            r
                        })
                    })
                    .collect();
                let mut got: Vec<usize> =
                    hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
                got.sort_unstable();
                assert_eq!(got, (1..8).collect::<Vec<_>>());
            });
        },
    );
}

backend_tests!(exhausted_pool_with_error_policy_reports_it);
fn exhausted_pool_with_error_policy_reports_it(backend: TestBackend) {
    backend.with_device(
        |b| b.streams(2).policy(StreamPolicy::Exclusive),
        |dev| {
            let _held = dev.current_stream().unwrap();
            let r =
                std::thread::scope(|s| s.spawn(|| Tensor::full(&dev, &[2], 1.0)).join().unwrap());
            assert!(matches!(r, Err(Error::StreamsExhausted { .. })));
        },
    );
}
