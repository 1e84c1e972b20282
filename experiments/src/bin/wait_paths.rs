//! Where a many-thread forward's time goes: the MLP 512→1024→1024→512 at batch 1 (the weights
//! of `mlp_loop`), from several thread counts at once (one stream each), in six variants that
//! each take one cost away or add one:
//! - `wait`: `x = randn`, `model(x).sum().item()`: what `chorus bench` measures;
//! - `graph-wait`: the same through a [`Graph`] the thread captured (fewer driver calls);
//! - `nowait`, `graph-nowait`: no read-back; the thread synchronizes its stream every 32
//!   forwards (the launch path alone, and the GPU's rate when it is never idle);
//! - `tiny-wait`: `wait` with a 64→64→64→64 MLP (almost no GPU work: what is left is host work);
//! - `empty-wait`: `x.sum().item()` only (one kernel besides `randn`, the read-back and the wait).
//!
//! `cargo run --release -p chorus-experiments --features cuda --bin wait_paths -- [MODES]
//! [THREADS] [BACKEND]` (default `wait,graph-wait,nowait,graph-nowait,tiny-wait,empty-wait`,
//! `1,8,16,32,64` and the best backend present; `cpu` or `cuda`) prints forwards/s of each
//! variant and thread count.

use chorus::{BackendKind, DType, Device, DeviceExt, Graph, Tensor, UnaryOp};
use std::sync::Barrier;
use std::time::Instant;

/// `(weight, bias, relu)` of each layer.
type Layers = Vec<(Tensor, Tensor, bool)>;

fn layers(device: &Device, sizes: &[usize]) -> chorus::Result<Layers> {
    sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let scale = Tensor::full(device, &[1], 1.0 / (w[0] as f32).sqrt())?;
            let weight = Tensor::randn(device, &[w[1], w[0]], 100 + i as u64)?.mul(&scale)?;
            let bias = Tensor::randn(device, &[w[1]], 200 + i as u64)?.mul(&scale)?;
            Ok((weight, bias, i + 2 < sizes.len()))
        })
        .collect()
}

/// `model(x).sum()`.
fn forward(layers: &Layers, x: &Tensor) -> chorus::Result<Tensor> {
    let mut h = x.clone();
    for (w, b, relu) in layers {
        h = h.linear_act(w, Some(b), relu.then_some(UnaryOp::Relu))?;
    }
    h.sum_all()
}

/// One iteration of `mode`; the result stays on the device in the `nowait` modes.
fn iteration(mode: &str, l: &Layers, graph: &Graph, x: &Tensor) -> chorus::Result<()> {
    match mode {
        "wait" | "tiny-wait" => drop(forward(l, x)?.item::<f32>()?),
        "empty-wait" => drop(x.sum_all()?.item::<f32>()?),
        "graph-wait" => drop(graph.run(&[x])?[0].item::<f32>()?),
        "nowait" => drop(forward(l, x)?),
        "graph-nowait" => drop(graph.run(&[x])?),
        _ => unreachable!("modes are checked in main"),
    }
    Ok(())
}

/// Forwards per second of `mode` from `threads` threads.
fn round(device: &Device, mode: &str, l: &Layers, width: usize, threads: usize) -> f64 {
    let iters = (40_000 / threads).max(200);
    let barrier = Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> chorus::Result<()> {
                    let ready = (|| {
                        let graph =
                            Graph::capture(device, &[(&[1, width][..], DType::F32)], |x| {
                                Ok::<_, chorus::Error>(vec![forward(l, &x[0])?])
                            })?;
                        let x = Tensor::randn(device, &[1, width], t as u64)?;
                        for _ in 0..5 {
                            iteration(mode, l, &graph, &x)?;
                        }
                        device.current_stream()?.synchronize()?;
                        Ok::<_, chorus::Error>(graph)
                    })();
                    barrier.wait();
                    let graph = ready?;
                    let stream = device.current_stream()?;
                    for i in 0..iters {
                        let x = Tensor::randn(device, &[1, width], (t * 1_000_003 + i) as u64)?;
                        iteration(mode, l, &graph, &x)?;
                        if i % 32 == 31 {
                            stream.synchronize()?;
                        }
                    }
                    stream.synchronize()
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in handles {
            if let Err(e) = h.join().expect("a thread panicked") {
                eprintln!("{mode}, {threads} threads: {e}");
                std::process::exit(1);
            }
        }
        t0
    });
    (threads * iters) as f64 / t0.elapsed().as_secs_f64()
}

fn main() -> chorus::Result<()> {
    const MODES: [&str; 6] = [
        "wait",
        "graph-wait",
        "nowait",
        "graph-nowait",
        "tiny-wait",
        "empty-wait",
    ];
    let arg = |i: usize| std::env::args().nth(i);
    let modes = arg(1).unwrap_or_else(|| MODES.join(","));
    let threads: Vec<usize> = arg(2)
        .unwrap_or_else(|| "1,8,16,32,64".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            eprintln!("THREADS must be whole numbers separated by commas: {e}");
            std::process::exit(2)
        });
    let modes: Vec<&str> = modes.split(',').map(str::trim).collect();
    if let Some(m) = modes.iter().find(|m| !MODES.contains(m)) {
        eprintln!("unknown mode `{m}`; modes: {}", MODES.join(", "));
        std::process::exit(2)
    }
    let kind = match arg(3) {
        Some(name) => BackendKind::parse(&name)?,
        None => BackendKind::best().expect("a compiled-in backend"),
    };
    let streams = threads.iter().max().copied().unwrap_or(1) + 2;
    let device = Device::builder().streams(streams).backend(kind).open()?;
    let big = layers(&device, &[512, 1024, 1024, 512])?;
    let tiny = layers(&device, &[64, 64, 64, 64])?;
    for mode in modes {
        let (l, width) = if mode == "tiny-wait" {
            (&tiny, 64)
        } else {
            (&big, 512)
        };
        for &t in &threads {
            let rate = round(&device, mode, l, width, t);
            println!("{mode:>12}, {t:>2} threads: {rate:>9.0} forwards/s");
        }
    }
    Ok(())
}
