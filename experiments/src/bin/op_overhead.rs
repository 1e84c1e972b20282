//! Per-op overhead of the op front-end, in one process: a chain of small elementwise ops (where
//! the front-end's bookkeeping is most of an op's time: the hot path) and embedding lookups
//! read back (the fallible path, which allocates and zeroes a fault word and reads it back).
//!
//! Usage: `op_overhead ops|embed [ITERATIONS]` on the CPU backend; prints microseconds per
//! iteration. For a before/after, build it in two checkouts (copy this file into the older
//! one: it uses only the public API) and alternate the two binaries.

use chorus::{Device, DeviceExt, Tensor};
use std::time::Instant;

fn main() -> chorus::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "ops".into());
    let n: usize = (std::env::args().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let dev = Device::cpu()?;
    let mut acc = 0.0f32;
    let start;
    match what.as_str() {
        "ops" => {
            let x = Tensor::randn(&dev, &[64], 1)?;
            start = Instant::now();
            for i in 0..n {
                let y = x.add(&x)?.relu()?.mul(&x)?.sum_all()?;
                if i % 100 == 99 {
                    acc += y.item::<f32>()?;
                }
            }
        }
        "embed" => {
            let table = Tensor::randn(&dev, &[30522, 384], 2)?;
            let ids: Vec<i64> = (0..32).map(|i| (i * 977) % 30522).collect();
            start = Instant::now();
            for _ in 0..n {
                let idx = Tensor::from_slice(&dev, &ids, &[32])?;
                acc += Tensor::embedding(&idx, &table)?.to_vec::<f32>()?[0];
            }
        }
        other => {
            eprintln!("unknown workload {other:?}: ops or embed");
            std::process::exit(2);
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{what}: {us:.2} us/iter (checksum {acc})");
    Ok(())
}
