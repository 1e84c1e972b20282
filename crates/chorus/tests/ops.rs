//! The op front-end through the public API: shapes, broadcasting, reductions, strided inputs.

use chorus::{DType, Device, DeviceExt, Tensor};
use chorus_testing::{backend_tests, bits, TestBackend};

fn t(dev: &chorus::Device, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, v, shape).unwrap()
}

fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "element {i}: {g} vs {w}"
        );
    }
}

/// Scaled dot-product attention computed naively on the host in f64, from the values of
/// `q` `[B, H, L, E]`, `k` `[B, H, S, E]`, `v` `[B, H, S, Ev]` and a keep-mask `[B, 1, 1, S]`
/// (1 = attend): `softmax(q k^T / sqrt(E)) v`, causal top-left aligned, a row with no key kept
/// giving zeros (as PyTorch 2.11). The reference for the op, independent of its kernels.
fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    keep: Option<&Tensor>,
    causal: bool,
) -> Vec<f32> {
    let (b, h, l, e) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (s_len, ev) = (k.shape()[2], v.shape()[3]);
    let (q, k, v) = (
        q.to_vec::<f32>().unwrap(),
        k.to_vec::<f32>().unwrap(),
        v.to_vec::<f32>().unwrap(),
    );
    let keep = keep.map(|m| m.to_vec::<i64>().unwrap());
    let scale = 1.0 / (e as f64).sqrt();
    let mut out = vec![0.0f32; b * h * l * ev];
    for bh in 0..b * h {
        for i in 0..l {
            let kept = |j: usize| {
                keep.as_ref().is_none_or(|m| m[(bh / h) * s_len + j] != 0) && (!causal || j <= i)
            };
            let scores: Vec<Option<f64>> = (0..s_len)
                .map(|j| {
                    kept(j).then(|| {
                        (0..e)
                            .map(|c| {
                                f64::from(q[(bh * l + i) * e + c])
                                    * f64::from(k[(bh * s_len + j) * e + c])
                            })
                            .sum::<f64>()
                            * scale
                    })
                })
                .collect();
            let max = scores
                .iter()
                .flatten()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores
                .iter()
                .map(|s| s.map_or(0.0, |s| (s - max).exp()))
                .collect();
            let total: f64 = weights.iter().sum();
            if total == 0.0 {
                continue; // no key kept: zeros
            }
            for c in 0..ev {
                let acc: f64 = (0..s_len)
                    .map(|j| weights[j] * f64::from(v[(bh * s_len + j) * ev + c]))
                    .sum();
                out[(bh * l + i) * ev + c] = (acc / total) as f32;
            }
        }
    }
    out
}

/// `x w^T + b` and the activation, computed naively on the host in f64 (gelu with erf), from
/// the values of `x` `[M, K]`, `w` `[N, K]` and `b` `[N]`.
fn naive_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    act: Option<chorus::UnaryOp>,
) -> Vec<f32> {
    let (m, k, n) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let (x, w) = (x.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
    let b = b.map(|b| b.to_vec::<f32>().unwrap());
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let mut y: f64 = (0..k)
                .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                .sum();
            y += b.as_ref().map_or(0.0, |b| f64::from(b[j]));
            y = match act {
                None => y,
                Some(chorus::UnaryOp::Relu) => y.max(0.0),
                Some(chorus::UnaryOp::Gelu) => 0.5 * y * (1.0 + erf(y / std::f64::consts::SQRT_2)),
                Some(other) => panic!("no reference for {other:?}"),
            };
            out.push(y as f32);
        }
    }
    out
}

/// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

backend_tests!(matmul_2d_batched_broadcast_and_vectors);
fn matmul_2d_batched_broadcast_and_vectors(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let a: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..4 * 5).map(|i| (i % 7) as f32 - 2.0).collect();
            // 2-D.
            let m = t(&dev, &a[..12], &[3, 4])
                .matmul(&t(&dev, &b, &[4, 5]))
                .unwrap();
            assert_eq!(m.shape(), &[3, 5]);
            close(
                &m.to_vec::<f32>().unwrap(),
                &naive_matmul(&a[..12], &b, 3, 4, 5),
            );
            // Batched lhs, broadcast 2-D rhs.
            let m = t(&dev, &a, &[2, 3, 4])
                .matmul(&t(&dev, &b, &[4, 5]))
                .unwrap();
            assert_eq!(m.shape(), &[2, 3, 5]);
            let mut want = naive_matmul(&a[..12], &b, 3, 4, 5);
            want.extend(naive_matmul(&a[12..], &b, 3, 4, 5));
            close(&m.to_vec::<f32>().unwrap(), &want);
            // Broadcast batch dims that do not flatten to one stride: [2,1,3,4] @ [1,2,4,5] -> [2,2,3,5].
            let bb: Vec<f32> = (0..2 * 4 * 5).map(|i| (i % 5) as f32 * 0.25).collect();
            let m = t(&dev, &a, &[2, 1, 3, 4])
                .matmul(&t(&dev, &bb, &[1, 2, 4, 5]))
                .unwrap();
            assert_eq!(m.shape(), &[2, 2, 3, 5]);
            let got = m.to_vec::<f32>().unwrap();
            for i in 0..2 {
                for j in 0..2 {
                    let w =
                        naive_matmul(&a[i * 12..i * 12 + 12], &bb[j * 20..j * 20 + 20], 3, 4, 5);
                    close(&got[(i * 2 + j) * 15..(i * 2 + j + 1) * 15], &w);
                }
            }
            // Vectors: [4] @ [4] -> [], [3,4] @ [4] -> [3], [4] @ [4,5] -> [5].
            let v = t(&dev, &[1.0, 2.0, 3.0, 4.0], &[4]);
            let dot = v.matmul(&v).unwrap();
            assert_eq!(dot.shape(), &[] as &[usize]);
            assert_eq!(dot.item::<f32>().unwrap(), 30.0);
            assert_eq!(t(&dev, &a[..12], &[3, 4]).matmul(&v).unwrap().shape(), &[3]);
            let vm = v.matmul(&t(&dev, &b, &[4, 5])).unwrap();
            assert_eq!(vm.shape(), &[5]);
            close(
                &vm.to_vec::<f32>().unwrap(),
                &naive_matmul(&[1.0, 2.0, 3.0, 4.0], &b, 1, 4, 5),
            );
            // Transposed (strided) operands are read correctly.
            let at = t(&dev, &a[..12], &[4, 3]).transpose(0, 1).unwrap();
            assert!(!at.is_contiguous());
            let m = at.matmul(&t(&dev, &b, &[4, 5])).unwrap();
            let a_t: Vec<f32> = (0..3)
                .flat_map(|i| (0..4).map(move |j| (i, j)))
                .map(|(i, j)| a[j * 3 + i])
                .collect();
            close(
                &m.to_vec::<f32>().unwrap(),
                &naive_matmul(&a_t, &b, 3, 4, 5),
            );
        },
    );
}

backend_tests!(elementwise_broadcasting_f32_and_i64);
fn elementwise_broadcasting_f32_and_i64(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let a = t(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
            let row = t(&dev, &[10.0, 20.0, 30.0], &[3]);
            let col = t(&dev, &[100.0, 200.0], &[2, 1]);
            assert_eq!(
                a.add(&row).unwrap().to_vec::<f32>().unwrap(),
                vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
            );
            assert_eq!(
                a.sub(&col).unwrap().to_vec::<f32>().unwrap(),
                vec![-99.0, -98.0, -97.0, -196.0, -195.0, -194.0]
            );
            assert_eq!(row.mul(&col).unwrap().shape(), &[2, 3]);
            assert_eq!(a.div(&row).unwrap().to_vec::<f32>().unwrap()[2], 0.1);
            // Strided lhs: the transpose of a is [3, 2].
            let at = a.transpose(0, 1).unwrap();
            assert_eq!(
                at.add(&col.reshape(&[1, 2]).unwrap())
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap(),
                vec![101.0, 204.0, 102.0, 205.0, 103.0, 206.0]
            );
            let i = Tensor::from_slice(&dev, &[7_i64, -8, 9], &[3]).unwrap();
            let j = Tensor::from_slice(&dev, &[2_i64], &[1]).unwrap();
            assert_eq!(i.add(&j).unwrap().to_vec::<i64>().unwrap(), vec![9, -6, 11]);
            assert_eq!(i.div(&j).unwrap().to_vec::<i64>().unwrap(), vec![3, -4, 4]);
            assert_eq!(i.sum_all().unwrap().item::<i64>().unwrap(), 8);
        },
    );
}

backend_tests!(reductions_over_all_one_and_several_dims);
fn reductions_over_all_one_and_several_dims(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
            let x = t(&dev, &v, &[2, 3, 4]);
            assert_eq!(x.sum_all().unwrap().item::<f32>().unwrap(), 276.0);
            assert_eq!(x.mean_all().unwrap().item::<f32>().unwrap(), 11.5);
            let s = x.sum(&[1], false).unwrap();
            assert_eq!(s.shape(), &[2, 4]);
            assert_eq!(
                s.to_vec::<f32>().unwrap(),
                vec![12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]
            );
            let s = x.sum(&[0, -1], true).unwrap();
            assert_eq!(s.shape(), &[1, 3, 1]);
            assert_eq!(s.to_vec::<f32>().unwrap(), vec![60.0, 92.0, 124.0]);
            let m = x.mean(&[2], false).unwrap();
            assert_eq!(
                m.to_vec::<f32>().unwrap(),
                vec![1.5, 5.5, 9.5, 13.5, 17.5, 21.5]
            );
            // Reducing a strided view.
            let xt = x.transpose(0, 2).unwrap(); // [4, 3, 2]
            assert_eq!(
                xt.sum(&[2], false).unwrap().to_vec::<f32>().unwrap()[..3],
                [12.0, 20.0, 28.0]
            );
            // keepdim result broadcasts back.
            let centered = x.sub(&x.mean(&[-1], true).unwrap()).unwrap();
            assert!(centered.sum_all().unwrap().item::<f32>().unwrap().abs() < 1e-4);
        },
    );
}

backend_tests!(constructors_reshape_and_views);
fn constructors_reshape_and_views(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let z = Tensor::zeros(&dev, &[2, 2], DType::I64).unwrap();
            assert_eq!(z.to_vec::<i64>().unwrap(), vec![0; 4]);
            let f = Tensor::full(&dev, &[3], 2.5).unwrap();
            assert_eq!(f.to_vec::<f32>().unwrap(), vec![2.5; 3]);
            let x = t(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
            let r = x.reshape(&[3, -1]).unwrap();
            assert_eq!(r.shape(), &[3, 2]);
            assert_eq!(r.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
            // Reshaping a transposed view copies in logical order.
            let rt = x.transpose(0, 1).unwrap().reshape(&[6]).unwrap();
            assert_eq!(
                rt.to_vec::<f32>().unwrap(),
                vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
            );
            let e = Tensor::empty(&dev, &[0, 4], DType::F32).unwrap();
            assert!(e.is_empty() && e.to_vec::<f32>().unwrap().is_empty());
            // The same seed gives the same numbers on any stream and thread.
            let a = Tensor::randn(&dev, &[1000], 42)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let other = dev.stream(9).unwrap();
            let b = dev.with_stream(&other, || {
                Tensor::randn(&dev, &[1000], 42)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            });
            let c = std::thread::scope(|s| {
                s.spawn(|| {
                    Tensor::randn(&dev, &[10, 100], 42)
                        .unwrap()
                        .to_vec::<f32>()
                        .unwrap()
                })
                .join()
                .unwrap()
            });
            assert!(a == b && a == c);
            assert_ne!(
                a,
                Tensor::randn(&dev, &[1000], 43)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            );
        },
    );
}

backend_tests!(add_layer_norm_is_add_then_layer_norm_bit_for_bit);
fn add_layer_norm_is_add_then_layer_norm_bit_for_bit(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (rows, n) = (5, 300);
            let x = Tensor::randn(&dev, &[rows, n], 1).unwrap();
            let r = Tensor::randn(&dev, &[rows, n], 2).unwrap();
            let w = Tensor::randn(&dev, &[n], 3).unwrap();
            let b = Tensor::randn(&dev, &[n], 4).unwrap();
            for (w, b) in [(None, None), (Some(&w), Some(&b))] {
                let fused = x.add_layer_norm(&r, w, b, 1e-5).unwrap();
                let plain = x.add(&r).unwrap().layer_norm(w, b, 1e-5).unwrap();
                assert_eq!(bits(&fused), bits(&plain));
            }
            // A strided operand is made contiguous first; a broadcast one takes the plain path.
            let rt = r
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            let fused = x.add_layer_norm(&rt, None, None, 1e-5).unwrap();
            let plain = x.add(&r).unwrap().layer_norm(None, None, 1e-5).unwrap();
            assert_eq!(bits(&fused), bits(&plain));
            let row = r.narrow(0, 0, 1).unwrap();
            let fused = x.add_layer_norm(&row, None, None, 1e-5).unwrap();
            let plain = x.add(&row).unwrap().layer_norm(None, None, 1e-5).unwrap();
            assert_eq!(bits(&fused), bits(&plain));
            // Bad parameters are typed errors, as for layer_norm.
            assert!(x
                .add_layer_norm(&r, Some(&b.narrow(0, 0, 7).unwrap()), None, 1e-5)
                .is_err());
        },
    );
}

backend_tests!(linear_gives_the_same_bits_first_later_and_from_many_threads);
/// `linear` gives the same bits on its first call (when a backend may prepare the weight, e.g.
/// the CPU's packed copy), on later calls, from many threads at once and for each weight that
/// is a view into one storage (PyTorch's packed `in_proj_weight`) as for a copy of it; and
/// what `matmul`, `add` and `relu` give, within rounding.
fn linear_gives_the_same_bits_first_later_and_from_many_threads(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (rows, d_in, d_out) = (64, 128, 96);
            let x = Tensor::randn(&dev, &[rows, d_in], 1).unwrap();
            let packed = Tensor::randn(&dev, &[3 * d_out, d_in], 2).unwrap();
            let b = Tensor::randn(&dev, &[d_out], 3).unwrap();
            let relu = Some(chorus::UnaryOp::Relu);
            for part in 0..3 {
                let w = packed.narrow(0, part * d_out, d_out).unwrap();
                let first = bits(&x.linear_act(&w, Some(&b), relu).unwrap());
                let copy =
                    Tensor::from_slice(&dev, &w.to_vec::<f32>().unwrap(), &[d_out, d_in]).unwrap();
                assert_eq!(bits(&x.linear_act(&copy, Some(&b), relu).unwrap()), first);
                std::thread::scope(|s| {
                    for _ in 0..8 {
                        s.spawn(|| {
                            for _ in 0..5 {
                                let y = x.linear_act(&w, Some(&b), relu).unwrap();
                                assert_eq!(bits(&y), first, "part {part}");
                            }
                        });
                    }
                });
                let plain = x
                    .matmul(&w.transpose(0, 1).unwrap())
                    .unwrap()
                    .add(&b)
                    .unwrap()
                    .relu()
                    .unwrap();
                let want: Vec<f32> = plain.to_vec().unwrap();
                let got: Vec<f32> = first.iter().map(|&u| f32::from_bits(u)).collect();
                close(&got, &want);
            }
        },
    );
}

backend_tests!(attention_on_strided_heads_matches_the_decomposition);
/// Attention over the strided heads of a packed projection (what `MultiheadAttention` passes),
/// with a causal mask, a broadcast keep-mask (one batch's keys all dropped: zeros) and keys and
/// values of other lengths, gives what a naive host computation in f64 gives
/// (`naive_attention`), within rounding, on every backend (one kernel on CUDA); the same bits
/// from 8 threads; and heads that merge back into `[B, L, H·Dh]`.
fn attention_on_strided_heads_matches_the_decomposition(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (b, l, h, dh) = (2, 5, 3, 8);
            let qkv = Tensor::randn(&dev, &[b, l, 3 * h * dh], 11).unwrap();
            let heads = qkv
                .reshape(&[b as isize, l as isize, 3, h as isize, dh as isize])
                .unwrap()
                .permute(&[2, 0, 3, 1, 4])
                .unwrap();
            let head = |i: usize| heads.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
            let (q, k, v) = (head(0), head(1), head(2));
            assert_eq!(q.shape(), [b, h, l, dh]);
            // The keep-mask [B, 1, 1, S]: batch 1 drops keys 1 and 3 (with the causal mask
            // too, its queries 0 and 1 keep key 0 only).
            let keep: Vec<i64> = vec![1, 1, 1, 1, 1, 1, 0, 1, 0, 1];
            let mask = Tensor::from_slice(&dev, &keep, &[b, 1, 1, l]).unwrap();
            // All of batch 0's keys dropped for the second mask: rows of 0, as PyTorch 2.11's
            // scaled_dot_product_attention gives (on CPU and CUDA, every backend of it).
            let none: Vec<i64> = vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1];
            let none = Tensor::from_slice(&dev, &none, &[b, 1, 1, l]).unwrap();
            let check = |got: &Tensor, want: &[f32], what: &str| {
                let g = got.to_vec::<f32>().unwrap();
                assert_eq!(g.len(), want.len(), "{what}");
                for (i, (g, w)) in g.iter().zip(want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{what}: element {i}: {g} vs {w}"
                    );
                }
            };
            let sdpa = Tensor::scaled_dot_product_attention;
            for (m, causal, what) in [
                (None, false, "plain"),
                (None, true, "causal"),
                (Some(&mask), false, "mask"),
                (Some(&mask), true, "mask and causal"),
                (Some(&none), false, "no key kept"),
            ] {
                let got = sdpa(&q, &k, &v, m, causal).unwrap();
                assert_eq!(got.shape(), [b, h, l, dh], "{what}");
                check(&got, &naive_attention(&q, &k, &v, m, causal), what);
            }
            let masked = sdpa(&q, &k, &v, Some(&none), false)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let half = masked.len() / 2;
            assert!(masked[..half].iter().all(|&x| x == 0.0));
            assert!(masked[half..].iter().all(|x| x.is_finite()));
            // Keys and values of another length, values of another width.
            let (k7, v7) = (
                Tensor::randn(&dev, &[b, h, 7, dh], 12).unwrap(),
                Tensor::randn(&dev, &[b, h, 7, 5], 13).unwrap(),
            );
            let got = sdpa(&q, &k7, &v7, None, false).unwrap();
            assert_eq!(got.shape(), [b, h, l, 5]);
            check(&got, &naive_attention(&q, &k7, &v7, None, false), "7 keys");
            // Long keys (CUDA: fewer rows per block), longer than one kernel takes (CUDA: the
            // matmul, softmax and matmul).
            for s_len in [5000, 13000] {
                let q1 = Tensor::randn(&dev, &[1, 1, 3, 4], 14).unwrap();
                let k1 = Tensor::randn(&dev, &[1, 1, s_len, 4], 15).unwrap();
                let v1 = Tensor::randn(&dev, &[1, 1, s_len, 3], 16).unwrap();
                let got = sdpa(&q1, &k1, &v1, None, true).unwrap();
                let want = naive_attention(&q1, &k1, &v1, None, true);
                check(&got, &want, &format!("{s_len} keys"));
            }
            // The heads merge back into [B, L, H·Dh].
            let merged = sdpa(&q, &k, &v, None, false)
                .unwrap()
                .permute(&[0, 2, 1, 3])
                .unwrap()
                .reshape(&[b as isize, l as isize, -1])
                .unwrap();
            assert_eq!(merged.shape(), [b, l, h * dh]);
            let heads = naive_attention(&q, &k, &v, None, false);
            let want: Vec<f32> = (0..b * l * h * dh)
                .map(|at| {
                    let (bi, i, hi, c) =
                        (at / (l * h * dh), at / (h * dh) % l, at / dh % h, at % dh);
                    heads[((bi * h + hi) * l + i) * dh + c]
                })
                .collect();
            check(&merged, &want, "merged heads");
            // The same bits from 8 threads at once.
            let alone = bits(&sdpa(&q, &k, &v, Some(&mask), true).unwrap());
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        for _ in 0..5 {
                            let y = sdpa(&q, &k, &v, Some(&mask), true).unwrap();
                            assert_eq!(bits(&y), alone);
                        }
                    });
                }
            });
        },
    );
}

#[test]
fn squeeze_drops_a_dimension_of_one_only() {
    let dev = Device::cpu().unwrap();
    let t = Tensor::randn(&dev, &[2, 1, 3], 1).unwrap();
    assert_eq!(t.squeeze(1).unwrap().shape(), [2, 3]);
    assert_eq!(t.squeeze(-2).unwrap().shape(), [2, 3]);
    assert_eq!(t.squeeze(0).unwrap().shape(), [2, 1, 3]);
    assert_eq!(
        t.squeeze(1).unwrap().to_vec::<f32>().unwrap(),
        t.to_vec::<f32>().unwrap()
    );
    assert!(t.squeeze(3).is_err());
}

backend_tests!(linear_with_few_and_more_rows_matches_a_host_loop);
/// `linear` with few rows and with more (the CPU's `rowdot` and packed kernels, CUDA's fused
/// epilogues), every epilogue, a `k` that is no multiple of 32 and a strided input: what a naive
/// host loop in f64 computes (`naive_linear`), within rounding, and the same bits on every call.
fn linear_with_few_and_more_rows_matches_a_host_loop(backend: TestBackend) {
    backend.with_device(
        |b| b,
        |dev| {
            let (k, n) = (45, 70);
            let w = Tensor::randn(&dev, &[n, k], 21).unwrap();
            let b = Tensor::randn(&dev, &[n], 22).unwrap();
            for m in [1, 3, 8, 9] {
                // Every other row of a [2m, k] tensor: rows at a stride of 2k.
                let x = Tensor::randn(&dev, &[2 * m, k], 23 + m as u64)
                    .unwrap()
                    .reshape(&[m as isize, 2, k as isize])
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap();
                for act in [
                    None,
                    Some(chorus::UnaryOp::Relu),
                    Some(chorus::UnaryOp::Gelu),
                ] {
                    for bias in [None, Some(&b)] {
                        let got = x.linear_act(&w, bias, act).unwrap();
                        assert_eq!(got.shape(), [m, n]);
                        let g = got.to_vec::<f32>().unwrap();
                        close(&g, &naive_linear(&x, &w, bias, act));
                        let again = x.linear_act(&w, bias, act).unwrap();
                        assert_eq!(again.to_vec::<f32>().unwrap(), g, "m {m}, {act:?}");
                    }
                }
            }
        },
    );
}
