//! The queue state machine (`crate::queue`) and the result slot (`crate::slot`), driven the way
//! submitters, workers, tickets and shutdown drive them, with opaque items instead of tensors.
//!
//! Each model checks that every accepted request gets exactly one outcome and that its waiter
//! wakes up (a lost wake-up leaves a thread blocked forever, which loom reports as a deadlock),
//! and that a refused request is handed back. `max_delay` is zero (loom has no clock: its timed
//! waits never time out), so every waiting item is ready at once; the timer's models set a zero
//! timeout, so every waiting item is also due at once.

use crate::config::ShutdownMode;
use crate::queue::{Next, Policy, Push, Queue};
use crate::slot::{channel, Abandon, Completer, Receiver, Take};
use chorus_sync::{thread, Arc};
use std::time::Duration;

/// A request: its value, and where its outcome goes.
type Item = (u32, Completer<u32>);
type Q = Queue<u8, Item>;

/// The outcome a worker gives request `v`.
fn ran(v: u32) -> u32 {
    10 * v
}
/// The outcome of a request failed by shutdown or cancelled.
const FAILED: u32 = 0;
/// The outcome of a request whose completer was dropped.
const ABANDONED: u32 = u32::MAX;

impl Abandon for u32 {
    fn abandoned() -> Self {
        ABANDONED
    }
}

/// The outcome of a request that expired.
const EXPIRED: u32 = 7;

fn queue(max_batch: usize, capacity: usize) -> Arc<Q> {
    queue_with(max_batch, capacity, None)
}

fn queue_with(max_batch: usize, capacity: usize, timeout: Option<Duration>) -> Arc<Q> {
    Arc::new(Queue::new(Policy {
        max_batch,
        max_delay: Duration::ZERO,
        preferred: Vec::new(),
        capacity,
        timeout,
    }))
}

/// The timer thread: expires requests until the queue stops it; returns how many.
fn expire(q: &Q) -> usize {
    let mut n = 0;
    while let Some(expired) = q.next_expired() {
        assert!(!expired.is_empty());
        for qd in expired {
            qd.item.1.complete(EXPIRED);
            n += 1;
        }
    }
    n
}

/// A worker of a queue with timeouts: runs batches and expires what its sweeps hand it.
fn serve_or_expire(q: &Q) -> usize {
    let mut handled = 0;
    while let Next::Work { batch, expired } = q.next() {
        for qd in batch {
            qd.item.1.complete(ran(qd.item.0));
            handled += 1;
        }
        for qd in expired {
            qd.item.1.complete(EXPIRED);
            handled += 1;
        }
    }
    handled
}

/// A worker: runs batches until the queue stops it; returns how many requests it ran.
fn serve(q: &Q) -> usize {
    let mut served = 0;
    loop {
        match q.next() {
            Next::Stop => return served,
            Next::Work { batch, expired } => {
                assert!(expired.is_empty(), "no timeouts in these models");
                assert!(!batch.is_empty());
                for qd in batch {
                    let (v, done) = qd.item;
                    done.complete(ran(v));
                    served += 1;
                }
            }
        }
    }
}

/// Submits `v` to group `key`: the receiver if queued (with its id), else `None` (refused,
/// the item handed back and checked).
fn submit(q: &Q, key: u8, v: u32) -> Option<(u64, Receiver<u32>)> {
    let (done, rx) = channel();
    match q.push(key, 1, usize::MAX, (v, done)) {
        Push::Queued { id, .. } => Some((id, rx)),
        Push::Full((back, done)) | Push::Closed((back, done)) => {
            assert_eq!(back, v, "the refused item is handed back");
            done.discard();
            None
        }
    }
}

fn wait(rx: &Receiver<u32>) -> u32 {
    match rx.wait(None) {
        Take::Ready(v) => v,
        Take::Pending | Take::Taken => panic!("an untimed wait returns the value"),
    }
}

fn fail_all(q: &Q, mode: ShutdownMode) -> usize {
    let failed = q.shutdown(mode);
    let n = failed.len();
    for qd in failed {
        qd.item.1.complete(FAILED);
    }
    n
}

#[test]
fn every_request_completed_once_and_woken() {
    loom::model(|| {
        // One worker, two submitters in two groups (never mixed in one batch).
        let q = queue(2, 4);
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let other = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                let (_, rx) = submit(&q, 0, 1).expect("room for it");
                wait(&rx)
            })
        };
        let (_, rx) = submit(&q, 1, 2).expect("room for it");
        assert_eq!(wait(&rx), ran(2));
        assert_eq!(other.join().unwrap(), ran(1));
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        assert_eq!(worker.join().unwrap(), 2);
    });
}

#[test]
fn two_idle_workers_no_lost_wakeup() {
    loom::model(|| {
        // Batches of one: both workers may be needed; neither may sleep through a request.
        let q = queue(1, 4);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
                thread::spawn(move || serve(&q))
            })
            .collect();
        let a = submit(&q, 0, 1).expect("room");
        let b = submit(&q, 0, 2).expect("room");
        assert_eq!(wait(&a.1), ran(1));
        assert_eq!(wait(&b.1), ran(2));
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        let served: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(served, 2);
    });
}

#[test]
fn shutdown_fail_racing_submit_gives_each_request_one_outcome() {
    loom::model(|| {
        let q = queue(2, 4);
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let submitter = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                let accepted: Vec<_> = (1..=2)
                    .filter_map(|v| submit(&q, 0, v).map(|r| (v, r)))
                    .collect();
                // Each accepted request: run, or failed by the shutdown; never both, never lost.
                for (v, (_, rx)) in &accepted {
                    let got = wait(rx);
                    assert!(got == ran(*v) || got == FAILED, "request {v}: {got}");
                }
                accepted.len()
            })
        };
        let failed = fail_all(&q, ShutdownMode::Fail);
        let accepted = submitter.join().unwrap();
        let served = worker.join().unwrap();
        assert_eq!(
            served + failed,
            accepted,
            "every accepted request has one outcome"
        );
        // After shutdown, everything is refused.
        assert!(submit(&q, 0, 9).is_none());
    });
}

#[test]
fn shutdown_drain_racing_submit_runs_every_accepted_request() {
    loom::model(|| {
        let q = queue(2, 4);
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let submitter = {
            let q = Arc::clone(&q);
            thread::spawn(move || {
                let mut accepted = 0;
                for v in 1..=2 {
                    if let Some((_, rx)) = submit(&q, 0, v) {
                        assert_eq!(wait(&rx), ran(v));
                        accepted += 1;
                    }
                }
                accepted
            })
        };
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        let accepted = submitter.join().unwrap();
        assert_eq!(worker.join().unwrap(), accepted);
    });
}

#[test]
fn cancel_racing_worker_completes_once() {
    loom::model(|| {
        // A ticket's timeout (cancel) races the worker taking the request: exactly one of the
        // two owns it and completes it.
        let q = queue(2, 4);
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let (id, rx) = submit(&q, 0, 1).expect("room");
        let cancelled = q.cancel(id).map(|qd| qd.item.1.complete(FAILED)).is_some();
        let got = wait(&rx);
        assert_eq!(got, if cancelled { FAILED } else { ran(1) });
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        assert_eq!(worker.join().unwrap(), usize::from(!cancelled));
    });
}

#[test]
fn full_queue_refuses_and_hands_back() {
    loom::model(|| {
        // Capacity 1, two submitters, no worker yet: one is queued, the other refused at once.
        let q = queue(1, 1);
        let other = {
            let q = Arc::clone(&q);
            thread::spawn(move || submit(&q, 0, 1))
        };
        let mine = submit(&q, 0, 2);
        let theirs = other.join().unwrap();
        assert!(mine.is_some() != theirs.is_some(), "exactly one fits");
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let (v, (_, rx)) = mine
            .map(|r| (2, r))
            .or(theirs.map(|r| (1, r)))
            .expect("one");
        assert_eq!(wait(&rx), ran(v));
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        assert_eq!(worker.join().unwrap(), 1);
    });
}

#[test]
fn async_receiver_is_woken() {
    loom::model(|| {
        // A future polls (registering its waker) while the worker completes.
        let q = queue(2, 4);
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve(&q))
        };
        let (_, rx) = submit(&q, 0, 3).expect("room");
        let got = loom::future::block_on(std::future::poll_fn(|cx| match rx.poll(cx.waker()) {
            Take::Ready(v) => std::task::Poll::Ready(v),
            Take::Pending => std::task::Poll::Pending,
            Take::Taken => panic!("taken twice"),
        }));
        assert_eq!(got, ran(3));
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        assert_eq!(worker.join().unwrap(), 1);
    });
}

#[test]
fn dropped_completer_reports_abandoned() {
    loom::model(|| {
        // A worker that loses a request (drops its completer) still wakes the waiter.
        let (done, rx) = channel::<u32>();
        let t = thread::spawn(move || drop(done));
        assert_eq!(wait(&rx), ABANDONED);
        t.join().unwrap();
    });
}

#[test]
fn timer_is_woken_by_a_push_and_stops_at_shutdown() {
    loom::model(|| {
        // No worker: only the timer can take the request out. It may be waiting untimed (the
        // queue empty) when the push comes: the push must wake it.
        let q = queue_with(2, 4, Some(Duration::ZERO));
        let timer = {
            let q = Arc::clone(&q);
            thread::spawn(move || expire(&q))
        };
        let (_, rx) = submit(&q, 0, 1).expect("room");
        assert_eq!(wait(&rx), EXPIRED);
        assert_eq!(fail_all(&q, ShutdownMode::Drain), 0);
        assert_eq!(timer.join().unwrap(), 1);
    });
}

#[test]
fn timer_racing_worker_completes_once() {
    loom::model(|| {
        // The timer and a worker both sweep the due request: exactly one takes it out.
        let q = queue_with(2, 4, Some(Duration::ZERO));
        let timer = {
            let q = Arc::clone(&q);
            thread::spawn(move || expire(&q))
        };
        let worker = {
            let q = Arc::clone(&q);
            thread::spawn(move || serve_or_expire(&q))
        };
        let (_, rx) = submit(&q, 0, 1).expect("room");
        let got = wait(&rx);
        assert!(got == EXPIRED || got == ran(1), "{got}");
        assert_eq!(fail_all(&q, ShutdownMode::Fail), 0);
        let handled = timer.join().unwrap() + worker.join().unwrap();
        assert_eq!(handled, 1, "one outcome");
    });
}
