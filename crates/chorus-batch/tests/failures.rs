//! Failure isolation: malformed requests fail alone with typed errors, a model error fails its
//! batch only, a full queue rejects at once and hands the input back, timeouts.

mod common;

use chorus_batch::{BatchConfig, BatchError, BatchQueue, ShutdownMode};
use chorus_core::{DType, Tensor};
use chorus_nn::{Embedding, Module, NnError};
use common::{config, device, exact_linear, exact_linear_host, Double, NEVER};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn malformed_requests_are_rejected_at_submission_with_typed_errors() {
    let device = device();
    let other = common::device();
    let cfg = config(&device, 4, Duration::ZERO)
        .input_shape(Some(vec![4]))
        .build()
        .unwrap();
    let queue = BatchQueue::new(exact_linear(&device), cfg).unwrap();
    let t = |shape: &[usize]| Tensor::zeros(&device, shape, DType::F32).unwrap();
    match queue.submit(Tensor::full(&device, &[], 1.0).unwrap()) {
        Err(BatchError::InvalidInput { shape, .. }) => assert!(shape.is_empty()),
        other => panic!("0-d: {other:?}"),
    }
    match queue.submit(t(&[0, 4])) {
        Err(BatchError::InvalidInput { shape, .. }) => assert_eq!(shape, [0, 4]),
        other => panic!("no rows: {other:?}"),
    }
    match queue.submit(t(&[5, 4])) {
        Err(BatchError::TooManyRows { rows, max_batch }) => assert_eq!((rows, max_batch), (5, 4)),
        other => panic!("too many rows: {other:?}"),
    }
    match queue.submit(t(&[1, 3])) {
        Err(BatchError::ShapeMismatch { expected, got }) => {
            assert_eq!((expected, got), (vec![4], vec![1, 3]))
        }
        other => panic!("shape: {other:?}"),
    }
    match queue.submit(Tensor::zeros(&other, &[1, 4], DType::F32).unwrap()) {
        Err(BatchError::DeviceMismatch { expected, got }) => {
            assert_eq!((expected, got), (device.id(), other.id()))
        }
        other => panic!("device: {other:?}"),
    }
    // The queue is unharmed.
    let x = [1.0, 2.0, 3.0, 4.0];
    let y = queue
        .infer(Tensor::from_slice(&device, &x, &[1, 4]).unwrap())
        .unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), exact_linear_host(x));
    let stats = queue.stats();
    assert_eq!((stats.rejected, stats.requests, stats.failed), (5, 1, 0));
}

#[test]
fn mixed_valid_and_malformed_requests_from_many_threads() {
    let device = device();
    // No input_shape: a row shape the model cannot take forms its own group, and the model's
    // error fails only those requests.
    let cfg = config(&device, 8, Duration::from_micros(200))
        .build()
        .unwrap();
    let queue = BatchQueue::new(exact_linear(&device), cfg).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let (queue, device) = (&queue, &device);
            s.spawn(move || {
                for i in 0..60u32 {
                    match i % 3 {
                        0 => {
                            let x = [t as f32, i as f32, 1.0, -1.0];
                            let y = queue
                                .infer(Tensor::from_slice(device, &x, &[1, 4]).unwrap())
                                .unwrap();
                            assert_eq!(y.to_vec::<f32>().unwrap(), exact_linear_host(x));
                        }
                        1 => match queue.infer(Tensor::full(device, &[1, 5], 1.0).unwrap()) {
                            Err(BatchError::Model { source, .. }) => {
                                assert!(
                                    matches!(
                                        *source,
                                        NnError::Core(_) | NnError::InvalidInput { .. }
                                    ),
                                    "{source}"
                                )
                            }
                            other => panic!("wrong width: {other:?}"),
                        },
                        _ => match queue.infer(Tensor::full(device, &[0, 4], 1.0).unwrap()) {
                            Err(BatchError::InvalidInput { .. }) => {}
                            other => panic!("no rows: {other:?}"),
                        },
                    }
                }
            });
        }
    });
    let stats = queue.stats();
    assert_eq!(stats.requests, 8 * 20);
    assert_eq!(stats.failed, 8 * 20);
    assert_eq!(stats.rejected, 8 * 20);
}

/// Fails (or panics) when the batch holds a row whose first value is negative (or NaN).
#[derive(Debug)]
struct Picky;

impl Module for Picky {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        let v = x.to_vec::<f32>()?;
        let width = x.shape()[1];
        for row in v.chunks(width) {
            if row[0].is_nan() {
                panic!("Picky: NaN row");
            }
            if row[0] < 0.0 {
                return Err(NnError::InvalidInput {
                    module: "Picky",
                    shape: x.shape().to_vec(),
                    reason: "a negative row".into(),
                });
            }
        }
        Ok(x.add(x)?)
    }
}

#[test]
fn a_model_error_or_panic_fails_its_batch_only() {
    let device = device();
    let queue =
        BatchQueue::new(Picky, config(&device, 4, NEVER).workers(1).build().unwrap()).unwrap();
    let row = |v: f32| Tensor::full(&device, &[1, 2], v).unwrap();
    let submit4 = |vs: [f32; 4]| -> Vec<_> { vs.map(|v| queue.submit(row(v)).unwrap()).into() };
    // Batch 1: one poisoned row fails all four; batch 2: clean; batch 3: a panic; batch 4: clean.
    let b1 = submit4([1.0, -1.0, 2.0, 3.0]);
    let b2 = submit4([4.0, 5.0, 6.0, 7.0]);
    let b3 = submit4([8.0, f32::NAN, 9.0, 10.0]);
    let b4 = submit4([11.0, 12.0, 13.0, 14.0]);
    for t in b1 {
        match t.wait() {
            Err(BatchError::Model { rows: 4, source }) => {
                assert!(matches!(*source, NnError::InvalidInput { .. }))
            }
            other => panic!("batch 1: {other:?}"),
        }
    }
    for (t, v) in b2.into_iter().zip([4.0, 5.0, 6.0, 7.0]) {
        assert_eq!(t.wait().unwrap().to_vec::<f32>().unwrap(), vec![2.0 * v; 2]);
    }
    for t in b3 {
        match t.wait() {
            Err(BatchError::ModelPanicked { rows: 4, message }) => {
                assert!(message.contains("NaN row"), "{message}")
            }
            other => panic!("batch 3: {other:?}"),
        }
    }
    for (t, v) in b4.into_iter().zip([11.0, 12.0, 13.0, 14.0]) {
        assert_eq!(t.wait().unwrap().to_vec::<f32>().unwrap(), vec![2.0 * v; 2]);
    }
    let stats = queue.stats();
    assert_eq!((stats.batches, stats.requests, stats.failed), (4, 8, 8));
}

/// Sums everything: its output has no batch dimension.
#[derive(Debug)]
struct SumAll;

impl Module for SumAll {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        Ok(x.sum_all()?)
    }
}

#[test]
fn an_output_without_the_batch_rows_fails_the_batch() {
    let device = device();
    let queue = BatchQueue::new(SumAll, config(&device, 2, NEVER).build().unwrap()).unwrap();
    let a = queue
        .submit(Tensor::full(&device, &[1, 3], 1.0).unwrap())
        .unwrap();
    let b = queue
        .submit(Tensor::full(&device, &[1, 3], 1.0).unwrap())
        .unwrap();
    for t in [a, b] {
        match t.wait() {
            Err(BatchError::OutputRows { rows, got }) => {
                assert_eq!((rows, got), (2, Vec::<usize>::new()))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_device_error_of_the_batch_kernels_fails_that_batch() {
    let device = device();
    let weight = Tensor::randn(&device, &[10, 4], 1).unwrap();
    let queue = BatchQueue::new(
        Embedding::new(weight).unwrap(),
        config(&device, 1, NEVER).workers(1).build().unwrap(),
    )
    .unwrap();
    // Index 99 of a 10-row table fails inside the kernel, after the forward returned: the
    // worker finds the output poisoned, and the batch's request gets the original error.
    let bad = Tensor::from_slice(&device, &[99_i64, 0], &[1, 2]).unwrap();
    match queue.infer(bad) {
        Err(BatchError::Device { rows: 1, source }) => match source {
            chorus_core::Error::Kernel { message, .. } => {
                assert_eq!(message, "index 99 out of range for 10 rows")
            }
            other => panic!("{other}"),
        },
        other => panic!("{other:?}"),
    }
    // The worker's stream goes on.
    let good = Tensor::from_slice(&device, &[1_i64, 0], &[1, 2]).unwrap();
    assert_eq!(queue.infer(good).unwrap().shape(), &[1, 2, 4]);
}

/// An embedding whose rows are mixed across the batch (each row minus the batch's mean), so
/// that rows are not independent.
#[derive(Debug)]
struct Centered(Embedding);

impl Module for Centered {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        let y = self.0.forward(x)?;
        let mean = y.mean(&[0], true)?;
        Ok(y.sub(&mean)?)
    }
}

/// Three requests of one batch, the middle one with an index out of range, as device or host
/// inputs; each result as (bits of its rows, or the error's message).
fn one_poisoned_batch<M: Module + 'static>(
    device: &chorus_core::Device,
    model: M,
    host: bool,
) -> Vec<Result<Vec<u32>, String>> {
    let queue =
        BatchQueue::new(model, config(device, 3, NEVER).workers(1).build().unwrap()).unwrap();
    let ids: [[i64; 2]; 3] = [[1, 2], [3, 77], [4, 5]];
    let message = |e: BatchError| match e {
        BatchError::Device {
            source: chorus_core::Error::Kernel { message, .. },
            ..
        } => message,
        other => panic!("{other:?}"),
    };
    let results: Vec<Result<Vec<u32>, String>> = if host {
        let tickets: Vec<_> = ids
            .iter()
            .map(|i| queue.submit(chorus_batch::HostTensor::new(i, &[1, 2]).unwrap()))
            .collect::<Result<_, _>>()
            .unwrap();
        let rows = |h: chorus_batch::HostTensor| h.to_vec::<f32>().unwrap();
        tickets
            .into_iter()
            .map(|t| t.wait().map(rows).map_err(message))
            .map(|r| r.map(|v| v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    } else {
        let tickets: Vec<_> = ids
            .iter()
            .map(|i| queue.submit(Tensor::from_slice(device, i, &[1, 2]).unwrap()))
            .collect::<Result<_, _>>()
            .unwrap();
        tickets
            .into_iter()
            .map(|t| {
                t.wait()
                    .map(|y| y.to_vec::<f32>().unwrap())
                    .map_err(message)
            })
            .map(|r| r.map(|v| v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    // The worker's stream goes on: a good batch after the poisoned one.
    let good: Vec<_> = (0..3)
        .map(|_| queue.submit(Tensor::from_slice(device, &[0_i64, 1], &[1, 2]).unwrap()))
        .collect::<Result<_, _>>()
        .unwrap();
    for t in good {
        assert_eq!(t.wait().unwrap().shape(), &[1, 2, 4]);
    }
    results
}

#[test]
fn a_poisoned_batch_fails_only_the_poisoned_requests_when_rows_are_independent() {
    let device = device();
    let weight = Tensor::randn(&device, &[10, 4], 1).unwrap();
    let table = weight.to_vec::<f32>().unwrap();
    let row = |i: usize| {
        table[i * 4..][..4]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    for host in [false, true] {
        let got = one_poisoned_batch(&device, Embedding::new(weight.clone()).unwrap(), host);
        assert_eq!(got[0], Ok([row(1), row(2)].concat()), "host {host}");
        assert_eq!(
            got[1],
            Err("index 77 out of range for 10 rows".to_string()),
            "host {host}"
        );
        assert_eq!(got[2], Ok([row(4), row(5)].concat()), "host {host}");
    }
}

#[test]
fn a_poisoned_batch_fails_every_request_when_rows_are_mixed() {
    let device = device();
    let weight = Tensor::randn(&device, &[10, 4], 1).unwrap();
    for host in [false, true] {
        let got = one_poisoned_batch(
            &device,
            Centered(Embedding::new(weight.clone()).unwrap()),
            host,
        );
        let bad = Err("index 77 out of range for 10 rows".to_string());
        assert_eq!(got, vec![bad.clone(), bad.clone(), bad], "host {host}");
    }
}

#[test]
fn a_full_queue_rejects_at_once_and_hands_the_input_back() {
    let device = device();
    let queue = BatchQueue::new(
        Double,
        config(&device, 8, NEVER).max_queue(2).build().unwrap(),
    )
    .unwrap();
    let inputs: Vec<Tensor> = (0..3)
        .map(|i| Tensor::full(&device, &[1, 2], i as f32).unwrap())
        .collect();
    let t0 = queue.submit(inputs[0].clone()).unwrap();
    let t1 = queue.submit(inputs[1].clone()).unwrap();
    match queue.submit(inputs[2].clone()) {
        Err(e @ BatchError::QueueFull { capacity: 2, .. }) => {
            let back = e.into_input().expect("handed back");
            assert_eq!(back.as_tensor().unwrap().data_ptr(), inputs[2].data_ptr());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(queue.stats().rejected, 1);
    // Fail mode: the waiting requests fail with their inputs handed back.
    assert_eq!(queue.shutdown(ShutdownMode::Fail), 2);
    for (t, x) in [t0, t1].into_iter().zip(&inputs) {
        match t.wait() {
            Err(BatchError::Shutdown { input }) => {
                assert_eq!(input.as_tensor().unwrap().data_ptr(), x.data_ptr())
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queue.stats().shut_down, 2);
}

#[test]
fn a_request_past_its_timeout_fails_with_timeout() {
    let device = device();
    let timeout = Duration::from_millis(20);
    let queue = BatchQueue::new(
        Double,
        config(&device, 8, NEVER)
            .timeout(Some(timeout))
            .build()
            .unwrap(),
    )
    .unwrap();
    let x = || Tensor::full(&device, &[1, 2], 1.0).unwrap();
    // Blocking wait: the ticket takes its own request out at the deadline.
    match queue.infer(x()) {
        Err(BatchError::Timeout { timeout: t, waited }) => {
            assert_eq!(t, timeout);
            assert!(waited >= timeout);
        }
        other => panic!("{other:?}"),
    }
    // Nobody waiting: an idle worker expires it at its deadline; polling then sees it.
    let mut t = queue.submit(x()).unwrap();
    let out = loop {
        if let Some(out) = t.try_wait() {
            break out;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(matches!(out, Err(BatchError::Timeout { .. })), "{out:?}");
    assert!(matches!(t.try_wait(), Some(Err(BatchError::ResultTaken))));
    assert_eq!(queue.stats().timed_out, 2);
}

/// Doubles its input, but every forward waits until the gate is opened.
#[derive(Debug, Default)]
struct Gated {
    open: AtomicBool,
    entered: AtomicUsize,
}

impl Gated {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }
    /// Opens the gate after `wait`, unless it was opened before.
    fn open_after(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.is_open() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.open();
    }
}

impl Module for Gated {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        while !self.is_open() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(x.add(x)?)
    }
}

#[test]
fn requests_expire_on_time_while_every_worker_is_busy() {
    let device = device();
    let gate = Arc::new(Gated::default());
    let queue = BatchQueue::new(
        Arc::clone(&gate),
        config(&device, 8, Duration::ZERO)
            .workers(1)
            .timeout(Some(Duration::from_millis(20)))
            .build()
            .unwrap(),
    )
    .unwrap();
    let x = || Tensor::full(&device, &[1, 2], 1.0).unwrap();
    // The one worker takes the first request and is held inside the model.
    let first = queue.submit(x()).unwrap();
    while gate.entered.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::scope(|s| {
        // Should the timeout never fire, the gate opens after a long while and the checks
        // below fail instead of the test hanging.
        let opener = s.spawn(|| gate.open_after(Duration::from_secs(20)));
        // An awaited ticket is only polled again when woken: its timeout must wake it.
        let awaited = common::block_on(queue.submit(x()).unwrap());
        assert!(
            matches!(awaited, Err(BatchError::Timeout { .. })),
            "{awaited:?}"
        );
        assert!(!gate.is_open(), "expired while the worker was busy");
        // A ticket nobody looks at leaves the queue at its deadline too.
        let mut unseen = queue.submit(x()).unwrap();
        while queue.queue_depth() > 0 && !gate.is_open() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!gate.is_open(), "left the queue while the worker was busy");
        assert!(matches!(
            unseen.try_wait(),
            Some(Err(BatchError::Timeout { .. }))
        ));
        assert_eq!(queue.stats().timed_out, 2);
        gate.open();
        opener.join().unwrap();
    });
    // The request the worker held runs to completion: a timeout never interrupts a batch.
    assert_eq!(first.wait().unwrap().to_vec::<f32>().unwrap(), vec![2.0; 2]);
    assert_eq!(queue.stats().requests, 1);
}

#[test]
fn a_huge_max_batch_is_a_valid_setting() {
    // "No row limit": nothing is sized by max_batch up front.
    let device = device();
    let cfg = config(&device, usize::MAX, Duration::ZERO).build().unwrap();
    let queue = BatchQueue::new(Double, cfg).unwrap();
    let y = queue.infer(Tensor::full(&device, &[3, 2], 1.0).unwrap());
    assert_eq!(y.unwrap().to_vec::<f32>().unwrap(), vec![2.0; 6]);
    assert_eq!(queue.stats().batch_sizes, vec![(3, 1)]);
}

#[test]
fn invalid_settings_are_typed_errors() {
    let device = device();
    let b = || BatchConfig::builder(&device);
    for (cfg, setting) in [
        (b().max_batch(0), "max_batch"),
        (b().max_queue(0), "max_queue"),
        (b().workers(0), "workers"),
        (b().workers(10_000), "workers"),
        (
            b().max_batch(4).preferred_batch_sizes([2, 8]),
            "preferred_batch_sizes",
        ),
        (b().preferred_batch_sizes([0]), "preferred_batch_sizes"),
        (b().timeout(Some(Duration::ZERO)), "timeout"),
    ] {
        match cfg.build() {
            Err(BatchError::Config { setting: s, .. }) => assert_eq!(s, setting),
            other => panic!("{setting}: {other:?}"),
        }
    }
    let ok = b().preferred_batch_sizes([16, 4, 16]).build().unwrap();
    assert_eq!(ok.preferred_batch_sizes(), &[4, 16]);
}

#[test]
fn a_lost_device_fails_every_waiting_request_and_rejects_new_ones() {
    use chorus_core::{FaultPlan, FaultSite, Health};
    let device = device();
    let queue = BatchQueue::new(
        Double,
        config(&device, 64, Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .unwrap();
    let x = Tensor::full(&device, &[1, 2], 1.0).unwrap();
    // Requests wait for the batch's delay; the device is lost meanwhile.
    let waiting: Vec<_> = (0..5).map(|_| queue.submit(x.clone()).unwrap()).collect();
    device.inject_faults(FaultPlan::new().lose_at(FaultSite::Launch, 1));
    assert!(x.relu().is_err());
    let lost = |e: BatchError| match e {
        BatchError::Device {
            source: chorus_core::Error::DeviceLost { cause, .. },
            ..
        } => assert!(cause.contains("launch #1"), "{cause}"),
        other => panic!("{other:?}"),
    };
    for t in waiting {
        lost(t.wait().unwrap_err());
    }
    // Starting workers binds streams, which a lost device refuses.
    assert!(matches!(
        BatchQueue::new(Double, config(&device, 1, NEVER).build().unwrap()),
        Err(BatchError::WorkerStart { .. })
    ));
    assert!(matches!(queue.health(), Health::Lost { .. }));
    lost(queue.submit(x.clone()).unwrap_err());
    assert_eq!(queue.shutdown(ShutdownMode::Fail), 0);
}

#[test]
fn a_model_call_that_finds_the_device_lost_fails_as_the_device() {
    use chorus_core::{FaultPlan, FaultSite};
    let device = device();
    let queue = BatchQueue::new(Double, config(&device, 1, NEVER).build().unwrap()).unwrap();
    let x = Tensor::full(&device, &[1, 2], 1.0).unwrap();
    // A batch of one request runs the model on its input as it is: the model's first launch
    // loses the device.
    device.inject_faults(FaultPlan::new().lose_at(FaultSite::Launch, 1));
    match queue.infer(x) {
        Err(BatchError::Device {
            rows: 1,
            source: chorus_core::Error::DeviceLost { .. },
        }) => {}
        other => panic!("{other:?}"),
    }
}
