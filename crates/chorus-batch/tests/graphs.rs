//! Batches through graphs (`BatchConfigBuilder::graphs`): padded to a power of two, results
//! bit-identical to a direct call on the padded batch and close to a direct call on each
//! request; models that cannot be captured are called directly.

mod common;

use chorus_batch::{BatchQueue, HostTensor, ShutdownMode};
use chorus_core::{DType, Device, Tensor};
use chorus_nn::{Module, NnError};
use common::{bits, close, config, device, mlp, NEVER};

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
    // The capture failed, so the padded batch ran directly (its zero row does not change the
    // maximum here).
    assert_eq!((info.rows, info.padded_rows), (3, 4));
    assert_eq!(queue.stats().graph_batches, 0);
}
