//! Batches through graphs (`BatchConfigBuilder::graphs`): padded to a power of two, results
//! bit-identical to a direct call on the padded batch and close to a direct call on each
//! request; models that cannot be captured are called directly.

mod common;

use chorus_batch::{BatchQueue, HostTensor, ShutdownMode};
use chorus_core::{DType, Device, Tensor};
use chorus_nn::{Module, NnError};
use chorus_testing::bits;
use common::{close, config, device, mlp, NEVER};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn a_padded_batch_runs_through_a_graph_with_the_direct_bits() {
    let device = device();
    let model = mlp(&device, &[32, 64, 16]);
    let cfg = config(&device, 8, NEVER).graphs(true).build().unwrap();
    assert!(cfg.graphs());
    let queue = BatchQueue::new(model.clone(), cfg).unwrap();
    let inputs: Vec<Tensor> = [1usize, 2]
        .iter()
        .enumerate()
        .map(|(i, &r)| Tensor::randn(&device, &[r, 32], 40 + i as u64).unwrap())
        .collect();
    let tickets: Vec<_> = inputs
        .iter()
        .map(|x| queue.submit(x.clone()).unwrap())
        .collect();
    // Three rows wait (no delay): the drain runs them as one batch, padded to four rows.
    queue.shutdown(ShutdownMode::Drain);
    let zeros = Tensor::zeros(&device, &[1, 32], DType::F32).unwrap();
    let padded = model
        .forward(&Tensor::cat(&[&inputs[0], &inputs[1], &zeros], 0).unwrap())
        .unwrap();
    let mut offset = 0;
    for (t, x) in tickets.into_iter().zip(&inputs) {
        let (y, info) = t.wait_with_info().unwrap();
        let r = x.shape()[0];
        assert_eq!(y.shape(), &[r, 16]);
        assert_eq!((info.rows, info.padded_rows, info.offset), (3, 4, offset));
        assert_eq!(bits(&y), bits(&padded.narrow(0, offset, r).unwrap()));
        let alone = model.forward(x).unwrap();
        assert!(close(
            &y.to_vec::<f32>().unwrap(),
            &alone.to_vec::<f32>().unwrap()
        ));
        offset += r;
    }
    let stats = queue.stats();
    assert_eq!((stats.batches, stats.graph_batches, stats.rows), (1, 1, 3));
}

#[test]
fn host_requests_from_many_threads_share_a_few_graphs() {
    let device = device();
    let model = mlp(&device, &[16, 32, 8]);
    let cfg = config(&device, 8, std::time::Duration::ZERO)
        .graphs(true)
        .workers(2)
        .build()
        .unwrap();
    let queue = BatchQueue::new(model.clone(), cfg).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (queue, model, device) = (&queue, &model, &device);
            s.spawn(move || {
                for i in 0..40 {
                    let x = Tensor::randn(device, &[1, 16], t * 1000 + i).unwrap();
                    let row = HostTensor::from_tensor(&x).unwrap();
                    let (y, info) = queue.submit(row).unwrap().wait_with_info().unwrap();
                    assert!(info.padded_rows.is_power_of_two() && info.padded_rows >= info.rows);
                    let want = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
                    assert!(close(&y.to_vec::<f32>().unwrap(), &want), "thread {t}, {i}");
                }
            });
        }
    });
    let stats = queue.stats();
    assert_eq!(stats.requests, 320);
    // Every batch went through one of at most four graphs per worker.
    assert_eq!(stats.graph_batches, stats.batches);
}

/// A model that reads a value back inside its forward: it cannot be captured.
struct ReadsBack(Device);

impl Module for ReadsBack {
    fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let scale = x.max_all()?.item::<f32>()?;
        Ok(x.mul(&Tensor::full(&self.0, &[1], scale)?)?)
    }
}

#[test]
fn a_model_that_cannot_be_captured_is_called_directly() {
    let device = device();
    let cfg = config(&device, 4, NEVER).graphs(true).build().unwrap();
    let queue = BatchQueue::new(ReadsBack(device.clone()), cfg).unwrap();
    let x = Tensor::from_slice(&device, &[1.0_f32, -2.0, 3.0], &[3, 1]).unwrap();
    let ticket = queue.submit(x).unwrap();
    queue.shutdown(ShutdownMode::Drain);
    let (y, info) = ticket.wait_with_info().unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0, -6.0, 9.0]);
    // The capture failed, so the batch's own rows ran directly, without the padding.
    assert_eq!((info.rows, info.padded_rows), (3, 3));
    assert_eq!(queue.stats().graph_batches, 0);
}

/// Doubles its input, but refuses batches of four rows; counts its calls.
#[derive(Default)]
struct NoFours(AtomicUsize);

impl Module for NoFours {
    fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if x.shape()[0] == 4 {
            return Err(NnError::InvalidInput {
                module: "NoFours",
                shape: x.shape().to_vec(),
                reason: "four rows".into(),
            });
        }
        Ok(x.add(x)?)
    }
}

#[test]
fn a_shape_whose_capture_failed_is_not_padded_again() {
    // A batch of 3 rows would be padded to 4 for a graph, but the model refuses 4 rows: the
    // capture fails (not for want of a capturable model), and the batch's own 3 rows run
    // directly. Later batches of 3 rows are not padded again: they get a graph of 3 rows.
    let device = device();
    let cfg = config(&device, 8, std::time::Duration::ZERO)
        .graphs(true)
        .workers(1)
        .build()
        .unwrap();
    let model = Arc::new(NoFours::default());
    let queue = BatchQueue::new(Arc::clone(&model), cfg).unwrap();
    let x = Tensor::full(&device, &[3, 2], 1.5).unwrap();
    for round in 0..3 {
        let (y, info) = queue.submit(x.clone()).unwrap().wait_with_info().unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0; 6], "round {round}");
        assert_eq!((info.rows, info.padded_rows), (3, 3), "round {round}");
    }
    // The failed capture, the first batch's direct call, the capture at 3 rows; then replays.
    assert_eq!(model.0.load(Ordering::SeqCst), 3);
    // Two rows (a power of two already) still get a graph.
    let z = Tensor::full(&device, &[2, 2], 1.0).unwrap();
    let (_, info) = queue.submit(z).unwrap().wait_with_info().unwrap();
    assert_eq!((info.rows, info.padded_rows), (2, 2));
    let stats = queue.stats();
    assert_eq!((stats.batches, stats.graph_batches), (4, 3));
}
