//! Tickets as futures: awaited with a hand-written `block_on`, several polled from one thread.

mod common;

use chorus_batch::{BatchError, BatchQueue};
use chorus_core::Tensor;
use common::{block_on, config, device, Double, NEVER};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

#[test]
fn a_ticket_can_be_awaited() {
    let device = device();
    let queue =
        BatchQueue::new(Double, config(&device, 4, Duration::ZERO).build().unwrap()).unwrap();
    let y = block_on(async {
        let a = queue
            .submit(Tensor::full(&device, &[1, 3], 1.0).unwrap())
            .unwrap();
        let b = queue
            .submit(Tensor::full(&device, &[2, 3], 2.0).unwrap())
            .unwrap();
        let a = a.await.unwrap();
        let b = b.await.unwrap();
        (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap())
    });
    assert_eq!(y, (vec![2.0; 3], vec![4.0; 6]));
}

/// Counts its wake-ups.
struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_pending_ticket_wakes_its_waker_once_completed() {
    let device = device();
    let queue = BatchQueue::new(Double, config(&device, 3, NEVER).build().unwrap()).unwrap();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    let mut cx = Context::from_waker(&waker);
    // Two tickets polled by one thread, as an executor joining them would: two rows of a batch
    // of three, so both are pending and register the waker.
    let mut tickets: Vec<_> = (0..2)
        .map(|i| {
            queue
                .submit(Tensor::full(&device, &[1, 1], i as f32).unwrap())
                .unwrap()
        })
        .collect();
    for t in &mut tickets {
        assert!(Pin::new(t).poll(&mut cx).is_pending());
    }
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    // The third row completes the batch; the two pending tickets are not polled again until
    // their waker has been woken, once each.
    let third = queue
        .submit(Tensor::full(&device, &[1, 1], 2.0).unwrap())
        .unwrap();
    assert_eq!(third.wait().unwrap().to_vec::<f32>().unwrap(), vec![4.0]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count.0.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        2,
        "each pending ticket woken once"
    );
    let results: Vec<Vec<f32>> = tickets
        .iter_mut()
        .map(|t| match Pin::new(t).poll(&mut cx) {
            Poll::Ready(out) => out.unwrap().to_vec::<f32>().unwrap(),
            Poll::Pending => panic!("woken but still pending"),
        })
        .collect();
    assert_eq!(results, vec![vec![0.0], vec![2.0]]);
    // A poll after completion is an error, not a panic.
    match Pin::new(&mut tickets[0]).poll(&mut cx) {
        Poll::Ready(Err(BatchError::ResultTaken)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_waker_registered_before_completion_is_woken() {
    let device = device();
    let queue = BatchQueue::new(Double, config(&device, 2, NEVER).build().unwrap()).unwrap();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&count));
    let mut cx = Context::from_waker(&waker);
    let mut t = queue
        .submit(Tensor::full(&device, &[1, 1], 5.0).unwrap())
        .unwrap();
    // One of two rows: the batch cannot run yet.
    assert!(Pin::new(&mut t).poll(&mut cx).is_pending());
    let other = queue
        .submit(Tensor::full(&device, &[1, 1], 6.0).unwrap())
        .unwrap();
    assert_eq!(other.wait().unwrap().to_vec::<f32>().unwrap(), vec![12.0]);
    // The same batch completed `t`, which woke the registered waker.
    assert!(t.is_ready());
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    match Pin::new(&mut t).poll(&mut cx) {
        Poll::Ready(Ok(y)) => assert_eq!(y.to_vec::<f32>().unwrap(), vec![10.0]),
        other => panic!("{other:?}"),
    }
}
