//! Completion dispatch: each handler runs exactly once (or, if pushed after the thread exited,
//! is dropped without running, on a thread of its own), and close never loses a queued handler.

use crate::completion::Completion;
use chorus_sync::atomic::{AtomicUsize, Ordering};
use chorus_sync::{thread, Arc};

struct Token(Arc<AtomicUsize>);
impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn each_handler_exactly_once() {
    loom::model(|| {
        let c = Completion::new();
        let worker = c.spawn("completion".into()).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let (c, ran) = (c.clone(), ran.clone());
                thread::spawn(move || {
                    c.push(Box::new(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    }))
                })
            })
            .collect();
        pushers.into_iter().for_each(|h| h.join().unwrap());
        c.close();
        worker.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn push_racing_close_runs_or_drops_never_both() {
    loom::model(|| {
        let c = Completion::new();
        let worker = c.spawn("completion".into()).unwrap();
        let worker_id = worker.thread().id();
        let (ran, gone) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let on_worker = Arc::new(AtomicUsize::new(0));
        let (c2, ran2, gone2, on_worker2) =
            (c.clone(), ran.clone(), gone.clone(), on_worker.clone());
        let pusher = thread::spawn(move || {
            let token = Token(gone2);
            let where_dropped = DroppedOn(worker_id, on_worker2);
            c2.push(Box::new(move || {
                let (_t, _w) = (token, where_dropped);
                ran2.fetch_add(1, Ordering::SeqCst);
            }));
        });
        c.close();
        pusher.join().unwrap();
        worker.join().unwrap();
        // A handler pushed too late is dropped on a thread of its own: wait for it.
        while gone.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        // Destroyed exactly once.
        assert_eq!(gone.load(Ordering::SeqCst), 1);
        // Accepted (pushed before the thread exited: the completion thread ends up holding it)
        // means run; refused (dropped on a thread of its own) means not run. Exactly one.
        assert_eq!(
            ran.load(Ordering::SeqCst),
            on_worker.load(Ordering::SeqCst),
            "a handler the completion thread took must run, one it refused must not"
        );
    });
}

/// Counts drops that happen on the completion thread (`.0`).
struct DroppedOn(thread::ThreadId, Arc<AtomicUsize>);
impl Drop for DroppedOn {
    fn drop(&mut self) {
        if thread::current().id() == self.0 {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
}
