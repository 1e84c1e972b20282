//! Cross-stream hazards on the real asynchronous backend: memory freed while another stream
//! still reads it must not be handed to a third stream until that read has finished.

mod common;

use chorus::Tensor;
use common::{bits, on_every_backend, scaled};

const N: usize = 160;

/// Stream A runs a slow reader of `x`; the host drops `x`; stream B allocates the same size
/// at once and writes it. A's result must be the one computed alone.
#[test]
fn freed_while_read_by_other_stream_is_not_reused_early() {
    for cache in [0, 1 << 20] {
        on_every_backend(
            |b| b.thread_cache_bytes(cache),
            |dev| {
                let (a, b) = (dev.stream(1).unwrap(), dev.stream(2).unwrap());
                let want: Vec<u32> = {
                    let x = Tensor::randn(&dev, &[N, N], 11).unwrap();
                    let r = x.matmul(&x).unwrap().matmul(&x).unwrap();
                    bits(&r)
                };
                let mut reused = 0;
                let warm = dev.with_stream(&a, || Tensor::randn(&dev, &[256, 256], 99).unwrap());
                for round in 0..scaled(40) {
                    // `x` is complete before anything else happens, so a too-early reuse by B
                    // cannot be hidden by A writing `x` after B.
                    let x = dev.with_stream(&a, || Tensor::randn(&dev, &[N, N], 11).unwrap());
                    a.synchronize().unwrap();
                    let x_ptr = x.data_ptr();
                    // A backlog on A, then the reader of `x`: it runs well after the host drops `x`.
                    let mut backlog = warm.clone();
                    dev.with_stream(&a, || {
                        for _ in 0..4 {
                            backlog = backlog.matmul(&warm).unwrap();
                        }
                    });
                    let r = dev.with_stream(&a, || x.matmul(&x).unwrap().matmul(&x).unwrap());
                    drop(x);
                    // B allocates the same size and overwrites it immediately.
                    let y = dev.with_stream(&b, || Tensor::full(&dev, &[N, N], f32::NAN).unwrap());
                    if y.data_ptr() == x_ptr {
                        reused += 1;
                    }
                    let got = bits(&r);
                    assert!(
                        got == want,
                        "round {round}: A's result was corrupted (cache {cache})"
                    );
                    drop((y, backlog));
                    dev.synchronize().unwrap();
                }
                // The memory does get reused across streams once A's reads are fenced.
                let st = dev.memory_stats();
                eprintln!(
                    "cache {cache}: reused at once {reused} times; fences {}, hits {}/{}",
                    st.fences, st.cache_hits, st.allocations
                );
            },
        );
    }
}

/// A tensor written on A, read on A and B, dropped: a third stream C only reuses it after
/// both readers finished (deferred free with events on every user).
#[test]
fn multi_stream_user_is_deferred() {
    on_every_backend(
        |b| b,
        |dev| {
            let (a, b, c) = (
                dev.stream(1).unwrap(),
                dev.stream(2).unwrap(),
                dev.stream(3).unwrap(),
            );
            let x0 = Tensor::randn(&dev, &[N, N], 21).unwrap();
            let want = x0
                .matmul(&x0)
                .unwrap()
                .sum_all()
                .unwrap()
                .item::<f32>()
                .unwrap()
                .to_bits();
            drop(x0);
            let warm = dev.with_stream(&b, || Tensor::randn(&dev, &[256, 256], 98).unwrap());
            for round in 0..scaled(30) {
                let x = dev.with_stream(&a, || Tensor::randn(&dev, &[N, N], 21).unwrap());
                a.synchronize().unwrap();
                let ra = dev.with_stream(&a, || x.matmul(&x).unwrap().sum_all().unwrap());
                // B reads `x` after a backlog, so its read is still pending when `x` is dropped.
                let mut backlog = warm.clone();
                dev.with_stream(&b, || {
                    for _ in 0..4 {
                        backlog = backlog.matmul(&warm).unwrap();
                    }
                });
                let rb = dev.with_stream(&b, || x.matmul(&x).unwrap().sum_all().unwrap());
                drop(x);
                a.synchronize().unwrap();
                let _z = dev.with_stream(&c, || Tensor::full(&dev, &[N, N], -1.0).unwrap());
                let _z2 = dev.with_stream(&a, || Tensor::full(&dev, &[N, N], -2.0).unwrap());
                let ga = dev.with_stream(&a, || ra.item::<f32>().unwrap().to_bits());
                let gb = dev.with_stream(&b, || rb.item::<f32>().unwrap().to_bits());
                assert_eq!((ga, gb), (want, want), "round {round}");
                drop(backlog);
                dev.synchronize().unwrap();
            }
            assert!(dev.memory_stats().deferred_frees > 0);
        },
    );
}
