//! Graphs (`chorus::Graph`): a captured function run as one unit gives the bits of the direct
//! calls, from any thread and any number of threads; what cannot be captured fails with a
//! typed error; memory and the device survive every order of drops.

use chorus::nn::{self, Module};
use chorus::{DType, Device, DeviceExt, Error, Graph, Result, Tensor};
use chorus_testing::{backend_tests, bits, scaled, TestBackend};

/// A random parameter scaled by 1/sqrt(fan_in).
fn param(dev: &Device, shape: &[usize], fan_in: usize, seed: u64) -> Tensor {
    let scale = Tensor::full(dev, &[1], 1.0 / (fan_in as f32).sqrt()).unwrap();
    Tensor::randn(dev, shape, seed)
        .unwrap()
        .mul(&scale)
        .unwrap()
}

fn mlp(dev: &Device, sizes: &[usize]) -> nn::Mlp {
    let mut named = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let seed = 100 + 2 * i as u64;
        named.push((
            format!("{}.weight", 2 * i),
            param(dev, &[w[1], w[0]], w[0], seed),
        ));
        named.push((
            format!("{}.bias", 2 * i),
            param(dev, &[w[1]], w[0], seed + 1),
        ));
    }
    nn::Mlp::load(&nn::Weights::from_tensors(named), sizes).unwrap()
}

fn transformer(dev: &Device, d: usize, ff: usize) -> nn::TransformerEncoder {
    let mut named = Vec::new();
    let mut seed = 500;
    let mut p = |shape: &[usize], fan_in: usize| {
        seed += 1;
        param(dev, shape, fan_in, seed)
    };
    for l in 0..2 {
        let n = |s: &str| format!("layers.{l}.{s}");
        named.push((n("self_attn.in_proj_weight"), p(&[3 * d, d], d)));
        named.push((n("self_attn.in_proj_bias"), p(&[3 * d], d)));
        named.push((n("self_attn.out_proj.weight"), p(&[d, d], d)));
        named.push((n("self_attn.out_proj.bias"), p(&[d], d)));
        named.push((n("linear1.weight"), p(&[ff, d], d)));
        named.push((n("linear1.bias"), p(&[ff], d)));
        named.push((n("linear2.weight"), p(&[d, ff], ff)));
        named.push((n("linear2.bias"), p(&[d], ff)));
        for norm in ["norm1", "norm2"] {
            named.push((n(&format!("{norm}.weight")), p(&[d], d)));
            named.push((n(&format!("{norm}.bias")), p(&[d], d)));
        }
    }
    let cfg = nn::TransformerConfig::new(d, 4).dim_feedforward(ff);
    nn::TransformerEncoder::load(&nn::Weights::from_tensors(named), &cfg, 2, false).unwrap()
}

/// A graph of `m`'s forward for inputs of `shape`, captured on the calling thread's stream.
fn forward_graph(dev: &Device, m: &dyn Module, shape: &[usize]) -> Graph {
    Graph::capture(dev, &[(shape, DType::F32)], |x| {
        Ok::<_, nn::NnError>(vec![m.forward(&x[0])?])
    })
    .unwrap()
}

/// Captures `m`'s forward for `x`'s shape again and again; each graph gives `want`.
fn capture_repeatedly(dev: &Device, m: &dyn Module, x: &Tensor, want: &[u32]) {
    for i in 0..scaled(10) {
        let g = forward_graph(dev, m, x.shape());
        assert!(bits(&g.run(&[x]).unwrap()[0]) == want, "capture {i}");
    }
}

/// A function of two inputs that goes through most kinds of kernel: a constant made during
/// the capture, views, cat, softmax, layer norm, attention, reductions, an output that is a
/// view and an output that is a weight returned as it is.
fn mixed(dev: &Device, w: &Tensor, x: &Tensor, y: &Tensor) -> Result<Vec<Tensor>> {
    let c = Tensor::from_slice(dev, &[0.5_f32, -1.0, 2.0, 0.25], &[4])?;
    let h = x.matmul(w)?.add(&c)?.relu()?;
    let t = h.transpose(0, 1)?;
    let both = Tensor::cat(&[&h, &y.transpose(0, 1)?], 0)?;
    let ln = both.softmax(-1)?.layer_norm(None, None, 1e-5)?;
    let q = ln.reshape(&[1, -1, 4])?;
    let att = Tensor::scaled_dot_product_attention(&q, &q, &q, None, true)?;
    let s = att.sum(&[-1], false)?;
    let m = ln.mean(&[0], true)?;
    Ok(vec![t, s, m, w.clone()])
}

backend_tests!(runs_give_the_bits_of_the_direct_calls);
fn runs_give_the_bits_of_the_direct_calls(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            // MLP at a few rows and at enough rows for the CPU's packed kernel (which caches
            // prepared weights), and the transformer block (attention, layer norms).
            let m = mlp(&dev, &[64, 96, 80, 32]);
            for rows in [1, 3, 40] {
                let g = forward_graph(&dev, &m, &[rows, 64]);
                assert_eq!(g.kernels(), 3);
                for seed in 0..3 {
                    let x = Tensor::randn(&dev, &[rows, 64], seed).unwrap();
                    let want = bits(&m.forward(&x).unwrap());
                    let got = g.run(&[&x]).unwrap();
                    assert_eq!(got.len(), 1);
                    assert_eq!(got[0].shape(), &[rows, 32]);
                    assert!(bits(&got[0]) == want, "mlp, {rows} rows, input {seed}");
                }
            }
            let tr = transformer(&dev, 32, 64);
            let g = forward_graph(&dev, &tr, &[2, 8, 32]);
            for seed in 10..13 {
                let x = Tensor::randn(&dev, &[2, 8, 32], seed).unwrap();
                let want = bits(&tr.forward(&x).unwrap());
                assert!(
                    bits(&g.run(&[&x]).unwrap()[0]) == want,
                    "transformer, {seed}"
                );
            }
            // Two inputs, one of them given as a strided view; outputs of every kind.
            let w = Tensor::randn(&dev, &[8, 4], 77).unwrap();
            let g = Graph::capture(&dev, &[(&[6, 8], DType::F32), (&[4, 3], DType::F32)], |i| {
                mixed(&dev, &w, &i[0], &i[1])
            })
            .unwrap();
            for seed in 20..23 {
                let x = Tensor::randn(&dev, &[6, 8], seed).unwrap();
                let y = Tensor::randn(&dev, &[3, 4], seed + 100)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap();
                assert!(!y.is_contiguous());
                let want = mixed(&dev, &w, &x, &y).unwrap();
                let got = g.run(&[&x, &y]).unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.shape(), w.shape(), "output {i}");
                    assert!(g.is_contiguous());
                    assert!(bits(g) == bits(w), "mixed output {i}, input {seed}");
                }
            }
        },
    );
}

backend_tests!(a_weight_given_as_input_is_read_at_every_run);
/// A weight that is a graph *input* changes from run to run: nothing derived from it (the CPU
/// backend's packed weights) may survive a run.
fn a_weight_given_as_input_is_read_at_every_run(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let g = Graph::capture(
                &dev,
                &[(&[32, 48], DType::F32), (&[40, 48], DType::F32)],
                |i| -> Result<_> { Ok(vec![i[0].linear(&i[1], None)?]) },
            )
            .unwrap();
            let x = Tensor::randn(&dev, &[32, 48], 1).unwrap();
            for seed in 0..3 {
                let w = Tensor::randn(&dev, &[40, 48], 50 + seed).unwrap();
                let want = bits(&x.linear(&w, None).unwrap());
                assert!(bits(&g.run(&[&x, &w]).unwrap()[0]) == want, "weight {seed}");
            }
        },
    );
}

backend_tests!(many_threads_own_and_shared_graphs);
/// Threads with a graph each and threads sharing one graph, all at once: every result is the
/// one computed alone.
fn many_threads_own_and_shared_graphs(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let m = mlp(&dev, &[64, 256, 256, 32]);
            let capture = || forward_graph(&dev, &m, &[2, 64]);
            let iters = scaled(100);
            let inputs: Vec<Tensor> = (0..iters as u64)
                .map(|s| Tensor::randn(&dev, &[2, 64], 1000 + s).unwrap())
                .collect();
            let want: Vec<Vec<u32>> = inputs
                .iter()
                .map(|x| bits(&m.forward(x).unwrap()))
                .collect();
            let shared = capture();
            std::thread::scope(|sc| {
                for t in 0..8 {
                    let (shared, inputs, want) = (&shared, &inputs, &want);
                    let capture = &capture;
                    sc.spawn(move || {
                        let own = (t % 2 == 0).then(capture);
                        let g = own.as_ref().unwrap_or(shared);
                        let mut outs = Vec::new();
                        for i in 0..iters {
                            let k = (i + t) % iters;
                            outs.push((k, g.run(&[&inputs[k]]).unwrap().remove(0)));
                        }
                        for (k, out) in outs {
                            assert!(bits(&out) == want[k], "thread {t}, input {k}");
                        }
                    });
                }
            });
        },
    );
}

backend_tests!(what_cannot_be_captured_fails_with_a_typed_error);
fn what_cannot_be_captured_fails_with_a_typed_error(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let spec: &[(&[usize], DType)] = &[(&[2, 3], DType::F32)];
            let e = Graph::capture(&dev, spec, |x| -> Result<_> {
                x[0].to_vec::<f32>()?;
                Ok(vec![])
            })
            .unwrap_err();
            assert!(matches!(e, Error::Capture { op: "to_bytes", .. }), "{e}");
            let e = Graph::capture(&dev, spec, |_| -> Result<_> {
                Ok(vec![Tensor::randn(&dev, &[2], 1)?])
            })
            .unwrap_err();
            assert!(matches!(e, Error::Capture { op: "randn", .. }), "{e}");
            let e = Graph::capture(&dev, spec, |x| -> Result<_> {
                Graph::capture(&dev, spec, |_| -> Result<_> { Ok(vec![]) })?;
                Ok(vec![x[0].clone()])
            })
            .unwrap_err();
            assert!(matches!(e, Error::Capture { .. }), "{e}");
            let inner =
                Graph::capture(&dev, spec, |x| -> Result<_> { Ok(vec![x[0].relu()?]) }).unwrap();
            let e =
                Graph::capture(&dev, spec, |x| -> Result<_> { inner.run(&[&x[0]]) }).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Capture {
                        op: "Graph::run",
                        ..
                    }
                ),
                "{e}"
            );

            // A tensor made during a capture is the graph's: unusable outside it.
            let mut leaked = None;
            let g = Graph::capture(&dev, spec, |x| -> Result<_> {
                let h = x[0].relu()?;
                leaked = Some(h.clone());
                Ok(vec![h.exp()?])
            })
            .unwrap();
            let leaked = leaked.unwrap();
            assert!(matches!(leaked.to_vec::<f32>(), Err(Error::GraphTensor)));
            assert!(matches!(leaked.add(&leaked), Err(Error::GraphTensor)));
            assert!(matches!(g.run(&[&leaked]), Err(Error::GraphTensor)));
            // ... nor inside another graph's capture.
            let e = Graph::capture(&dev, spec, |x| -> Result<_> {
                Ok(vec![x[0].add(&leaked)?])
            })
            .unwrap_err();
            assert!(matches!(e, Error::GraphTensor), "{e}");
            let e = Graph::capture(&dev, spec, |_| -> Result<_> { Ok(vec![leaked.clone()]) })
                .unwrap_err();
            assert!(matches!(e, Error::GraphTensor), "{e}");

            // Runs with the wrong inputs.
            let x = Tensor::randn(&dev, &[2, 3], 5).unwrap();
            let e = g.run(&[]).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::GraphInputs {
                        expected: 1,
                        got: 0
                    }
                ),
                "{e}"
            );
            let e = g.run(&[&x.transpose(0, 1).unwrap()]).unwrap_err();
            assert!(matches!(e, Error::GraphInput { index: 0, .. }), "{e}");
            let xi = Tensor::zeros(&dev, &[2, 3], DType::I64).unwrap();
            let e = g.run(&[&xi]).unwrap_err();
            assert!(matches!(e, Error::GraphInput { .. }), "{e}");
            let other = Device::cpu().unwrap();
            let xo = Tensor::randn(&other, &[2, 3], 5).unwrap();
            assert!(matches!(g.run(&[&xo]), Err(Error::DeviceMismatch { .. })));
            let e = Graph::capture(&dev, &[(&[2], DType::F16)], |_| -> Result<_> { Ok(vec![]) })
                .unwrap_err();
            assert!(matches!(e, Error::UnsupportedDType { .. }), "{e}");
            // An op on another stream than the capture's (its memory would be that stream's).
            let other = dev.stream(3).unwrap();
            let e = Graph::capture(&dev, spec, |x| -> Result<_> {
                Ok(vec![dev.with_stream(&other, || x[0].relu())?])
            })
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Capture {
                        op: "Graph::capture",
                        ..
                    }
                ),
                "{e}"
            );
            // A shape error inside the function comes back as it is.
            let e = Graph::capture(&dev, spec, |x| -> Result<_> {
                Ok(vec![x[0].matmul(&x[0])?])
            })
            .unwrap_err();
            assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
            // A panic inside the function ends the recording.
            let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = Graph::capture(&dev, spec, |_| -> Result<Vec<Tensor>> {
                    panic!("inside the capture")
                });
            }));
            assert!(p.is_err());

            // After all of that the thread records and runs again, and ops run directly.
            let want = bits(&x.relu().unwrap().exp().unwrap());
            assert!(bits(&g.run(&[&x]).unwrap()[0]) == want);
            let g2 =
                Graph::capture(&dev, spec, |x| -> Result<_> { Ok(vec![x[0].exp()?]) }).unwrap();
            assert!(bits(&g2.run(&[&x]).unwrap()[0]) == bits(&x.exp().unwrap()));
        },
    );
}

backend_tests!(drops_in_any_order_lose_nothing);
/// Dropping a graph right after its runs were enqueued, and its outputs later; dropping the
/// device under a live graph; no memory stays allocated.
fn drops_in_any_order_lose_nothing(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let m = mlp(&dev, &[64, 128, 64]);
            let x = Tensor::randn(&dev, &[4, 64], 3).unwrap();
            let want = bits(&m.forward(&x).unwrap());
            dev.synchronize().unwrap();
            let base = dev.memory_stats().allocated_bytes;
            let s1 = dev.stream(1).unwrap();
            let outs = {
                let g = forward_graph(&dev, &m, &[4, 64]);
                let mut outs = Vec::new();
                for i in 0..scaled(20) {
                    let run = || g.run(&[&x]).unwrap().remove(0);
                    // Alternate streams: every switch orders the new stream after the old.
                    outs.push(if i % 2 == 0 {
                        run()
                    } else {
                        dev.with_stream(&s1, run)
                    });
                }
                outs
            };
            for o in &outs {
                assert!(bits(o) == want);
            }
            drop(outs);
            dev.synchronize().unwrap();
            assert_eq!(
                dev.memory_stats().allocated_bytes,
                base,
                "graph memory given back"
            );

            let g = forward_graph(&dev, &m, &[4, 64]);
            let y = g.run(&[&x]).unwrap().remove(0);
            drop((m, x));
            dev.shutdown();
            let e = g.run(&[&y]).unwrap_err();
            assert!(matches!(e, Error::DeviceClosed { .. }), "{e}");
            drop(g);
            drop(y);
        },
    );
}

backend_tests!(captures_while_other_threads_compute);
/// Graphs captured on one thread while other threads run the model directly, each on a stream
/// used for the first time (on CUDA: a new cuBLAS handle, whose first products synchronize the
/// device, which a capturing stream would refuse): every result is the one computed alone.
fn captures_while_other_threads_compute(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let m = mlp(&dev, &[64, 96, 32]);
            let x = Tensor::randn(&dev, &[3, 64], 8).unwrap();
            let want = bits(&m.forward(&x).unwrap());
            std::thread::scope(|sc| {
                let (m, x, want, dev) = (&m, &x, &want, &dev);
                sc.spawn(move || capture_repeatedly(dev, m, x, want));
                for t in 0..6 {
                    sc.spawn(move || {
                        for i in 0..scaled(30) {
                            let y = m.forward(x).unwrap();
                            assert!(bits(&y) == *want, "thread {t}, forward {i}");
                        }
                    });
                }
            });
        },
    );
}

backend_tests!(captures_while_devices_come_and_go);
/// Devices created and dropped on another thread while graphs are captured (what a new device
/// does, such as loading its kernels, must not break a capture of another device of the same
/// GPU: on CUDA it once made `cuStreamEndCapture` fail when tests ran in parallel).
fn captures_while_devices_come_and_go(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let m = mlp(&dev, &[64, 96, 32]);
            let x = Tensor::randn(&dev, &[3, 64], 8).unwrap();
            let want = bits(&m.forward(&x).unwrap());
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|sc| {
                let (m, x, want, dev, done) = (&m, &x, &want, &dev, &done);
                sc.spawn(move || {
                    // Set however this thread ends (a failed capture panics).
                    struct Done<'a>(&'a std::sync::atomic::AtomicBool);
                    impl Drop for Done<'_> {
                        fn drop(&mut self) {
                            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let _done = Done(done);
                    capture_repeatedly(dev, m, x, want);
                });
                sc.spawn(move || {
                    let mut made = 0;
                    while made < 2 || !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let other = backend.builder().open().unwrap();
                        let y = Tensor::randn(&other, &[8, 8], made).unwrap();
                        assert!(y.matmul(&y).unwrap().to_vec::<f32>().is_ok());
                        other.shutdown();
                        made += 1;
                    }
                });
            });
        },
    );
}

backend_tests!(a_failing_kernel_in_a_graph_poisons_that_run_only);
/// A kernel of a graph that fails on its inputs (an index out of range, known only on the
/// device) poisons that run's outputs, as a direct call would, and nothing else: earlier and
/// later runs, on the same stream or another, give their values.
fn a_failing_kernel_in_a_graph_poisons_that_run_only(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let weight = Tensor::randn(&dev, &[10, 4], 1).unwrap();
            let g = Graph::capture(&dev, &[(&[2], DType::I64)], |i| -> Result<_> {
                Ok(vec![Tensor::embedding(&i[0], &weight)?.relu()?])
            })
            .unwrap();
            let good = Tensor::from_slice(&dev, &[3_i64, 9], &[2]).unwrap();
            let want = bits(&Tensor::embedding(&good, &weight).unwrap().relu().unwrap());
            assert!(bits(&g.run(&[&good]).unwrap()[0]) == want);
            let bad = Tensor::from_slice(&dev, &[3_i64, 999], &[2]).unwrap();
            let stream = dev.stream(5).unwrap();
            let (before, failed, after) = dev.with_stream(&stream, || {
                let before = g.run(&[&good]).unwrap();
                let failed = g.run(&[&bad]).unwrap();
                (before, failed, g.run(&[&good]).unwrap())
            });
            match failed[0].to_vec::<f32>() {
                Err(Error::Kernel {
                    stream, message, ..
                }) if stream.index() == 5 => {
                    assert_eq!(message, "index 999 out of range for 10 rows")
                }
                other => panic!("{other:?}"),
            }
            // The runs around it, the graph and other streams go on.
            assert!(bits(&before[0]) == want);
            assert!(bits(&after[0]) == want);
            assert!(bits(&g.run(&[&good]).unwrap()[0]) == want);
            assert!(dev.with_stream(&stream, || bits(&g.run(&[&good]).unwrap()[0])) == want);
        },
    );
}
