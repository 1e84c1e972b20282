//! The `Conv2d` kernel: PyTorch's `conv2d` (cross-correlation, zero padding, dilation 1) of a
//! contiguous f32 `[batch, c_in, h, w]` input, in three paths:
//!
//! - **Depthwise** (`groups == c_in == c_out`): direct loops per channel plane, register-blocked
//!   over the output width, every inner loop over contiguous slices (module `depthwise`).
//! - **Pointwise** (1 × 1, stride 1, no padding, one group): one GEMM per batch entry,
//!   `out[b] (c_out × hw) = weight (c_out × c_in) @ input[b] (c_in × hw)`, straight on the input.
//! - **General**: im2col of a band of output rows per batch entry and group into a reused scratch
//!   matrix, then a GEMM of the group's weights with it into the band of the output (module
//!   `im2col`).
//!
//! GEMMs go through the `gemm` crate single-threaded (`Parallelism::None`), like the matmul
//! kernel. A bias is written into the output first (the GEMMs then accumulate onto it with
//! `read_dst`), so every path is deterministic.

use super::depthwise::depthwise;
use super::im2col::{gemm_into, general};
use super::mem::{slice, slice_mut};
use chorus_core::kernel::Conv2d;

/// `out = conv2d(src, weight) + bias`.
///
/// # Safety
/// `src` is readable, aligned f32 for `batch * c_in * h * w` elements, `weight` for
/// `c_out * (c_in / groups) * kh * kw`, `bias` (if any) for `c_out`; `out` is valid and aligned
/// for `batch * c_out * oh * ow` f32 writes, overlaps no input and is not otherwise accessed
/// during the call.
///
/// # Panics
/// On an inconsistent geometry ([`Conv2d::validate`]; the launch refuses such a descriptor).
pub(super) unsafe fn conv2d(c: &Conv2d) {
    if let Err(e) = c.validate() {
        panic!("conv2d: {e}");
    }
    let (src, weight, bias, out) = (c.src, c.weight, c.bias, c.out);
    let ([h, w], [kh, kw], [oh, ow]) = (c.hw, c.khw, c.out_hw);
    let k_len = c.taps();
    // SAFETY: caller's contract: the inputs are readable for these lengths and not written.
    let (x, wt, bias) = unsafe {
        (
            slice::<f32>(src, c.in_len()),
            slice::<f32>(weight, c.weight_len()),
            bias.map(|b| slice::<f32>(b, c.c_out)),
        )
    };
    // SAFETY: caller's contract: `batch * c_out * oh * ow` writable, unaliased f32.
    let y = unsafe { slice_mut::<f32>(out, c.out_len()) };
    if y.is_empty() {
        return;
    }
    for (k, plane) in y.chunks_exact_mut(oh * ow).enumerate() {
        plane.fill(bias.map_or(0.0, |b| b[k % c.c_out]));
    }
    if k_len == 0 || h * w == 0 {
        // No tap reads the input: the bias alone.
        return;
    }
    // The depthwise path copies each plane into a padded scratch plane: not when the padding
    // dwarfs the input and the output (a huge padding would ask for a huge plane; the general
    // path's scratch is bounded by the output).
    let [ph, pw] = c.padding;
    let padded_plane = (h + 2 * ph).checked_mul(w + 2 * pw);
    let modest = padded_plane.is_some_and(|p| p <= 4 * (h * w).max(oh * ow) + 4096);
    if c.groups == c.c_in && c.c_in == c.c_out && modest {
        depthwise(x, wt, y, c);
    } else if kh * kw == 1 && c.stride == [1, 1] && c.padding == [0, 0] && c.groups == 1 {
        for (xb, yb) in x
            .chunks_exact(c.c_in * h * w)
            .zip(y.chunks_exact_mut(c.c_out * oh * ow))
        {
            gemm_into(yb, h * w, wt, xb, [c.c_out, h * w, c.c_in], bias.is_some());
        }
    } else {
        general(x, wt, y, c, bias.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::{ptr, ptr_mut, unravel, Rng};
    use super::*;
    use chorus_core::kernel::{DevicePtr, Kernel};

    type Conv = Conv2d;

    /// Naive f64 convolution; also returns, per output, the sum of the absolute terms (for the
    /// tolerance of f32 accumulation).
    fn reference(x: &[f32], wt: &[f32], bias: Option<&[f32]>, c: &Conv) -> Vec<(f64, f64)> {
        let ([h, w], [kh, kw], [sh, sw], [ph, pw], [oh, ow]) =
            (c.hw, c.khw, c.stride, c.padding, c.out_hw);
        let (cin_g, cout_g) = (c.c_in / c.groups, c.c_out / c.groups);
        let outputs = c.batch * c.c_out * oh * ow;
        (0..outputs)
            .map(|o| {
                let [b, co, oi, oj] = unravel(o, &[c.batch, c.c_out, oh, ow])[..] else {
                    unreachable!()
                };
                let b0 = bias.map_or(0.0, |v| f64::from(v[co]));
                let (mut acc, mut mag) = (b0, b0.abs());
                for t in 0..cin_g * kh * kw {
                    let [ci, ki, kj] = unravel(t, &[cin_g, kh, kw])[..] else {
                        unreachable!()
                    };
                    let (ii, jj) = (oi * sh + ki, oj * sw + kj);
                    if ii < ph || jj < pw || ii - ph >= h || jj - pw >= w {
                        continue;
                    }
                    let cx = co / cout_g * cin_g + ci;
                    let xv = x[((b * c.c_in + cx) * h + ii - ph) * w + jj - pw];
                    let v = f64::from(xv) * f64::from(wt[co * cin_g * kh * kw + t]);
                    acc += v;
                    mag += v.abs();
                }
                (acc, mag)
            })
            .collect()
    }

    /// Batch, `[c_in, c_out, groups]`, `hw`, `khw`, stride and padding.
    type Spec = (
        usize,
        [usize; 3],
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
    );

    /// The geometry of `spec` with PyTorch's output size.
    fn geo((batch, [c_in, c_out, groups], hw, khw, stride, padding): Spec) -> Conv {
        let out_hw = std::array::from_fn(|d| (hw[d] + 2 * padding[d] - khw[d]) / stride[d] + 1);
        let (c_in, c_out) = (c_in, c_out);
        Conv {
            src: DevicePtr(0),
            weight: DevicePtr(0),
            bias: None,
            out: DevicePtr(0),
            batch,
            c_in,
            hw,
            c_out,
            khw,
            stride,
            padding,
            groups,
            out_hw,
            dtype: chorus_core::DType::F32,
        }
    }

    /// Runs the kernel of geometry `c`.
    fn run(c: &Conv, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![f32::NAN; c.batch * c.c_out * c.out_hw[0] * c.out_hw[1]];
        let kernel = Kernel::Conv2d(Conv2d {
            src: ptr(x),
            weight: ptr(wt),
            bias: bias.map(ptr),
            out: ptr_mut(&mut y),
            ..c.clone()
        });
        // SAFETY: the callers size `x`, `wt` and `bias` for the geometry; `y` has its output size.
        unsafe { execute(&kernel) };
        y
    }

    /// Runs `geo(spec)` on random data, with and without bias, against [`reference`].
    fn check(spec: Spec) {
        let c = geo(spec);
        let ([h, w], [kh, kw]) = (c.hw, c.khw);
        let mut rng = Rng::new((c.batch * 7 + c.c_in * 5 + c.c_out * 3 + h + kw) as u64);
        let x = rng.f32s(c.batch * c.c_in * h * w);
        let wt = rng.f32s(c.c_out * c.c_in / c.groups * kh * kw);
        let b = rng.f32s(c.c_out);
        for bias in [None, Some(&b[..])] {
            let (y, want) = (run(&c, &x, &wt, bias), reference(&x, &wt, bias, &c));
            assert_eq!(y.len(), want.len());
            for (k, (&got, &(e, mag))) in y.iter().zip(&want).enumerate() {
                let ok = (f64::from(got) - e).abs() <= 1e-6 * (1.0 + mag);
                assert!(ok, "{c:?} bias={} at {k}: {got} vs {e}", bias.is_some());
            }
        }
    }

    #[test]
    fn depthwise() {
        check((2, [4, 4, 4], [9, 9], [3, 3], [1, 1], [1, 1]));
        check((2, [4, 4, 4], [9, 9], [3, 3], [2, 2], [1, 1]));
        check((1, [3, 3, 3], [7, 12], [3, 3], [2, 1], [1, 1])); // non-square, mixed stride
        check((1, [2, 2, 2], [6, 5], [5, 3], [1, 2], [2, 0]));
        check((1, [2, 2, 2], [2, 2], [5, 5], [1, 1], [2, 2])); // kernel larger than the input
        check((1, [1, 1, 1], [1, 1], [1, 1], [1, 1], [0, 0]));
        // Wide rows: register-blocked interiors, at strides 1, 2 and 3.
        check((2, [3, 3, 3], [6, 40], [3, 3], [1, 1], [1, 1]));
        check((1, [2, 2, 2], [5, 70], [3, 3], [2, 2], [1, 1]));
        check((1, [2, 2, 2], [7, 61], [5, 3], [3, 3], [2, 1]));
        check((1, [2, 2, 2], [4, 50], [1, 4], [1, 2], [0, 2]));
        check((1, [2, 2, 2], [3, 16], [3, 3], [1, 1], [1, 1])); // exactly one block
        check((1, [2, 2, 2], [5, 8], [3, 3], [3, 3], [1, 1])); // narrow, stride 3
    }

    #[test]
    fn pointwise() {
        check((2, [5, 7, 1], [6, 9], [1, 1], [1, 1], [0, 0]));
        check((1, [1, 1, 1], [1, 1], [1, 1], [1, 1], [0, 0]));
        check((3, [16, 3, 1], [1, 40], [1, 1], [1, 1], [0, 0]));
    }

    #[test]
    fn general_and_grouped() {
        check((2, [3, 5, 1], [9, 9], [3, 3], [1, 1], [1, 1])); // 3x3, groups 1
        check((1, [3, 4, 1], [10, 7], [3, 3], [2, 2], [1, 1])); // non-square, stride 2
        check((2, [4, 6, 2], [8, 8], [3, 3], [1, 1], [1, 1])); // groups 2, 4 -> 6
        check((1, [4, 6, 2], [5, 7], [3, 3], [2, 1], [0, 1]));
        check((1, [3, 4, 1], [16, 16], [7, 7], [2, 2], [3, 3])); // stem-like
        check((1, [4, 8, 1], [9, 9], [1, 1], [2, 2], [0, 0])); // 1x1 stride 2
        check((1, [6, 6, 3], [5, 5], [1, 1], [1, 1], [0, 0])); // 1x1 grouped
        check((1, [2, 4, 2], [4, 3], [2, 4], [1, 3], [1, 2]));
        check((2, [2, 3, 1], [3, 3], [5, 5], [1, 1], [2, 2])); // kernel larger than the input
        check((1, [8, 4, 1], [20, 20], [3, 3], [1, 1], [1, 1])); // several im2col bands
        check((0, [2, 2, 1], [3, 3], [3, 3], [1, 1], [1, 1]));
        check((1, [2, 4, 1], [0, 3], [1, 3], [1, 1], [1, 1])); // empty input: the bias
        check((1, [0, 3, 1], [3, 3], [3, 3], [1, 1], [1, 1])); // no input channel
        check((1, [2, 2, 2], [0, 2], [1, 1], [1, 1], [1, 0])); // depthwise, empty input
    }

    #[test]
    #[should_panic(expected = "does not match")]
    fn wrong_output_size_panics() {
        let mut c = geo((1, [1, 1, 1], [3, 3], [1, 1], [1, 1], [0, 0]));
        c.out_hw = [2, 2];
        run(&c, &[0.0; 9], &[0.0], None);
    }
}
