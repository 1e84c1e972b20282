//! Loom models of a CPU stream's protocol (`stream.rs`): commands run exactly once and in push
//! order whether the worker or a waiting host thread runs them, and nobody is left asleep with
//! work queued (loom reports a deadlock if the worker or a waiter never wakes).
//!
//! Run with `RUSTFLAGS="--cfg chorus_loom" cargo test -p chorus-cpu --lib --release -- loom_`.

use super::{Command, CpuStream};
use chorus_core::StreamId;
use chorus_sync::atomic::{AtomicUsize, Ordering};
use chorus_sync::{thread, Arc};

/// Counts the commands of one pusher that ran; `usize::MAX` once one ran out of order or twice.
/// (The stream contains a panicking callback, so the check cannot be an assert inside it.)
type Log = Arc<AtomicUsize>;

/// A command that checks it runs `index`-th among the commands counted by `log`.
fn step(log: &Log, index: usize) -> Command {
    let log = Arc::clone(log);
    Command::Callback(Box::new(move || {
        let ok = log.compare_exchange(index, index + 1, Ordering::SeqCst, Ordering::SeqCst);
        if ok.is_err() {
            log.store(usize::MAX, Ordering::SeqCst);
        }
    }))
}

#[test]
fn loom_host_helping_the_worker_runs_each_command_once_in_order() {
    loom::model(|| {
        let s = CpuStream::spawn(StreamId::new(1), Arc::new(AtomicUsize::new(0))).unwrap();
        let log = Arc::new(AtomicUsize::new(0));
        s.shared.push(step(&log, 0));
        let target = s.shared.push(step(&log, 1));
        assert!(s.shared.wait_until(target, None));
        assert_eq!(log.load(Ordering::SeqCst), 2);
        drop(s);
    });
}

#[test]
fn loom_two_hosts_waiting_on_one_stream() {
    loom::model(|| {
        let s = CpuStream::spawn(StreamId::new(1), Arc::new(AtomicUsize::new(0))).unwrap();
        // Each host's commands run in its push order; the two interleave as they were pushed.
        let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let shared = Arc::clone(&s.shared);
        let b2 = Arc::clone(&b);
        let other = thread::spawn(move || {
            shared.push(step(&b2, 0));
            let t = shared.push(step(&b2, 1));
            assert!(shared.wait_until(t, None));
            assert_eq!(b2.load(Ordering::SeqCst), 2);
        });
        let t = s.shared.push(step(&a, 0));
        assert!(s.shared.wait_until(t, None));
        assert_eq!(a.load(Ordering::SeqCst), 1);
        other.join().unwrap();
        drop(s);
        assert_eq!(b.load(Ordering::SeqCst), 2);
    });
}
