//! A device whose streams never finish within the shutdown timeout keeps its memory when its
//! runtime is torn down: the work still running writes into it. (Its own test binary: it reads
//! the process-wide count of segment bytes.)

use chorus_core::{Config, Tensor};
use std::time::Duration;

#[test]
fn memory_of_unfinished_work_is_leaked_not_freed() {
    assert_eq!(chorus_cpu::segment_bytes(), 0);
    let config = Config::builder()
        .shutdown_timeout(Duration::from_millis(1))
        .build()
        .unwrap();
    let dev = chorus_cpu::device_with(config).unwrap();
    let x = Tensor::randn(&dev, &[512, 512], 1).unwrap();
    let mut y = x.clone();
    // Far more than the two 1 ms waits of the teardown (shutdown's, then the runtime's drop).
    for _ in 0..40 {
        y = y.matmul(&x).unwrap();
    }
    let reserved = dev.memory_stats().reserved_bytes;
    assert!(reserved > 0);
    drop((x, y)); // freed while the device is open: no wait
    drop(dev); // the last handle: the runtime is torn down now
    assert_eq!(
        chorus_cpu::segment_bytes(),
        reserved,
        "the segments of a device whose work was still running were freed"
    );
}
