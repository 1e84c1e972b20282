// Convolution and pooling: conv2d and adaptive_avg_pool2d.
// Launched by kernels/conv.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// 12. conv2d_f32 (ELEMENTWISE over the batch * c_out * oh * ow outputs): PyTorch's conv2d
// (cross-correlation, zero padding, dilation 1) of [batch, c_in, h, w] with weight
// [c_out, c_in / groups, kh, kw] and optional bias [c_out]. One thread per output sums its taps
// in f32 in a fixed order (input channel, ky, kx; taps in the padding skipped), then adds the
// bias. Consecutive threads take consecutive output columns, so input reads coalesce (stride
// sw) and weight reads are warp-uniform broadcasts through the read-only cache.

extern "C" __global__ void conv2d_f32(const float* __restrict__ src, const float* __restrict__ weight,
                                      const float* __restrict__ bias, float* __restrict__ out, u64 batch, u64 c_in,
                                      u64 h, u64 w, u64 c_out, u64 kh, u64 kw, u64 sh, u64 sw, u64 ph, u64 pw,
                                      u64 groups, u64 oh, u64 ow) {
    if (groups == 0 || c_out == 0) return;
    const u64 total = batch * c_out * oh * ow;
    const u64 cig = c_in / groups, cog = c_out / groups; // channels per group, in and out
    if (cog == 0) return;
    FOR_EACH(k, total) {
        u64 t = udiv(k, ow);
        const u64 ox = k - t * ow;
        u64 t2 = udiv(t, oh);
        const u64 oy = t - t2 * oh;
        const u64 b = udiv(t2, c_out), co = t2 - b * c_out;
        const u64 g = udiv(co, cog);
        const float* x = src + (b * c_in + g * cig) * h * w;
        const float* wt = weight + co * cig * kh * kw;
        // Rows ky with 0 <= oy sh + ky - ph < h; likewise columns.
        const u64 y0 = oy * sh, x0 = ox * sw;
        const u64 ky_lo = ph > y0 ? ph - y0 : 0, kx_lo = pw > x0 ? pw - x0 : 0;
        const u64 ky_hi_raw = h + ph > y0 ? h + ph - y0 : 0, kx_hi_raw = w + pw > x0 ? w + pw - x0 : 0;
        const u64 ky_hi = ky_hi_raw < kh ? ky_hi_raw : kh, kx_hi = kx_hi_raw < kw ? kx_hi_raw : kw;
        float acc = 0.0f;
        if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {
            // Pointwise: the same sum (channels in order) without the tap loops.
            const u64 hw = h * w;
            const float* xp = x + oy * w + ox;
            for (u64 ci = 0; ci < cig; ++ci) acc += __ldg(wt + ci) * __ldg(xp + ci * hw);
        } else {
            for (u64 ci = 0; ci < cig; ++ci) {
                const float* xc = x + ci * h * w;
                const float* wc = wt + ci * kh * kw;
                for (u64 ky = ky_lo; ky < ky_hi; ++ky) {
                    const float* xr = xc + (y0 + ky - ph) * w;
                    const float* wr = wc + ky * kw;
                    for (u64 kx = kx_lo; kx < kx_hi; ++kx) acc += __ldg(wr + kx) * __ldg(xr + (x0 + kx - pw));
                }
            }
        }
        if (bias) acc += __ldg(bias + co);
        out[k] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// 13. adaptive_avg_pool2d_f32 (ELEMENTWISE over planes * oh * ow outputs): output cell (i, j)
// averages rows floor(i h / oh) .. ceil((i + 1) h / oh) and likewise columns (PyTorch). Summed
// exactly as pool.rs: per column of the bin, the rows in order (double), then the column sums in
// order (double), divided by the cell count in double: bit-identical to the CPU. h * w == 0
// gives NaN everywhere (the CPU's 0 / 0).

extern "C" __global__ void adaptive_avg_pool2d_f32(const float* __restrict__ src, float* __restrict__ out,
                                                   u64 planes, u64 h, u64 w, u64 oh, u64 ow) {
    const u64 total = planes * oh * ow;
    FOR_EACH(k, total) {
        if (h == 0 || w == 0) {
            out[k] = F32_NAN;
            continue;
        }
        const u64 t = udiv(k, ow), j = k - t * ow;
        const u64 p = udiv(t, oh), i = t - p * oh;
        const u64 r0 = udiv(i * h, oh), r1 = udiv((i + 1) * h + oh - 1, oh);
        const u64 c0 = udiv(j * w, ow), c1 = udiv((j + 1) * w + ow - 1, ow);
        const float* x = src + p * h * w;
        double sum = 0.0;
        for (u64 c = c0; c < c1; ++c) {
            double col = 0.0;
            for (u64 r = r0; r < r1; ++r) col += (double)x[r * w + c];
            sum += col;
        }
        out[k] = (float)(sum / (double)((r1 - r0) * (c1 - c0)));
    }
}
