//! Helpers shared by this crate's integration tests: the three reference models (the golden
//! cases' weights, or random weights of the same shapes when the golden files are absent).
//! The golden files, the backend tests and GPU presence are chorus-testing's.

#![allow(dead_code, unreachable_pub)]

use chorus_core::{Device, Tensor, UnaryOp};
use chorus_nn::{
    depthwise_separable, Mlp, Module, Sequential, TransformerConfig, TransformerEncoder, Weights,
};
use chorus_testing::TestBackend;

/// A device of `backend` with the settings of the `CHORUS_*` environment variables.
pub fn device(backend: TestBackend) -> Device {
    backend.open(|b| b.from_env().expect("CHORUS_* variables"))
}

/// The three reference models.
pub const TRANSFORMER: &str = "transformer_encoder";
/// See [`TRANSFORMER`].
pub const MLP: &str = "mlp_512_1024_1024_512";
/// See [`TRANSFORMER`].
pub const DEPTHWISE: &str = "depthwise_separable";

/// The golden transformer's settings: d_model 32, 4 heads, feed-forward 64, relu, post-norm.
pub fn transformer_config() -> TransformerConfig {
    TransformerConfig::new(32, 4)
        .dim_feedforward(64)
        .activation(UnaryOp::Relu)
        .layer_norm_eps(1e-5)
        .norm_first(false)
}

/// Loads model `name` from a state dict whose root is `weights`.
pub fn load_model(weights: &Weights, name: &str) -> chorus_nn::Result<Box<dyn Module>> {
    Ok(match name {
        TRANSFORMER => Box::new(TransformerEncoder::load(
            weights,
            &transformer_config(),
            2,
            false,
        )?),
        MLP => Box::new(Mlp::load(weights, &[512, 1024, 1024, 512])?),
        DEPTHWISE => Box::<Sequential>::new(depthwise_separable(weights, 16, 4, 10)?),
        other => panic!("unknown model {other}"),
    })
}

/// The input shape of model `name` in the golden cases.
pub fn input_shape(name: &str) -> Vec<usize> {
    match name {
        TRANSFORMER => vec![3, 9, 32],
        MLP => vec![3, 512],
        DEPTHWISE => vec![2, 16, 12, 12],
        other => panic!("unknown model {other}"),
    }
}

/// The state-dict names and shapes of model `name`.
fn state_dict_shapes(name: &str) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |n: String, s: &[usize]| v.push((n, s.to_vec()));
    match name {
        TRANSFORMER => {
            let (e, f) = (32, 64);
            for i in 0..2 {
                let p = format!("layers.{i}.");
                add(format!("{p}self_attn.in_proj_weight"), &[3 * e, e]);
                add(format!("{p}self_attn.in_proj_bias"), &[3 * e]);
                add(format!("{p}self_attn.out_proj.weight"), &[e, e]);
                add(format!("{p}self_attn.out_proj.bias"), &[e]);
                add(format!("{p}linear1.weight"), &[f, e]);
                add(format!("{p}linear1.bias"), &[f]);
                add(format!("{p}linear2.weight"), &[e, f]);
                add(format!("{p}linear2.bias"), &[e]);
                for n in ["norm1", "norm2"] {
                    add(format!("{p}{n}.weight"), &[e]);
                    add(format!("{p}{n}.bias"), &[e]);
                }
            }
        }
        MLP => {
            for (i, (a, b)) in [(512, 1024), (1024, 1024), (1024, 512)].iter().enumerate() {
                add(format!("{}.weight", 2 * i), &[*b, *a]);
                add(format!("{}.bias", 2 * i), &[*b]);
            }
        }
        DEPTHWISE => {
            add("0.weight".into(), &[16, 1, 3, 3]);
            add("0.bias".into(), &[16]);
            add("1.weight".into(), &[32, 16, 1, 1]);
            add("1.bias".into(), &[32]);
            add("2.weight".into(), &[32]);
            add("2.bias".into(), &[32]);
            add("6.weight".into(), &[10, 32]);
            add("6.bias".into(), &[10]);
        }
        other => panic!("unknown model {other}"),
    }
    v
}

/// Random weights for model `name` (scaled by `1/sqrt(fan_in)` so activations stay O(1)).
pub fn random_weights(device: &Device, name: &str, seed: u64) -> Weights {
    let tensors = state_dict_shapes(name)
        .into_iter()
        .enumerate()
        .map(|(i, (n, shape))| {
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let scale = Tensor::full(device, &[1], 1.0 / (fan_in as f32).sqrt()).unwrap();
            let t = Tensor::randn(device, &shape, seed * 1000 + i as u64)
                .unwrap()
                .mul(&scale)
                .unwrap();
            (n, t)
        })
        .collect::<Vec<_>>();
    Weights::from_tensors(tensors)
}

/// Compares `got` with `want` at `|got - want| <= atol + rtol |want|`; returns the largest
/// absolute error and whether every element passes.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f32, atol: f32) -> (f32, bool) {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    let g = got.to_vec::<f32>().expect("read result");
    let w = want.to_vec::<f32>().expect("read reference");
    let mut max_err = 0.0_f32;
    let mut pass = true;
    for (a, b) in g.iter().zip(&w) {
        let err = (a - b).abs();
        if err.is_nan() || err > atol + rtol * b.abs() {
            pass = false;
        }
        max_err = max_err.max(if err.is_nan() { f32::INFINITY } else { err });
    }
    (max_err, pass)
}
