//! The `LayerNorm` and `GroupNorm` kernels (f32, contiguous).
//!
//! Each normalized block's mean and biased variance are computed in f64 in two passes (the mean,
//! then the mean squared deviation from it, which stays accurate when the mean is large next to
//! the spread), each summing four interleaved lanes in a fixed order: deterministic, and four
//! independent dependency chains instead of one. The output `(x - mean) / sqrt(var + eps) *
//! weight + bias` is evaluated in f64 and rounded once, in a zipped loop per row (LayerNorm) or
//! per channel (GroupNorm, whose weight and bias are per-channel scalars).

use super::mem::{slice, slice_mut};
use chorus_core::kernel::{GroupNorm, LayerNorm};

/// `Σ f(x)` in f64 over four interleaved lanes, combined as `(l0 + l1) + (l2 + l3)`, then the
/// tail in order.
#[inline(always)]
fn sum4(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(f64::from(v));
        }
    }
    let head = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    tail.iter().fold(head, |a, &v| a + f(f64::from(v)))
}

/// Mean and `1 / sqrt(var + eps)` of `x` (not empty), variance biased.
fn stats(x: &[f32], eps: f32) -> (f64, f64) {
    let count = x.len() as f64;
    let mean = sum4(x, |v| v) / count;
    let var = sum4(x, |v| (v - mean) * (v - mean)) / count;
    (mean, 1.0 / (var + f64::from(eps)).sqrt())
}

/// Layer norm of the `[rows, n]` `src` (plus `residual`, if any, summed in f32 first exactly as
/// the `add` kernel does) over its last axis.
///
/// # Safety
/// `src` (and `residual`, if any) is readable, aligned f32 for `rows * n` elements, `weight`
/// and `bias` (if any) for `n`;
/// `out` is valid and aligned for `rows * n` f32 writes, overlaps no input and is not otherwise
/// accessed during the call.
pub(super) unsafe fn layer_norm(k: &LayerNorm) {
    let (n, eps, len) = (k.n, k.eps, k.len());
    // SAFETY: caller's contract: `len` readable f32, not written during the call.
    let src = unsafe { slice::<f32>(k.src, len) };
    // SAFETY: caller's contract: `len` writable, unaliased f32.
    let out = unsafe { slice_mut::<f32>(k.out, len) };
    // SAFETY: caller's contract: a weight is `n` readable f32.
    let weight = k.weight.map(|w| unsafe { slice::<f32>(w, n) });
    // SAFETY: caller's contract: a bias is `n` readable f32.
    let bias = k.bias.map(|b| unsafe { slice::<f32>(b, n) });
    // SAFETY: caller's contract: a residual is `len` readable f32.
    let residual = k.residual.map(|r| unsafe { slice::<f32>(r, len) });
    if len == 0 {
        return;
    }
    let mut sum = vec![0.0f32; if residual.is_some() { n } else { 0 }];
    for (i, (x, y)) in src.chunks_exact(n).zip(out.chunks_exact_mut(n)).enumerate() {
        let x = match residual {
            Some(r) => {
                for ((s, &a), &b) in sum.iter_mut().zip(x).zip(&r[i * n..][..n]) {
                    *s = a + b;
                }
                &sum[..]
            }
            None => x,
        };
        let (mean, rstd) = stats(x, eps);
        let norm = |v: f32| (f64::from(v) - mean) * rstd;
        match (weight, bias) {
            (None, None) => {
                for (o, &v) in y.iter_mut().zip(x) {
                    *o = norm(v) as f32;
                }
            }
            (Some(w), None) => {
                for ((o, &v), &w) in y.iter_mut().zip(x).zip(w) {
                    *o = (norm(v) * f64::from(w)) as f32;
                }
            }
            (None, Some(b)) => {
                for ((o, &v), &b) in y.iter_mut().zip(x).zip(b) {
                    *o = (norm(v) + f64::from(b)) as f32;
                }
            }
            (Some(w), Some(b)) => {
                for (((o, &v), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *o = (norm(v) * f64::from(w) + f64::from(b)) as f32;
                }
            }
        }
    }
}

/// Group norm of the `[batch, channels, spatial]` `src`.
///
/// # Safety
/// `src` is readable, aligned f32 for `batch * channels * spatial` elements, `weight` and `bias`
/// (if any) for `channels`; `out` is valid and aligned for as many f32 writes as `src` has
/// elements, overlaps no input and is not otherwise accessed during the call.
///
/// # Panics
/// When `groups` is 0 or does not divide `channels`.
pub(super) unsafe fn group_norm(g: &GroupNorm) {
    let GroupNorm {
        src,
        out,
        weight,
        bias,
        eps,
        ..
    } = *g;
    assert!(
        g.groups > 0 && g.channels.is_multiple_of(g.groups),
        "group_norm: {} groups do not divide {} channels",
        g.groups,
        g.channels
    );
    let len = g.len();
    // SAFETY: caller's contract: `len` readable f32, not written during the call.
    let src = unsafe { slice::<f32>(src, len) };
    // SAFETY: caller's contract: `len` writable, unaliased f32.
    let out = unsafe { slice_mut::<f32>(out, len) };
    // SAFETY: caller's contract: a weight is `channels` readable f32.
    let weight = weight.map(|w| unsafe { slice::<f32>(w, g.channels) });
    // SAFETY: caller's contract: a bias is `channels` readable f32.
    let bias = bias.map(|b| unsafe { slice::<f32>(b, g.channels) });
    let block = g.group_len();
    if len == 0 {
        return;
    }
    let blocks = src.chunks_exact(block).zip(out.chunks_exact_mut(block));
    for (k, (x, y)) in blocks.enumerate() {
        let (mean, rstd) = stats(x, eps);
        let first = (k % g.groups) * (g.channels / g.groups);
        let planes = x.chunks_exact(g.spatial).zip(y.chunks_exact_mut(g.spatial));
        for (c, (xc, yc)) in (first..).zip(planes) {
            let w = weight.map_or(1.0, |w| f64::from(w[c]));
            let b = bias.map_or(0.0, |b| f64::from(b[c]));
            for (o, &v) in yc.iter_mut().zip(xc) {
                *o = ((f64::from(v) - mean) * rstd * w + b) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use chorus_core::kernel::{DevicePtr, Kernel};

    /// Reference: `(x - mean) / sqrt(var + eps)` of a block, in f64 by sequential sums.
    fn normalize(x: &[f32], eps: f32) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = (var + f64::from(eps)).sqrt();
        x.iter().map(|&v| (f64::from(v) - mean) / std).collect()
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (k, (&g, &e)) in got.iter().zip(want).enumerate() {
            let ok = (f64::from(g) - e).abs() <= 2e-6 * (1.0 + e.abs());
            assert!(ok, "{what} at {k}: {g} vs {e}");
        }
    }

    /// The optional parameter as a device pointer.
    fn opt(v: &Option<Vec<f32>>) -> Option<DevicePtr> {
        v.as_deref().map(ptr)
    }

    fn check_layer(rows: usize, n: usize, offset: f32, affine: [bool; 2]) {
        let mut rng = Rng::new((rows * 100 + n) as u64);
        let x: Vec<f32> = rng.f32s(rows * n).iter().map(|v| v + offset).collect();
        let w = affine[0].then(|| rng.f32s(n));
        let b = affine[1].then(|| rng.f32s(n));
        let mut y = vec![f32::NAN; rows * n];
        let kernel = Kernel::LayerNorm(chorus_core::kernel::LayerNorm {
            src: ptr(&x),
            residual: None,
            out: ptr_mut(&mut y),
            weight: opt(&w),
            bias: opt(&b),
            rows,
            n,
            eps: 1e-5,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: `x` and `y` hold `rows * n` elements, the weight and bias `n`.
        unsafe { execute(&kernel) };
        let mut want = Vec::new();
        for x in x.chunks(n.max(1)) {
            for (j, v) in normalize(x, 1e-5).into_iter().enumerate() {
                let w = w.as_ref().map_or(1.0, |w| f64::from(w[j]));
                want.push(v * w + b.as_ref().map_or(0.0, |b| f64::from(b[j])));
            }
        }
        close(&y, &want, &format!("layer_norm {rows}x{n} {affine:?}"));
    }

    #[test]
    fn layer_norm_matches_reference() {
        for affine in [[false, false], [true, false], [false, true], [true, true]] {
            check_layer(3, 7, 0.0, affine);
            check_layer(1, 1, 0.0, affine); // var 0: the bias alone
            check_layer(5, 1, 3.0, affine);
            check_layer(2, 768, 0.0, affine);
            check_layer(4, 33, 1000.0, affine); // large mean, unit spread
            check_layer(0, 5, 0.0, affine);
            check_layer(3, 0, 0.0, affine);
        }
    }

    fn check_group(batch: usize, channels: usize, groups: usize, spatial: usize, affine: bool) {
        let mut rng = Rng::new((batch * 1000 + channels * 100 + groups * 10 + spatial) as u64);
        let x = rng.f32s(batch * channels * spatial);
        let w = affine.then(|| rng.f32s(channels));
        let b = affine.then(|| rng.f32s(channels));
        let mut y = vec![f32::NAN; x.len()];
        let kernel = Kernel::GroupNorm(chorus_core::kernel::GroupNorm {
            src: ptr(&x),
            out: ptr_mut(&mut y),
            weight: opt(&w),
            bias: opt(&b),
            batch,
            channels,
            groups,
            spatial,
            eps: 1e-5,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: `x` and `y` hold `batch * channels * spatial` elements, the weight and bias
        // `channels`.
        unsafe { execute(&kernel) };
        let per = channels / groups * spatial;
        let mut want = Vec::new();
        for (k, block) in x.chunks(per.max(1)).enumerate() {
            for (e, v) in normalize(block, 1e-5).into_iter().enumerate() {
                let c = (k % groups) * (channels / groups) + e / spatial;
                let w = w.as_ref().map_or(1.0, |w| f64::from(w[c]));
                want.push(v * w + b.as_ref().map_or(0.0, |b| f64::from(b[c])));
            }
        }
        let what = format!("group_norm {batch}x{channels}/{groups}x{spatial}");
        close(&y, &want, &what);
    }

    #[test]
    fn group_norm_matches_reference() {
        for affine in [false, true] {
            check_group(2, 6, 3, 5, affine);
            check_group(2, 6, 1, 5, affine); // one group: layer norm over [C, HW]
            check_group(3, 4, 4, 9, affine); // one channel per group: instance norm
            check_group(1, 8, 2, 1, affine); // spatial 1
            check_group(2, 32, 8, 49, affine);
            check_group(0, 4, 2, 3, affine);
        }
    }
}
