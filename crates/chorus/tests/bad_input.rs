//! Bad input gets a typed error naming what was wrong; nothing is enqueued, nothing leaks,
//! and the process goes on.

use chorus::{DType, Device, DeviceExt, Error, Tensor};
use chorus_testing::{backend_tests, TestBackend};

fn unchanged(dev: &Device, f: impl FnOnce()) {
    dev.synchronize().unwrap();
    let before = dev.memory_stats();
    f();
    dev.synchronize().unwrap();
    let after = dev.memory_stats();
    assert_eq!(
        before.allocated_bytes, after.allocated_bytes,
        "memory accounting changed"
    );
}

backend_tests!(typed_errors_for_bad_input);
fn typed_errors_for_bad_input(backend: TestBackend) {
    backend.with_device(
        |b| b.memory_limit(Some(64 << 20)),
        |dev| {
            let a = Tensor::randn(&dev, &[3, 4], 1).unwrap();
            let b = Tensor::randn(&dev, &[5, 6], 2).unwrap();
            let idx = Tensor::from_slice(&dev, &[1_i64, 2, 3], &[3]).unwrap();
            unchanged(&dev, || match a.matmul(&b) {
                Err(Error::ShapeMismatch {
                    op: "matmul",
                    lhs,
                    rhs,
                    ..
                }) => assert_eq!((lhs, rhs), (vec![3, 4], vec![5, 6])),
                r => panic!("{r:?}"),
            });
            unchanged(&dev, || match a.add(&b) {
                Err(Error::ShapeMismatch { op: "add", .. }) => {}
                r => panic!("{r:?}"),
            });
            unchanged(&dev, || match idx.matmul(&idx) {
                Err(Error::DTypeMismatch {
                    op: "matmul",
                    expected: DType::F32,
                    got: DType::I64,
                }) => {}
                r => panic!("{r:?}"),
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.add(&idx),
                    Err(Error::DTypeMismatch { op: "add", .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    idx.mean_all(),
                    Err(Error::UnsupportedDType { op: "mean", .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.to_vec::<i64>(),
                    Err(Error::DTypeMismatch { op: "to_vec", .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.sum(&[2], false),
                    Err(Error::InvalidDim {
                        op: "sum",
                        dim: 2,
                        rank: 2
                    })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.sum(&[0, -2], false),
                    Err(Error::InvalidDim { .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.reshape(&[5, -1]),
                    Err(Error::InvalidShape { op: "reshape", .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.reshape(&[-1, -1]),
                    Err(Error::InvalidShape { .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    Tensor::from_slice(&dev, &[1.0_f32; 5], &[2, 3]),
                    Err(Error::LengthMismatch { len: 5, .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    Tensor::zeros(&dev, &[2], DType::F16),
                    Err(Error::UnsupportedDType { .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    a.item::<f32>(),
                    Err(Error::InvalidShape { op: "item", .. })
                ))
            });
            unchanged(&dev, || {
                assert!(matches!(
                    Tensor::full(&dev, &[usize::MAX, 4], 0.0),
                    Err(Error::SizeOverflow { .. })
                ))
            });

            // Tensors of two devices.
            let other = Device::builder().open().unwrap();
            let c = Tensor::randn(&other, &[4, 3], 3).unwrap();
            unchanged(&dev, || match a.matmul(&c) {
                Err(Error::DeviceMismatch {
                    op: "matmul",
                    lhs,
                    rhs,
                }) => assert_eq!((lhs, rhs), (dev.id(), other.id())),
                r => panic!("{r:?}"),
            });

            // An allocation over the limit says requested, allocated, cached and limit.
            unchanged(&dev, || {
                match Tensor::zeros(&dev, &[100 << 20], DType::F32) {
                    Err(Error::OutOfMemory {
                        requested,
                        limit,
                        allocated,
                        ..
                    }) => {
                        assert_eq!(requested, 400 << 20);
                        assert_eq!(limit, Some(64 << 20));
                        assert!(allocated >= a.len() * 4);
                        let msg = Error::OutOfMemory {
                            device: dev.id(),
                            requested,
                            allocated,
                            cached: 0,
                            limit,
                        }
                        .to_string();
                        assert!(msg.contains("requested") && msg.contains("limit"), "{msg}");
                    }
                    r => panic!("{r:?}"),
                }
            });
            // The device is still fine afterwards.
            let s = a
                .matmul(&a.transpose(0, 1).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(s.item::<f32>().unwrap().is_finite());
        },
    );
}

#[test]
fn invalid_settings_are_typed_errors() {
    assert!(matches!(
        Device::builder().streams(1).open(),
        Err(Error::Config { key: "streams", .. })
    ));
    assert!(matches!(
        Device::builder().streams(5000).open(),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        chorus::BackendKind::parse("tpu"),
        Err(Error::Config { key: "backend", .. })
    ));
    assert!(matches!(
        Device::builder().backend("tpu").open(),
        Err(Error::Config { key: "backend", .. })
    ));
}

backend_tests!(out_of_range_index_poisons_only_what_it_touched);
/// An index that is only known on the device (out of range for an embedding) cannot be caught
/// before enqueueing: the kernel fails and poisons its output. Reading it, or anything computed
/// from it, on any stream, returns the original error naming the op, the stream and the
/// index; the failing stream, the device and other tensors go on.
fn out_of_range_index_poisons_only_what_it_touched(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let weight = Tensor::randn(&dev, &[10, 4], 1).unwrap();
            let w = weight.to_vec::<f32>().unwrap();
            let bad = Tensor::from_slice(&dev, &[3_i64, 999], &[2]).unwrap();
            let stream = dev.stream(5).unwrap();
            let rows = dev.with_stream(&stream, || Tensor::embedding(&bad, &weight).unwrap());
            let expect = |r: Result<Vec<f32>, Error>| match r {
                Err(
                    e @ Error::Kernel {
                        stream,
                        op: "embedding",
                        kernel: "index_select",
                        ..
                    },
                ) if stream.index() == 5 => assert_eq!(
                    e.to_string(),
                    format!(
                        "embedding on {}, stream 5: kernel `index_select` failed: index 999 out \
                         of range for 10 rows",
                        dev.id()
                    )
                ),
                other => panic!("{other:?}"),
            };
            // Something computed from it on the failing stream before anyone looked.
            let derived =
                dev.with_stream(&stream, || rows.relu().unwrap().sum(&[], false).unwrap());
            expect(dev.with_stream(&stream, || rows.to_vec::<f32>()));
            // On another stream, and computed after the failure is known (not computed at all).
            let other = dev.stream(7).unwrap();
            expect(dev.with_stream(&other, || rows.to_vec::<f32>()));
            expect(dev.with_stream(&other, || derived.to_vec::<f32>()));
            expect(dev.with_stream(&other, || rows.mul(&rows).unwrap().to_vec::<f32>()));
            let joined = Tensor::cat(&[&weight, &rows.reshape(&[2, 4]).unwrap()], 0).unwrap();
            expect(joined.to_vec::<f32>());
            // Even with nothing to copy (the op proptests found a cat of empty parts unpoisoned).
            let none = rows.reshape(&[2, 4]).unwrap().narrow(0, 0, 0).unwrap();
            expect(Tensor::cat(&[&none, &none], 0).unwrap().to_vec::<f32>());
            match derived.item::<f32>() {
                Err(Error::Kernel { .. }) => {}
                other => panic!("{other:?}"),
            }
            // The failing stream keeps working, and tensors the failure did not touch are fine.
            let good = Tensor::from_slice(&dev, &[3_i64, 9], &[2]).unwrap();
            dev.with_stream(&stream, || {
                let rows = Tensor::embedding(&good, &weight).unwrap();
                assert_eq!(rows.to_vec::<f32>().unwrap()[..4], w[12..16]);
                assert_eq!(weight.to_vec::<f32>().unwrap(), w);
                assert_eq!(bad.to_vec::<i64>().unwrap(), vec![3, 999]);
            });
            // A negative index too.
            let neg = Tensor::from_slice(&dev, &[-1_i64], &[1]).unwrap();
            match weight.index_select(0, &neg).unwrap().to_vec::<f32>() {
                Err(Error::Kernel {
                    op: "index_select",
                    message,
                    ..
                }) => {
                    assert_eq!(message, "index -1 out of range for 10 rows")
                }
                other => panic!("{other:?}"),
            }
            dev.synchronize().unwrap();
        },
    );
}

backend_tests!(edge_shapes_and_huge_values_are_not_panics);
/// Edge shapes and huge values: 0-d tensors, sizes whose arithmetic overflows, a linear layer
/// without input features, timeouts too long for the clock. Each gets a typed error or
/// PyTorch's answer, never a panic.
fn edge_shapes_and_huge_values_are_not_panics(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let scalar = Tensor::from_slice(&dev, &[2.0_f32], &[]).unwrap();
            let idx = Tensor::from_slice(&dev, &[0_i64], &[1]).unwrap();
            // Ops that take a dimension of the shape itself: a 0-d tensor has none.
            let dims: [(&str, Result<(), Error>); 5] = [
                ("narrow", scalar.narrow(0, 0, 1).map(drop)),
                ("split", scalar.split(&[1], 0).map(drop)),
                ("chunk", scalar.chunk(1, -1).map(drop)),
                ("cat", Tensor::cat(&[&scalar, &scalar], 0).map(drop)),
                ("index_select", scalar.index_select(0, &idx).map(drop)),
            ];
            for (op, r) in dims {
                match r {
                    Err(Error::InvalidDim { op: o, rank: 0, .. }) => assert_eq!(o, op),
                    other => panic!("{op}: {other:?}"),
                }
            }
            // squeeze and transpose give a 0-d tensor back, as PyTorch's do.
            assert!(scalar.squeeze(0).unwrap().shape().is_empty());
            let t = scalar.transpose(0, -1).unwrap();
            assert_eq!(t.to_vec::<f32>().unwrap(), vec![2.0]);
            // Sizes whose arithmetic overflows.
            let overflow = |what: &str, r: Result<(), Error>| match r {
                Err(Error::SizeOverflow { .. }) => {}
                other => panic!("{what}: {other:?}"),
            };
            let empty_huge = Tensor::zeros(&dev, &[0, 1 << 40, 1 << 40], DType::F32);
            overflow("zeros", empty_huge.map(drop));
            let x = Tensor::randn(&dev, &[2, 6], 1).unwrap();
            overflow("reshape", x.reshape(&[isize::MAX, 4, -1]).map(drop));
            let wide = Tensor::zeros(&dev, &[0, usize::MAX], DType::F32).unwrap();
            overflow("cat", Tensor::cat(&[&wide, &wide], 1).map(drop));
            match x.split(&[usize::MAX, 7], 1) {
                Err(Error::InvalidShape { op: "split", .. }) => {}
                other => panic!("split: {other:?}"),
            }
            let img = Tensor::randn(&dev, &[1, 1, 4, 4], 2).unwrap();
            let k = Tensor::randn(&dev, &[1, 1, 3, 3], 3).unwrap();
            match img.conv2d(&k, None, [1, 1], [1 << 63, 0], 1) {
                Err(Error::ShapeMismatch { op: "conv2d", .. }) => {}
                other => panic!("conv2d: {other:?}"),
            }
            // A padding far larger than the input: PyTorch's 3 x 3 output, its centre x * w.
            let x1 = Tensor::full(&dev, &[1, 1, 1, 1], 3.0).unwrap();
            let w1 = Tensor::full(&dev, &[1, 1, 1, 1], 2.0).unwrap();
            let far = x1.conv2d(&w1, None, [100_000, 100_000], [100_000, 100_000], 1);
            let far = far.unwrap();
            assert_eq!(far.shape(), &[1, 1, 3, 3]);
            let mut want = vec![0.0; 9];
            want[4] = 6.0;
            assert_eq!(far.to_vec::<f32>().unwrap(), want);
            // Causal attention over zero queries: an empty result, as PyTorch.
            let q = Tensor::zeros(&dev, &[1, 2, 0, 4], DType::F32).unwrap();
            let kv = Tensor::randn(&dev, &[1, 2, 3, 4], 4).unwrap();
            let att = Tensor::scaled_dot_product_attention(&q, &kv, &kv, None, true).unwrap();
            assert_eq!(att.shape(), &[1, 2, 0, 4]);
            assert!(att.to_vec::<f32>().unwrap().is_empty());
            // A linear layer without input features: the bias (zeros without one), as PyTorch.
            let x0 = Tensor::zeros(&dev, &[5, 0], DType::F32).unwrap();
            let w0 = Tensor::zeros(&dev, &[3, 0], DType::F32).unwrap();
            let b = Tensor::from_slice(&dev, &[1.0_f32, 2.0, 3.0], &[3]).unwrap();
            let y = x0.linear(&w0, Some(&b)).unwrap();
            assert_eq!(y.shape(), &[5, 3]);
            assert_eq!(y.to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0].repeat(5));
            let y = x0.linear(&w0, None).unwrap();
            assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0; 15]);
            // Timeouts too long to have a deadline are no timeout.
            let long = std::time::Duration::MAX;
            dev.synchronize_timeout(long).unwrap();
            dev.current_stream()
                .unwrap()
                .synchronize_timeout(long)
                .unwrap();
            let e = dev.event().unwrap();
            e.record(&dev.current_stream().unwrap()).unwrap();
            e.synchronize(long).unwrap();
        },
    );
}
