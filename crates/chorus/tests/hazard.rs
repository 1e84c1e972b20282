//! Cross-stream hazards on the real asynchronous backend: memory freed while another stream
//! still reads it must not be handed to a third stream until that read has finished.
//!
//! The pending reads are held back by a `Stream::gate` (chorus-core's test-only feature
//! `testing`), so that "still pending" is a fact, not a question of timing.

use chorus::Tensor;
use chorus_testing::{backend_tests, bits, scaled, TestBackend};

const N: usize = 160;

backend_tests!(freed_while_read_by_other_stream_is_not_reused_early);
/// Stream A holds a reader of `x` behind a gate; the host drops `x` (used by A alone: a plain
/// free, tagged with A); stream B allocates the same size at once and overwrites it. B may reuse
/// A's block only after a fence on A has completed, which cannot happen while A is held: B must
/// get another block, and A's result must be the one computed alone.
///
/// This guards the fence rule of single-stream frees (`alloc::pool`, `best_fit`), not the
/// deferral of multi-stream frees (`multi_stream_user_is_deferred`): `x` has no user but A, so
/// the allocator's `release` never defers it. With a thread cache the block goes to A's
/// returns, which only A's allocations take from.
fn freed_while_read_by_other_stream_is_not_reused_early(backend: TestBackend) {
    for cache in [0, 1 << 20] {
        backend.with_device(
            |b| b.thread_cache_bytes(cache),
            |dev| {
                let (a, b) = (dev.stream(1).unwrap(), dev.stream(2).unwrap());
                let want: Vec<u32> = {
                    let x = Tensor::randn(&dev, &[N, N], 11).unwrap();
                    let r = x.matmul(&x).unwrap().matmul(&x).unwrap();
                    bits(&r)
                };
                for round in 0..scaled(10) {
                    // `x` is complete before anything else happens, so a too-early reuse by B
                    // cannot be hidden by A writing `x` after B.
                    let x = dev.with_stream(&a, || Tensor::randn(&dev, &[N, N], 11).unwrap());
                    a.synchronize().unwrap();
                    let x_ptr = x.data_ptr();
                    let gate = a.gate().unwrap();
                    let r = dev.with_stream(&a, || x.matmul(&x).unwrap().matmul(&x).unwrap());
                    drop(x);
                    // B allocates the same size and overwrites it; its work is not held back.
                    let y = dev.with_stream(&b, || Tensor::full(&dev, &[N, N], f32::NAN).unwrap());
                    b.synchronize().unwrap();
                    assert_ne!(
                        y.data_ptr(),
                        x_ptr,
                        "round {round}: B got x's block while A's read of it was pending (cache {cache})"
                    );
                    gate.open();
                    assert!(
                        bits(&r) == want,
                        "round {round}: A's result was corrupted (cache {cache})"
                    );
                    drop(y);
                    dev.synchronize().unwrap();
                }
                let st = dev.memory_stats();
                eprintln!(
                    "cache {cache}: fences {}, hits {}/{}",
                    st.fences, st.cache_hits, st.allocations
                );
            },
        );
    }
}

backend_tests!(multi_stream_user_is_deferred);
/// A tensor made on A and read on B while B is held back by a gate, then dropped: the free is
/// deferred (events on B) until B's read has finished. While it is pending, A's next tensor of
/// the same size must not get the block (A may reuse its own plain frees at once, so this is
/// what tells a deferred free from a plain one); once B's read is done, a third stream C, left
/// no room to grow, gets exactly that block.
fn multi_stream_user_is_deferred(backend: TestBackend) {
    const MIB: usize = 1 << 20;
    // 12 MiB of f32: a huge block, one segment of its own.
    const HUGE: usize = 3 << 20;
    backend.with_device(
        // Room for two huge segments and a few small ones, never for three.
        |b| b.thread_cache_bytes(0).memory_limit(Some(32 * MIB)),
        |dev| {
            let (a, b, c) = (
                dev.stream(1).unwrap(),
                dev.stream(2).unwrap(),
                dev.stream(3).unwrap(),
            );
            let want = {
                let x0 = Tensor::randn(&dev, &[HUGE], 21).unwrap();
                x0.sum_all().unwrap().item::<f32>().unwrap().to_bits()
            };
            for round in 0..3 {
                // Only this round's segments from here on.
                dev.synchronize().unwrap();
                dev.empty_cache();
                let x = dev.with_stream(&a, || Tensor::randn(&dev, &[HUGE], 21).unwrap());
                a.synchronize().unwrap();
                let x_ptr = x.data_ptr();
                let gate = b.gate().unwrap();
                // B's read of `x` is pending behind the gate when `x` is dropped.
                let rb = dev.with_stream(&b, || x.sum_all().unwrap());
                let deferred = dev.memory_stats().deferred_frees;
                drop(x);
                assert_eq!(
                    dev.memory_stats().deferred_frees,
                    deferred + 1,
                    "round {round}"
                );
                // A allocates the same size and overwrites it: another block (a new segment,
                // within the limit), since B still reads x's.
                let y = dev.with_stream(&a, || Tensor::full(&dev, &[HUGE], -1.0).unwrap());
                assert_ne!(
                    y.data_ptr(),
                    x_ptr,
                    "round {round}: x's block was reused while B's read of it was pending"
                );
                gate.open();
                let gb = dev.with_stream(&b, || rb.item::<f32>().unwrap().to_bits());
                assert_eq!(
                    gb, want,
                    "round {round}: B read a block overwritten under it"
                );
                b.synchronize().unwrap();
                // B's read is done: the deferred free completes, and C, which the limit leaves
                // no room for a third huge segment, gets x's block.
                let z = dev.with_stream(&c, || Tensor::full(&dev, &[HUGE], -2.0).unwrap());
                assert_eq!(
                    z.data_ptr(),
                    x_ptr,
                    "round {round}: the deferred block never came back"
                );
                assert_eq!(
                    z.sum_all().unwrap().item::<f32>().unwrap(),
                    -2.0 * HUGE as f32
                );
                drop((y, z, rb));
            }
        },
    );
}
