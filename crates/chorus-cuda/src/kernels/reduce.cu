// Reductions: reduce (one pass, and the two-pass split for few long outputs) and arg_reduce.
// Launched by kernels/reduce.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// reduce_f32 / reduce_i64 (ROW, rows = n_out): out[r] = op over the n_red elements
// src[off_kept(r) + off_red(j)], op 0 sum, 1 mean, 2 max, 3 min, 4 prod. f32 sum/mean/prod
// accumulate in double; max/min propagate NaN. Empty (n_red == 0): sum 0, prod 1, mean NaN,
// f32 max/min NaN, i64 max/min 0, i64 mean 0 (else the wrapping sum / n_red, truncated) - the
// CPU's rules.

// `f` folded (in double or the element type A) over this thread's share of the row, then over
// the block.
template <typename A, typename T, typename F>
__device__ __forceinline__ A reduce_row(const T* __restrict__ base, const Dims& red, u64 n_red, A id, F f) {
    A acc = id;
    if (red.rank <= 1) {
        const i64 s = red.rank ? red.strides[0] : 0;
        FOR_MY_PART(j, n_red) acc = f(acc, (A)base[(i64)j * s]);
    } else {
        FOR_MY_PART(j, n_red) acc = f(acc, (A)base[offset_of(red, j)]);
    }
    return block_reduce(acc, id, f);
}

extern "C" __global__ void reduce_f32(int op, const float* __restrict__ src, const __grid_constant__ Dims kept,
                                      const __grid_constant__ Dims red, float* __restrict__ out, u64 n_out,
                                      u64 n_red) {
    FOR_EACH_ROW(row, n_out) {
        const float* base = src + offset_of(kept, row);
        float r;
        if (op == 2 || op == 3) {
            r = op == 2 ? reduce_row(base, red, n_red, -F32_INF, MaxNan())
                        : reduce_row(base, red, n_red, F32_INF, MinNan());
            if (n_red == 0) r = F32_NAN;
        } else if (op == 4) {
            r = (float)reduce_row(base, red, n_red, 1.0, MulF());
        } else {
            const double s = reduce_row(base, red, n_red, 0.0, AddF());
            r = op == 1 ? (n_red == 0 ? F32_NAN : (float)(s / (double)n_red)) : (float)s;
        }
        if (threadIdx.x == 0) out[row] = r;
    }
}

// reduce_partial_f32 / reduce_finish_f32: an f32 reduction with few outputs and many
// reduced elements in two passes, so that more than n_out blocks work on it (one block per
// output would read a whole 4096x512 activation with 256 threads). Pass 1 (ROW, rows =
// n_out * parts): row (o, p) folds the elements j in [p*chunk, min((p+1)*chunk, n_red)) of
// output o, in double, into partial[o * parts + p]. Pass 2 (ROW, rows = n_out) folds the parts
// of each output with the same fixed tree and applies the mean / empty rules of reduce_f32.
// Deterministic: the split depends only on (n_red, parts, chunk), the trees are fixed.
template <typename F>
__device__ __forceinline__ double fold_range(const float* base, const Dims& red, u64 lo, u64 hi,
                                             double id, F f) {
    double acc = id;
    for (u64 j = lo + threadIdx.x; j < hi; j += blockDim.x) acc = f(acc, (double)base[offset_of(red, j)]);
    return block_reduce(acc, id, f);
}

extern "C" __global__ void reduce_partial_f32(int op, const float* __restrict__ src, const __grid_constant__ Dims kept,
                                              const __grid_constant__ Dims red, double* __restrict__ partial,
                                              u64 n_out, u64 n_red, u64 parts, u64 chunk) {
    FOR_EACH_ROW(row, n_out * parts) {
        const u64 o = row / parts, p = row % parts;
        const float* base = src + offset_of(kept, o);
        const u64 lo = p * chunk, hi = lo + chunk < n_red ? lo + chunk : n_red;
        double r;
        if (op == 2) r = fold_range(base, red, lo, hi, -(double)F32_INF, MaxNan());
        else if (op == 3) r = fold_range(base, red, lo, hi, (double)F32_INF, MinNan());
        else if (op == 4) r = fold_range(base, red, lo, hi, 1.0, MulF());
        else r = fold_range(base, red, lo, hi, 0.0, AddF());
        if (threadIdx.x == 0) partial[row] = r;
    }
}

extern "C" __global__ void reduce_finish_f32(int op, const double* __restrict__ partial, float* __restrict__ out,
                                             u64 n_out, u64 n_red, u64 parts) {
    FOR_EACH_ROW(o, n_out) {
        const double* base = partial + o * parts;
        double acc;
        if (op == 2 || op == 3) {
            acc = op == 2 ? -(double)F32_INF : (double)F32_INF;
            FOR_MY_PART(p, parts) acc = op == 2 ? MaxNan()(acc, base[p]) : MinNan()(acc, base[p]);
            acc = op == 2 ? block_reduce(acc, -(double)F32_INF, MaxNan()) : block_reduce(acc, (double)F32_INF, MinNan());
        } else if (op == 4) {
            acc = 1.0;
            FOR_MY_PART(p, parts) acc *= base[p];
            acc = block_reduce(acc, 1.0, MulF());
        } else {
            acc = 0.0;
            FOR_MY_PART(p, parts) acc += base[p];
            acc = block_reduce(acc, 0.0, AddF());
            if (op == 1) acc /= (double)n_red;
        }
        if (threadIdx.x == 0) out[o] = (float)acc;
    }
}

extern "C" __global__ void reduce_i64(int op, const i64* __restrict__ src, const __grid_constant__ Dims kept,
                                      const __grid_constant__ Dims red, i64* __restrict__ out, u64 n_out,
                                      u64 n_red) {
    const i64 lo = (i64)(1ull << 63), hi = (i64)~(1ull << 63);
    FOR_EACH_ROW(row, n_out) {
        const i64* base = src + offset_of(kept, row);
        i64 r;
        if (op == 2 || op == 3) {
            r = op == 2 ? reduce_row(base, red, n_red, lo, MaxNan()) : reduce_row(base, red, n_red, hi, MinNan());
            if (n_red == 0) r = 0;
        } else if (op == 4) {
            r = reduce_row(base, red, n_red, (i64)1, MulI());
        } else {
            r = reduce_row(base, red, n_red, (i64)0, AddI());
            if (op == 1) r = n_red == 0 ? 0 : r / (i64)n_red; // n_red > 0: no overflow
        }
        if (threadIdx.x == 0) out[row] = r;
    }
}

// ---------------------------------------------------------------------------------------------
// arg_reduce_f32 (ROW, rows = outer * inner, rows indexed as softmax): values[r], indices[r]
// = the max (op 0) or min (op 1) of row r and its index: the first index among equals, and the
// first NaN beats every number (PyTorch, the CPU). ArgBest is a total order, so the result is
// exactly the sequential scan's. n == 0 (which the front-end rules out) gives NaN and -1.

// A (value, index) candidate of arg_reduce; index < 0 means "no candidate".
struct VI {
    float v;
    i64 i;
};
__device__ __forceinline__ VI shfl_down(VI p, int o) { return VI{shfl_down(p.v, o), shfl_down(p.i, o)}; }
__device__ __forceinline__ VI shfl0(VI p) { return VI{shfl0(p.v), shfl0(p.i)}; }

// The preferred of two arg_reduce candidates: a NaN beats every number, then the larger
// (smaller) value, then the smaller index. This is a total order on (value, index), so the tree
// result is the sequential scan's: the first NaN, else the first index of the best value.
struct ArgBest {
    bool max;
    __device__ VI operator()(VI a, VI b) const {
        if (b.i < 0) return a;
        if (a.i < 0) return b;
        const bool an = a.v != a.v, bn = b.v != b.v;
        if (an || bn) return (an && bn) ? (a.i < b.i ? a : b) : (an ? a : b);
        if (a.v == b.v) return a.i < b.i ? a : b;
        return (max ? a.v > b.v : a.v < b.v) ? a : b;
    }
};

extern "C" __global__ void arg_reduce_f32(int op, const float* __restrict__ src, float* __restrict__ values,
                                          i64* __restrict__ indices, u64 outer, u64 n, u64 inner) {
    const ArgBest best = {op == 0};
    const VI none = {0.0f, -1};
    const u64 rows = outer * inner;
    FOR_EACH_ROW(row, rows) {
        const u64 o = udiv(row, inner), i = row - o * inner;
        const float* x = src + o * n * inner + i;
        VI acc = none;
        FOR_MY_PART(j, n) {
            const VI c = {x[j * inner], (i64)j};
            acc = best(acc, c);
        }
        acc = block_reduce(acc, none, best);
        if (threadIdx.x == 0) {
            values[row] = acc.i < 0 ? F32_NAN : acc.v;
            indices[row] = acc.i;
        }
    }
}
