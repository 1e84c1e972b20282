//! Per-thread block cache: the owner's fast path racing a flush by device shutdown (and by its
//! own thread exit): every cached block comes out exactly once.

use crate::alloc::thread_cache::{Put, ThreadCache};
use crate::alloc::Block;
use crate::kernel::DevicePtr;
use crate::stream::StreamId;
use chorus_sync::{thread, Arc};

fn block(i: u32) -> Block {
    Block {
        seg: i,
        offset: 0,
        size: 512,
        ptr: DevicePtr(u64::from(i) * 512),
        stream: StreamId::new(1),
    }
}

#[test]
fn flush_racing_shutdown_takes_each_block_once() {
    loom::model(|| {
        let cache = Arc::new(ThreadCache::new(4096));
        assert_eq!(cache.put(block(0)), Put::Cached);
        let c2 = cache.clone();
        // Device shutdown flushes the cache from another thread.
        let shutdown = thread::spawn(move || c2.close().unwrap_or_default());
        // Meanwhile the owner keeps using it, then exits (closing it too).
        let mut out = Vec::new();
        match cache.put(block(1)) {
            Put::Cached => {}
            Put::Rejected(b) => out.push(b),
        }
        if let Some(b) = cache.take(512, StreamId::new(1)) {
            out.push(b);
        }
        out.extend(cache.close().unwrap_or_default());
        out.extend(shutdown.join().unwrap());
        out.sort_by_key(|b| b.seg);
        assert_eq!(out, vec![block(0), block(1)], "each block out exactly once");
    });
}
