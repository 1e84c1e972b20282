//! Stream-slot free list: no slot owned twice; a waiter is never left asleep while a slot is free.

use crate::runtime::slots::{StreamSlots, Wait};
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicBool, Ordering};
use chorus_sync::{thread, Arc};

#[test]
fn no_slot_owned_twice() {
    loom::model(|| {
        // Two slots, two threads: one pops, pushes back and pops again (the ABA pattern a
        // Treiber stack must survive) while the other pops; ownership is exclusive throughout.
        let slots = Arc::new(StreamSlots::new(1, 2));
        let owned: Arc<[AtomicBool; 3]> = Arc::new([
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        ]);
        let take = |slots: &StreamSlots, owned: &[AtomicBool; 3]| {
            let s = slots.try_acquire();
            if let Some(s) = s.map(StreamId::index) {
                assert!(
                    !owned[s].swap(true, Ordering::AcqRel),
                    "slot {s} owned twice"
                );
            }
            s
        };
        let give = |slots: &StreamSlots, owned: &[AtomicBool; 3], s: StreamId| {
            owned[s.index()].store(false, Ordering::Release);
            slots.release(s);
        };
        let (s2, o2) = (slots.clone(), owned.clone());
        let other = thread::spawn(move || take(&s2, &o2));
        if let Some(s) = take(&slots, &owned) {
            give(&slots, &owned, s);
        }
        let again = take(&slots, &owned);
        let theirs = other.join().unwrap();
        assert!(
            again.is_some() && theirs.is_some() && again != theirs,
            "both slots handed out once each"
        );
    });
}

#[test]
fn exhaustion_wait_has_no_lost_wakeup() {
    loom::model(|| {
        let slots = Arc::new(StreamSlots::new(1, 1));
        let mine = slots.try_acquire().expect("one slot");
        let s2 = slots.clone();
        let waiter = thread::spawn(move || s2.acquire(Wait::Forever).expect("waits forever"));
        slots.release(mine);
        // If the release's wake-up were lost, loom reports the waiter as deadlocked.
        assert_eq!(waiter.join().unwrap(), StreamId::new(1));
    });
}
