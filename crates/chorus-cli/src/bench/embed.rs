//! `chorus bench embed`: the sentence encoder, measured as
//! `../shared/bench/torch_minilm_baseline.py` measures sentence-transformers (and ONNX Runtime)
//! on the same corpus, so that the two JSON outputs compare section by section.
//!
//! - **offline**: the corpus (its first `--sentences`) encoded at batch sizes 32, 128 and 512,
//!   end to end (tokenization, forward, pooling, normalisation, results on the host), sorted by
//!   length first and put back in order after, as sentence-transformers' `encode` does:
//!   sentences/s and tokens/s, timed for at least 4 s after one warm-up pass.
//! - **online**: T client threads (1, 4, 16, 64), each embedding one sentence at a time over
//!   its share of the corpus (40 each, as the script on the CPU): directly
//!   (`SentenceEncoder::encode` on each thread's stream) and through a `SentenceQueue`
//!   (`max_batch` 64, `max_delay` 2 ms, `max_batch_tokens` 8192, 2 workers): sentences/s,
//!   p50/p99 latency.
//! - **forward**: the transformer alone at fixed (batch, length) shapes (1 × 16, 32 × 32),
//!   ids made up front: forwards/s and tokens/s, for at least 2 s.

use crate::device::{self, DeviceChoice};
use anyhow::Context as _;
use chorus::batch::BatchConfig;
use chorus::text::{SentenceEncoder, SentenceQueue};
use chorus::Tensor;
use serde_json::{json, Value};
use std::path::PathBuf;
// sync-shim: allowed (the CLI is no part of the runtime's modelled protocols)
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `chorus bench embed`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedBenchArgs {
    /// Embed: the sentence-transformers folder (`scripts/fetch-model` prints MiniLM's).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Embed: the corpus, one sentence a line (`../shared/bench/minilm_corpus.txt`).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "../shared/bench/minilm_corpus.txt"
    )]
    corpus: PathBuf,
    /// Embed: how many of the corpus's sentences (2000 on the CPU, as the script).
    #[arg(long, default_value_t = 2000)]
    sentences: usize,
}

/// Runs the suite (module docs) and prints its JSON.
///
/// # Errors
/// No `--model`, an unreadable corpus, a model that does not load, or a failed encode.
pub(crate) fn run(choice: &DeviceChoice, args: &EmbedBenchArgs) -> anyhow::Result<Value> {
    let model = args
        .model
        .as_ref()
        .context("bench embed needs --model DIR (scripts/fetch-model prints MiniLM's)")?;
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading the corpus {}", args.corpus.display()))?;
    let corpus: Vec<&str> = (text.lines())
        .filter(|l| !l.trim().is_empty())
        .take(args.sentences)
        .collect();
    anyhow::ensure!(
        !corpus.is_empty(),
        "the corpus {} is empty",
        args.corpus.display()
    );
    let device = device::build(choice)?;
    let encoder = Arc::new(SentenceEncoder::from_dir(&device, model).context("loading the model")?);
    let tokens: usize = (corpus.iter())
        .map(|s| encoder.tokenizer().count(s))
        .sum::<Result<usize, _>>()?;
    let mut out = json!({
        "device": device.describe(),
        "corpus": {"file": args.corpus.file_name().map(|f| f.to_string_lossy()), "sentences": corpus.len()},
        "offline": [], "online": [], "forward": [],
    });
    for b in [32, 128, 512] {
        let (calls, dt) = timed(Duration::from_secs(4), || offline(&encoder, &corpus, b))?;
        let r = json!({"batch_size": b, "sentences_per_s": (calls * corpus.len()) as f64 / dt,
            "tokens_per_s": (calls * tokens) as f64 / dt});
        eprintln!("offline {r}");
        out["offline"].as_array_mut().expect("array").push(r);
    }
    let config = || {
        BatchConfig::builder(&device)
            .max_batch(64)
            .max_delay(Duration::from_millis(2))
            .max_batch_tokens(Some(8192))
            .workers(2)
    };
    let queue = SentenceQueue::new(Arc::clone(&encoder), config())?;
    for mode in ["direct", "queue"] {
        for threads in [1, 4, 16, 64] {
            let r = online(&encoder, &queue, &corpus, threads, mode == "queue")?;
            eprintln!("online {r}");
            out["online"].as_array_mut().expect("array").push(r);
        }
    }
    for (b, s) in [(1usize, 16usize), (32, 32)] {
        let ids: Vec<i64> = (0..b * s)
            .map(|i| 1000 + (i as i64 * 7919) % 28000)
            .collect();
        let ids = Tensor::from_slice(&device, &ids, &[b, s])?;
        let mask = Tensor::from_slice(&device, &vec![1i64; b * s], &[b, s])?;
        let fwd = || -> anyhow::Result<()> {
            let h = encoder.model().forward_inputs(&ids, &mask, None)?;
            device.current_stream()?.synchronize()?;
            drop(h);
            Ok(())
        };
        let (calls, dt) = timed(Duration::from_secs(2), fwd)?;
        let r = json!({"batch": b, "seq": s, "forwards_per_s": calls as f64 / dt,
            "tokens_per_s": (calls * b * s) as f64 / dt});
        eprintln!("forward {r}");
        out["forward"].as_array_mut().expect("array").push(r);
    }
    Ok(out)
}

/// Runs `f` once (warm-up), then until `min` has passed and at least twice: (calls, seconds).
fn timed(min: Duration, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(usize, f64)> {
    f()?;
    let start = Instant::now();
    let mut calls = 0;
    loop {
        f()?;
        calls += 1;
        if calls >= 2 && start.elapsed() >= min {
            return Ok((calls, start.elapsed().as_secs_f64()));
        }
    }
}

/// The corpus encoded at batch size `b`, longest first, results put back in order.
fn offline(encoder: &SentenceEncoder, corpus: &[&str], b: usize) -> anyhow::Result<()> {
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(corpus[i].len()));
    let mut out = vec![Vec::new(); corpus.len()];
    for chunk in order.chunks(b) {
        let texts: Vec<&str> = chunk.iter().map(|&i| corpus[i]).collect();
        for (&i, e) in chunk.iter().zip(encoder.encode(&texts)?) {
            out[i] = e;
        }
    }
    Ok(())
}

/// `threads` clients, one sentence a call (module docs).
fn online(
    encoder: &SentenceEncoder,
    queue: &SentenceQueue,
    corpus: &[&str],
    threads: usize,
    queued: bool,
) -> anyhow::Result<Value> {
    const PER_THREAD: usize = 40;
    // sync-shim: allowed (as the import above)
    let barrier = std::sync::Barrier::new(threads + 1);
    let (lat, dt) = std::thread::scope(|s| -> anyhow::Result<(Vec<f64>, f64)> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let mine: Vec<&str> = (0..PER_THREAD)
                        .map(|j| corpus[(t + threads * j) % corpus.len()])
                        .collect();
                    let one = |s: &str| -> anyhow::Result<Vec<f32>> {
                        Ok(if queued {
                            queue.embed(s)?
                        } else {
                            encoder.encode(&[s])?.remove(0)
                        })
                    };
                    one(mine[0])?; // warm-up
                    barrier.wait();
                    let mut lat = Vec::with_capacity(PER_THREAD);
                    for s in mine {
                        let t0 = Instant::now();
                        one(s)?;
                        lat.push(t0.elapsed().as_secs_f64());
                    }
                    Ok(lat)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        Ok((lat, t0.elapsed().as_secs_f64()))
    })?;
    let mut lat = lat;
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| 1e3 * lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok(
        json!({"mode": if queued { "queue" } else { "direct" }, "threads": threads,
        "sentences_per_s": lat.len() as f64 / dt, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}),
    )
}
