// Normalizations: layer norm (with an optional residual) and group norm.
// Launched by kernels/norm.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// layer_norm_f32 (ROW, rows = rows) and group_norm_f32 (ROW, rows = batch * groups): the
// block of `len` contiguous floats is normalized with its mean and biased variance, both in
// double in two passes (the mean, then the mean squared deviation), then
// (x - mean) / sqrt(var + eps) [* weight] [+ bias] in double, rounded once. Layer norm's weight
// and bias are [n] (each optional); group norm's are per channel ([channels], optional: 1 / 0).

__device__ __forceinline__ void block_stats(const float* __restrict__ x, u64 len, float eps, double& mean,
                                            double& rstd) {
    double s = 0.0;
    FOR_MY_PART(j, len) s += (double)x[j];
    mean = block_reduce(s, 0.0, AddF()) / (double)len;
    double q = 0.0;
    FOR_MY_PART(j, len) {
        const double d = (double)x[j] - mean;
        q += d * d;
    }
    const double var = block_reduce(q, 0.0, AddF()) / (double)len;
    rstd = 1.0 / ::sqrt(var + (double)eps);
}

// With a residual (non-null), the row's input is src + residual, summed in float first exactly as
// the add kernel does and written to the output row, which the rest then reads (every element is
// read and rewritten by the thread that wrote it; block_stats' reductions order the reads).
extern "C" __global__ void layer_norm_f32(const float* __restrict__ src, const float* __restrict__ residual,
                                          float* out, const float* __restrict__ weight,
                                          const float* __restrict__ bias, u64 rows, u64 n, float eps) {
    if (n == 0) return;
    FOR_EACH_ROW(row, rows) {
        const float* x = src + row * n;
        float* y = out + row * n;
        if (residual) {
            const float* r = residual + row * n;
            FOR_MY_PART(j, n) y[j] = x[j] + r[j];
            __syncthreads();
            x = y;
        }
        double mean, rstd;
        block_stats(x, n, eps, mean, rstd);
        FOR_MY_PART(j, n) {
            double v = ((double)x[j] - mean) * rstd;
            if (weight) v *= (double)weight[j];
            if (bias) v += (double)bias[j];
            y[j] = (float)v;
        }
    }
}

extern "C" __global__ void group_norm_f32(const float* __restrict__ src, float* __restrict__ out,
                                          const float* __restrict__ weight, const float* __restrict__ bias, u64 batch,
                                          u64 channels, u64 groups, u64 spatial, float eps) {
    if (groups == 0) return;
    const u64 cpg = channels / groups, len = cpg * spatial, rows = batch * groups;
    if (len == 0) return;
    FOR_EACH_ROW(row, rows) {
        const float* x = src + row * len;
        float* y = out + row * len;
        double mean, rstd;
        block_stats(x, len, eps, mean, rstd);
        const u64 first = (row - udiv(row, groups) * groups) * cpg; // first channel of the group
        FOR_MY_PART(j, len) {
            const u64 c = first + udiv(j, spatial);
            const double w = weight ? (double)weight[c] : 1.0, b = bias ? (double)bias[c] : 0.0;
            y[j] = (float)(((double)x[j] - mean) * rstd * w + b);
        }
    }
}
