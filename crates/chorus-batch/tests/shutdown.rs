//! Shutdown while 32 threads submit: new requests are rejected with their inputs handed back,
//! waiting ones are run (drain) or failed (fail), and none is lost.

mod common;

use chorus_batch::{BatchError, BatchQueue, ShutdownMode};
use chorus_core::Tensor;
use chorus_nn::{Linear, Module};
use common::{config, device, exact_linear, exact_linear_host, Double, NEVER};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const THREADS: usize = 32;
const MAX_BATCH: usize = 8;
const WORKERS: usize = 2;

/// [`exact_linear`] behind a gate: while the gate is closed, a forward that starts waits for
/// it to open, counting the rows it holds.
#[derive(Debug)]
struct GatedLinear {
    inner: Linear,
    closed: AtomicBool,
    held_rows: AtomicUsize,
}

impl Module for GatedLinear {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        if self.closed.load(Ordering::SeqCst) {
            let rows = x.shape()[0];
            self.held_rows.fetch_add(rows, Ordering::SeqCst);
            while self.closed.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.held_rows.fetch_sub(rows, Ordering::SeqCst);
        }
        self.inner.forward(x)
    }
}

/// What one run saw, in all: results received, requests failed by the shutdown, submissions
/// rejected; and at the shutdown: results received before it, requests held inside the model,
/// requests waiting in the queue.
#[derive(Debug)]
struct Outcome {
    ok: u64,
    failed: u64,
    rejected: u64,
    ok_before: u64,
    held: usize,
    waiting: usize,
}

/// 32 threads submit, one request in flight each (submit, wait, again), until work has flowed
/// (500 results); then the model's gate closes, so that every thread's request ends up either
/// held inside a forward (at most `WORKERS * MAX_BATCH` rows) or waiting in the queue (the
/// rest, at least 16), and nothing moves. The shutdown comes then, on its own thread (it waits
/// for the workers, which wait for the gate); once the queue reports it shut down the gate
/// opens. New requests are rejected with their inputs handed back, and every accepted request
/// gets exactly one outcome.
fn shutdown_while_submitting(mode: ShutdownMode) -> Outcome {
    let device = device();
    let cfg = config(&device, MAX_BATCH, Duration::from_micros(300))
        .workers(WORKERS)
        .max_queue(1024)
        .build()
        .unwrap();
    let model = Arc::new(GatedLinear {
        inner: exact_linear(&device),
        closed: AtomicBool::new(false),
        held_rows: AtomicUsize::new(0),
    });
    let queue = BatchQueue::new(Arc::clone(&model), cfg).unwrap();
    let done = AtomicU64::new(0);
    let out = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS as u32)
            .map(|t| {
                let (queue, device, done) = (&queue, &device, &done);
                s.spawn(move || {
                    let (mut ok, mut failed) = (0, 0);
                    for i in 0.. {
                        let x = [t as f32, (i % 50) as f32, 2.0, 1.0];
                        let input = Tensor::from_slice(device, &x, &[1, 4]).unwrap();
                        // One request in flight per thread: the next is submitted once this
                        // one has its outcome.
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
                                done.fetch_add(1, Ordering::SeqCst);
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
        // Close the gate once work is flowing (progress, not time), then wait until every
        // thread's request is held or waiting: from then on nothing moves.
        while done.load(Ordering::SeqCst) < 500 {
            std::thread::sleep(Duration::from_millis(1));
        }
        model.closed.store(true, Ordering::SeqCst);
        let (held, waiting) = loop {
            let held = model.held_rows.load(Ordering::SeqCst);
            let waiting = queue.queue_depth();
            if held + waiting == THREADS {
                break (held, waiting);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let ok_before = done.load(Ordering::SeqCst);
        assert!(held <= WORKERS * MAX_BATCH && waiting >= THREADS - WORKERS * MAX_BATCH);
        let shutdown = s.spawn(|| queue.shutdown(mode));
        while !queue.is_shut_down() {
            std::thread::sleep(Duration::from_millis(1));
        }
        model.closed.store(false, Ordering::SeqCst);
        let failed = shutdown.join().unwrap() as u64;
        assert!(queue.is_shut_down());
        let (ok, failed_seen, rejected) = hs
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
        assert_eq!(
            failed, failed_seen,
            "each request failed by the shutdown was seen by its thread"
        );
        Outcome {
            ok,
            failed,
            rejected,
            ok_before,
            held,
            waiting,
        }
    });
    eprintln!("{mode:?}: {out:?}");
    let stats = queue.stats();
    assert_eq!(stats.requests, out.ok);
    assert_eq!(stats.shut_down, out.failed);
    assert_eq!(stats.rejected, out.rejected);
    assert_eq!(
        out.rejected, THREADS as u64,
        "every thread's last submission is rejected"
    );
    assert_eq!(
        out.ok + out.failed,
        out.ok_before + THREADS as u64,
        "every request accepted before the shutdown got exactly one outcome"
    );
    assert_eq!(stats.queue_depth, 0);
    out
}

#[test]
fn shutdown_fail_while_32_threads_submit() {
    let out = shutdown_while_submitting(ShutdownMode::Fail);
    assert!(out.ok_before >= 500);
    // The waiting requests are failed, the held ones (already running) complete.
    assert_eq!(
        out.failed, out.waiting as u64,
        "fail fails every waiting request"
    );
    assert!(out.failed >= 1);
    assert_eq!(out.ok, out.ok_before + out.held as u64);
}

#[test]
fn shutdown_drain_while_32_threads_submit() {
    let out = shutdown_while_submitting(ShutdownMode::Drain);
    assert!(out.ok_before >= 500);
    assert_eq!(out.failed, 0);
    assert!(out.waiting >= 1);
    assert_eq!(
        out.ok,
        out.ok_before + THREADS as u64,
        "drain runs every request"
    );
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
