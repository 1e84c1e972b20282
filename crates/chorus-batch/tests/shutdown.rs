//! Shutdown while 32 threads submit: new requests are rejected with their inputs handed back,
//! waiting ones are run (drain) or failed (fail), and none is lost.

mod common;

use chorus_batch::{BatchError, BatchQueue, ShutdownMode};
use chorus_core::Tensor;
use common::{config, device, exact_linear, exact_linear_host, Double, NEVER};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Per thread: (results received, requests failed by the shutdown, submissions rejected).
fn shutdown_while_submitting(mode: ShutdownMode) -> (u64, u64, u64) {
    let device = device();
    let cfg = config(&device, 16, Duration::from_micros(300))
        .max_queue(1024)
        .build()
        .unwrap();
    let queue = BatchQueue::new(exact_linear(&device), cfg).unwrap();
    let done = AtomicU64::new(0);
    let totals = std::thread::scope(|s| {
        let hs: Vec<_> = (0..32u32)
            .map(|t| {
                let (queue, device, done) = (&queue, &device, &done);
                s.spawn(move || {
                    let (mut ok, mut failed) = (0, 0);
                    for i in 0.. {
                        let x = [t as f32, (i % 50) as f32, 2.0, 1.0];
                        let input = Tensor::from_slice(device, &x, &[1, 4]).unwrap();
                        // Two in flight per thread, so that some are waiting at the shutdown.
                        let ticket = match queue.submit(input.clone()) {
                            Ok(ticket) => ticket,
                            Err(BatchError::Shutdown { input: back }) => {
                                assert_eq!(
                                    back.as_tensor().unwrap().data_ptr(),
                                    input.data_ptr(),
                                    "handed back"
                                );
                                return (ok, failed, 1);
                            }
                            Err(e) => panic!("thread {t}: {e}"),
                        };
                        match ticket.wait() {
                            Ok(y) => {
                                assert_eq!(y.to_vec::<f32>().unwrap(), exact_linear_host(x));
                                ok += 1;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(BatchError::Shutdown { input: back }) => {
                                assert_eq!(mode, ShutdownMode::Fail, "drain runs every request");
                                assert_eq!(
                                    back.as_tensor().unwrap().data_ptr(),
                                    input.data_ptr(),
                                    "handed back"
                                );
                                failed += 1;
                            }
                            Err(e) => panic!("thread {t}: {e}"),
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        // Shut down once work is flowing (progress, not time).
        while done.load(Ordering::Relaxed) < 500 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let failed = queue.shutdown(mode) as u64;
        assert!(queue.is_shut_down());
        let totals = hs
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        assert_eq!(
            failed, totals.1,
            "each request failed by the shutdown was seen by its thread"
        );
        totals
    });
    let stats = queue.stats();
    assert_eq!(stats.requests, totals.0);
    assert_eq!(stats.shut_down, totals.1);
    assert_eq!(stats.rejected, totals.2);
    assert_eq!(totals.2, 32, "every thread's last submission is rejected");
    assert_eq!(stats.queue_depth, 0);
    totals
}

#[test]
fn shutdown_fail_while_32_threads_submit() {
    let (ok, _failed, _) = shutdown_while_submitting(ShutdownMode::Fail);
    assert!(ok >= 500);
}

#[test]
fn shutdown_drain_while_32_threads_submit() {
    let (ok, failed, _) = shutdown_while_submitting(ShutdownMode::Drain);
    assert!(ok >= 500);
    assert_eq!(failed, 0);
}

#[test]
fn dropping_the_queue_drains_it() {
    let device = device();
    let queue = BatchQueue::new(Double, config(&device, 8, NEVER).build().unwrap()).unwrap();
    let tickets: Vec<_> = (0..5)
        .map(|i| {
            queue
                .submit(Tensor::full(&device, &[1, 2], i as f32).unwrap())
                .unwrap()
        })
        .collect();
    drop(queue);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(
            t.wait().unwrap().to_vec::<f32>().unwrap(),
            vec![2.0 * i as f32; 2]
        );
    }
}

#[test]
fn fail_after_drain_and_repeated_shutdowns() {
    let device = device();
    let queue = BatchQueue::new(Double, config(&device, 8, NEVER).build().unwrap()).unwrap();
    let t = queue
        .submit(Tensor::full(&device, &[1, 2], 3.0).unwrap())
        .unwrap();
    assert_eq!(queue.shutdown(ShutdownMode::Drain), 0);
    assert_eq!(
        queue.shutdown(ShutdownMode::Fail),
        0,
        "nothing left to fail"
    );
    assert_eq!(queue.shutdown(ShutdownMode::Drain), 0);
    assert_eq!(t.wait().unwrap().to_vec::<f32>().unwrap(), vec![6.0; 2]);
    assert!(matches!(
        queue.infer(Tensor::full(&device, &[1, 2], 1.0).unwrap()),
        Err(BatchError::Shutdown { .. })
    ));
}
