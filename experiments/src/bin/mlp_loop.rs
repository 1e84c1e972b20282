//! Forwards of the MLP 512→1024→1024→512 (`chorus bench`'s weights) at one batch size from one
//! thread, each waited for, in 5 timed rounds: a steady loop for profilers (`perf record`) and
//! for quick before/after numbers of a kernel change.
//!
//! `cargo run --release -p chorus-experiments --bin mlp_loop -- [BATCH] [FORWARDS]` (default
//! 256 400) prints samples/s of each round.

use chorus::{Device, DeviceExt, Tensor, UnaryOp};

fn main() -> chorus::Result<()> {
    let device = Device::cpu()?;
    let arg = |i: usize, name: &str, default: usize| match std::env::args().nth(i) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name} must be a whole number, got `{v}`");
            std::process::exit(2)
        }),
    };
    let (batch, forwards) = (arg(1, "BATCH", 256), arg(2, "FORWARDS", 400));
    let sizes = [512, 1024, 1024, 512];
    let layers = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let scale = Tensor::full(&device, &[1], 1.0 / (w[0] as f32).sqrt())?;
            let weight = Tensor::randn(&device, &[w[1], w[0]], 100 + i as u64)?.mul(&scale)?;
            let bias = Tensor::randn(&device, &[w[1]], 200 + i as u64)?.mul(&scale)?;
            Ok((weight, bias, i + 2 < sizes.len()))
        })
        .collect::<chorus::Result<Vec<_>>>()?;
    let x = Tensor::randn(&device, &[batch, 512], 7)?;
    let forward = || -> chorus::Result<()> {
        let mut h = x.clone();
        for (w, b, relu) in &layers {
            h = h.linear_act(w, Some(b), relu.then_some(UnaryOp::Relu))?;
        }
        device.current_stream()?.synchronize()
    };
    for _ in 0..10 {
        forward()?;
    }
    let per_round = (forwards / 5).max(1);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..per_round {
            forward()?;
        }
        let dt = t.elapsed().as_secs_f64() / per_round as f64;
        print!("{:.0} ", batch as f64 / dt);
    }
    println!("samples/s");
    Ok(())
}
