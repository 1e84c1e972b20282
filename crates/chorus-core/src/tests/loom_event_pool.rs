//! Event pool: ids unique and non-zero; a recycled event never sees its previous owner's signal,
//! even when that signal is delivered late by the device.

use crate::event_pool::EventPool;
use chorus_sync::{thread, Arc, Mutex};

/// A raw event as a backend keeps it: records are numbered; a late signal names its record.
#[derive(Default)]
struct Raw {
    state: Mutex<(u64, bool)>, // (record number, signaled)
}

impl Raw {
    fn record(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        s.1 = false;
        s.0
    }
    fn signal(&self, seq: u64) {
        let mut s = self.state.lock().unwrap();
        if s.0 == seq {
            s.1 = true;
        }
    }
    fn reset(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        s.1 = false;
    }
    fn signaled(&self) -> bool {
        self.state.lock().unwrap().1
    }
}

#[test]
fn recycled_event_never_sees_old_signal() {
    loom::model(|| {
        let pool: Arc<EventPool<Arc<Raw>>> = Arc::new(EventPool::new());
        let (ev, id1) = pool
            .acquire::<()>(false, || Ok(Arc::new(Raw::default())))
            .unwrap();
        let seq = ev.record();
        // The device delivers the signal whenever it likes.
        let dev_ev = ev.clone();
        let device = thread::spawn(move || dev_ev.signal(seq));
        pool.release(ev, false, |e| e.reset());
        let p2 = pool.clone();
        let user = thread::spawn(move || {
            let (ev, id2) = p2
                .acquire::<()>(false, || Ok(Arc::new(Raw::default())))
                .unwrap();
            assert!(
                !ev.signaled(),
                "a recycled event showed its previous owner's signal"
            );
            p2.release(ev, false, |e| e.reset());
            id2
        });
        device.join().unwrap();
        let id2 = user.join().unwrap();
        assert!(id1 != 0 && id2 != 0 && id1 != id2);
    });
}

#[test]
fn concurrent_leases_get_distinct_ids() {
    loom::model(|| {
        let pool: Arc<EventPool<u8>> = Arc::new(EventPool::new());
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                thread::spawn(move || {
                    let (e, id) = p.acquire::<()>(true, || Ok(0)).unwrap();
                    p.release(e, true, |_| {});
                    id
                })
            })
            .collect();
        let ids: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(ids[0] != ids[1] && !ids.contains(&0));
    });
}
