//! 64 submitting threads × 1,000 requests each: every request completes with its own result.

mod common;

use chorus_batch::BatchQueue;
use chorus_core::Tensor;
use common::{config, device, exact_linear, exact_linear_host};
use std::time::Duration;

#[test]
fn sixty_four_threads_times_a_thousand_requests_all_complete() {
    let device = device();
    let cfg = config(&device, 32, Duration::from_micros(100))
        .workers(2)
        .max_queue(64)
        .build()
        .unwrap();
    let queue = BatchQueue::new(exact_linear(&device), cfg).unwrap();
    let (threads, per_thread) = (64u32, 1000u32);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (queue, device) = (&queue, &device);
            s.spawn(move || {
                for i in 0..per_thread {
                    // Small integers: the result is exact whatever batch the row lands in.
                    let x = [t as f32, (i % 97) as f32, -((i % 13) as f32), 1.0];
                    let input = Tensor::from_slice(device, &x, &[1, 4]).unwrap();
                    let y = queue.infer(input).unwrap().to_vec::<f32>().unwrap();
                    assert_eq!(y, exact_linear_host(x), "thread {t}, request {i}");
                }
            });
        }
    });
    let stats = queue.stats();
    let n = u64::from(threads * per_thread);
    assert_eq!(stats.requests, n);
    assert_eq!(stats.rows, n);
    assert_eq!(stats.failed + stats.timed_out + stats.rejected, 0);
    assert_eq!(
        stats.batch_sizes.iter().map(|&(_, b)| b).sum::<u64>(),
        stats.batches
    );
    assert!(stats
        .batch_sizes
        .iter()
        .all(|&(rows, _)| (1..=32).contains(&rows)));
    assert_eq!(stats.queue_depth, 0);
    assert!(stats.peak_queue_depth <= 64);
}
