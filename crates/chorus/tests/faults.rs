//! Failures stay local: injected backend failures (`Device::inject_faults`) fail their call
//! alone, and a lost device fails every call, wakes its waiters and leaks nothing.
//!
//! Each site is made to fail once and checked for a typed error, for the same call working
//! right after, and for memory and stream slots coming back. A stress round then runs with a
//! seeded share of every site failing at once: every result is the single-threaded
//! reference's bits or a typed error, nothing panics or hangs, every byte comes back, and the
//! same streams work afterwards.

use chorus::backend::BackendError;
use chorus::{
    DType, Device, Error, Exhaustion, FaultPlan, FaultSite, Health, StreamPolicy, Tensor,
};
use chorus_testing::{backend_tests, bits, TestBackend};
use std::sync::mpsc;
use std::time::Duration;

/// The injected failure of `site`, as a call returns it.
fn injected(r: Result<impl std::fmt::Debug, Error>, site: FaultSite) {
    match r {
        Err(Error::Device {
            source: BackendError::Injected { site: s, .. },
            ..
        }) if s == site => {}
        other => panic!("expected an injected {site} failure, got {other:?}"),
    }
}

fn count(dev: &Device, site: FaultSite) -> u64 {
    (dev.injected_faults().into_iter())
        .find(|&(s, _)| s == site)
        .map_or(0, |(_, n)| n)
}

backend_tests!(each_site_fails_its_call_alone);
/// One failure at each site: a typed error for that call, and the same call works next.
fn each_site_fails_its_call_alone(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let x = Tensor::full(&dev, &[4, 4], 2.0).unwrap();
            let want = bits(&x.relu().unwrap());

            dev.inject_faults(FaultPlan::new().nth(FaultSite::Launch, 1));
            injected(x.relu(), FaultSite::Launch);
            assert_eq!(bits(&x.relu().unwrap()), want);
            assert_eq!(count(&dev, FaultSite::Launch), 1);

            dev.inject_faults(FaultPlan::new().nth(FaultSite::Read, 1));
            injected(x.to_vec::<f32>(), FaultSite::Read);
            assert_eq!(x.to_vec::<f32>().unwrap(), vec![2.0; 16]);

            // Cross-stream ordering records an event on the writer's stream.
            let (s1, s2) = (dev.stream(1).unwrap(), dev.stream(2).unwrap());
            let y = dev.with_stream(&s1, || Tensor::full(&dev, &[8], 3.0).unwrap());
            dev.inject_faults(FaultPlan::new().nth(FaultSite::Record, 1));
            dev.with_stream(&s2, || injected(y.relu(), FaultSite::Record));
            dev.with_stream(&s2, || {
                assert_eq!(y.relu().unwrap().to_vec::<f32>().unwrap(), vec![3.0; 8])
            });

            dev.inject_faults(FaultPlan::new().nth(FaultSite::HostCallback, 1));
            injected(s1.on_complete(|| {}), FaultSite::HostCallback);
            let (tx, rx) = mpsc::channel();
            s1.on_complete(move || tx.send(()).unwrap()).unwrap();
            rx.recv_timeout(Duration::from_secs(30)).unwrap();

            // Every allocation of a segment fails: the allocator's retries too.
            dev.inject_faults(FaultPlan::new().one_in(FaultSite::Alloc, 1, 0));
            dev.empty_cache();
            match Tensor::zeros(&dev, &[1 << 20], DType::F32) {
                Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, 4 << 20),
                other => panic!("{other:?}"),
            }
            dev.inject_faults(FaultPlan::new());
            let big = Tensor::zeros(&dev, &[1 << 20], DType::F32).unwrap();
            assert_eq!(big.sum_all().unwrap().item::<f32>().unwrap(), 0.0);
            assert_eq!(dev.health(), Health::Ok);
        },
    );
}

backend_tests!(a_free_whose_fence_fails_and_an_exit_whose_callback_fails_leak_nothing);
/// A free that cannot record its fence waits for the stream instead, and an exclusive thread
/// whose slot release cannot be enqueued hands the slot back after waiting: no byte and no
/// slot is lost.
fn a_free_whose_fence_fails_and_an_exit_whose_callback_fails_leak_nothing(backend: TestBackend) {
    backend.with_device(
        |b| {
            b.streams(2)
                .policy(StreamPolicy::Exclusive)
                .exhaustion(Exhaustion::Error)
        },
        |dev| {
            let before = dev.memory_stats();
            let x = dev.with_stream(&dev.stream(0).unwrap(), || {
                Tensor::full(&dev, &[1 << 16], 1.0).unwrap()
            });
            // Used on the thread's own stream too: freeing it needs a fence there. (A joined
            // thread has also run its exit, which hands its stream back.)
            let (d, xs) = (dev.clone(), x.clone());
            std::thread::spawn(move || {
                let y = xs.relu().unwrap();
                assert_eq!(y.sum_all().unwrap().item::<f32>().unwrap(), 65536.0);
                d.inject_faults(FaultPlan::new().one_in(FaultSite::Record, 1, 0).one_in(
                    FaultSite::HostCallback,
                    1,
                    0,
                ));
                drop((y, xs));
            })
            .join()
            .unwrap();
            drop(x);
            assert!(count(&dev, FaultSite::Record) >= 1);
            assert!(count(&dev, FaultSite::HostCallback) >= 1);
            dev.inject_faults(FaultPlan::new());
            // The one pooled stream is free again for a new thread. (Joined, not scoped: a
            // joined thread has run its exit, which gives its cached blocks back.)
            let d = dev.clone();
            std::thread::spawn(move || {
                let z = Tensor::full(&d, &[4], 1.0).unwrap();
                assert_eq!(z.to_vec::<f32>().unwrap(), vec![1.0; 4]);
            })
            .join()
            .unwrap();
            let after = dev.memory_stats();
            assert_eq!(after.allocated_bytes, before.allocated_bytes);
            // Nothing waits for a fence that will never come: the free was completed by the wait.
            dev.empty_cache();
            assert_eq!(dev.memory_stats().reserved_bytes, 0);
        },
    );
}

backend_tests!(a_lost_device_fails_every_call_and_wakes_its_waiters);
/// A fatal fault loses the device: every call returns `DeviceLost` naming the cause, a thread
/// waiting for a stream wakes with it, dropped tensors free their bytes, `health` reports it,
/// and a new device works.
fn a_lost_device_fails_every_call_and_wakes_its_waiters(backend: TestBackend) {
    backend.with_device(
        |b| {
            b.streams(2)
                .policy(StreamPolicy::Exclusive)
                .exhaustion(Exhaustion::WaitForever)
        },
        |dev| {
            // This thread stays on the default stream: the one pooled stream is for the others.
            let _default = dev.set_stream(&dev.stream(0).unwrap());
            let x = Tensor::full(&dev, &[16], 1.0).unwrap();
            let lost = |r: Result<(), Error>| match r {
                Err(Error::DeviceLost { cause, .. }) => {
                    assert!(
                        cause.contains("injected fatal fault at launch #1"),
                        "{cause}"
                    )
                }
                other => panic!("expected DeviceLost, got {other:?}"),
            };
            std::thread::scope(|s| {
                // This thread holds the one pooled stream...
                let (bound_tx, bound_rx) = mpsc::channel();
                let (go_tx, go_rx) = mpsc::channel::<()>();
                let x = &x;
                let holder = s.spawn(move || {
                    let y = x.relu().unwrap();
                    bound_tx.send(()).unwrap();
                    let _ = go_rx.recv();
                    drop(y);
                });
                bound_rx.recv().unwrap();
                // ...so this one waits for it, forever but for the loss.
                let waiter = s.spawn(|| x.relu().map(drop));
                std::thread::sleep(Duration::from_millis(50));
                dev.inject_faults(FaultPlan::new().lose_at(FaultSite::Launch, 1));
                lost(x.relu().map(drop));
                lost(waiter.join().unwrap());
                go_tx.send(()).unwrap();
                holder.join().unwrap();
            });
            match dev.health() {
                Health::Lost { cause } => assert!(cause.contains("launch #1"), "{cause}"),
                other => panic!("{other:?}"),
            }
            lost(x.to_vec::<f32>().map(drop));
            lost(Tensor::zeros(&dev, &[4], DType::F32).map(drop));
            lost(dev.synchronize());
            lost(dev.event().map(drop));
            lost(dev.stream(0).unwrap().on_complete(|| {}));
            drop(x);
            assert_eq!(dev.memory_stats().allocated_bytes, 0);
            // The hardware is usable again through a new device.
            let fresh = backend.device();
            let z = Tensor::full(&fresh, &[4], 2.0).unwrap();
            assert_eq!(z.relu().unwrap().to_vec::<f32>().unwrap(), vec![2.0; 4]);
            assert_eq!(fresh.health(), Health::Ok);
        },
    );
}

/// Threads and rounds of the stress round under faults (the seed's matmul round is 64 × 200).
const THREADS: usize = 16;
const ROUNDS: usize = 40;

/// One round: `relu(a @ b)` summed over rows, from seeded operands.
fn round(dev: &Device, seed: u64) -> Result<Vec<u32>, Error> {
    let a = Tensor::randn(dev, &[32, 32], seed)?;
    let b = Tensor::randn(dev, &[32, 32], seed + 1)?;
    let y = a.matmul(&b)?.relu()?.sum(&[0], false)?;
    Ok(y.to_vec::<f32>()?.into_iter().map(f32::to_bits).collect())
}

/// Whether `e` is what an injected fault gives an op: the injected failure itself, or the
/// out-of-memory error an injected allocation failure ends in.
fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::Device {
            source: BackendError::Injected { .. },
            ..
        } | Error::OutOfMemory { .. }
    )
}

backend_tests!(a_stress_round_under_faults_gives_the_reference_or_typed_errors);
/// [`THREADS`] threads × [`ROUNDS`] rounds, each thread on a stream of its own, with a seeded 1
/// in 25 of every site's calls failing, under both stream policies and with no thread cache
/// (so blocks cross streams and frees need fences): every round gives the reference's bits or
/// a typed error; afterwards every stream works, every byte and every stream slot is back.
fn a_stream_round_under_faults(backend: TestBackend, exclusive: bool) {
    let dev = backend.open(|b| {
        let b = b.streams(THREADS + 1).thread_cache_bytes(0);
        if exclusive {
            b.policy(StreamPolicy::Exclusive)
                .exhaustion(Exhaustion::Error)
        } else {
            b
        }
    });
    let reference: Vec<Vec<u32>> = dev.with_stream(&dev.stream(0).unwrap(), || {
        (0..THREADS * ROUNDS)
            .map(|i| round(&dev, 2 * i as u64).unwrap())
            .collect()
    });
    let plan = (FaultSite::ALL.into_iter()).fold(FaultPlan::new(), |p, site| p.one_in(site, 25, 7));
    dev.inject_faults(plan);
    let outcomes: Vec<Vec<Result<Vec<u32>, Error>>> = (0..THREADS)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|r| round(&dev, 2 * (t * ROUNDS + r) as u64))
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("no panic"))
        .collect();
    let fired: u64 = dev.injected_faults().iter().map(|(_, n)| n).sum();
    dev.inject_faults(FaultPlan::new());
    let (mut ok, mut failed) = (0, 0);
    for (t, rounds) in outcomes.iter().enumerate() {
        for (r, got) in rounds.iter().enumerate() {
            match got {
                Ok(v) => {
                    assert_eq!(v, &reference[t * ROUNDS + r], "thread {t}, round {r}");
                    ok += 1;
                }
                Err(e) => {
                    assert!(typed(e), "thread {t}, round {r}: {e:?}");
                    failed += 1;
                }
            }
        }
    }
    assert!(
        fired > 0 && failed > 0 && ok > 0,
        "{fired} faults, {ok} ok, {failed} failed"
    );
    // Every stream works afterwards; with exclusive streams, every slot came back (a thread per
    // pooled stream binds one without waiting).
    for s in 0..=THREADS {
        dev.with_stream(&dev.stream(s).unwrap(), || {
            assert_eq!(round(&dev, 0).unwrap(), reference[0], "stream {s}")
        });
    }
    if exclusive {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let dev = dev.clone();
                std::thread::spawn(move || round(&dev, 0).map(drop))
            })
            .collect();
        for h in handles {
            h.join().unwrap().expect("a free slot for every thread");
        }
    }
    dev.synchronize().unwrap();
    assert_eq!(dev.memory_stats().allocated_bytes, 0);
    assert_eq!(dev.health(), Health::Ok);
}

fn a_stress_round_under_faults_gives_the_reference_or_typed_errors(backend: TestBackend) {
    a_stream_round_under_faults(backend, false);
    a_stream_round_under_faults(backend, true);
}

backend_tests!(a_batching_round_under_faults_gives_the_reference_or_typed_errors);
/// Many threads submit rows to a batching queue while a seeded share of every site's calls
/// fails: each request gets the rows of the model run alone or a typed error, the queue and
/// its workers go on, and every byte comes back.
fn a_batching_round_under_faults_gives_the_reference_or_typed_errors(backend: TestBackend) {
    use chorus::batch::{BatchConfig, BatchError, BatchQueue};
    use chorus::nn::{Linear, Mlp, Module};
    let dev = backend.device();
    let layer = |i: u64, o: usize, n: usize| {
        let w = Tensor::randn(&dev, &[o, n], i).unwrap();
        Linear::new(w, None).unwrap()
    };
    let model = Mlp::new(vec![layer(1, 16, 8), layer(2, 4, 16)]).unwrap();
    let input = |i: usize| Tensor::randn(&dev, &[1, 8], 100 + i as u64).unwrap();
    let n = 64;
    let reference: Vec<Vec<u32>> = (0..n)
        .map(|i| bits(&model.forward(&input(i)).unwrap()))
        .collect();
    let inputs: Vec<Tensor> = (0..n).map(input).collect();
    dev.synchronize().unwrap();
    let config = BatchConfig::builder(&dev)
        .max_batch(8)
        .max_delay(Duration::from_millis(2))
        .workers(2)
        .build()
        .unwrap();
    let queue = BatchQueue::new(model, config).unwrap();
    let plan = (FaultSite::ALL.into_iter()).fold(FaultPlan::new(), |p, site| p.one_in(site, 20, 3));
    dev.inject_faults(plan);
    let results: Vec<Result<Vec<u32>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (inputs.iter())
            .map(|x| {
                let queue = &queue;
                s.spawn(move || match queue.infer(x.clone()) {
                    Ok(y) => y
                        .to_vec::<f32>()
                        .map(|v| v.into_iter().map(f32::to_bits).collect()),
                    Err(e) => Err(match e {
                        BatchError::Device { source, .. } => source,
                        BatchError::Model { source, .. } => match &*source {
                            chorus::nn::NnError::Core(e) => e.clone(),
                            other => panic!("{other:?}"),
                        },
                        other => panic!("{other:?}"),
                    }),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().expect("no panic").map_err(|e| {
                    assert!(typed(&e), "{e:?}");
                    e.to_string()
                })
            })
            .collect()
    });
    let fired: u64 = dev.injected_faults().iter().map(|(_, n)| n).sum();
    dev.inject_faults(FaultPlan::new());
    assert!(fired > 0, "no fault was injected");
    let failed = results.iter().filter(|r| r.is_err()).count();
    for (i, r) in results.iter().enumerate() {
        if let Ok(v) = r {
            assert_eq!(v, &reference[i], "request {i}");
        }
    }
    assert!(failed < n, "every request failed");
    // The queue goes on.
    for (i, x) in inputs.iter().enumerate().take(8) {
        assert_eq!(bits(&queue.infer(x.clone()).unwrap()), reference[i]);
    }
    drop(queue);
    drop(inputs);
    dev.synchronize().unwrap();
    assert_eq!(dev.memory_stats().allocated_bytes, 0);
}

backend_tests!(a_device_lost_during_a_graph_run_is_reported);
/// A graph run enqueues its work under the graph's run lock: a device lost there is reported
/// like anywhere else (the slot pool it closes ranks as a leaf).
fn a_device_lost_during_a_graph_run_is_reported(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let g = chorus::Graph::capture(&dev, &[(&[4], DType::F32)], |x| -> Result<_, Error> {
                Ok(vec![x[0].relu()?.add(&x[0])?])
            })
            .unwrap();
            let x = Tensor::full(&dev, &[4], 1.0).unwrap();
            assert_eq!(
                g.run(&[&x]).unwrap()[0].to_vec::<f32>().unwrap(),
                vec![2.0; 4]
            );
            dev.inject_faults(FaultPlan::new().lose_at(FaultSite::Launch, 2));
            match g.run(&[&x]) {
                Err(Error::DeviceLost { .. }) => {}
                other => panic!("{other:?}"),
            }
            assert!(matches!(dev.health(), Health::Lost { .. }));
        },
    );
}
