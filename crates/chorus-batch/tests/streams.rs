//! Each worker runs on a stream of its own, bound by the device's stream policy.

mod common;

use chorus_batch::{BatchError, BatchQueue};
use chorus_core::{Config, StreamPolicy};
use common::{config, Double};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn workers_take_streams_of_their_own() {
    let cfg = Config::builder()
        .streams(5)
        .policy(StreamPolicy::Exclusive)
        .build()
        .unwrap();
    let device = chorus_cpu::device_with(cfg).unwrap();
    let queue = BatchQueue::new(
        Double,
        config(&device, 4, Duration::ZERO)
            .workers(4)
            .build()
            .unwrap(),
    )
    .unwrap();
    let streams: BTreeSet<usize> = queue.worker_streams().iter().map(|s| s.index()).collect();
    assert_eq!(
        streams,
        (1..=4).collect(),
        "four pooled streams, one per worker"
    );
    // All taken: a fifth worker cannot start, and the queue says so.
    match BatchQueue::new(
        Double,
        config(&device, 4, Duration::ZERO)
            .workers(1)
            .build()
            .unwrap(),
    ) {
        Err(BatchError::WorkerStart { worker: 0, reason }) => {
            assert!(reason.contains("stream"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
