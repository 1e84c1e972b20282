//! What waking a blocked thread costs, and how long the woken thread takes to run: why a batch
//! worker wakes its clients itself, one after another (BENCHMARKS.md, "Chained wake-ups").
//!
//! Sleepers block on a `RankedMutex` + `Condvar` pair each, as a ticket's receiver does
//! (`crates/chorus-batch/src/slot.rs`). Every round (300 µs apart, so that the sleepers' cores
//! go idle as between batches):
//! - `serial`: one waker stores a value and notifies each of `n` sleepers in turn (what a worker
//!   does at the end of a batch); prints the waker's time per notification (its *cost*) and the
//!   median time from a sleeper's notification to the sleeper running again (the *latency*);
//! - `chain`: the waker notifies the first sleeper only, and each woken sleeper the next; prints
//!   the median latency per hop.
//!
//! `cargo run --release -p chorus-experiments --bin wake_latency`

use chorus_sync::{rank, Arc, Condvar, RankedMutex};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const ROUNDS: u32 = 2000;

/// A sleeper's slot: the last round it was woken for, and when its notification was sent.
struct Slot {
    state: RankedMutex<(u32, Option<Instant>)>,
    woken: Condvar,
}

impl Slot {
    fn notify(&self, round: u32) {
        *self.state.lock() = (round, Some(Instant::now()));
        self.woken.notify_one();
    }
}

/// The waker's mean time per round, and the sleepers' latencies (µs).
fn run(n: usize, chain: bool) -> (f64, Vec<f64>) {
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..n)
            .map(|_| Slot {
                state: RankedMutex::new(rank::BATCH_TICKET, (0, None)),
                woken: Condvar::new(),
            })
            .collect(),
    );
    let round_done = Arc::new(Barrier::new(n + 1));
    let sleepers: Vec<_> = (0..n)
        .map(|i| {
            let (slots, round_done) = (Arc::clone(&slots), Arc::clone(&round_done));
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(ROUNDS as usize);
                for round in 1..=ROUNDS {
                    let mut state = slots[i].state.lock();
                    while state.0 < round {
                        state = slots[i].woken.wait(state);
                    }
                    let sent = state.1.expect("set with the round");
                    drop(state);
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                    if chain && i + 1 < n {
                        slots[i + 1].notify(round);
                    }
                    round_done.wait();
                }
                latencies
            })
        })
        .collect();
    let mut waking = Duration::ZERO;
    for round in 1..=ROUNDS {
        std::thread::sleep(Duration::from_micros(300));
        let t = Instant::now();
        for slot in slots.iter().take(if chain { 1 } else { n }) {
            slot.notify(round);
        }
        waking += t.elapsed();
        round_done.wait();
    }
    let mut latencies: Vec<f64> = sleepers
        .into_iter()
        .flat_map(|s| s.join().expect("sleeper"))
        .collect();
    latencies.sort_by(f64::total_cmp);
    (waking.as_secs_f64() * 1e6 / f64::from(ROUNDS), latencies)
}

fn main() {
    for n in [1usize, 8, 32] {
        let (cost, latencies) = run(n, false);
        println!(
            "serial, {n:2} sleepers: waker {:5.2} µs per notification; latency median {:5.1} µs",
            cost / n as f64,
            latencies[latencies.len() / 2]
        );
        let (_, latencies) = run(n, true);
        println!(
            "chain,  {n:2} sleepers: latency per hop median {:5.1} µs",
            latencies[latencies.len() / 2]
        );
    }
}
