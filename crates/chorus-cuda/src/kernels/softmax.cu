// Softmax and log-softmax over rows, with causal and mask dropping.
// Launched by kernels/softmax.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// softmax_f32 (ROW, rows = outer * inner): row r = (o, i) = (r / inner, r % inner) holds
// src[(o n + j) inner + i], j < n. Entry j is dropped when causal_q != 0 and j > o % causal_q, or
// when mask != NULL and mask[o mask_s0 + j mask_s1] == 0 (masks come with inner == 1 only).
// As the CPU: v = scale * x (f32), max over kept v in f32 skipping NaN, e = expf(v - max), sum
// of e in double; softmax e / sum and log-softmax v - max - ln(sum), in double rounded once; a
// dropped entry is 0 / sum (0) or -inf - max - ln(sum) (-inf) - NaN when the sum is; a row with
// no kept entry is all 0 (PyTorch's attention since 2.5), all NaN in the log-softmax.

extern "C" __global__ void softmax_f32(const float* __restrict__ src, float* __restrict__ out, u64 outer, u64 n,
                                       u64 inner, float scale, int log, u64 causal_q, const i64* __restrict__ mask,
                                       i64 mask_s0, i64 mask_s1) {
    const u64 rows = outer * inner;
    FOR_EACH_ROW(row, rows) {
        const u64 o = udiv(row, inner), i = row - o * inner;
        const float* x = src + o * n * inner + i;
        float* y = out + o * n * inner + i;
        u64 lim = n;
        if (causal_q != 0) {
            const u64 q = o - udiv(o, causal_q) * causal_q + 1;
            lim = q < n ? q : n;
        }
        const i64* m = mask ? mask + (i64)o * mask_s0 : 0;
#define SOFTMAX_KEPT(j) ((j) < lim && (!m || m[(i64)(j) * mask_s1] != 0))
        float mx = -F32_INF;
        i64 any = 0;
        FOR_MY_PART(j, lim) {
            if (SOFTMAX_KEPT(j)) {
                any = 1;
                mx = MaxSkipNan()(mx, __fmul_rn(scale, x[j * inner]));
            }
        }
        any = block_reduce(any, (i64)0, OrI());
        if (!any) {
            FOR_MY_PART(j, n) y[j * inner] = log ? F32_NAN : 0.0f;
            continue;
        }
        mx = block_reduce(mx, -F32_INF, MaxSkipNan());
        double sum = 0.0;
        FOR_MY_PART(j, lim) {
            if (SOFTMAX_KEPT(j)) sum += (double)expf(__fmul_rn(scale, x[j * inner]) - mx);
        }
        sum = block_reduce(sum, 0.0, AddF());
        const double ln_sum = ::log(sum);
        const float dropped = log ? (float)((double)-F32_INF - (double)mx - ln_sum) : (float)(0.0 / sum);
        FOR_MY_PART(j, n) {
            float v = dropped;
            if (SOFTMAX_KEPT(j)) {
                const float sv = __fmul_rn(scale, x[j * inner]);
                v = log ? (float)((double)sv - (double)mx - ln_sum) : (float)((double)expf(sv - mx) / sum);
            }
            y[j * inner] = v;
        }
#undef SOFTMAX_KEPT
    }
}
