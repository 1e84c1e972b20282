//! End-to-end tests of the `chorus` binary: each runs the built executable with a clean
//! `CHORUS_*` environment and checks its exit status and output.

use serde_json::Value;
use std::process::{Command, Output};

/// The variables `Config::from_env` reads (on every backend: the CUDA options are parsed, and
/// an invalid one refused, on the CPU too).
const ENV_VARS: [&str; 7] = [
    "CHORUS_STREAMS",
    "CHORUS_STREAM_POLICY",
    "CHORUS_STREAM_WAIT_MS",
    "CHORUS_MEMORY_LIMIT",
    "CHORUS_THREAD_CACHE",
    "CHORUS_CUDA_TF32",
    "CHORUS_CUDA_LAZY_BLAS",
];

/// Runs `chorus args...` with only the given `CHORUS_*` variables set.
fn chorus(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    for k in ENV_VARS {
        cmd.env_remove(k);
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run the chorus binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and parses stdout as exactly one JSON value.
fn json_ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", stdout(o)))
}

/// Asserts failure with a message on stderr containing every one of `needles`.
fn fails_naming(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "unexpected success\nstdout:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "stderr does not name {n:?}:\n{err}");
    }
}

#[test]
fn info_text() {
    let o = chorus(&["info"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let backends = out
        .lines()
        .find(|l| l.starts_with("backends compiled in: "))
        .unwrap_or_else(|| panic!("no backends line in:\n{out}"));
    assert!(backends.contains("cpu"), "{backends}");
    // Without a GPU (or without the cuda feature) `auto` is the CPU.
    let gpu = out.contains("cuda:0 ");
    for needle in [
        if gpu { "cuda:0#" } else { "cpu:0#" },
        "count",
        "32",
        "thread cache",
        "CHORUS_STREAMS",
        "unset",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn info_json() {
    let j = json_ok(&chorus(&["info", "--json", "--device", "cpu"], &[]));
    assert_eq!(j["streams"]["count"], 32);
    assert_eq!(j["streams"]["policy"], "shared");
    assert_eq!(j["device"]["backend"], "cpu");
    assert!(j["backends"].as_array().unwrap().iter().any(|b| b == "cpu"));
    assert_eq!(j["allocator"]["thread_cache_bytes"], 8 << 20);
    assert!(j["env"]["CHORUS_STREAMS"].is_null());
}

#[test]
fn info_reads_the_environment() {
    let env = [
        ("CHORUS_STREAMS", "8"),
        ("CHORUS_STREAM_POLICY", "exclusive"),
        ("CHORUS_MEMORY_LIMIT", "64M"),
    ];
    let j = json_ok(&chorus(&["info", "--json"], &env));
    assert_eq!(j["streams"]["count"], 8);
    assert_eq!(j["streams"]["policy"], "exclusive");
    assert_eq!(j["allocator"]["memory_limit"], 64 << 20);
    assert_eq!(j["env"]["CHORUS_STREAMS"], "8");

    let o = chorus(&["info"], &[("CHORUS_STREAMS", "8")]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("8 (stream 0 is the default stream)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn info_rejects_an_invalid_variable() {
    fails_naming(
        &chorus(&["info"], &[("CHORUS_STREAMS", "banana")]),
        &["CHORUS_STREAMS", "banana"],
    );
    fails_naming(
        &chorus(&["info", "--json"], &[("CHORUS_STREAMS", "banana")]),
        &["CHORUS_STREAMS"],
    );
}

#[test]
fn stress_json() {
    let args = [
        "stress",
        "--threads",
        "4",
        "--iters",
        "10",
        "--sync-every",
        "3",
        "--size",
        "32",
        "--json",
    ];
    let j = json_ok(&chorus(&args, &[]));
    assert_eq!(j["threads"], 4);
    assert_eq!(j["iters"], 10);
    assert_eq!(j["ops"], 40);
    assert_eq!(j["errors"], 0);
    assert_eq!(j["verified"], 40);
    assert_eq!(j["size"], 32);
    assert_eq!(j["sync_every"], 3);
    assert_eq!(j["with_mean"], false);
    assert_eq!(j["scenario"], "matmul");
    assert_eq!(j["device"], "cpu");
    assert!(j["seconds"].as_f64().unwrap() > 0.0);
    assert!(j["ops_per_s"].as_f64().unwrap() > 0.0);
    let rate = j["cache_hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    assert!(j["memory"]["allocations"].as_u64().unwrap() >= 40 * 4);
    assert!(j["memory"]["peak_allocated_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn stress_warmup_rounds_run_before_the_clock() {
    for extra in [
        &["--scenario", "matmul"][..],
        &["--scenario", "mlp", "--graph"],
    ] {
        let args = [
            &["stress", "--threads", "3", "--iters", "4", "--size", "16"][..],
            &["--warmup", "2", "--json"],
            extra,
        ]
        .concat();
        let j = json_ok(&chorus(&args, &[]));
        assert_eq!(j["warmup"], 2);
        assert_eq!(
            (
                j["ops"].as_u64(),
                j["errors"].as_u64(),
                j["verified"].as_u64()
            ),
            (Some(12), Some(0), Some(12)),
            "{extra:?}"
        );
        if extra[1] == "matmul" {
            // Each round allocates its two operands, the product and the sum: the warm-up
            // rounds (run, not timed, not verified) are in the parallel phase's statistics.
            assert!(j["memory"]["allocations"].as_u64().unwrap() >= (12 + 6) * 4);
        }
    }
}

#[test]
fn stress_with_mean_and_no_sync() {
    let args = [
        "stress",
        "--threads",
        "3",
        "--iters",
        "4",
        "--sync-every",
        "0",
        "--size",
        "16",
        "--with-mean",
        "--seed",
        "7",
    ];
    let j = json_ok(&chorus(
        &[&args[..], &["--json"]].concat(),
        &[("CHORUS_STREAM_POLICY", "exclusive")],
    ));
    assert_eq!(
        (
            j["ops"].as_u64(),
            j["errors"].as_u64(),
            j["verified"].as_u64()
        ),
        (Some(12), Some(0), Some(12))
    );
    assert_eq!(j["with_mean"], true);
    assert_eq!(j["seed"], 7);

    let o = chorus(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "threads: 3",
        "iterations per thread: 4",
        "total operations: 12",
        "errors: 0",
        "seconds: ",
        "ops/s: ",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn stress_counts_op_errors_and_fails() {
    // The two 64×64 f32 operands of a round take 32 KiB: no round fits in 16 KiB.
    let o = chorus(
        &[
            "stress",
            "--threads",
            "2",
            "--iters",
            "2",
            "--size",
            "64",
            "--json",
        ],
        &[("CHORUS_MEMORY_LIMIT", "16K")],
    );
    assert!(!o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).expect("one JSON object even on failure");
    assert_eq!(j["ops"], 4);
    assert!(j["errors"].as_u64().unwrap() > 0);
    assert!(stderr(&o).contains("out of memory"), "{}", stderr(&o));
}

#[test]
fn stress_rejects_unknown_names_and_bad_counts() {
    fails_naming(
        &chorus(&["stress", "--scenario", "nope"], &[]),
        &["nope", "known scenarios", "matmul"],
    );
    fails_naming(
        &chorus(&["stress", "--device", "nope"], &[]),
        &["nope", "cpu"],
    );
    fails_naming(
        &chorus(&["info", "--device", "nope"], &[]),
        &["nope", "cpu"],
    );
    fails_naming(&chorus(&["stress", "--threads", "0"], &[]), &["--threads"]);
    fails_naming(
        &chorus(&["stress", "--iters", "3"], &[("CHORUS_STREAMS", "banana")]),
        &["CHORUS_STREAMS"],
    );
}

#[test]
fn values_too_large_are_errors_not_panics() {
    for (args, name) in [
        (
            &["bench", "batching", "--max-delay-ms", "1e30"][..],
            "--max-delay-ms",
        ),
        (
            &["bench", "batching", "--max-batch", "100000000"][..],
            "--max-batch",
        ),
        (
            &["bench", "batching", "--requests", "10000000000"][..],
            "--requests",
        ),
        (&["stress", "--iters", "10000000000"][..], "--iters"),
    ] {
        let o = chorus(args, &[]);
        fails_naming(&o, &[name]);
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}

/// The seed's round 1: 64 threads × 200 iterations of randn/matmul/sum with a synchronize every
/// 20, every result bit-identical to the single-threaded recomputation (small matrices for CI).
#[test]
fn seed_round_64_threads_200_iterations() {
    let v = json_ok(&chorus(
        &[
            "stress",
            "--threads",
            "64",
            "--iters",
            "200",
            "--sync-every",
            "20",
            "--size",
            "8",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["ops"], 12_800);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verified"], 12_800);
}

/// The seed's round 1 with blocks forced across streams, where a missing cross-stream fence
/// shows as wrong results (with the defaults each thread's cache keeps its blocks on its own
/// stream, so no block ever changes streams): no thread cache; no thread cache and a tight
/// memory limit (running out, reclaiming, synchronizing); exclusive streams without a cache.
#[test]
fn seed_round_with_blocks_crossing_streams() {
    for env in [
        &[("CHORUS_THREAD_CACHE", "0")][..],
        // 64 threads' operands and the results kept for checking need about 10 MB: at 12 MB
        // threads run out, reclaim and retry (measured: 16 to 32 retries a round).
        &[("CHORUS_THREAD_CACHE", "0"), ("CHORUS_MEMORY_LIMIT", "12M")][..],
        &[
            ("CHORUS_THREAD_CACHE", "0"),
            ("CHORUS_STREAM_POLICY", "exclusive"),
            ("CHORUS_STREAMS", "65"),
        ][..],
    ] {
        let o = chorus(
            &[
                "stress",
                "--threads",
                "64",
                "--iters",
                "200",
                "--sync-every",
                "20",
                "--size",
                "64",
                "--json",
            ],
            env,
        );
        let v = json_ok(&o);
        assert_eq!(
            (&v["ops"], &v["errors"], &v["verified"]),
            (&12_800.into(), &0.into(), &12_800.into()),
            "{env:?}: {v}"
        );
    }
}

/// The seed's round 2: 20 threads × 500 iterations with mean, on exclusive streams.
#[test]
fn seed_round_20_threads_500_iterations_with_mean() {
    let v = json_ok(&chorus(
        &[
            "stress",
            "--threads",
            "20",
            "--iters",
            "500",
            "--sync-every",
            "20",
            "--size",
            "8",
            "--with-mean",
            "--json",
        ],
        &[("CHORUS_STREAM_POLICY", "exclusive")],
    ));
    assert_eq!(v["ops"], 10_000);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verified"], 10_000);
}

/// The seed's other rounds, 4 threads each, every result checked against a single-threaded
/// recomputation.
#[test]
fn seed_scenarios_attention_conv_reduce() {
    for scenario in ["attention", "conv", "reduce"] {
        let v = json_ok(&chorus(
            &[
                "stress",
                "--scenario",
                scenario,
                "--threads",
                "4",
                "--iters",
                "6",
                "--sync-every",
                "2",
                "--size",
                "32",
                "--json",
            ],
            &[],
        ));
        assert_eq!(v["scenario"], scenario);
        assert_eq!(v["ops"], 24, "{scenario}");
        assert_eq!(v["errors"], 0, "{scenario}");
        assert_eq!(v["verified"], 24, "{scenario}");
    }
}

/// The model rounds: one MLP and one transformer shared by 4 threads, every result equal to a
/// single-threaded run of the same input through the same model.
#[test]
fn seed_scenarios_mlp_and_transformer() {
    for scenario in ["mlp", "transformer"] {
        let v = json_ok(&chorus(
            &[
                "stress",
                "--scenario",
                scenario,
                "--threads",
                "4",
                "--iters",
                "3",
                "--size",
                "64",
                "--json",
            ],
            &[],
        ));
        assert_eq!(v["ops"], 12, "{scenario}");
        assert_eq!(v["errors"], 0, "{scenario}");
        assert_eq!(v["verified"], 12, "{scenario}");
    }
}

/// The batching round: 8 threads share one queue; every output is bit-identical to a direct
/// call on its batch and within tolerance of a direct batch-1 call.
#[test]
fn stress_scenario_batching() {
    let v = json_ok(&chorus(
        &[
            "stress",
            "--scenario",
            "batching",
            "--threads",
            "8",
            "--iters",
            "5",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["scenario"], "batching");
    assert_eq!(v["ops"], 40);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verified"], 40);
}

/// `chorus bench batching` on a tiny sweep: one row per (max_batch, max_delay), both baselines.
#[test]
fn bench_batching_json() {
    let v = json_ok(&chorus(
        &[
            "bench",
            "batching",
            "--clients",
            "4",
            "--requests",
            "3",
            "--max-batch",
            "2,4",
            "--max-delay-ms",
            "0,0.5",
            "--repeat",
            "3",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["clients"], 4);
    assert_eq!(v["repeat"], 3);
    // Every row is the median of its three runs.
    let median_of_runs = |row: &serde_json::Value| {
        let mut runs: Vec<f64> = row["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(runs.len(), 3, "{row}");
        runs.sort_by(f64::total_cmp);
        assert_eq!(row["samples_per_s"].as_f64().unwrap(), runs[1], "{row}");
    };
    median_of_runs(&v["direct_threads"]);
    v["direct_batch"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(median_of_runs);
    v["batching"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(median_of_runs);
    assert!(v["direct_threads"]["samples_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["direct_batch"].as_array().unwrap().len(), 2);
    let rows = v["batching"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert!(r["samples_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["mean_batch"].as_f64().unwrap() >= 1.0, "{r}");
        assert!(
            r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap(),
            "{r}"
        );
        // The process's CPU time per request: the clients and workers did work.
        #[cfg(unix)]
        {
            let cpu = r["cpu_us_per_sample"].as_f64().unwrap();
            let clients = r["client_cpu_us_per_sample"].as_f64().unwrap();
            assert!(cpu > 0.0 && clients > 0.0 && clients <= cpu, "{r}");
        }
    }
    #[cfg(unix)]
    assert!(v["direct_threads"]["cpu_us_per_sample"].as_f64().unwrap() > 0.0);
}

/// `--outstanding`: each client keeps several requests in the queue; all are counted.
#[test]
fn bench_batching_with_requests_in_flight() {
    let v = json_ok(&chorus(
        &[
            "bench",
            "batching",
            "--clients",
            "2",
            "--outstanding",
            "3",
            "--requests",
            "7",
            "--max-batch",
            "8",
            "--max-delay-ms",
            "2",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["outstanding"], 3);
    let row = &v["batching"][0];
    assert!(row["samples_per_s"].as_f64().unwrap() > 0.0, "{row}");
    // Six requests in flight at a time from two clients, and a delay that waits for them:
    // batches larger than the two that two blocking clients could make, never more than six.
    let mean = row["mean_batch"].as_f64().unwrap();
    assert!(mean > 2.0 && mean <= 6.0, "{row}");
}

#[test]
fn bench_rejects_an_unknown_suite() {
    fails_naming(
        &chorus(&["bench", "nope"], &[]),
        &["nope", "mlp", "batching"],
    );
}

/// `chorus embed` on the public sentences (one empty), in jsonl and npy: each line's embedding
/// reaches cosine >= 0.9999 with sentence-transformers', and both formats hold the same
/// numbers for the same batches. A line that is not UTF-8 fails the run, naming the line.
#[test]
fn embed_writes_the_reference_embeddings() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(chorus_testing::golden_dir().join("minilm_public.json")).unwrap(),
    )
    .unwrap();
    let sentences: Vec<&str> = (golden["sentences"].as_array().unwrap().iter())
        .map(|s| s.as_str().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("chorus-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, sentences.join("\n") + "\n").unwrap();
    let model = chorus_testing::minilm_dir();
    let (model, input_s) = (model.to_str().unwrap(), input.to_str().unwrap());
    let o = chorus(
        &[
            "embed",
            "--model",
            model,
            "--input",
            input_s,
            "--batch-size",
            "5",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("embedded 12 sentences"),
        "{}",
        stderr(&o)
    );
    let rows: Vec<Vec<f32>> = (stdout(&o).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), sentences.len());
    for (i, (row, want)) in rows
        .iter()
        .zip(golden["embeddings"].as_array().unwrap())
        .enumerate()
    {
        let want: Vec<f64> = (want.as_array().unwrap().iter())
            .map(|x| x.as_f64().unwrap())
            .collect();
        let dot: f64 = row.iter().zip(&want).map(|(a, b)| f64::from(*a) * b).sum();
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let c =
            dot / (norm(&mut row.iter().map(|&x| f64::from(x))) * norm(&mut want.iter().copied()));
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }
    let npy = dir.join("out.npy");
    let o = chorus(
        &[
            "embed",
            "--model",
            model,
            "--input",
            input_s,
            "--batch-size",
            "5",
            "--format",
            "npy",
            "--output",
            npy.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&npy).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + len])
        .unwrap()
        .contains("'shape': (12, 384)"));
    let floats: Vec<f32> = (bytes[10 + len..].chunks_exact(4))
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The same batches (of 5): the same bits.
    let flat = rows.concat();
    let differ: Vec<(usize, f32, f32)> = (floats.iter().zip(&flat).enumerate())
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, *a, *b))
        .take(5)
        .collect();
    assert!(differ.is_empty(), "npy and jsonl differ at {differ:?}");
    std::fs::write(&input, b"fine\n\xc3\x28 broken\nfine\n").unwrap();
    let o = chorus(&["embed", "--model", model, "--input", input_s], &[]);
    fails_naming(&o, &["line 2 is not valid UTF-8"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
