//! Parity with PyTorch on the reference cases in `../shared/golden/` (format in its README):
//! all 40 cases (ops and the three models, whose weights load by their PyTorch names) through
//! the public API, on every backend, at each case's tolerance, one line per case.
//!
//! The folder is `../shared/golden/` next to the workspace, or `CHORUS_GOLDEN_DIR`. A missing
//! or unreadable folder fails the test (a parity suite that passes without its references
//! proves nothing); set `CHORUS_GOLDEN_OPTIONAL=1` to skip it instead, with a `SKIPPED` line.

use chorus::nn::{self, Module};
use chorus::{Device, Tensor};
use chorus_testing::{backend_tests, golden_files, TestBackend};
use serde_json::Value;
use std::collections::HashMap;

/// The golden tensors of one set, decoded to host vectors.
struct Golden {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

fn load(dir: &std::path::Path) -> (Vec<Value>, Golden) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("public.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("public.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut g = Golden {
        f32s: HashMap::new(),
        i64s: HashMap::new(),
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            safetensors::Dtype::F32 => {
                let v = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                g.f32s.insert(name, (shape, v));
            }
            safetensors::Dtype::I64 => {
                let v = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                g.i64s.insert(name, (shape, v));
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
    (json["cases"].as_array().unwrap().clone(), g)
}

impl Golden {
    fn tensor(&self, dev: &Device, name: &str) -> Tensor {
        if let Some((shape, v)) = self.f32s.get(name) {
            Tensor::from_slice(dev, v, shape).unwrap()
        } else {
            let (shape, v) = &self.i64s[name];
            Tensor::from_slice(dev, v, shape).unwrap()
        }
    }
}

fn dims(p: &Value) -> Vec<isize> {
    p.as_array()
        .map(|a| a.iter().map(|d| d.as_i64().unwrap() as isize).collect())
        .unwrap_or_default()
}

/// Loads a model case from its weights (`<case>.w.<state_dict key>`) and runs its input.
fn run_model(case: &Value, ins: &[Tensor], weights: &nn::Weights) -> nn::Result<Tensor> {
    let p = &case["params"];
    let int = |k: &str| p[k].as_u64().unwrap() as usize;
    let w = weights.with_prefix(&format!("{}.w.", case["name"].as_str().unwrap()));
    let model: Box<dyn Module> = match case["op"].as_str().unwrap() {
        "transformer_encoder" => {
            assert_eq!(
                (p["activation"].as_str(), p["norm_first"].as_bool()),
                (Some("relu"), Some(false))
            );
            let cfg = nn::TransformerConfig::new(int("d_model"), int("nhead"))
                .dim_feedforward(int("dim_feedforward"))
                .activation(chorus::UnaryOp::Relu)
                .layer_norm_eps(p["layer_norm_eps"].as_f64().unwrap() as f32)
                .norm_first(false);
            Box::new(nn::TransformerEncoder::load(
                &w,
                &cfg,
                int("layers"),
                false,
            )?)
        }
        "mlp" => {
            let sizes: Vec<usize> = p["sizes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            Box::new(nn::Mlp::load(&w, &sizes)?)
        }
        "depthwise_separable" => Box::new(nn::depthwise_separable(
            &w,
            int("in_channels"),
            int("groups"),
            int("classes"),
        )?),
        op => panic!("unknown model case {op}"),
    };
    model.forward(&ins[0])
}

/// Runs one op case; `None` for model cases (see `run_model`).
fn run(case: &Value, ins: &[Tensor]) -> chorus::Result<Option<Vec<Tensor>>> {
    let p = &case["params"];
    let int = |k: &str| p[k].as_i64().unwrap();
    let one = |t: Tensor| Ok(Some(vec![t]));
    match case["op"].as_str().unwrap() {
        "matmul" => one(ins[0].matmul(&ins[1])?),
        "linear" => one(ins[0].linear(&ins[1], Some(&ins[2]))?),
        "relu" => one(ins[0].relu()?),
        "gelu" if p["approximate"] == "tanh" => one(ins[0].gelu_tanh()?),
        "gelu" => one(ins[0].gelu()?),
        "tanh" => one(ins[0].tanh()?),
        "exp" => one(ins[0].exp()?),
        "add" => one(ins[0].add(&ins[1])?),
        "mul" => one(ins[0].mul(&ins[1])?),
        "softmax" => one(ins[0].softmax(int("dim") as isize)?),
        "scaled_softmax" => {
            one(ins[0].scaled_softmax(int("dim") as isize, p["scale"].as_f64().unwrap() as f32)?)
        }
        "log_softmax" => one(ins[0].log_softmax(int("dim") as isize)?),
        "sum" => one(ins[0].sum(&dims(&p["dims"]), p["keepdim"].as_bool().unwrap())?),
        "mean" => one(ins[0].mean(&dims(&p["dims"]), p["keepdim"].as_bool().unwrap())?),
        "max" | "min" if p["dim"].is_null() => one(if case["op"] == "max" {
            ins[0].max_all()?
        } else {
            ins[0].min_all()?
        }),
        "max" | "min" => {
            let keep = p["keepdim"].as_bool().unwrap_or(false);
            let (v, i) = if case["op"] == "max" {
                ins[0].max_dim(int("dim") as isize, keep)?
            } else {
                ins[0].min_dim(int("dim") as isize, keep)?
            };
            Ok(Some(vec![v, i]))
        }
        "prod" => one(ins[0].prod(&[int("dim") as isize], p["keepdim"].as_bool().unwrap())?),
        "layer_norm" => one(ins[0].layer_norm(
            Some(&ins[1]),
            Some(&ins[2]),
            p["eps"].as_f64().unwrap() as f32,
        )?),
        "group_norm" => one(ins[0].group_norm(
            int("groups") as usize,
            Some(&ins[1]),
            Some(&ins[2]),
            p["eps"].as_f64().unwrap() as f32,
        )?),
        "conv2d" => {
            let (st, pd) = (int("stride") as usize, int("padding") as usize);
            one(ins[0].conv2d(
                &ins[1],
                Some(&ins[2]),
                [st, st],
                [pd, pd],
                int("groups") as usize,
            )?)
        }
        "adaptive_avg_pool2d" => {
            let o = dims(&p["output_size"]);
            one(ins[0].adaptive_avg_pool2d([o[0] as usize, o[1] as usize])?)
        }
        "transpose" => one(ins[0]
            .transpose(int("dim0") as isize, int("dim1") as isize)?
            .contiguous()?),
        "embedding" => one(Tensor::embedding(&ins[0], &ins[1])?),
        "scaled_dot_product_attention" => {
            let causal = p["causal"].as_bool().unwrap();
            one(Tensor::scaled_dot_product_attention(
                &ins[0],
                &ins[1],
                &ins[2],
                ins.get(3),
                causal,
            )?)
        }
        "transformer_encoder" | "mlp" | "depthwise_separable" => Ok(None),
        op => panic!("unknown golden op {op}"),
    }
}

backend_tests!(every_golden_case_matches_pytorch);
fn every_golden_case_matches_pytorch(backend: TestBackend) {
    let Some(dir) = golden_files() else { return };
    let (cases, g) = load(&dir);
    assert_eq!(cases.len(), 40);
    backend.with_device(
        |b| b,
        |dev| {
            let weights = nn::Weights::from_file(&dev, dir.join("public.safetensors"))
                .expect("golden weights");
            let mut failed = Vec::new();
            let mut checked = 0;
            for case in &cases {
                let name = case["name"].as_str().unwrap();
                let ins: Vec<Tensor> = case["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| g.tensor(&dev, k.as_str().unwrap()))
                    .collect();
                let outs = match run(case, &ins) {
                    Ok(Some(outs)) => outs,
                    Ok(None) => match run_model(case, &ins, &weights) {
                        Ok(out) => vec![out],
                        Err(e) => {
                            println!("{name:28} ERROR {e}");
                            failed.push(name.to_string());
                            continue;
                        }
                    },
                    Err(e) => {
                        println!("{name:28} ERROR {e}");
                        failed.push(name.to_string());
                        continue;
                    }
                };
                let (rtol, atol) = (
                    case["rtol"].as_f64().unwrap(),
                    case["atol"].as_f64().unwrap(),
                );
                let mut worst = 0.0f64;
                let mut ok = true;
                let mut error = None;
                for (got, key) in outs.iter().zip(case["outputs"].as_array().unwrap()) {
                    let key = key.as_str().unwrap();
                    if let Some((shape, want)) = g.f32s.get(key) {
                        ok &= got.shape() == shape.as_slice();
                        match got.to_vec::<f32>() {
                            Ok(got) => {
                                for (a, b) in got.iter().zip(want) {
                                    let err = (f64::from(*a) - f64::from(*b)).abs();
                                    worst = worst.max(err);
                                    ok &= err <= atol + rtol * f64::from(*b).abs()
                                        || (a.is_nan() && b.is_nan());
                                }
                            }
                            Err(e) => error = Some(e),
                        }
                    } else {
                        let (shape, want) = &g.i64s[key];
                        match got.to_vec::<i64>() {
                            Ok(got) => ok &= got.len() == want.len() && got == *want,
                            Err(e) => error = Some(e),
                        }
                        ok &= got.shape() == shape.as_slice();
                    }
                }
                if let Some(e) = error {
                    println!("{name:28} ERROR {e}");
                    failed.push(name.to_string());
                    continue;
                }
                checked += 1;
                println!(
                    "{name:28} {} max abs err {worst:.3e} (atol {atol:.0e}, rtol {rtol:.0e})",
                    if ok { "ok  " } else { "FAIL" }
                );
                if !ok {
                    failed.push(name.to_string());
                }
            }
            assert!(
                failed.is_empty(),
                "{} of {checked} cases failed: {failed:?}",
                failed.len()
            );
            assert_eq!(checked, 40);
        },
    );
}
