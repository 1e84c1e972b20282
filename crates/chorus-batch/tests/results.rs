//! Results through the queue equal the model's direct results: bit-identical to a direct call
//! on the same concatenated batch, within the op tolerance of a direct batch-1 call.

mod common;

use chorus_batch::{BatchInfo, BatchQueue, ShutdownMode};
use chorus_core::Tensor;
use chorus_nn::Module;
use chorus_testing::bits;
use common::{close, config, device, mlp, NEVER};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn one_batch_is_bit_identical_to_the_direct_call_on_its_concatenation() {
    let device = device();
    let model = mlp(&device, &[32, 64, 16]);
    // max_batch 8 and no delay: the eighth row makes the batch; its composition is fixed.
    let queue = BatchQueue::new(model.clone(), config(&device, 8, NEVER).build().unwrap()).unwrap();
    let rows = [1usize, 3, 2, 2];
    let inputs: Vec<Tensor> = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| Tensor::randn(&device, &[r, 32], 10 + i as u64).unwrap())
        .collect();
    let tickets: Vec<_> = inputs
        .iter()
        .map(|x| queue.submit(x.clone()).unwrap())
        .collect();
    let direct = model
        .forward(&Tensor::cat(&inputs.iter().collect::<Vec<_>>(), 0).unwrap())
        .unwrap();
    let mut offset = 0;
    for (t, &r) in tickets.into_iter().zip(&rows) {
        let (y, info) = t.wait_with_info().unwrap();
        assert_eq!(y.shape(), &[r, 16], "each request gets exactly its rows");
        assert_eq!(
            (info.batch, info.offset, info.rows, info.requests),
            (1, offset, 8, 4)
        );
        assert_eq!(bits(&y), bits(&direct.narrow(0, offset, r).unwrap()));
        offset += r;
    }
    let stats = queue.stats();
    assert_eq!((stats.batches, stats.requests, stats.rows), (1, 4, 8));
    assert_eq!(stats.batch_sizes, vec![(8, 1)]);
    assert_eq!(stats.mean_batch_size, 8.0);
    assert_eq!(stats.latency.count, 4);
    let l = stats.latency;
    assert!(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max, "{l:?}");
    // Every phase of the one batch was timed (the requests waited for the eighth row); the
    // time completing the tickets is added after they are completed (`Phases::complete`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let p = loop {
        let p = queue.stats().phases;
        if p.complete > Duration::ZERO || std::time::Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        p.queued > Duration::ZERO && p.gather > Duration::ZERO,
        "{p:?}"
    );
    assert!(
        p.forward > Duration::ZERO && p.finish > Duration::ZERO,
        "{p:?}"
    );
    assert!(p.complete > Duration::ZERO, "{p:?}");
    queue.reset_stats();
    assert_eq!(queue.stats().phases, chorus_batch::Phases::default());
}

#[test]
fn concurrent_requests_match_their_batch_bitwise_and_batch_one_within_tolerance() {
    let device = device();
    let model = mlp(&device, &[32, 64, 16]);
    let cfg = config(&device, 16, Duration::from_micros(200))
        .workers(2)
        .build()
        .unwrap();
    let queue = BatchQueue::new(model.clone(), cfg).unwrap();
    let (threads, per_thread) = (8u64, 40u64);
    let runs: Vec<(Tensor, Tensor, BatchInfo)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (queue, device) = (&queue, &device);
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let x = Tensor::randn(device, &[1, 32], t * 1000 + i).unwrap();
                            let (y, info) =
                                queue.submit(x.clone()).unwrap().wait_with_info().unwrap();
                            (x, y, info)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(runs.len() as u64, threads * per_thread);
    // Regroup by batch and recompute each batch directly, in the queue's row order.
    let mut batches: BTreeMap<u64, Vec<&(Tensor, Tensor, BatchInfo)>> = BTreeMap::new();
    for r in &runs {
        batches.entry(r.2.batch).or_default().push(r);
    }
    let stats = queue.stats();
    assert_eq!(stats.batches as usize, batches.len());
    for members in batches.values_mut() {
        members.sort_by_key(|r| r.2.offset);
        assert_eq!(
            members.len(),
            members[0].2.requests,
            "every request of the batch is here"
        );
        let x = Tensor::cat(&members.iter().map(|r| &r.0).collect::<Vec<_>>(), 0).unwrap();
        let direct = model.forward(&x).unwrap();
        for r in members.iter() {
            assert_eq!(bits(&r.1), bits(&direct.narrow(0, r.2.offset, 1).unwrap()));
        }
    }
    for (x, y, _) in &runs {
        let alone = model.forward(x).unwrap().to_vec::<f32>().unwrap();
        assert!(close(&y.to_vec::<f32>().unwrap(), &alone));
    }
}

#[test]
fn preferred_size_runs_without_waiting_and_the_rest_waits() {
    let device = device();
    let cfg = config(&device, 8, NEVER)
        .preferred_batch_sizes([4])
        .build()
        .unwrap();
    let queue = BatchQueue::new(common::Double, cfg).unwrap();
    let x = |v: f32| Tensor::full(&device, &[1, 2], v).unwrap();
    let first: Vec<_> = (0..4).map(|i| queue.submit(x(i as f32)).unwrap()).collect();
    for (i, t) in first.into_iter().enumerate() {
        assert_eq!(
            t.wait().unwrap().to_vec::<f32>().unwrap(),
            vec![2.0 * i as f32; 2]
        );
    }
    assert_eq!(queue.stats().batch_sizes, vec![(4, 1)]);
    // Two more: below every preferred size and max_batch, and the delay is long: they wait...
    let mut rest: Vec<_> = (0..2)
        .map(|i| queue.submit(x(10.0 + i as f32)).unwrap())
        .collect();
    assert!(rest[0].wait_timeout(Duration::from_millis(5)).is_none());
    assert_eq!(queue.queue_depth(), 2);
    // ... until a drain runs them.
    assert_eq!(queue.shutdown(ShutdownMode::Drain), 0);
    for (i, t) in rest.iter_mut().enumerate() {
        let y = t.try_wait().expect("drained").unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![2.0 * (10.0 + i as f32); 2]);
        assert!(t.batch_info().is_some());
    }
    assert_eq!(queue.stats().batch_sizes, vec![(2, 1), (4, 1)]);
}

#[test]
fn different_row_shapes_and_dtypes_are_never_mixed() {
    let device = device();
    let queue =
        BatchQueue::new(common::Double, config(&device, 4, NEVER).build().unwrap()).unwrap();
    let a: Vec<_> = (0..2)
        .map(|_| {
            queue
                .submit(Tensor::full(&device, &[1, 3], 1.0).unwrap())
                .unwrap()
        })
        .collect();
    let b: Vec<_> = (0..2)
        .map(|_| {
            queue
                .submit(Tensor::full(&device, &[1, 5], 1.0).unwrap())
                .unwrap()
        })
        .collect();
    let c: Vec<_> = (0..2)
        .map(|_| {
            queue
                .submit(Tensor::zeros(&device, &[1, 3], chorus_core::DType::I64).unwrap())
                .unwrap()
        })
        .collect();
    // Six requests, max_batch 4, but no group reaches 4 rows: nothing may run until the drain.
    assert_eq!(queue.queue_depth(), 6);
    queue.shutdown(ShutdownMode::Drain);
    let infos: Vec<_> = a
        .into_iter()
        .chain(b)
        .chain(c)
        .map(|t| t.wait_with_info().unwrap().1)
        .collect();
    for pair in infos.chunks(2) {
        assert_eq!(pair[0].batch, pair[1].batch);
        assert_eq!(pair[0].rows, 2);
    }
    assert_eq!(queue.stats().batch_sizes, vec![(2, 3)]);
}
