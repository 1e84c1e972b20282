//! Loading a model from a safetensors file by its PyTorch `state_dict` names.
//!
//! PyTorch saves `nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))` as the tensors
//! `0.weight`, `0.bias`, `2.weight`, `2.bias` (the ReLU, child 1, has none). This example
//! writes such a file itself (with the `safetensors` crate, as `safetensors.torch.save_file`
//! would), loads it with `Weights::from_file`, builds the `Mlp` from it, runs it, and checks
//! the output against the same arithmetic done by hand.
//!
//! `cargo run -p chorus --example load_safetensors`

use chorus::nn::{Mlp, Weights};
use chorus::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// The weights to save, by name: `(name, shape, values)`, row-major as PyTorch stores them
/// (a `Linear`'s weight is `[out_features, in_features]`).
fn state_dict() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let values = |n: usize, k: f32| (0..n).map(|i| ((i as f32 * k) % 1.0) - 0.5).collect();
    vec![
        ("0.weight".into(), vec![8, 4], values(32, 0.37)),
        ("0.bias".into(), vec![8], values(8, 0.11)),
        ("2.weight".into(), vec![3, 8], values(24, 0.29)),
        ("2.bias".into(), vec![3], values(3, 0.53)),
    ]
}

/// `y = W x + b` for one row, done by hand.
fn affine(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    b.iter()
        .enumerate()
        .map(|(o, bias)| {
            bias + x
                .iter()
                .enumerate()
                .map(|(i, v)| w[o * x.len() + i] * v)
                .sum::<f32>()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    // 1. Write the file (little-endian f32 bytes per tensor) into a temporary folder.
    let tensors = state_dict();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            Ok((
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), b)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path =
        std::env::temp_dir().join(format!("chorus-example-{}.safetensors", std::process::id()));
    safetensors::serialize_to_file(views, None, &path)?;

    // 2. Load it: every tensor is copied to the device once; a missing or mis-shaped tensor
    //    is an error naming it.
    let device = Device::cpu()?;
    let weights = Weights::from_file(&device, &path)?;
    std::fs::remove_file(&path)?;
    println!(
        "loaded {} tensors: {:?}",
        weights.names().len(),
        weights.names()
    );

    // 3. Build the module: `Mlp::load` reads `0.`, `2.`, ... for feature sizes 4 → 8 → 3.
    let mlp = Mlp::load(&weights, &[4, 8, 3])?;

    // 4. Run it on a batch of two rows.
    let rows = [[1.0f32, 0.5, -0.25, 2.0], [0.0, -1.0, 0.75, 0.5]];
    let x = Tensor::from_slice(&device, rows.as_flattened(), &[2, 4])?;
    let y = mlp.forward(&x)?.to_vec::<f32>()?;
    println!("output [2, 3]: {y:?}");

    // 5. The same by hand: linear, ReLU, linear.
    let t = |i: usize| &tensors[i].2;
    for (r, row) in rows.iter().enumerate() {
        let hidden: Vec<f32> = affine(t(0), t(1), row)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        let want = affine(t(2), t(3), &hidden);
        for (got, want) in y[r * 3..(r + 1) * 3].iter().zip(&want) {
            anyhow::ensure!(
                (got - want).abs() <= 1e-5,
                "row {r}: got {got}, want {want}"
            );
        }
    }
    println!("matches linear → ReLU → linear computed by hand");
    Ok(())
}
