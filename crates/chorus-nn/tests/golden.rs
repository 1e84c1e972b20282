//! Parity with PyTorch: the three model cases of `../shared/golden/public.json`, loaded from
//! the weights stored under `<case>.w.` and run on their inputs.
//!
//! The folder is `../shared/golden/` next to the workspace, or `CHORUS_GOLDEN_DIR`. A missing
//! or unreadable folder fails the tests; set `CHORUS_GOLDEN_OPTIONAL=1` to skip them instead.

mod common;

use chorus_nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Embedding, GroupNorm, LayerNorm, Linear, Module, Relu,
};
use chorus_testing::{backend_tests, Golden, TestBackend};
use common::{compare, load_model, DEPTHWISE, MLP, TRANSFORMER};

backend_tests!(models_match_pytorch);
fn models_match_pytorch(backend: TestBackend) {
    let device = common::device(backend);
    let Some(golden) = Golden::load(&device) else {
        return;
    };
    let mut failed = Vec::new();
    for name in [TRANSFORMER, MLP, DEPTHWISE] {
        let (rtol, atol) = golden.tolerance(name);
        let run = || -> chorus_nn::Result<(f32, bool)> {
            let weights = golden.weights.with_prefix(&format!("{name}.w."));
            let model = load_model(&weights, name)?;
            let got = model.forward(&golden.input(name, 0))?;
            // Surface a device error as an error, not as a panic in `compare`.
            got.to_vec::<f32>()?;
            Ok(compare(&got, &golden.output(name, 0), rtol, atol))
        };
        match run() {
            Ok((max_err, pass)) => {
                println!(
                    "{name:<24} max abs error {max_err:.3e}  (rtol {rtol:e}, atol {atol:e})  {}",
                    if pass { "pass" } else { "FAIL" }
                );
                if !pass {
                    failed.push(name);
                }
            }
            Err(e) => {
                println!("{name:<24} FAIL: {e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "models outside tolerance: {failed:?}");
}

backend_tests!(layers_match_pytorch);
/// The single-layer golden cases, run through the modules built with `new` from the case's
/// tensors (the ops themselves are checked by chorus-core's parity tests).
fn layers_match_pytorch(backend: TestBackend) {
    let device = common::device(backend);
    let Some(golden) = Golden::load(&device) else {
        return;
    };
    let mut failed = Vec::new();
    for case in &golden.cases {
        let name = case["name"].as_str().unwrap();
        let op = case["op"].as_str().unwrap();
        let p = &case["params"];
        let input = |i| golden.input(name, i);
        let run = || -> chorus_nn::Result<Option<chorus_core::Tensor>> {
            let module: Box<dyn Module> = match op {
                "linear" => Box::new(Linear::new(input(1), Some(input(2)))?),
                "relu" => Box::new(Relu),
                "layer_norm" => {
                    let n = *input(0).shape().last().unwrap();
                    let eps = p["eps"].as_f64().unwrap() as f32;
                    Box::new(LayerNorm::new(n, Some(input(1)), Some(input(2)), eps)?)
                }
                "group_norm" => {
                    let groups = p["groups"].as_u64().unwrap() as usize;
                    let eps = p["eps"].as_f64().unwrap() as f32;
                    let c = input(0).shape()[1];
                    Box::new(GroupNorm::new(
                        groups,
                        c,
                        Some(input(1)),
                        Some(input(2)),
                        eps,
                    )?)
                }
                "conv2d" => {
                    let w = input(1);
                    let groups = p["groups"].as_u64().unwrap() as usize;
                    let s = p["stride"].as_u64().unwrap() as usize;
                    let pad = p["padding"].as_u64().unwrap() as usize;
                    let c = input(0).shape()[1];
                    let config = Conv2dConfig::new(c, w.shape()[0], [w.shape()[2], w.shape()[3]])
                        .stride([s, s])
                        .padding([pad, pad])
                        .groups(groups);
                    Box::new(Conv2d::new(w, Some(input(2)), config)?)
                }
                "adaptive_avg_pool2d" => {
                    let o = p["output_size"].as_array().unwrap();
                    let o = [
                        o[0].as_u64().unwrap() as usize,
                        o[1].as_u64().unwrap() as usize,
                    ];
                    Box::new(AdaptiveAvgPool2d::new(o))
                }
                "embedding" => {
                    let y = Embedding::new(input(1))?.forward(&input(0))?;
                    y.to_vec::<f32>()?;
                    return Ok(Some(y));
                }
                _ => return Ok(None),
            };
            let y = module.forward(&input(0))?;
            y.to_vec::<f32>()?;
            Ok(Some(y))
        };
        let (rtol, atol) = golden.tolerance(name);
        match run() {
            Ok(None) => {}
            Ok(Some(got)) => {
                let (max_err, pass) = compare(&got, &golden.output(name, 0), rtol, atol);
                println!(
                    "{name:<24} max abs error {max_err:.3e}  {}",
                    if pass { "pass" } else { "FAIL" }
                );
                if !pass {
                    failed.push(name);
                }
            }
            Err(e) => {
                println!("{name:<24} FAIL: {e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "layers outside tolerance: {failed:?}");
}
