//! The `AdaptiveAvgPool2d` kernel: PyTorch's adaptive average pooling of contiguous f32
//! `[planes, h, w]` to `[planes, oh, ow]`. Output cell `(i, j)` averages input rows
//! `⌊i h / oh⌋ .. ⌈(i + 1) h / oh⌉` and likewise columns (bins may overlap or, when the output is
//! larger than the input, repeat).
//!
//! For each output row, the input rows of its bin are first summed column by column into an f64
//! buffer (contiguous, vectorizable adds), then each output column sums its bin of that buffer
//! and divides by the cell count; so the input is read once per output row bin (once in all
//! for global pooling), in a fixed order: deterministic.

use super::mem::{slice, slice_mut};
use chorus_core::kernel::AdaptiveAvgPool2d;

/// The input range of each of the `out` bins over `n` ([`AdaptiveAvgPool2d::window`]).
fn bins(n: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| {
            let r = AdaptiveAvgPool2d::window(i, n, out);
            (r.start, r.end)
        })
        .collect()
}

/// Adaptive average pooling of `[planes, h, w]` to `[planes, oh, ow]`.
///
/// # Safety
/// `src` is readable, aligned f32 for `planes * h * w` elements; `out` is valid and aligned for
/// `planes * oh * ow` f32 writes, overlaps `src` nowhere and is not otherwise accessed.
pub(super) unsafe fn adaptive_avg_pool2d(k: &AdaptiveAvgPool2d) {
    let AdaptiveAvgPool2d {
        src,
        out,
        planes,
        hw: [h, w],
        out_hw: [oh, ow],
        ..
    } = *k;
    // SAFETY: caller's contract: `planes * h * w` readable f32, not written during the call.
    let src = unsafe { slice::<f32>(src, planes * h * w) };
    // SAFETY: caller's contract: `planes * oh * ow` writable, unaliased f32.
    let out = unsafe { slice_mut::<f32>(out, planes * oh * ow) };
    if out.is_empty() {
        return;
    }
    if h * w == 0 {
        // Every bin is empty: 0 / 0 (PyTorch rejects an empty input).
        out.fill(f32::NAN);
        return;
    }
    let (rows, cols) = (bins(h, oh), bins(w, ow));
    let mut colsum = vec![0.0f64; w];
    for (p, yp) in out.chunks_exact_mut(oh * ow).enumerate() {
        let xp = &src[p * h * w..][..h * w];
        for (&(r0, r1), yr) in rows.iter().zip(yp.chunks_exact_mut(ow)) {
            colsum.fill(0.0);
            for xr in xp[r0 * w..r1 * w].chunks_exact(w) {
                for (s, &v) in colsum.iter_mut().zip(xr) {
                    *s += f64::from(v);
                }
            }
            for (&(c0, c1), o) in cols.iter().zip(yr.iter_mut()) {
                let sum: f64 = colsum[c0..c1].iter().fold(0.0, |a, &s| a + s);
                *o = (sum / ((r1 - r0) * (c1 - c0)) as f64) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use chorus_core::kernel::Kernel;

    /// Naive reference: PyTorch's start/end formulas, an f64 mean per output cell.
    fn reference(x: &[f32], planes: usize, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Vec<f64> {
        let mut out = Vec::new();
        for p in 0..planes {
            for i in 0..oh {
                let (r0, r1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
                for j in 0..ow {
                    let (c0, c1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                    let cells: Vec<f64> = (r0..r1)
                        .flat_map(|r| (c0..c1).map(move |c| (r, c)))
                        .map(|(r, c)| f64::from(x[(p * h + r) * w + c]))
                        .collect();
                    out.push(cells.iter().sum::<f64>() / cells.len() as f64);
                }
            }
        }
        out
    }

    fn check(planes: usize, hw: [usize; 2], out_hw: [usize; 2]) {
        let x = Rng::new((planes * 100 + hw[0] * 10 + hw[1]) as u64).f32s(planes * hw[0] * hw[1]);
        let mut y = vec![f32::NAN; planes * out_hw[0] * out_hw[1]];
        let kernel = Kernel::AdaptiveAvgPool2d(chorus_core::kernel::AdaptiveAvgPool2d {
            src: ptr(&x),
            out: ptr_mut(&mut y),
            planes,
            hw,
            out_hw,
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: `x` holds `planes * h * w` elements, `y` `planes * oh * ow`.
        unsafe { execute(&kernel) };
        let want = reference(&x, planes, hw, out_hw);
        assert_eq!(y.len(), want.len());
        for (k, (&got, &e)) in y.iter().zip(&want).enumerate() {
            let ok = (f64::from(got) - e).abs() <= 1e-6 * (1.0 + e.abs());
            assert!(ok, "{hw:?} -> {out_hw:?} at {k}: {got} vs {e}");
        }
    }

    #[test]
    fn matches_pytorch_bins() {
        for hw in [[9, 9], [5, 7]] {
            for out_hw in [[1, 1], [2, 3], [3, 3], [4, 4], [5, 7], [7, 9]] {
                check(3, hw, out_hw);
            }
        }
        check(2, [1, 1], [3, 2]); // every cell copies the one input
        check(1, [7, 56], [7, 7]);
        check(0, [4, 4], [2, 2]);
        check(2, [4, 4], [0, 2]);
        let mut y = [0.0f32; 2];
        let kernel = Kernel::AdaptiveAvgPool2d(chorus_core::kernel::AdaptiveAvgPool2d {
            src: ptr::<f32>(&[]),
            out: ptr_mut(&mut y),
            planes: 2,
            hw: [0, 3],
            out_hw: [1, 1],
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: the input is empty and never read; `y` holds `planes * oh * ow` elements.
        unsafe { execute(&kernel) };
        assert!(y.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn bins_are_pytorch_start_and_end() {
        assert_eq!(super::bins(5, 2), vec![(0, 3), (2, 5)]);
        assert_eq!(super::bins(9, 2), vec![(0, 5), (4, 9)]);
        assert_eq!(super::bins(7, 3), vec![(0, 3), (2, 5), (4, 7)]);
        assert_eq!(super::bins(2, 3), vec![(0, 1), (0, 2), (1, 2)]);
    }
}
