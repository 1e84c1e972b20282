//! Requests in host memory: results equal the model's direct results (bit for bit on the same
//! batch, within the op tolerance alone), host and device requests are never mixed in a batch,
//! and a host request fails, is rejected or is handed back just as a device request is.

mod common;

use chorus_batch::{BatchError, BatchInfo, BatchQueue, HostTensor, Input, ShutdownMode};
use chorus_core::{DType, Tensor};
use chorus_nn::Module;
use common::{block_on, close, config, device, mlp, NEVER};
use std::collections::BTreeMap;
use std::time::Duration;

/// One request of a thread: its input row, its result, and where it ran.
type Run = (Vec<f32>, HostTensor, BatchInfo);

/// A deterministic host row of `n` values in [-1, 1).
fn row(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn host_requests_match_their_batch_bitwise_and_batch_one_within_tolerance() {
    let device = device();
    let model = mlp(&device, &[32, 64, 16]);
    let cfg = config(&device, 16, Duration::from_micros(200))
        .workers(2)
        .build()
        .unwrap();
    let queue = BatchQueue::new(model.clone(), cfg).unwrap();
    let (threads, per_thread) = (8u64, 40u64);
    let runs: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let queue = &queue;
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let x = row(t * 1000 + i, 32);
                            let input = HostTensor::new(&x, &[1, 32]).unwrap();
                            let (y, info) = queue.submit(input).unwrap().wait_with_info().unwrap();
                            (x, y, info)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(runs.len() as u64, threads * per_thread);
    let mut batches: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        assert_eq!(r.1.shape(), &[1, 16], "each request gets exactly its rows");
        assert_eq!(r.1.dtype(), DType::F32);
        batches.entry(r.2.batch).or_default().push(r);
    }
    assert_eq!(queue.stats().batches as usize, batches.len());
    for members in batches.values_mut() {
        members.sort_by_key(|r| r.2.offset);
        assert_eq!(members.len(), members[0].2.requests);
        let rows: Vec<f32> = members.iter().flat_map(|r| r.0.iter().copied()).collect();
        let x = Tensor::from_slice(&device, &rows, &[members.len(), 32]).unwrap();
        let direct = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
        for r in members.iter() {
            let want = &direct[r.2.offset * 16..][..16];
            let got = r.1.to_vec::<f32>().unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "bit for bit the direct call on the batch"
            );
        }
    }
    for (x, y, _) in &runs {
        let alone = model
            .forward(&Tensor::from_slice(&device, x, &[1, 32]).unwrap())
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(close(&y.to_vec::<f32>().unwrap(), &alone));
    }
}

#[test]
fn host_and_device_requests_are_never_mixed() {
    let device = device();
    // max_batch 4, no delay: a batch forms only from 4 rows of one group.
    let queue =
        BatchQueue::new(common::Double, config(&device, 4, NEVER).build().unwrap()).unwrap();
    let mut host = Vec::new();
    let mut dev = Vec::new();
    for i in 0..4 {
        let v = i as f32;
        host.push(
            queue
                .submit(HostTensor::new(&[v, v], &[1, 2]).unwrap())
                .unwrap(),
        );
        dev.push(
            queue
                .submit(Tensor::full(&device, &[1, 2], v).unwrap())
                .unwrap(),
        );
    }
    // Each kind's results as (values, where it ran), in submission order.
    let host: Vec<(Vec<f32>, BatchInfo)> = host
        .into_iter()
        .map(|t| t.wait_with_info().map(|(y, at)| (y.to_vec().unwrap(), at)))
        .collect::<Result<_, _>>()
        .unwrap();
    let dev: Vec<(Vec<f32>, BatchInfo)> = dev
        .into_iter()
        .map(|t| t.wait_with_info().map(|(y, at)| (y.to_vec().unwrap(), at)))
        .collect::<Result<_, _>>()
        .unwrap();
    for results in [&host, &dev] {
        for (i, (y, info)) in results.iter().enumerate() {
            assert_eq!(y, &vec![2.0 * i as f32; 2]);
            assert_eq!((info.rows, info.requests, info.offset), (4, 4, i));
            assert_eq!(info.batch, results[0].1.batch, "one batch per kind");
        }
    }
    assert_ne!(host[0].1.batch, dev[0].1.batch);
    assert_eq!(queue.stats().batch_sizes, vec![(4, 2)]);
}

#[test]
fn host_requests_fail_alone_and_are_handed_back() {
    let device = device();
    let cfg = config(&device, 8, NEVER)
        .input_shape(Some(vec![2]))
        .max_queue(1)
        .build()
        .unwrap();
    let queue = BatchQueue::new(common::Double, cfg).unwrap();
    // Malformed: rejected at submission, naming the shapes.
    match queue.submit(HostTensor::new(&[1.0_f32, 2.0, 3.0], &[1, 3]).unwrap()) {
        Err(BatchError::ShapeMismatch { expected, got }) => {
            assert_eq!((expected, got), (vec![2], vec![1, 3]));
        }
        other => panic!("{other:?}"),
    }
    match queue.submit(HostTensor::new(&[1.0_f32], &[1]).unwrap()) {
        Err(BatchError::ShapeMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    // Full: the second request is handed back unchanged.
    let waiting = HostTensor::new(&[1.0_f32, 2.0], &[1, 2]).unwrap();
    let ticket = queue.submit(waiting.clone()).unwrap();
    let extra = HostTensor::new(&[5.0_f32, 6.0], &[1, 2]).unwrap();
    match queue.submit(extra.clone()) {
        Err(e @ BatchError::QueueFull { .. }) => {
            assert_eq!(e.into_input().and_then(Input::into_host), Some(extra));
        }
        other => panic!("{other:?}"),
    }
    // Shutdown in Fail mode: the waiting host request fails with its input handed back.
    assert_eq!(queue.shutdown(ShutdownMode::Fail), 1);
    match ticket.wait() {
        Err(BatchError::Shutdown { input }) => assert_eq!(input.as_host(), Some(&waiting)),
        other => panic!("{other:?}"),
    }
    assert_eq!(queue.stats().rejected, 3);
}

#[test]
fn a_model_error_fails_the_host_batch_only() {
    let device = device();
    let model = mlp(&device, &[4, 3]);
    let queue = BatchQueue::new(model, config(&device, 2, NEVER).build().unwrap()).unwrap();
    // Rows of 5 values: the model cannot take them; they form their own group and batch.
    let bad: Vec<_> = (0..2)
        .map(|i| {
            let x = HostTensor::new(&row(i, 5), &[1, 5]).unwrap();
            queue.submit(x).unwrap()
        })
        .collect();
    let good: Vec<_> = (0..2)
        .map(|i| {
            let x = HostTensor::new(&row(10 + i, 4), &[1, 4]).unwrap();
            queue.submit(x).unwrap()
        })
        .collect();
    for t in bad {
        assert!(matches!(t.wait(), Err(BatchError::Model { rows: 2, .. })));
    }
    for t in good {
        assert_eq!(t.wait().unwrap().shape(), &[1, 3]);
    }
}

#[test]
fn a_host_ticket_is_a_future() {
    let device = device();
    let queue =
        BatchQueue::new(common::Double, config(&device, 2, NEVER).build().unwrap()).unwrap();
    let a = queue
        .submit(HostTensor::new(&[1_i64, 2], &[1, 2]).unwrap())
        .unwrap();
    let b = queue
        .submit(HostTensor::new(&[3_i64, 4], &[1, 2]).unwrap())
        .unwrap();
    let (ya, yb) = block_on(async { (a.await, b.await) });
    assert_eq!(ya.unwrap().to_vec::<i64>().unwrap(), vec![2, 4]);
    assert_eq!(yb.unwrap().to_vec::<i64>().unwrap(), vec![6, 8]);
}
