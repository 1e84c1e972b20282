//! The `Unary` kernel (`out = op(src)` elementwise, f32) and the activations it shares with the
//! matmul epilogue.
//!
//! Every op is dispatched once per call to a monomorphised loop, so the per-element function is
//! inlined: Relu is a compare-and-select the compiler vectorizes. Exact GELU uses [`erf`], an
//! f32 rational approximation without branches, so that it vectorizes too (libm's f64 `erf`
//! took 10 ns an element: 80% of a MiniLM forward at batch 32); its error is at most 8e-7 in
//! GELU's value. The tanh GELU is evaluated in f64 and rounded once; Tanh and Exp use the f32
//! functions of `std`.

use super::mem::{slice, slice_mut};
use chorus_core::kernel::{Unary, UnaryOp};

/// `max(x, 0)`; NaN stays NaN (as PyTorch's `relu`).
#[inline(always)]
fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// `erf(x)` in f32: `x P(x²) / Q(x²)` on `[-4, 4]` (beyond, erf is ±1 to f32 precision), `P` of
/// degree 6 and `Q` of degree 4 in `x²`. The coefficients were fitted for this crate (least
/// squares on the relative error over `[0, 4]`, reweighted towards the worst points); measured
/// over 400,001 points of `[-6, 6]` in f32 arithmetic: relative error at most 4.2e-7. Plain
/// multiplies and adds in a fixed order (no fused multiply-add): the same bits on every x86
/// machine, and the loop vectorizes. The result is clamped to `[-1, 1]`. NaN stays NaN.
// The coefficients as the fit printed them (the leading one is near 2/√π but is the fit's, not
// the constant: one ulp apart).
#[allow(clippy::excessive_precision, clippy::approx_constant)]
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        1.128_379_1,
        0.207_195_92,
        0.051_534_723,
        0.003_993_814_3,
        0.000_147_379_64,
        -1.942_983_3e-6,
        1.911_467_1e-8,
    ];
    const Q: [f32; 4] = [0.516_953_83, 0.118_000_4, 0.014_964_459, 0.001_021_949_1];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = P[6];
    for &c in P[..6].iter().rev() {
        p = p * x2 + c;
    }
    let mut q = Q[3];
    for &c in Q[..3].iter().rev() {
        q = q * x2 + c;
    }
    // At ±4 the quotient overshoots ±1 by about 1e-7: clamped, so that GELU's far negative
    // tail is 0 rather than a wrong-signed 1e-7 times x.
    (x * p / (q * x2 + 1.0)).clamp(-1.0, 1.0)
}

/// `x Φ(x) = 0.5 x (1 + erf(x / √2))`, with [`erf`].
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, in f64.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    /// `√(2/π)`.
    const K: f64 = 0.797_884_560_802_865_4;
    let x = f64::from(x);
    (0.5 * x * (1.0 + (K * (x + 0.044_715 * x * x * x)).tanh())) as f32
}

/// `tanh(x)`.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    x.tanh()
}

/// `e^x`.
#[inline(always)]
fn exp(x: f32) -> f32 {
    x.exp()
}

/// `out[i] = op(src[i])` for `i < len`.
///
/// # Safety
/// `src` is readable, aligned f32 for `len` elements; `out` is valid and aligned for `len` f32
/// writes, overlaps `src` nowhere and is not otherwise accessed during the call.
///
/// # Panics
/// On an op this backend does not implement.
pub(super) unsafe fn unary(k: &Unary) {
    let Unary {
        op, src, out, len, ..
    } = *k;
    // SAFETY: caller's contract: `len` readable f32 at `src`, not written during the call.
    let src = unsafe { slice::<f32>(src, len) };
    // SAFETY: caller's contract: `len` writable, unaliased f32 at `out`.
    let out = unsafe { slice_mut::<f32>(out, len) };
    match op {
        UnaryOp::Relu => map(src, out, relu),
        UnaryOp::Gelu => map(src, out, gelu),
        UnaryOp::GeluTanh => map(src, out, gelu_tanh),
        UnaryOp::Tanh => map(src, out, tanh),
        UnaryOp::Exp => map(src, out, exp),
        other => panic!("unary: the CPU backend has no {other:?}"),
    }
}

/// `out[i] = f(src[i])`: one zipped loop.
#[inline(always)]
fn map(src: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(src) {
        *o = f(x);
    }
}

/// [`bias_act`] on columns `cols` of every row of the `[m, n]` row-major `out` (the part of a
/// product one thread computed), if the epilogue does anything.
///
/// # Safety
/// Columns `cols` of rows `0..m` of `out` are valid for reads and writes and accessed by no one
/// else during the call; a bias is `n` readable f32.
pub(super) unsafe fn epilogue_columns(
    out: *mut f32,
    (m, n): (usize, usize),
    cols: std::ops::Range<usize>,
    epilogue: chorus_core::kernel::Epilogue,
) {
    if epilogue.bias.is_none() && epilogue.act.is_none() {
        return;
    }
    // SAFETY: caller's contract: a bias is `n` readable f32.
    let bias = epilogue
        .bias
        .map(|b| unsafe { &slice::<f32>(b, n)[cols.clone()] });
    for i in 0..m {
        // SAFETY: caller's contract: row `i`'s columns `cols` are ours.
        let row =
            unsafe { std::slice::from_raw_parts_mut(out.add(i * n + cols.start), cols.len()) };
        bias_act(row, bias, epilogue.act);
    }
}

/// The matmul epilogue on one output row: `row[j] = act(row[j] + bias[j])` (no addition without
/// a bias, identity without an activation).
///
/// # Panics
/// When `bias` is shorter than `row`, and on an activation this backend does not implement.
pub(super) fn bias_act(row: &mut [f32], bias: Option<&[f32]>, act: Option<UnaryOp>) {
    if let Some(b) = bias {
        assert!(
            b.len() >= row.len(),
            "matmul epilogue: bias shorter than a row"
        );
    }
    match act {
        None => epilogue(row, bias, |x| x),
        Some(UnaryOp::Relu) => epilogue(row, bias, relu),
        Some(UnaryOp::Gelu) => epilogue(row, bias, gelu),
        Some(UnaryOp::GeluTanh) => epilogue(row, bias, gelu_tanh),
        Some(UnaryOp::Tanh) => epilogue(row, bias, tanh),
        Some(UnaryOp::Exp) => epilogue(row, bias, exp),
        Some(other) => panic!("matmul epilogue: the CPU backend has no {other:?}"),
    }
}

/// `row[j] = f(row[j] + bias[j])`, or `f(row[j])` without a bias.
#[inline(always)]
fn epilogue(row: &mut [f32], bias: Option<&[f32]>, f: impl Fn(f32) -> f32) {
    match bias {
        Some(b) => {
            for (o, &b) in row.iter_mut().zip(b) {
                *o = f(*o + b);
            }
        }
        None => {
            for o in row {
                *o = f(*o);
            }
        }
    }
}

/// The scalar function of `op` (for other kernels' tests).
#[cfg(test)]
pub(super) fn apply(op: UnaryOp, x: f32) -> f32 {
    let mut v = [x];
    bias_act(&mut v, None, Some(op));
    v[0]
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, Rng};
    use super::*;
    use chorus_core::kernel::Kernel;

    const OPS: [UnaryOp; 5] = [
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Tanh,
        UnaryOp::Exp,
    ];

    /// Reference in f64 (erf by a numerical integral of the normal density, independent of libm).
    fn reference(op: UnaryOp, x: f32) -> f64 {
        let x = f64::from(x);
        match op {
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Gelu => {
                // Φ(x) = 1/2 + ∫_0^x φ(t) dt, Simpson's rule with 2000 panels.
                let n = 2000;
                let h = x / n as f64;
                let phi = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let s: f64 = (0..=n)
                    .map(|i| {
                        let w = if i == 0 || i == n {
                            1.0
                        } else {
                            [2.0, 4.0][i % 2]
                        };
                        w * phi(i as f64 * h)
                    })
                    .sum();
                x * (0.5 + s * h / 3.0)
            }
            UnaryOp::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
            }
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Exp => x.exp(),
            _ => unreachable!(),
        }
    }

    fn run(op: UnaryOp, src: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; src.len()];
        let kernel = Kernel::Unary(chorus_core::kernel::Unary {
            op,
            src: ptr(src),
            out: ptr_mut(&mut out),
            len: src.len(),
            dtype: chorus_core::DType::F32,
        });
        // SAFETY: `src` and `out` are live buffers of `len` elements.
        unsafe { execute(&kernel) };
        out
    }

    #[test]
    fn every_op_matches_reference() {
        let mut src: Vec<f32> = Rng::new(11).f32s(1001).iter().map(|x| x * 6.0).collect();
        src.extend([0.0, -0.0, 1e-30, -1e-30, 8.0, -8.0, 30.0, -30.0]);
        for op in OPS {
            let got = run(op, &src);
            for (&x, &y) in src.iter().zip(&got) {
                let e = reference(op, x);
                let tol = 1e-6 * (1.0 + e.abs());
                assert!(
                    (f64::from(y) - e).abs() <= tol,
                    "{op:?}({x}) = {y}, want {e}"
                );
            }
        }
    }

    #[test]
    fn specials_and_empty() {
        let src = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let relu = run(UnaryOp::Relu, &src);
        assert!(relu[0].is_nan());
        assert_eq!(relu[1..], [f32::INFINITY, 0.0]);
        let gelu = run(UnaryOp::Gelu, &src);
        assert!(gelu[0].is_nan());
        assert_eq!(gelu[1], f32::INFINITY);
        assert_eq!(run(UnaryOp::Tanh, &src)[1..], [1.0, -1.0]);
        assert_eq!(run(UnaryOp::Exp, &src)[1..], [f32::INFINITY, 0.0]);
        assert!(run(UnaryOp::Exp, &[]).is_empty());
        // Known values of PyTorch's gelu.
        let g = run(UnaryOp::Gelu, &[1.0, -1.0, 2.0]);
        for (got, want) in g.iter().zip([0.841_344_7, -0.158_655_26, 1.954_5]) {
            assert!((got - want).abs() < 1e-5, "{got} {want}");
        }
    }

    #[test]
    fn epilogue_with_and_without_bias() {
        let mut rng = Rng::new(12);
        let (x, b) = (rng.f32s(37), rng.f32s(40));
        for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::GeluTanh)] {
            for bias in [None, Some(&b[..])] {
                let mut row = x.clone();
                bias_act(&mut row, bias, act);
                for (j, (&got, &x)) in row.iter().zip(&x).enumerate() {
                    let v = x + bias.map_or(0.0, |b| b[j]);
                    let want = act.map_or(v, |op| apply(op, v));
                    assert_eq!(got.to_bits(), want.to_bits());
                }
            }
        }
    }
}
