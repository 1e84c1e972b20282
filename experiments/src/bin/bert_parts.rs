//! Where a BERT layer's time goes on the CPU: each part of one encoder layer of the
//! all-MiniLM-L6-v2 shape (H 384, 12 heads, FF 1536) timed alone at a (batch, length).
//!
//! Usage: `bert_parts [BATCH] [LENGTH]` (32 × 32 by default); prints milliseconds per call.

use chorus::nn::Module;
use chorus::{Device, DeviceExt, Tensor, UnaryOp};
use std::time::Instant;

fn time(
    name: &str,
    dev: &Device,
    mut f: impl FnMut() -> chorus::Result<Tensor>,
) -> chorus::Result<()> {
    f()?.to_vec::<f32>()?;
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        let y = f()?;
        dev.current_stream()?.synchronize()?;
        drop(y);
    }
    println!(
        "{name:>28}: {:8.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    Ok(())
}

fn main() -> chorus::Result<()> {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (b, l) = (arg(1, 32), arg(2, 32));
    let (h, heads, f) = (384usize, 12usize, 1536usize);
    let dh = h / heads;
    let dev = Device::cpu()?;
    let x = Tensor::randn(&dev, &[b, l, h], 1)?;
    let w_qkv = Tensor::randn(&dev, &[3 * h, h], 2)?;
    let w_o = Tensor::randn(&dev, &[h, h], 3)?;
    let w_up = Tensor::randn(&dev, &[f, h], 4)?;
    let w_down = Tensor::randn(&dev, &[h, f], 5)?;
    let up_out = Tensor::randn(&dev, &[b, l, f], 6)?;
    let mask = Tensor::from_slice(&dev, &vec![1i64; b * l], &[b, 1, 1, l])?;
    let qkv = x.linear(&w_qkv, None)?;
    let heads_view = |i: usize| -> chorus::Result<Tensor> {
        qkv.reshape(&[b as isize, l as isize, 3, heads as isize, dh as isize])?
            .permute(&[2, 0, 3, 1, 4])?
            .narrow(0, i, 1)?
            .squeeze(0)
    };
    let (q, k, v) = (heads_view(0)?, heads_view(1)?, heads_view(2)?);
    let (qc, kc, vc) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    println!("batch {b}, length {l}");
    time("qkv linear", &dev, || x.linear(&w_qkv, None))?;
    time("attention (strided views)", &dev, || {
        Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), false)
    })?;
    time("attention (contiguous)", &dev, || {
        Tensor::scaled_dot_product_attention(&qc, &kc, &vc, Some(&mask), false)
    })?;
    time("q @ k^T", &dev, || qc.matmul(&kc.transpose(-2, -1)?))?;
    let scores = qc.matmul(&kc.transpose(-2, -1)?)?;
    let probs = scores.softmax(-1)?;
    time("softmax", &dev, || scores.softmax(-1))?;
    time("scaled_softmax", &dev, || scores.scaled_softmax(-1, 0.17))?;
    time("probs @ v", &dev, || probs.matmul(&vc))?;
    time("contiguous q", &dev, || q.contiguous())?;
    time("out linear", &dev, || x.linear(&w_o, None))?;
    time("add + layer_norm", &dev, || {
        x.add_layer_norm(&x, None, None, 1e-12)
    })?;
    time("up linear + gelu", &dev, || {
        x.linear_act(&w_up, None, Some(UnaryOp::Gelu))
    })?;
    time("up linear", &dev, || x.linear(&w_up, None))?;
    time("down linear", &dev, || up_out.linear(&w_down, None))?;
    let layer = chorus::nn::Linear::new(w_up.clone(), None).map_err(|e| chorus::Error::Config {
        key: "layer",
        value: e.to_string(),
        reason: "probe",
    })?;
    time("nn::Linear forward", &dev, || {
        layer.forward(&x).map_err(|e| chorus::Error::Config {
            key: "forward",
            value: e.to_string(),
            reason: "probe",
        })
    })?;
    Ok(())
}
