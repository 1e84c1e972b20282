//! Helpers shared by the integration tests: the PyTorch golden files and the three reference
//! models (the golden cases' weights, or random weights of the same shapes when the golden
//! files are absent).

#![allow(dead_code, unreachable_pub)]

use chorus_core::{Device, Tensor, UnaryOp};
use chorus_nn::{
    depthwise_separable, Mlp, Module, Sequential, TransformerConfig, TransformerEncoder, Weights,
};
use std::path::PathBuf;

/// A device of every backend this machine can run: the CPU, and CUDA device 0 when a GPU
/// is there (a `SKIPPED` line says when it is not; a failure under `CHORUS_REQUIRE_GPU=1`).
pub fn devices() -> Vec<Device> {
    let mut all = vec![chorus_cpu::device().expect("cpu device")];
    if chorus_cuda::is_available() {
        all.push(chorus_cuda::device(0).expect("cuda device"));
    } else {
        skipped_without_gpu("backend cuda (no GPU on this machine)");
    }
    all
}

/// Says that a GPU test part was skipped for want of a GPU: a `SKIPPED` line, or, with
/// `CHORUS_REQUIRE_GPU=1` (the GPU job sets it), a panic, so that a GPU machine whose GPU
/// went missing fails instead of passing every GPU test without running it.
pub fn skipped_without_gpu(what: &str) {
    assert!(
        std::env::var("CHORUS_REQUIRE_GPU").as_deref() != Ok("1"),
        "no GPU, and CHORUS_REQUIRE_GPU=1 requires one: {what}"
    );
    eprintln!("SKIPPED: {what}");
}

/// The golden folder, `../shared/golden/` next to the workspace, or `CHORUS_GOLDEN_DIR` (test
/// binaries copied to another machine, such as the GPU machine).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("CHORUS_GOLDEN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
        PathBuf::from,
    )
}

/// The golden cases and their tensors.
pub struct Golden {
    /// All tensors of `public.safetensors`.
    pub weights: Weights,
    /// The `cases` list of `public.json`.
    pub cases: Vec<serde_json::Value>,
}

impl Golden {
    /// Loads `public.json` and `public.safetensors` onto `device`. A missing or unreadable
    /// file panics, naming it, unless `CHORUS_GOLDEN_OPTIONAL=1`: then `None` (with a
    /// `SKIPPED` line).
    pub fn load(device: &Device) -> Option<Golden> {
        match Golden::read(device) {
            Ok(g) => Some(g),
            Err(e) if std::env::var("CHORUS_GOLDEN_OPTIONAL").as_deref() == Ok("1") => {
                println!("SKIPPED: {e} (CHORUS_GOLDEN_OPTIONAL=1)");
                None
            }
            Err(e) => panic!(
                "{e} (set CHORUS_GOLDEN_DIR to the golden folder, or CHORUS_GOLDEN_OPTIONAL=1 \
                 to skip the parity tests)"
            ),
        }
    }

    /// Like [`Golden::load`], but an unreadable folder is an `Err` naming the file: for tests
    /// that use the golden tensors as inputs when they are there and random ones otherwise.
    pub fn read(device: &Device) -> Result<Golden, String> {
        let dir = golden_dir();
        let json_path = dir.join("public.json");
        let json = std::fs::read_to_string(&json_path)
            .map_err(|e| format!("golden file {} cannot be read: {e}", json_path.display()))?;
        let file = dir.join("public.safetensors");
        std::fs::File::open(&file)
            .map_err(|e| format!("golden file {} cannot be read: {e}", file.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&json).expect("public.json parses");
        let cases = doc["cases"].as_array().expect("cases is a list").clone();
        let weights = Weights::from_file(device, &file).expect("public.safetensors loads");
        Ok(Golden { weights, cases })
    }

    /// The case named `name`.
    pub fn case(&self, name: &str) -> &serde_json::Value {
        self.cases
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no golden case {name}"))
    }

    /// The case's `i`-th input tensor.
    pub fn input(&self, name: &str, i: usize) -> Tensor {
        let key = self.case(name)["inputs"][i].as_str().expect("input key");
        self.weights.get_any(key).expect("input tensor")
    }

    /// The case's `i`-th output tensor.
    pub fn output(&self, name: &str, i: usize) -> Tensor {
        let key = self.case(name)["outputs"][i].as_str().expect("output key");
        self.weights.get_any(key).expect("output tensor")
    }

    /// The case's `(rtol, atol)`.
    pub fn tolerance(&self, name: &str) -> (f32, f32) {
        let c = self.case(name);
        (
            c["rtol"].as_f64().expect("rtol") as f32,
            c["atol"].as_f64().expect("atol") as f32,
        )
    }
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
