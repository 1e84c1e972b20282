//! Shutdown with work in flight, pending handlers and thread caches holding blocks.

use chorus::{Error, Tensor};
use chorus_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use chorus_sync::Arc;
use chorus_testing::{backend_tests, TestBackend};
use std::time::{Duration, Instant};

/// Counts handler closures that were destroyed (after running or without running).
struct Finished(Arc<AtomicU64>);
impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

backend_tests!(drop_last_device_handle_while_eight_threads_enqueue);
fn drop_last_device_handle_while_eight_threads_enqueue(backend: TestBackend) {
    backend.with_device(
        |b| b.shutdown_timeout(Duration::from_secs(20)),
        |dev| {
            let registered = Arc::new(AtomicU64::new(0));
            let finished = Arc::new(AtomicU64::new(0));
            let ran = Arc::new(AtomicU64::new(0));
            // Set just before the last handle drops: a handler whose `on_complete` returned
            // before this was seen set was accepted before the shutdown began.
            let shutting = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            let mut threads = Vec::new();
            for t in 0..8u64 {
                let dev = dev.clone();
                let (registered, finished, ran, shutting, tx) = (
                    registered.clone(),
                    finished.clone(),
                    ran.clone(),
                    shutting.clone(),
                    tx.clone(),
                );
                threads.push(std::thread::spawn(move || {
                    // Each thread keeps only tensors and a stream, not a device handle.
                    let x = Tensor::randn(&dev, &[96, 96], t).unwrap();
                    let stream = dev.current_stream().unwrap();
                    drop(dev);
                    tx.send(()).unwrap();
                    let mut closed_err = None;
                    // The numbers of this thread's handlers that ran, and how many of its
                    // first handlers were accepted before the shutdown began.
                    let ran_here = Arc::new(chorus_sync::Mutex::new(Vec::new()));
                    let mut before = 0u64;
                    for i in 0..100_000u64 {
                        let r = x.matmul(&x).and_then(|y| y.sum_all());
                        let fin = Finished(finished.clone());
                        let (ran, ran_here) = (ran.clone(), ran_here.clone());
                        match stream.on_complete(move || {
                            let _fin = fin;
                            ran.fetch_add(1, Ordering::SeqCst);
                            ran_here.lock().unwrap().push(i);
                        }) {
                            Ok(()) => {
                                registered.fetch_add(1, Ordering::SeqCst);
                                if !shutting.load(Ordering::SeqCst) && before == i {
                                    before += 1;
                                }
                                // No backlog: the handler is queued when this returns, and the
                                // shutdown's wait for the streams is short (the slow handler
                                // below still holds the completion thread when it closes).
                                let _ = stream.synchronize();
                            }
                            Err(e) => {
                                // The refused closure was dropped (and counted as finished).
                                registered.fetch_add(1, Ordering::SeqCst);
                                closed_err = Some(e);
                                break;
                            }
                        }
                        if let Err(e) = r {
                            closed_err = Some(e);
                            break;
                        }
                    }
                    // Later calls keep failing with a clear error; nothing panics.
                    let later = x.add(&x).unwrap_err();
                    (closed_err, later, ran_here, before)
                }));
            }
            for _ in 0..8 {
                rx.recv().unwrap();
            }
            // A slow handler on the idle default stream holds the completion thread while
            // the threads' handlers queue up behind it, so that some are still queued when the
            // shutdown closes the queue (they must run then, not be dropped).
            let (started_tx, started) = std::sync::mpsc::channel();
            dev.default_stream()
                .on_complete(move || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                })
                .unwrap();
            started.recv().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            shutting.store(true, Ordering::SeqCst);
            drop(dev);
            let mut accepted_before = 0;
            for h in threads {
                let (first, later, ran_here, before) = h.join().expect("no thread panicked");
                assert!(
                    matches!(first, Some(Error::DeviceClosed { .. })),
                    "{first:?}"
                );
                assert!(matches!(later, Error::DeviceClosed { .. }), "{later}");
                // Every handler accepted before the shutdown ran: its work finished within
                // the shutdown timeout, so the shutdown waited for it and then ran it.
                let ran_here = ran_here.lock().unwrap();
                assert_eq!(
                    ran_here.iter().filter(|&&i| i < before).count() as u64,
                    before,
                    "handlers accepted before the shutdown that did not run"
                );
                accepted_before += before;
            }
            assert!(accepted_before > 0);
            assert!(start.elapsed() < Duration::from_secs(60), "bounded time");
            // Every handler closure made was either run or dropped, none leaked.
            let deadline = Instant::now() + Duration::from_secs(20);
            while finished.load(Ordering::SeqCst) < registered.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                finished.load(Ordering::SeqCst),
                registered.load(Ordering::SeqCst)
            );
            assert!(ran.load(Ordering::SeqCst) <= registered.load(Ordering::SeqCst));
        },
    );
}

backend_tests!(explicit_shutdown_then_errors_and_memory_released);
fn explicit_shutdown_then_errors_and_memory_released(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let keep = Tensor::randn(&dev, &[64, 64], 3).unwrap();
            let mut cached = Vec::new();
            for i in 0..20 {
                cached.push(Tensor::randn(&dev, &[8, 8], i).unwrap());
            }
            drop(cached); // small blocks now sit in this thread's cache
            dev.shutdown();
            assert!(dev.is_closed());
            assert!(matches!(
                Tensor::full(&dev, &[2], 0.0),
                Err(Error::DeviceClosed { .. })
            ));
            assert!(matches!(
                keep.matmul(&keep),
                Err(Error::DeviceClosed { .. })
            ));
            assert!(matches!(dev.event(), Err(Error::DeviceClosed { .. })));
            let st = dev.memory_stats();
            assert_eq!(st.allocated_bytes, keep.len() * 4);
            drop(keep);
            let st = dev.memory_stats();
            assert_eq!(st.allocated_bytes, 0);
            assert_eq!(
                st.reserved_bytes, 0,
                "closed device returns freed segments at once: {st:?}"
            );
            dev.shutdown(); // idempotent
        },
    );
}

backend_tests!(thread_exit_after_shutdown_and_shutdown_after_thread_exit);
fn thread_exit_after_shutdown_and_shutdown_after_thread_exit(backend: TestBackend) {
    for order in 0..2 {
        backend.with_device(
            |b| b,
            |dev| {
                let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
                let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
                let d2 = dev.clone();
                let h = std::thread::spawn(move || {
                    for i in 0..32 {
                        drop(Tensor::randn(&d2, &[4, 4], i).unwrap());
                    }
                    drop(d2);
                    ready_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                });
                ready_rx.recv().unwrap();
                if order == 0 {
                    dev.shutdown();
                    go_tx.send(()).unwrap();
                    h.join().unwrap();
                } else {
                    go_tx.send(()).unwrap();
                    h.join().unwrap();
                    dev.shutdown();
                }
                let st = dev.memory_stats();
                assert_eq!(
                    (st.allocated_bytes, st.reserved_bytes),
                    (0, 0),
                    "order {order}: {st:?}"
                );
            },
        );
    }
}

backend_tests!(late_handler_owning_the_last_tensor_is_dropped_without_deadlock);
/// Shutdown gives up waiting after its timeout; the stream's work finishes later, its handler
/// is then dropped on the stream's own thread, and the tensor it owns is the device's last
/// reference: freeing it (which waits for the streams) must not wait for that very thread.
fn late_handler_owning_the_last_tensor_is_dropped_without_deadlock(backend: TestBackend) {
    backend.with_device(
        |b| b.shutdown_timeout(Duration::from_millis(1)),
        |dev| {
            let s = dev.current_stream().unwrap();
            let x = Tensor::randn(&dev, &[384, 384], 1).unwrap();
            let mut y = x.clone();
            for _ in 0..12 {
                y = y.matmul(&x).unwrap();
            }
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let keep = y.clone();
            s.on_complete(move || {
                drop(keep);
                let _ = tx.send(());
            })
            .unwrap();
            drop((x, y, s));
            let start = Instant::now();
            drop(dev);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "shutdown is bounded by its timeout"
            );
            // The handler is run or dropped (closing the channel) within bounded time: no deadlock.
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
                Err(e) => panic!("handler neither ran nor was dropped: {e:?}"),
            }
        },
    );
}

backend_tests!(a_thread_waiting_forever_for_a_stream_gets_device_closed);
/// A thread waiting forever for an exclusive stream is woken by the device's shutdown with a
/// clear error, instead of waiting for a slot that will never come back.
fn a_thread_waiting_forever_for_a_stream_gets_device_closed(backend: TestBackend) {
    backend.with_device(
        |b| {
            b.streams(2)
                .policy(chorus::StreamPolicy::Exclusive)
                .exhaustion(chorus::Exhaustion::WaitForever)
        },
        |dev| {
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            std::thread::scope(|s| {
                // Holds the one pooled stream until told to exit.
                let dev2 = &dev;
                s.spawn(move || {
                    let _mine = dev2.current_stream().unwrap();
                    held_tx.send(()).unwrap();
                    let _ = done_rx.recv();
                });
                held_rx.recv().unwrap();
                let waiter = s.spawn(|| dev.current_stream());
                std::thread::sleep(Duration::from_millis(50));
                dev.shutdown();
                match waiter.join().unwrap() {
                    Err(Error::DeviceClosed { .. }) => {}
                    other => panic!("{other:?}"),
                }
                done_tx.send(()).unwrap();
            });
        },
    );
}

backend_tests!(a_second_shutdown_returns_once_the_first_has_finished);
/// A second `shutdown` that comes while another thread's is running returns only once that one
/// has finished: the handler it is still running has run by then.
fn a_second_shutdown_returns_once_the_first_has_finished(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let ran = Arc::new(AtomicU64::new(0));
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let counter = Arc::clone(&ran);
            dev.current_stream()
                .unwrap()
                .on_complete(move || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                    counter.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            started_rx.recv().unwrap(); // the handler is running
            let first = {
                let dev = dev.clone();
                std::thread::spawn(move || dev.shutdown())
            };
            while !dev.is_closed() {
                std::thread::yield_now();
            }
            dev.shutdown();
            assert_eq!(
                ran.load(Ordering::SeqCst),
                1,
                "the second shutdown returned before the first had run the handlers"
            );
            first.join().unwrap();
        },
    );
}

backend_tests!(shutdown_from_a_handler_during_a_shutdown_returns);
/// `shutdown` from a completion handler while another thread's shutdown waits for that very
/// handler returns at once instead of waiting for it (a deadlock).
fn shutdown_from_a_handler_during_a_shutdown_returns(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let inner = dev.clone();
            dev.current_stream()
                .unwrap()
                .on_complete(move || {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    inner.shutdown();
                    done_tx.send(()).unwrap();
                })
                .unwrap();
            started_rx.recv().unwrap();
            let first = {
                let dev = dev.clone();
                std::thread::spawn(move || dev.shutdown())
            };
            while !dev.is_closed() {
                std::thread::yield_now();
            }
            go_tx.send(()).unwrap();
            done_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the handler's shutdown returned");
            first.join().unwrap();
        },
    );
}

backend_tests!(a_free_after_shutdown_returns_while_a_stream_never_finishes);
/// A tensor dropped after a shutdown that gave up on a stream (its work held behind a gate)
/// comes back at once: its block stays for the teardown instead of the free waiting for that
/// stream without bound.
fn a_free_after_shutdown_returns_while_a_stream_never_finishes(backend: TestBackend) {
    let dev = backend.open(|b| b.shutdown_timeout(Duration::from_millis(50)));
    let s = dev.stream(3).unwrap();
    let gate = s.gate().unwrap();
    let x = dev.with_stream(&s, || Tensor::full(&dev, &[1024], 1.0).unwrap());
    dev.shutdown(); // gives up on stream 3 after 50 ms
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(x);
        done_tx.send(()).unwrap();
    });
    let returned = done_rx.recv_timeout(Duration::from_secs(10));
    gate.open();
    dropper.join().unwrap();
    assert!(
        returned.is_ok(),
        "a free after shutdown waited for a stream that never finished"
    );
}
