//! The parallel phase of `chorus stress`: one scoped thread per `--threads`, each running its
//! warm-up rounds, meeting the others before the clock starts (`--warmup`), then its timed
//! rounds, keeping every result for verification.

use super::StressArgs;
use crate::workload::{Params, RoundKey};
use anyhow::Context as _;
use chorus::{Device, Tensor};
use indicatif::ProgressBar;
use std::sync::mpsc;
use std::time::Instant;

/// A worker's side of the meeting before the clock starts (`--warmup`): it reports that it is
/// ready (also when it unwinds or returns early: on drop) and waits for the start.
struct Gate {
    ready: Option<mpsc::Sender<()>>,
    start: mpsc::Receiver<()>,
}

impl Gate {
    /// Reports this thread ready and waits until the clock starts (or the phase is called off:
    /// the main thread dropped its sender).
    fn ready_and_wait(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        let _ = self.start.recv();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }
}

/// What one thread of the parallel phase produced.
#[derive(Debug, Default)]
pub(super) struct ThreadRun {
    /// The results of each round that enqueued without error.
    pub(super) results: Vec<(RoundKey, Vec<Tensor>)>,
    /// One message per error.
    pub(super) errors: Vec<String>,
}

/// Runs the parallel phase: one scoped thread per `--threads`, joined before returning; also
/// returns when the clock started (module docs).
pub(super) fn run_threads(
    device: &Device,
    args: &StressArgs,
    params: &Params<'_>,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<ThreadRun>, Instant)> {
    let mut start = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    let runs = std::thread::scope(|s| -> anyhow::Result<Vec<ThreadRun>> {
        let mut handles = Vec::new();
        let mut starts = Vec::new();
        for thread in 0..args.threads {
            let gate = (args.warmup > 0).then(|| {
                let (start_tx, start_rx) = mpsc::channel();
                starts.push(start_tx);
                Gate {
                    ready: Some(ready_tx.clone()),
                    start: start_rx,
                }
            });
            // A failed spawn returns at once: dropping `starts` releases the waiting threads.
            let handle = std::thread::Builder::new()
                .name(format!("stress-{thread}"))
                .spawn_scoped(s, move || worker(device, args, params, thread, bar, gate))
                .with_context(|| format!("spawning stress thread {thread}"))?;
            handles.push(handle);
        }
        if args.warmup > 0 {
            for _ in 0..args.threads {
                let _ = ready_rx.recv();
            }
            start = Instant::now();
            for s in &starts {
                let _ = s.send(());
            }
        }
        Ok(handles
            .into_iter()
            .enumerate()
            .map(|(thread, h)| {
                // The panic message was already printed by the panic hook.
                h.join().unwrap_or_else(|_| ThreadRun {
                    results: Vec::new(),
                    errors: vec![format!("thread {thread} panicked; its results are lost")],
                })
            })
            .collect())
    })?;
    Ok((runs, start))
}

/// The rounds of one thread: its warm-up rounds (`--warmup`; seeds after those of its timed
/// rounds, results dropped), then the timed ones.
fn worker(
    device: &Device,
    args: &StressArgs,
    params: &Params<'_>,
    thread: u64,
    bar: &ProgressBar,
    mut gate: Option<Gate>,
) -> ThreadRun {
    let mut run = ThreadRun {
        // Grown as rounds complete beyond this (a huge `--iters` reserves nothing up front).
        results: Vec::with_capacity(args.iters.min(4096).try_into().unwrap_or(0)),
        errors: Vec::new(),
    };
    let graph = if args.graph {
        match args.scenario.capture(device, params) {
            Ok(g) => Some(g),
            Err(e) => {
                run.errors
                    .push(format!("thread {thread}: capturing the graph: {e}"));
                bar.inc(args.iters);
                return run;
            }
        }
    } else {
        None
    };
    let round = |key| match &graph {
        Some(g) => args.scenario.graph_round(device, params, key, g),
        None => args.scenario.round(device, params, key),
    };
    if let Some(gate) = &mut gate {
        for i in 0..args.warmup {
            let iter = args.iters.saturating_add(i);
            if let Err(e) = round(RoundKey { thread, iter }) {
                run.errors
                    .push(format!("thread {thread}, warm-up round {i}: {e}"));
            }
        }
        if let Err(e) = device.current_stream().and_then(|s| s.synchronize()) {
            run.errors
                .push(format!("thread {thread}, after warm-up: synchronize: {e}"));
        }
        gate.ready_and_wait();
    }
    for iter in 0..args.iters {
        let key = RoundKey { thread, iter };
        match round(key) {
            Ok(out) => run.results.push((key, out)),
            Err(e) => run
                .errors
                .push(format!("thread {thread}, iteration {iter}: {e}")),
        }
        if args.sync_every > 0 && (iter + 1) % args.sync_every == 0 {
            if let Err(e) = device
                .current_stream()
                .and_then(|stream| stream.synchronize())
            {
                run.errors.push(format!(
                    "thread {thread}, iteration {iter}: synchronize: {e}"
                ));
            }
        }
        bar.inc(1);
    }
    run
}
