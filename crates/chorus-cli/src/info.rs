//! `chorus info`: the compiled-in backends, one device and its settings, and the `CHORUS_*`
//! environment variables, as aligned text or (with `--json`) one JSON object on stdout.

use crate::device::{self, DeviceChoice};
use crate::human;
use chorus::{Device, Exhaustion};
use serde_json::{json, Value};
use std::process::ExitCode;

/// The environment variables the device reads, in the order they are shown.
const ENV_VARS: [&str; 8] = [
    "CHORUS_STREAMS",
    "CHORUS_STREAM_POLICY",
    "CHORUS_STREAM_WAIT_MS",
    "CHORUS_MEMORY_LIMIT",
    "CHORUS_THREAD_CACHE",
    "CHORUS_CUDA_TF32",
    "CHORUS_CUDA_LAZY_BLAS",
    "CHORUS_CUDA_SCHED",
];

/// Width of the label column of the text output.
const LABEL: usize = 24;

/// Options of `chorus info`.
#[derive(Debug, clap::Args)]
pub(crate) struct InfoArgs {
    /// Device to describe: a compiled-in backend (`cpu`, `cuda`) or `auto` for the best one present.
    #[arg(long, default_value = "auto", value_parser = device::parse, value_name = "DEVICE")]
    device: DeviceChoice,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `chorus info`.
///
/// # Errors
/// An invalid `CHORUS_*` variable, or a device that cannot start.
pub(crate) fn run(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let device = device::build(&args.device)?;
    let env: Vec<(&str, Option<String>)> = ENV_VARS
        .iter()
        .map(|&k| {
            (
                k,
                std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&args.device, &device, &env))?
        );
    } else {
        print_text(&args.device, &device, &env);
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(choice: &DeviceChoice, device: &Device, env: &[(&str, Option<String>)]) -> Value {
    let cfg = device.config();
    let id = device.id();
    let exhaustion = match cfg.exhaustion() {
        Exhaustion::Error => json!("error"),
        Exhaustion::Wait(d) => {
            json!({ "wait_ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX) })
        }
        Exhaustion::WaitForever => json!("forever"),
    };
    let env: serde_json::Map<String, Value> =
        env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let gpus: Vec<Value> = gpus()
        .into_iter()
        .map(|g| {
            json!({
                "ordinal": g.ordinal,
                "name": g.name,
                "memory": g.memory,
                "compute_capability": g.compute_capability,
            })
        })
        .collect();
    json!({
        "backends": device::backend_names(),
        "gpus": gpus,
        "device": {
            "requested": choice.name,
            "backend": device::backend_name(choice.kind),
            "id": id.to_string(),
            "ordinal": id.ordinal,
            "instance": id.instance,
            "description": device.describe(),
            "total_memory": device.total_memory(),
        },
        "streams": {
            "count": cfg.streams(),
            "policy": human::policy(cfg.policy()),
            "exhaustion": exhaustion,
        },
        "allocator": {
            "memory_limit": cfg.memory_limit(),
            "thread_cache_bytes": cfg.thread_cache_bytes(),
        },
        "env": env,
    })
}

fn print_text(choice: &DeviceChoice, device: &Device, env: &[(&str, Option<String>)]) {
    let cfg = device.config();
    let line = |label: &str, value: &dyn std::fmt::Display| println!("  {label:<LABEL$} {value}");
    println!(
        "backends compiled in: {}",
        device::backend_names().join(", ")
    );
    let gpus = gpus();
    if gpus.is_empty() {
        println!("GPUs: {}", no_gpu_reason());
    } else {
        println!("GPUs:");
        for g in &gpus {
            line(
                &format!("cuda:{}", g.ordinal),
                &format_args!(
                    "{}, {}, compute capability {}.{}",
                    g.name,
                    human::bytes_exact(g.memory),
                    g.compute_capability.0,
                    g.compute_capability.1
                ),
            );
        }
    }
    println!("device ({}):", choice.name);
    line("id", &device.id());
    line("description", &device.describe());
    line(
        "total memory",
        &device
            .total_memory()
            .map_or_else(|| "unknown".to_string(), human::bytes_exact),
    );
    println!("streams:");
    line(
        "count",
        &format_args!("{} (stream 0 is the default stream)", cfg.streams()),
    );
    line("policy", &human::policy(cfg.policy()));
    line("when exhausted", &human::exhaustion(cfg.exhaustion()));
    println!("allocator:");
    line(
        "memory limit",
        &cfg.memory_limit()
            .map_or_else(|| "none".to_string(), human::bytes_exact),
    );
    let cache = cfg.thread_cache_bytes();
    line(
        "thread cache",
        &if cache == 0 {
            "off".to_string()
        } else {
            human::bytes_exact(cache)
        },
    );
    println!("environment:");
    for (k, v) in env {
        line(k, &v.as_deref().unwrap_or("unset"));
    }
}

/// One GPU of this machine.
#[derive(Debug)]
struct Gpu {
    ordinal: u32,
    name: String,
    memory: usize,
    compute_capability: (i32, i32),
}

/// The GPUs the compiled-in GPU backends see (none without the `cuda` feature or a driver).
fn gpus() -> Vec<Gpu> {
    #[cfg(feature = "cuda")]
    {
        chorus::cuda::gpus()
            .unwrap_or_default()
            .into_iter()
            .map(|g| Gpu {
                ordinal: g.ordinal,
                name: g.name,
                memory: g.memory,
                compute_capability: g.compute_capability,
            })
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    Vec::new()
}

/// Why no GPU is listed.
fn no_gpu_reason() -> &'static str {
    if cfg!(feature = "cuda") {
        "none found (no CUDA driver, or no device)"
    } else {
        "not looked for (this build has no CUDA backend; build with `--features cuda`)"
    }
}
