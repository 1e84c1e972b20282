//! The CPU backend really runs streams asynchronously: work enqueued behind a gate has not run
//! when the enqueueing call returns, and runs in order once the gate opens.

use chorus_core::kernel::{self, MatOperand, Scalar};
use chorus_core::{Backend, DevicePtr, Kernel, StreamId};
use chorus_cpu::CpuBackend;
use std::sync::mpsc;
use std::time::Duration;

fn read(b: &CpuBackend, s: &chorus_cpu::CpuStream, p: DevicePtr, n: usize) -> Vec<f32> {
    // SAFETY: `p` is inside a live segment of `b` with `n` f32 written by earlier work on `s`.
    let bytes = unsafe { b.read(s, p, n * 4) }.unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn launch_returns_before_the_kernel_runs() {
    let b = CpuBackend::new();
    let s = b.create_stream(StreamId::new(1)).unwrap();
    let (seg, base) = b.alloc_segment(3 * 64 * 4).unwrap();
    let (a, m, out) = (base, base.byte_add(64 * 4), base.byte_add(2 * 64 * 4));
    let op = |ptr| MatOperand {
        ptr,
        batch_stride: 0,
        row_stride: 8,
        col_stride: 1,
    };
    // SAFETY: all pointers lie in `seg`, which outlives every command (synchronized below).
    unsafe {
        b.launch(
            &s,
            Kernel::Fill(kernel::Fill {
                out: a,
                len: 64,
                value: Scalar::F32(1.0),
            }),
        )
        .unwrap();
        b.launch(
            &s,
            Kernel::Fill(kernel::Fill {
                out: m,
                len: 64,
                value: Scalar::F32(2.0),
            }),
        )
        .unwrap();
    }
    assert!(b.synchronize(&s, Some(Duration::from_secs(10))).unwrap());

    // Hold the stream at a gate.
    let (open, gate) = mpsc::channel::<()>();
    let (reached_tx, reached) = mpsc::channel::<()>();
    b.host_callback(
        &s,
        Box::new(move || {
            reached_tx.send(()).unwrap();
            gate.recv().unwrap();
        }),
    )
    .unwrap();
    reached.recv().unwrap();
    let done = b.create_event(false).unwrap();
    // SAFETY: as above.
    unsafe {
        b.launch(
            &s,
            Kernel::Matmul(kernel::Matmul {
                lhs: op(a),
                rhs: op(m),
                out,
                batch: 1,
                m: 8,
                n: 8,
                k: 8,
                epilogue: Default::default(),
                rhs_derived: None,
                dtype: chorus_core::DType::F32,
            }),
        )
    }
    .unwrap();
    b.record(&done, &s).unwrap();
    // The matmul is queued behind the gate: not run, and the event not complete.
    assert!(!b.query(&done).unwrap());
    assert!(
        !b.event_synchronize(&done, Some(Duration::from_millis(50)))
            .unwrap(),
        "times out, does not hang"
    );
    assert!(!b.synchronize(&s, Some(Duration::from_millis(10))).unwrap());
    open.send(()).unwrap();
    assert!(b
        .event_synchronize(&done, Some(Duration::from_secs(10)))
        .unwrap());
    assert_eq!(read(&b, &s, out, 64), vec![16.0; 64]);
    // SAFETY: the stream is idle; nothing uses the segment any more.
    unsafe { b.free_segment(seg) };
}

#[test]
fn device_side_wait_orders_two_streams() {
    let b = CpuBackend::new();
    let (s1, s2) = (
        b.create_stream(StreamId::new(1)).unwrap(),
        b.create_stream(StreamId::new(2)).unwrap(),
    );
    let (seg, p) = b.alloc_segment(4 * 16).unwrap();
    let (open, gate) = mpsc::channel::<()>();
    b.host_callback(&s1, Box::new(move || gate.recv().unwrap()))
        .unwrap();
    // SAFETY: `p` is in `seg`, which outlives the commands.
    unsafe {
        b.launch(
            &s1,
            Kernel::Fill(kernel::Fill {
                out: p,
                len: 16,
                value: Scalar::F32(5.0),
            }),
        )
    }
    .unwrap();
    let e = b.create_event(false).unwrap();
    b.record(&e, &s1).unwrap();
    b.wait(&s2, &e).unwrap();
    // Reading on s2 must see s1's fill even though s2 itself is idle: the read blocks until
    // the gate opens. Open it from another thread after a moment.
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        open.send(()).unwrap();
    });
    assert_eq!(read(&b, &s2, p, 16), vec![5.0; 16]);
    opener.join().unwrap();
    assert!(b.synchronize(&s1, None).unwrap());
    // SAFETY: both streams are idle.
    unsafe { b.free_segment(seg) };
}
