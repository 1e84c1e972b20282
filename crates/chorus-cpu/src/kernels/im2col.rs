//! The general path of the `Conv2d` kernel: im2col of a band of output rows per batch entry and
//! group into a reused scratch matrix (`c_in/groups · kh · kw` rows, at most [`COL_CAP`]
//! elements, so that it stays in cache), then a GEMM of the group's weights with it into that band
//! of the output. Also the GEMM glue of the pointwise path.
//!
//! GEMMs go through the `gemm` crate single-threaded (`Parallelism::None`), like the matmul
//! kernel, so results are deterministic.

use chorus_core::kernel::{ColSpan as Span, Conv2d as Conv};

/// Scratch size (elements) of one im2col band; smaller in tests so that bands are exercised.
const COL_CAP: usize = if cfg!(test) { 1 << 12 } else { 1 << 20 };

/// `dst (m × n, row stride dst_rs) (+)= lhs (m × k, row-major) @ rhs (k × n, row-major)`,
/// accumulating onto `dst` when `accumulate`.
///
/// # Panics
/// When a slice is too short for its matrix.
pub(super) fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    rhs: &[f32],
    [m, n, k]: [usize; 3],
    accumulate: bool,
) {
    assert!(m > 0 && n > 0 && k > 0 && n <= dst_rs);
    assert!(dst.len() >= (m - 1) * dst_rs + n && lhs.len() >= m * k && rhs.len() >= k * n);
    let s = |v: usize| isize::try_from(v).expect("conv2d: stride exceeds isize::MAX");
    // SAFETY: the asserts above make `dst` hold the `m × n` matrix of row stride `dst_rs`
    // (column stride 1), `lhs` the row-major `m × k` and `rhs` the row-major `k × n` matrices;
    // `dst` is exclusively borrowed, so it overlaps neither operand; `dst` is read only when
    // `accumulate`, with factor `alpha = 1`, and the product is scaled by `beta = 1`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(dst_rs),
            accumulate,
            lhs.as_ptr(),
            1,
            s(k),
            rhs.as_ptr(),
            1,
            s(n),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// General convolution: im2col of bands of output rows, then a GEMM per band and group.
pub(super) fn general(x: &[f32], wt: &[f32], y: &mut [f32], c: &Conv, accumulate: bool) {
    let ([h, w], [kh, kw], [_, sw], [oh, ow]) = (c.hw, c.khw, c.stride, c.out_hw);
    let (cin_g, cout_g) = (c.c_in / c.groups, c.c_out / c.groups);
    let k_len = cin_g * kh * kw;
    let band = (COL_CAP / (k_len * ow)).clamp(1, oh);
    let spans = c.col_spans();
    let mut col = vec![0.0f32; k_len * band * ow];
    for (b, yb) in y.chunks_exact_mut(c.c_out * oh * ow).enumerate() {
        for g in 0..c.groups {
            let xg = &x[(b * c.c_in + g * cin_g) * h * w..][..cin_g * h * w];
            let wg = &wt[g * cout_g * k_len..][..cout_g * k_len];
            let yg = &mut yb[g * cout_g * oh * ow..][..cout_g * oh * ow];
            for r0 in (0..oh).step_by(band) {
                let n = band.min(oh - r0) * ow;
                // Row `(ci, ki, kj)` of the band's column matrix: the input under that tap for
                // every output position of the band (zero where it falls in the padding).
                let mut rows = col[..k_len * n].chunks_exact_mut(n);
                for xp in xg.chunks_exact(h * w) {
                    for ki in 0..kh {
                        for &(lo, hi, first) in &spans {
                            let dst = rows.next().expect("one column row per tap");
                            for (oi, d) in (r0..).zip(dst.chunks_exact_mut(ow)) {
                                let Some(ii) = c.in_row(oi, ki) else {
                                    d.fill(0.0);
                                    continue;
                                };
                                d[..lo].fill(0.0);
                                d[hi..].fill(0.0);
                                let xr = &xp[ii * w..][..w];
                                tap(d, xr, (lo, hi, first), sw, |o, v| *o = v);
                            }
                        }
                    }
                }
                let dst = &mut yg[r0 * ow..];
                gemm_into(
                    dst,
                    oh * ow,
                    wg,
                    &col[..k_len * n],
                    [cout_g, n, k_len],
                    accumulate,
                );
            }
        }
    }
}

/// `f(out[oj], input[oj * sw + kj - pw])` over the output columns of one kernel column's span:
/// no bounds test inside, and at stride 1 a zipped loop over two contiguous slices.
#[inline(always)]
fn tap(out: &mut [f32], xr: &[f32], (lo, hi, first): Span, sw: usize, f: impl Fn(&mut f32, f32)) {
    let out = &mut out[lo..hi];
    if sw == 1 {
        for (o, &v) in out.iter_mut().zip(&xr[first..]) {
            f(o, v);
        }
    } else {
        for (o, &v) in out.iter_mut().zip(xr[first..].iter().step_by(sw)) {
            f(o, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Rng;
    use super::*;

    #[test]
    fn gemm_into_strided_destination_and_accumulation() {
        let (m, n, k, rs) = (3, 5, 4, 7);
        let mut rng = Rng::new(31);
        let (a, b, d0) = (rng.f32s(m * k), rng.f32s(k * n), rng.f32s(m * rs));
        for accumulate in [false, true] {
            let mut d = d0.clone();
            gemm_into(&mut d, rs, &a, &b, [m, n, k], accumulate);
            for (i, (row, row0)) in d.chunks(rs).zip(d0.chunks(rs)).enumerate() {
                // Columns past `n` lie between the matrix rows: untouched.
                assert_eq!(row[n..], row0[n..]);
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                        .sum();
                    let want = dot + if accumulate { f64::from(row0[j]) } else { 0.0 };
                    let got = f64::from(row[j]);
                    assert!((got - want).abs() < 1e-5, "{i} {j}: {got} vs {want}");
                }
            }
        }
    }
}
