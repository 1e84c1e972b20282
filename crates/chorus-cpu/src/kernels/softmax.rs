//! The `Softmax` kernel: softmax or log-softmax of `scale * src` along the middle axis of the
//! contiguous f32 `[outer, n, inner]`, with optional causal and keep masks (`inner == 1` only).
//!
//! Numerically stable: each row's maximum over its kept entries (in f32) is subtracted before
//! `exp` (f32), and the exponentials are summed in f64 in index order; a softmax value is
//! `e / sum` and a log-softmax value `v - max - ln(sum)`, both evaluated in f64 and rounded once,
//! so the result is deterministic. Dropped entries are 0 (−∞ for log-softmax), and a row whose
//! entries are all dropped is 0 (NaN for log-softmax): masks come from attention, where
//! PyTorch (since 2.5) gives a query that attends to nothing 0. A NaN or infinite kept input
//! makes the row NaN through the arithmetic, as in PyTorch.
//!
//! Paths: `inner == 1` walks each contiguous row three times (max, exponentials, normalization),
//! each a tight loop monomorphised on whether a keep mask is read; `inner > 1` keeps a running
//! max and sum per column of the `[n, inner]` block so that every pass is contiguous.

use super::mem::{host, slice, slice_mut};
use chorus_core::kernel::{DevicePtr, Softmax, View};

/// What happens to each row: the scale, the log variant and the masks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options<'a> {
    /// Factor applied to the input first.
    pub(super) scale: f32,
    /// Log-softmax instead of softmax.
    pub(super) log: bool,
    /// `Some(q)`: entry `(row, j)` is kept when `j <= row % q`.
    pub(super) causal: Option<usize>,
    /// Keep-mask, i64, shaped `[outer, n]`.
    pub(super) mask: Option<&'a View>,
}

/// The exponential of a kept entry `v` relative to the row maximum.
#[inline(always)]
fn exp_rel(v: f32, max: f32) -> f32 {
    (v - max).exp()
}

/// The softmax value of an entry from its exponential and the row's sum.
#[inline(always)]
fn normalized(e: f32, sum: f64) -> f32 {
    (f64::from(e) / sum) as f32
}

/// The log-softmax value of an entry from its scaled input, the row maximum and `ln(sum)`.
#[inline(always)]
fn log_normalized(v: f32, max: f32, ln_sum: f64) -> f32 {
    (f64::from(v) - f64::from(max) - ln_sum) as f32
}

/// Softmax of `[outer, n, inner]` along `n`.
///
/// # Safety
/// `src` is readable, aligned f32 for `outer * n * inner` elements; a mask view is readable,
/// aligned i64 at every offset its shape and strides reach; `out` is valid and aligned for
/// `outer * n * inner` f32 writes, overlaps no input and is not otherwise accessed.
///
/// # Panics
/// On a non-empty input: when a mask is given with `inner != 1`, on `causal: Some(0)`, and
/// when the mask view is not shaped `[outer, n]`.
pub(super) unsafe fn softmax(k: &Softmax) {
    let opts = Options {
        scale: k.scale,
        log: k.log,
        causal: k.causal,
        mask: k.mask.as_ref(),
    };
    // SAFETY: forwarded contract.
    unsafe { run(k.src, k.out, [k.outer, k.n, k.inner], opts) }
}

/// [`softmax`] with the descriptor's pieces.
///
/// # Safety
/// As [`softmax`].
unsafe fn run(src: DevicePtr, out: DevicePtr, [outer, n, inner]: [usize; 3], opts: Options<'_>) {
    let len = outer * n * inner;
    if len == 0 {
        // Nothing to compute (zero queries of a causal attention among them).
        return;
    }
    let masked = opts.causal.is_some() || opts.mask.is_some();
    assert!(!masked || inner == 1, "softmax: masks need inner == 1");
    assert_ne!(opts.causal, Some(0), "softmax: causal mask with 0 queries");
    if let Some(m) = opts.mask {
        assert!(
            m.shape == [outer, n] && m.strides.len() == 2,
            "softmax: mask view {:?} / {:?} is not shaped [{outer}, {n}]",
            m.shape,
            m.strides
        );
    }
    // SAFETY: caller's contract: `len` readable f32 at `src`, not written during the call.
    let src = unsafe { slice::<f32>(src, len) };
    // SAFETY: caller's contract: `len` writable, unaliased f32 at `out`.
    let out = unsafe { slice_mut::<f32>(out, len) };
    if inner > 1 {
        let mut stats = (vec![0.0; inner], vec![0.0; inner]);
        for (x, y) in src
            .chunks_exact(n * inner)
            .zip(out.chunks_exact_mut(n * inner))
        {
            columns(x, y, inner, opts, &mut stats);
        }
        return;
    }
    let mut keep = Vec::with_capacity(n);
    let rows = src.chunks_exact(n).zip(out.chunks_exact_mut(n));
    for (r, (x, y)) in rows.enumerate() {
        let lim = opts.causal.map_or(n, |q| (r % q + 1).min(n));
        match opts.mask {
            None => row(x, y, opts, lim, |_| true),
            Some(m) => {
                let (base, s0, s1) = (host::<i64>(m.ptr).cast_const(), m.strides[0], m.strides[1]);
                keep.clear();
                // SAFETY: `(r, j)` with `r < outer`, `j < lim <= n` is an element of the
                // `[outer, n]` mask view, readable by the caller's contract.
                keep.extend((0..lim).map(|j| unsafe { *base.add(r * s0 + j * s1) } != 0));
                row(x, y, opts, lim, |j| keep[j]);
            }
        }
    }
}

/// One contiguous row: entries `j < lim` with `kept(j)` take part, the others are dropped.
#[inline(always)]
fn row(x: &[f32], y: &mut [f32], opts: Options<'_>, lim: usize, kept: impl Fn(usize) -> bool) {
    let scale = opts.scale;
    let (mut max, mut any) = (f32::NEG_INFINITY, false);
    for (j, &v) in x[..lim].iter().enumerate() {
        if kept(j) {
            let v = scale * v;
            any = true;
            max = if v > max { v } else { max };
        }
    }
    if !any {
        // Every entry dropped: 0 (PyTorch's attention since 2.5), NaN in the log-softmax.
        y.fill(if opts.log { f32::NAN } else { 0.0 });
        return;
    }
    let mut sum = 0.0f64;
    for (j, (o, &v)) in y[..lim].iter_mut().zip(x).enumerate() {
        if kept(j) {
            *o = exp_rel(scale * v, max);
            sum += f64::from(*o);
        }
    }
    // A dropped entry is exp(-inf) / sum: 0 unless the sum is NaN (likewise for the log).
    let ln_sum = sum.ln();
    let dropped = if opts.log {
        log_normalized(f32::NEG_INFINITY, max, ln_sum)
    } else {
        normalized(0.0, sum)
    };
    for (j, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        *o = match (j < lim && kept(j), opts.log) {
            (false, _) => dropped,
            (true, false) => normalized(*o, sum),
            (true, true) => log_normalized(scale * v, max, ln_sum),
        };
    }
}

/// One `[n, inner]` block (no masks): a max and a sum per column, every pass contiguous.
fn columns(
    x: &[f32],
    y: &mut [f32],
    inner: usize,
    opts: Options<'_>,
    stats: &mut (Vec<f32>, Vec<f64>),
) {
    let (maxs, sums) = stats;
    let scale = opts.scale;
    maxs.fill(f32::NEG_INFINITY);
    sums.fill(0.0);
    for xr in x.chunks_exact(inner) {
        for (m, &v) in maxs.iter_mut().zip(xr) {
            let v = scale * v;
            *m = if v > *m { v } else { *m };
        }
    }
    for (xr, yr) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)) {
        for (((o, &v), &m), s) in yr.iter_mut().zip(xr).zip(maxs.iter()).zip(sums.iter_mut()) {
            *o = exp_rel(scale * v, m);
            *s += f64::from(*o);
        }
    }
    if opts.log {
        for s in sums.iter_mut() {
            *s = s.ln();
        }
    }
    for (xr, yr) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)) {
        for (((o, &v), &m), &s) in yr.iter_mut().zip(xr).zip(maxs.iter()).zip(sums.iter()) {
            *o = if opts.log {
                log_normalized(scale * v, m, s)
            } else {
                normalized(*o, s)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, view, Rng};
    use chorus_core::kernel::Kernel;

    /// Reference in f64 of one `[outer, n, inner]` softmax, `kept(row, j)` choosing the entries.
    fn reference(
        x: &[f32],
        [outer, n, inner]: [usize; 3],
        scale: f32,
        log: bool,
        kept: impl Fn(usize, usize) -> bool,
    ) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * n + j) * inner + i;
                let v = |j: usize| f64::from(scale * x[at(j)]);
                let ks: Vec<usize> = (0..n).filter(|&j| kept(o, j)).collect();
                let m = ks.iter().map(|&j| v(j)).fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = ks.iter().map(|&j| (v(j) - m).exp()).sum();
                for j in 0..n {
                    y[at(j)] = match (ks.is_empty(), ks.contains(&j), log) {
                        (true, _, false) => 0.0,
                        (true, _, true) => f64::NAN,
                        (false, false, false) => 0.0,
                        (false, false, true) => f64::NEG_INFINITY,
                        (false, true, false) => (v(j) - m).exp() / s,
                        (false, true, true) => v(j) - m - s.ln(),
                    };
                }
            }
        }
        y
    }

    /// Runs the kernel on random data and compares with [`reference`].
    fn check(
        dims: [usize; 3],
        scale: f32,
        causal: Option<usize>,
        mask: Option<(&[i64], [usize; 2])>,
    ) {
        let [outer, n, _] = dims;
        let x: Vec<f32> = Rng::new(dims.iter().product::<usize>() as u64)
            .f32s(dims.iter().product())
            .iter()
            .map(|v| v * 40.0)
            .collect();
        let mask_view = mask.map(|(m, s)| view(m, 0, &[outer, n], &s));
        let kept = |o: usize, j: usize| {
            causal.is_none_or(|q| j <= o % q)
                && mask.is_none_or(|(m, s)| m[o * s[0] + j * s[1]] != 0)
        };
        for log in [false, true] {
            let mut y = vec![f32::NAN; x.len()];
            let kernel = Kernel::Softmax(chorus_core::kernel::Softmax {
                src: ptr(&x),
                out: ptr_mut(&mut y),
                outer,
                n,
                inner: dims[2],
                scale,
                log,
                causal,
                mask: mask_view.clone(),
                dtype: chorus_core::DType::F32,
            });
            // SAFETY: `x` and `y` hold `outer * n * inner` elements; the mask view stays in its
            // buffer (the reference indexes it the same way).
            unsafe { execute(&kernel) };
            let want = reference(&x, dims, scale, log, kept);
            for (k, (&got, &e)) in y.iter().zip(&want).enumerate() {
                let ok = if e.is_nan() || e.is_infinite() {
                    got.is_nan() == e.is_nan() && (e.is_nan() || f64::from(got) == e)
                } else {
                    (f64::from(got) - e).abs() <= 1e-6 * (1.0 + e.abs())
                };
                assert!(ok, "{dims:?} log={log} {causal:?} at {k}: {got} vs {e}");
            }
        }
    }

    #[test]
    fn plain_rows_and_columns() {
        check([3, 7, 1], 1.0, None, None);
        check([4, 33, 1], 0.125, None, None);
        check([2, 5, 3], 0.5, None, None); // inner > 1
        check([1, 9, 17], 1.0, None, None);
        check([1, 1, 1], 1.0, None, None);
        check([5, 1, 4], 2.0, None, None);
        check([0, 3, 2], 1.0, None, None);
        check([2, 0, 1], 1.0, None, None);
    }

    #[test]
    fn causal_rows_modulo_queries() {
        check([6, 5, 1], 0.5, Some(3), None); // two matrices of 3 queries, q < n
        check([8, 4, 1], 1.0, Some(4), None);
        check([3, 2, 1], 1.0, Some(3), None); // q > n: the last row keeps everything
        check([4, 6, 1], 1.0, Some(1), None); // only j = 0
    }

    #[test]
    fn keep_masks_and_fully_masked_rows() {
        let m: Vec<i64> = (0..20).map(|k| i64::from(k % 3 != 1)).collect();
        check([4, 5, 1], 1.0, None, Some((&m, [5, 1])));
        check([4, 5, 1], 1.0, None, Some((&m, [0, 1]))); // broadcast over rows
        check([4, 5, 1], 0.3, None, Some((&m, [1, 0]))); // whole rows kept or dropped
        check([4, 5, 1], 1.0, Some(2), Some((&m, [5, 1]))); // both masks
        let mut z = vec![1i64; 12];
        z[4..8].fill(0); // row 1 fully masked
        check([3, 4, 1], 1.0, None, Some((&z, [4, 1])));
        check([3, 4, 1], 1.0, Some(3), Some((&[0, 1, 1, 1], [0, 1]))); // row 0 fully masked
                                                                       // Exact values: a fully masked row is 0 (NaN in the log-softmax), dropped entries 0 / -inf.
        let x = [1.0f32, 2.0, 3.0, 4.0];
        for log in [false, true] {
            let mut y = [0.0f32; 4];
            let mask = view(&[1i64, 0, 0, 0], 0, &[2, 2], &[2, 1]);
            let kernel = Kernel::Softmax(chorus_core::kernel::Softmax {
                src: ptr(&x),
                out: ptr_mut(&mut y),
                outer: 2,
                n: 2,
                inner: 1,
                scale: 1.0,
                log,
                causal: None,
                mask: Some(mask),
                dtype: chorus_core::DType::F32,
            });
            // SAFETY: `x`, `y` and the mask hold four elements each.
            unsafe { execute(&kernel) };
            assert_eq!(
                y[..2],
                if log {
                    [0.0, f32::NEG_INFINITY]
                } else {
                    [1.0, 0.0]
                }
            );
            // Every entry dropped: 0 (PyTorch's attention), NaN in the log-softmax.
            if log {
                assert!(y[2].is_nan() && y[3].is_nan());
            } else {
                assert_eq!(y[2..], [0.0, 0.0]);
            }
        }
    }
}
