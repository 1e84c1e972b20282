//! Running out of memory from several threads at once: every thread that runs out reclaims the
//! blocks other threads keep cached, and none fails while memory it could use is in transit
//! between a retired cache and the pools.

use chorus::{DType, Tensor};
use chorus_testing::{backend_tests, scaled, TestBackend};
use std::sync::{mpsc, Barrier};

backend_tests!(threads_running_out_together_both_get_memory);
/// Thread A keeps the whole 4 MiB limit in its cache as 512-byte blocks; threads B and C then
/// each ask for 1.5 MiB at the same moment. Both fit once A's blocks are back in the pools and
/// their segments released, so neither may fail: the one that finds A's cache already retired
/// by the other must not take its snapshot while the other is still handing A's blocks back.
fn threads_running_out_together_both_get_memory(backend: TestBackend) {
    const LIMIT: usize = 4 << 20;
    const SMALL: usize = 512;
    backend.with_device(
        |b| b.memory_limit(Some(LIMIT)).thread_cache_bytes(LIMIT),
        |dev| {
            for round in 0..scaled(20) {
                let (filled, done) = (mpsc::channel(), mpsc::channel::<()>());
                let a = {
                    let dev = dev.clone();
                    let (filled, done) = (filled.0, done.1);
                    std::thread::spawn(move || {
                        let blocks: Vec<Tensor> = (0..LIMIT / SMALL)
                            .map(|_| Tensor::zeros(&dev, &[SMALL / 4], DType::F32).unwrap())
                            .collect();
                        drop(blocks); // all into this thread's cache
                        filled.send(()).unwrap();
                        // Stay alive (an exiting thread would give its cache back itself).
                        let _ = done.recv();
                    })
                };
                filled.1.recv().unwrap();
                assert_eq!(dev.memory_stats().allocated_bytes, 0);
                let start = Barrier::new(2);
                let results = std::thread::scope(|s| {
                    let ask = || {
                        start.wait();
                        Tensor::zeros(&dev, &[(3 << 20) / 2 / 4], DType::F32).map(|t| t.len())
                    };
                    let b = s.spawn(ask);
                    let c = s.spawn(ask);
                    [b.join().unwrap(), c.join().unwrap()]
                });
                done.0.send(()).unwrap();
                a.join().unwrap();
                for r in results {
                    if let Err(e) = r {
                        panic!("round {round}: {e}");
                    }
                }
                dev.empty_cache();
            }
        },
    );
}
