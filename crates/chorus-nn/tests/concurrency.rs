//! One model instance shared by 16 threads gives exactly (f32 bits) the outputs of a
//! single-threaded run of the same inputs: the MLP, the transformer encoder and the
//! depthwise-separable model.

mod common;

use chorus_core::{Device, Tensor};
use chorus_nn::Module;
use chorus_testing::{backend_tests, bits, Golden, TestBackend};
use common::{input_shape, load_model, random_weights, DEPTHWISE, MLP, TRANSFORMER};

const THREADS: usize = 16;
const ITERATIONS: usize = 5;

/// Thread 0 gets the golden input (when there is one), the others `randn` with their own seed.
fn inputs(device: &Device, golden: Option<&Golden>, name: &str) -> Vec<Vec<f32>> {
    (0..THREADS)
        .map(|t| {
            let x = match golden {
                Some(g) if t == 0 => g.input(name, 0),
                _ => Tensor::randn(device, &input_shape(name), 7000 + t as u64).unwrap(),
            };
            x.to_vec::<f32>().unwrap()
        })
        .collect()
}

fn check_model(backend: TestBackend, name: &str) {
    let device = common::device(backend);
    // Golden inputs and weights where the files are there, random ones otherwise: this test
    // checks threads against one thread, not parity (tests/golden.rs does).
    let golden = Golden::read(&device).ok();
    let weights = match &golden {
        Some(g) => g.weights.with_prefix(&format!("{name}.w.")),
        None => random_weights(&device, name, 1),
    };
    let model = load_model(&weights, name).unwrap();
    let shape = input_shape(name);
    let inputs = inputs(&device, golden.as_ref(), name);

    // Single-threaded reference, one input after the other on this thread's stream.
    let reference: Vec<Vec<u32>> = inputs
        .iter()
        .map(|x| {
            let x = Tensor::from_slice(&device, x, &shape).unwrap();
            bits(&model.forward(&x).unwrap())
        })
        .collect();

    // The same model shared by all threads, each on its own stream.
    let model = &*model;
    let results: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .iter()
            .zip(&reference)
            .map(|(x, want)| {
                let device = device.clone();
                let shape = shape.clone();
                scope.spawn(move || {
                    let x = Tensor::from_slice(&device, x, &shape).unwrap();
                    // Enqueue all iterations first, then read them back.
                    let outs: Vec<Tensor> = (0..ITERATIONS)
                        .map(|_| model.forward(&x).unwrap())
                        .collect();
                    let stream = device.current_stream().unwrap().index();
                    (stream, outs.iter().filter(|y| bits(y) != *want).count())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mismatches: usize = results.iter().map(|r| r.1).sum();
    let mut streams: Vec<usize> = results.iter().map(|r| r.0).collect();
    streams.sort_unstable();
    streams.dedup();
    println!(
        "{name:<24} {THREADS} threads on {} streams x {ITERATIONS} forwards: {mismatches} \
         outputs differ from the single-threaded run",
        streams.len()
    );
    assert!(
        streams.len() > 1,
        "the threads should run on several streams"
    );
    assert_eq!(mismatches, 0, "{name}: outputs differ under concurrency");
}

backend_tests!(
    mlp_is_bit_identical_under_concurrency,
    transformer_encoder_is_bit_identical_under_concurrency,
    depthwise_separable_is_bit_identical_under_concurrency,
);

fn mlp_is_bit_identical_under_concurrency(backend: TestBackend) {
    check_model(backend, MLP);
}

fn transformer_encoder_is_bit_identical_under_concurrency(backend: TestBackend) {
    check_model(backend, TRANSFORMER);
}

fn depthwise_separable_is_bit_identical_under_concurrency(backend: TestBackend) {
    check_model(backend, DEPTHWISE);
}
