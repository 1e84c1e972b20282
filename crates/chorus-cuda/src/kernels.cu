// The CUDA C kernels of chorus-cuda, compiled once per device with NVRTC
// (`--gpu-architecture=sm_XY --std=c++17`) and launched by name with cuLaunchKernel.
//
// Self-contained: no #include (NVRTC has no standard library here), only CUDA built-ins.
// Semantics are those of the CPU backend (crates/chorus-cpu/src/kernels/*.rs, documented on
// `Kernel` in crates/chorus-core/src/kernel.rs). randn_f32 matches it bit for bit (required);
// so do the kernels whose arithmetic is the same IEEE operations in the same order (fill, copies,
// index_select, binary, relu, bias add, i64 arithmetic, arg_reduce, adaptive_avg_pool2d, f32
// max/min up to NaN payloads); the others (summation trees, libm-style functions) match to
// rounding.
//
// Launch shapes (the Rust side does exactly this):
// - ELEMENTWISE: blockDim.x = 256, gridDim.x possibly smaller than needed: every such kernel is a
//   grid-stride loop over u64 indices.
// - ROW: blockDim.x a multiple of 32 up to 1024 (256 in practice), gridDim.x = min(rows, 65535),
//   no dynamic shared memory. Blocks grid-stride over rows; the threads of a block share one row.
//   Every thread of a block runs the same number of row iterations and takes the same branches
//   around block_reduce (they depend only on the row and the kernel arguments), so the
//   __syncthreads inside it are reached by the whole block.
//
// Determinism: no floating-point atomics anywhere. A ROW reduction has thread t fold the
// elements t, t + blockDim.x, ... in increasing order, then combines the per-thread values in a
// fixed shuffle tree per warp and a fixed tree over the warps (block_reduce). The result depends
// on blockDim.x but never on timing: the same launch on the same input gives the same bits.
// ELEMENTWISE kernels compute each output from its own inputs in a fixed order.

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;
typedef unsigned short u16;

#define MAX_DIMS 16
// A strided view: the element at row-major multi-index (i_0..i_{r-1}) is at sum i_d*strides[d]
// (in elements); rank 0 is one element at offset 0. Identical to the Rust #[repr(C)] struct.
struct Dims {
    i64 rank;
    i64 shape[MAX_DIMS];
    i64 strides[MAX_DIMS];
};

#define FULL_MASK 0xffffffffu
#define F32_NAN __int_as_float(0x7fc00000) // Rust's f32::NAN (CUDA's own default NaN differs)
#define F32_INF __int_as_float(0x7f800000)

#define FOR_EACH(k, n) \
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < (n); k += (u64)gridDim.x * blockDim.x)
#define FOR_EACH_ROW(r, n) for (u64 r = blockIdx.x; r < (n); r += gridDim.x)
#define FOR_MY_PART(j, n) for (u64 j = threadIdx.x; j < (n); j += blockDim.x)

// ---------------------------------------------------------------------------------------------
// Helpers

// a / b (b > 0), with the much cheaper 32-bit division when both fit.
__device__ __forceinline__ u64 udiv(u64 a, u64 b) {
    if (((a | b) >> 32) == 0) return (u64)((u32)a / (u32)b);
    return a / b;
}

// Offsets of the k-th element (row-major order) in two views of one shape (a's), sharing the
// index arithmetic. Coalesced views arrive as rank 1 (contiguous: stride 1, broadcast scalar:
// stride 0), which skips the division loop; rank 0 is offset 0.
__device__ __forceinline__ void offsets2(const Dims& a, const Dims& b, u64 k, i64& oa, i64& ob) {
    if (a.rank == 1) {
        oa = (i64)k * a.strides[0];
        ob = (i64)k * b.strides[0];
        return;
    }
    oa = 0;
    ob = 0;
    for (int i = (int)(a.rank < MAX_DIMS ? a.rank : MAX_DIMS) - 1; i >= 0; --i) {
        const u64 n = (u64)a.shape[i], q = udiv(k, n);
        const i64 r = (i64)(k - q * n);
        oa += r * a.strides[i];
        ob += r * b.strides[i];
        k = q;
    }
}

// Offset of the k-th element of one view.
__device__ __forceinline__ i64 offset_of(const Dims& d, u64 k) {
    i64 o, unused;
    offsets2(d, d, k, o, unused);
    return o;
}

#define SHFL(T)                                                                                   \
    __device__ __forceinline__ T shfl_down(T v, int o) { return __shfl_down_sync(FULL_MASK, v, o); } \
    __device__ __forceinline__ T shfl0(T v) { return __shfl_sync(FULL_MASK, v, 0); }
SHFL(float)
SHFL(double)
SHFL(i64)
#undef SHFL

// A (value, index) candidate of arg_reduce; index < 0 means "no candidate".
struct VI {
    float v;
    i64 i;
};
__device__ __forceinline__ VI shfl_down(VI p, int o) { return VI{shfl_down(p.v, o), shfl_down(p.i, o)}; }
__device__ __forceinline__ VI shfl0(VI p) { return VI{shfl0(p.v), shfl0(p.i)}; }

// Lane 0 gets f folded over the warp's 32 values by a fixed tree (other lanes: garbage).
template <typename T, typename F>
__device__ __forceinline__ T warp_reduce(T v, F f) {
    for (int o = 16; o > 0; o >>= 1) v = f(v, shfl_down(v, o));
    return v;
}

// f folded over the block's values (thread order, fixed tree), returned to every thread.
// blockDim.x must be a multiple of 32 (<= 1024); `id` is f's identity. Every warp reduces the
// per-warp results itself with the same operations, so all threads get the same bits.
template <typename T, typename F>
__device__ __forceinline__ T block_reduce(T v, T id, F f) {
    __shared__ T part[32];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, f);
    __syncthreads(); // `part` is free: every thread is done reading it from the last call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = warp_reduce(lane < warps ? part[lane] : id, f);
    return shfl0(v);
}

struct AddF { __device__ double operator()(double a, double b) const { return a + b; } };
struct MulF { __device__ double operator()(double a, double b) const { return a * b; } };
struct AddI { __device__ i64 operator()(i64 a, i64 b) const { return (i64)((u64)a + (u64)b); } };
struct MulI { __device__ i64 operator()(i64 a, i64 b) const { return (i64)((u64)a * (u64)b); } };
struct OrI { __device__ i64 operator()(i64 a, i64 b) const { return a | b; } };
// Max/Min propagating NaN (a is the earlier operand: a NaN a stays, a NaN b replaces), as the
// CPU's reduce; for i64 the NaN tests are false.
struct MaxNan {
    template <typename T> __device__ T operator()(T a, T b) const { return (a != a) ? a : ((b != b || b > a) ? b : a); }
};
struct MinNan {
    template <typename T> __device__ T operator()(T a, T b) const { return (a != a) ? a : ((b != b || b < a) ? b : a); }
};
// Max ignoring NaN (`v > m ? v : m`), as the CPU's softmax row maximum.
struct MaxSkipNan { __device__ float operator()(float a, float b) const { return b > a ? b : a; } };
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

// ---------------------------------------------------------------------------------------------
// 1. fill_f32 / fill_i64 (ELEMENTWISE): out[k] = v for k < n.

extern "C" __global__ void fill_f32(float* __restrict__ out, u64 n, float v) {
    FOR_EACH(k, n) out[k] = v;
}

extern "C" __global__ void fill_i64(i64* __restrict__ out, u64 n, i64 v) {
    FOR_EACH(k, n) out[k] = v;
}

// ---------------------------------------------------------------------------------------------
// 2. randn_f32 (ELEMENTWISE over counters c < ceil(n / 4)): out[4c .. min(4c + 4, n)) are the
// standard normals 4c.. of `seed`, bit for bit those of crates/chorus-cpu/src/kernels/randn.rs:
// Philox4x32-10 (key = seed lo, hi; counter = c lo, c hi, 0, 0), then Box-Muller in f32 with the
// same ln and sin/cos polynomials. Every float operation is an IEEE-rounded intrinsic (__fadd_rn,
// __fmul_rn, ...), which the compiler never contracts into an FMA; constants are the exact f32
// values Rust uses (checked: scripts/check-cuda-kernels finds no fma.rn.f32 in this kernel).
//
// Known answers to test on the GPU (from the CPU test `known_bits`, f32 bit patterns of
// out[0..6]):
//   seed 0:            0x3f7dbb30 0xbf6cb6b3 0xbf1e1ba0 0xbef6d1a9 0xbe1d5355 0x3e392a68
//   seed 2^40 + 5:     0x3f6d0c65 0x3f889703 0x3fe0b36d 0x3ef7796d 0x3f14c05e 0xbfc019ca
// and Random123's philox4x32_10 vectors (test `philox_known_answers`): ctr 0, key 0 ->
// 6627e8d5 e169c58d bc57ac4c 9b00dbd8.

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const u32 hi0 = __umulhi(PHILOX_M0, c[0]), lo0 = PHILOX_M0 * c[0];
        const u32 hi1 = __umulhi(PHILOX_M1, c[2]), lo1 = PHILOX_M1 * c[2];
        const u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

// (2 (w >> 9) + 1) / 2^24, exact.
__device__ __forceinline__ float rn_uniform(u32 w) {
    return __fmul_rn(__uint2float_rn(2u * (w >> 9) + 1u), 0x1p-24f);
}

// ln(u), u in (0, 1): u = m 2^e, m in [sqrt(1/2), sqrt 2), ln m = 2 atanh(s), s = (m-1)/(m+1).
__device__ __forceinline__ float rn_ln(float u) {
    const u32 bits = __float_as_uint(u);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    if (m > __uint_as_float(0x3fb504f3u)) { // std::f32::consts::SQRT_2
        m = __fmul_rn(m, 0.5f);
        e += 1;
    }
    const float f = __fsub_rn(m, 1.0f);
    const float s = __fdiv_rn(f, __fadd_rn(2.0f, f));
    const float z = __fmul_rn(s, s);
    float p = 0x1.c71c72p-4f;                        // 1.0 / 9.0
    p = __fadd_rn(__fmul_rn(p, z), 0x1.24924ap-3f);  // 1.0 / 7.0
    p = __fadd_rn(__fmul_rn(p, z), 0x1.99999ap-3f);  // 1.0 / 5.0
    p = __fadd_rn(__fmul_rn(p, z), 0x1.555556p-2f);  // 1.0 / 3.0
    p = __fadd_rn(__fmul_rn(p, z), 1.0f);
    // (e as f32) * LN_2 + 2.0 * s * p, evaluated left to right.
    return __fadd_rn(__fmul_rn(__int2float_rn(e), __uint_as_float(0x3f317218u)),
                     __fmul_rn(__fmul_rn(2.0f, s), p));
}

// (sin, cos) of 2 pi u, u in (0, 1): quadrant q = floor(4u), then pi/4 + a with Taylor series.
__device__ __forceinline__ void rn_sin_cos_2pi(float u, float& sin_out, float& cos_out) {
    const float x = __fmul_rn(u, 4.0f);
    const u32 q = __float2uint_rz(x);
    const float a = __fmul_rn(__fsub_rn(__fsub_rn(x, __uint2float_rn(q)), 0.5f),
                              __uint_as_float(0x3fc90fdbu)); // FRAC_PI_2
    const float z = __fmul_rn(a, a);
    float sp = 0x1.71de3ap-19f;                        // 1.0 / 362880.0
    sp = __fsub_rn(__fmul_rn(sp, z), 0x1.a01a02p-13f); // 1.0 / 5040.0
    sp = __fadd_rn(__fmul_rn(sp, z), 0x1.111112p-7f);  // 1.0 / 120.0
    sp = __fsub_rn(__fmul_rn(sp, z), 0x1.555556p-3f);  // 1.0 / 6.0
    const float sin_a = __fadd_rn(a, __fmul_rn(a, __fmul_rn(z, sp)));
    float cp = -0x1.27e4fcp-22f;                       // -1.0 / 3628800.0
    cp = __fadd_rn(__fmul_rn(cp, z), 0x1.a01a02p-16f); // 1.0 / 40320.0
    cp = __fsub_rn(__fmul_rn(cp, z), 0x1.6c16c2p-10f); // 1.0 / 720.0
    cp = __fadd_rn(__fmul_rn(cp, z), 0x1.555556p-5f);  // 1.0 / 24.0
    cp = __fsub_rn(__fmul_rn(cp, z), 0.5f);
    const float cos_a = __fadd_rn(1.0f, __fmul_rn(z, cp));
    const float r = __uint_as_float(0x3f3504f3u); // FRAC_1_SQRT_2
    float s = __fmul_rn(__fadd_rn(sin_a, cos_a), r);
    float c = __fmul_rn(__fsub_rn(cos_a, sin_a), r);
    if (q & 1u) {
        const float t = s;
        s = c;
        c = t;
    }
    sin_out = __fmul_rn(q >= 2u ? -1.0f : 1.0f, s);
    cos_out = __fmul_rn((q == 1u || q == 2u) ? -1.0f : 1.0f, c);
}

// Box-Muller: (r cos, r sin) from two words.
__device__ __forceinline__ void rn_box_muller(u32 wa, u32 wb, float& z0, float& z1) {
    const float r = __fsqrt_rn(__fmul_rn(-2.0f, rn_ln(rn_uniform(wa))));
    float s, c;
    rn_sin_cos_2pi(rn_uniform(wb), s, c);
    z0 = __fmul_rn(r, c);
    z1 = __fmul_rn(r, s);
}

extern "C" __global__ void randn_f32(float* __restrict__ out, u64 n, u64 seed) {
    const u64 counters = n / 4 + (n % 4 != 0);
    FOR_EACH(c, counters) {
        u32 w[4] = {(u32)c, (u32)(c >> 32), 0u, 0u};
        philox4x32_10(w, (u32)seed, (u32)(seed >> 32));
        float z[4];
        rn_box_muller(w[0], w[1], z[0], z[1]);
        rn_box_muller(w[2], w[3], z[2], z[3]);
        const u64 i = 4 * c;
        if (i + 4 <= n && ((u64)(out + i) & 15) == 0) {
            *(float4*)(out + i) = make_float4(z[0], z[1], z[2], z[3]);
        } else {
            for (u64 l = 0; l < 4 && i + l < n; ++l) out[i + l] = z[l];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. copy_strided_u16/_u32/_u64 (ELEMENTWISE over k < n): dst[offset_d(idx)] = src[offset_s(idx)]
// with idx the row-major multi-index of k in the common shape (s.shape == d.shape). Words are
// moved as bits. Serves Copy (d contiguous) and CopyInto.

template <typename T>
__device__ __forceinline__ void copy_strided(const T* __restrict__ src, const Dims& s, T* __restrict__ dst,
                                             const Dims& d, u64 n) {
    if (s.rank <= 1 && d.rank <= 1) {
        const i64 ss = s.rank ? s.strides[0] : 0, ds = d.rank ? d.strides[0] : 0;
        FOR_EACH(k, n) dst[(i64)k * ds] = src[(i64)k * ss];
    } else {
        FOR_EACH(k, n) {
            i64 os, od;
            offsets2(s, d, k, os, od);
            dst[od] = src[os];
        }
    }
}

extern "C" __global__ void copy_strided_u16(const u16* src, const __grid_constant__ Dims s, u16* dst,
                                            const __grid_constant__ Dims d, u64 n) {
    copy_strided(src, s, dst, d, n);
}
extern "C" __global__ void copy_strided_u32(const u32* src, const __grid_constant__ Dims s, u32* dst,
                                            const __grid_constant__ Dims d, u64 n) {
    copy_strided(src, s, dst, d, n);
}
extern "C" __global__ void copy_strided_u64(const u64* src, const __grid_constant__ Dims s, u64* dst,
                                            const __grid_constant__ Dims d, u64 n) {
    copy_strided(src, s, dst, d, n);
}

// ---------------------------------------------------------------------------------------------
// 4. binary_f32 / binary_i64 (ELEMENTWISE over k < n): out[k] = a[off_a(k)] op b[off_b(k)],
// op 0 add, 1 sub, 2 mul, 3 div. f32 is IEEE (x / 0 = ±inf or NaN). i64 wraps on overflow and
// truncates toward zero, with x / 0 = 0 and i64::MIN / -1 = i64::MIN (the CPU's rules; nothing
// traps). Fast path: both views rank <= 1 (contiguous or broadcast scalar after coalescing).

__device__ __forceinline__ float arith(int op, float a, float b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b;
    }
}

__device__ __forceinline__ i64 arith(int op, i64 a, i64 b) {
    switch (op) {
    case 0: return (i64)((u64)a + (u64)b);
    case 1: return (i64)((u64)a - (u64)b);
    case 2: return (i64)((u64)a * (u64)b);
    default:
        if (b == 0) return 0;
        if (b == -1) return (i64)(0ull - (u64)a); // wraps i64::MIN to itself
        return a / b;
    }
}

template <typename T>
__device__ __forceinline__ void binary(int op, const T* __restrict__ a, const Dims& ad, const T* __restrict__ b,
                                       const Dims& bd, T* __restrict__ out, u64 n) {
    if (ad.rank <= 1 && bd.rank <= 1) {
        const i64 sa = ad.rank ? ad.strides[0] : 0, sb = bd.rank ? bd.strides[0] : 0;
        if (sa == 1 && sb == 1) {
            FOR_EACH(k, n) out[k] = arith(op, a[k], b[k]);
        } else {
            FOR_EACH(k, n) out[k] = arith(op, a[(i64)k * sa], b[(i64)k * sb]);
        }
    } else {
        FOR_EACH(k, n) {
            i64 oa, ob;
            offsets2(ad, bd, k, oa, ob);
            out[k] = arith(op, a[oa], b[ob]);
        }
    }
}

extern "C" __global__ void binary_f32(int op, const float* a, const __grid_constant__ Dims ad, const float* b,
                                      const __grid_constant__ Dims bd, float* out, u64 n) {
    binary(op, a, ad, b, bd, out, n);
}
extern "C" __global__ void binary_i64(int op, const i64* a, const __grid_constant__ Dims ad, const i64* b,
                                      const __grid_constant__ Dims bd, i64* out, u64 n) {
    binary(op, a, ad, b, bd, out, n);
}

// ---------------------------------------------------------------------------------------------
// 5. reduce_f32 / reduce_i64 (ROW, rows = n_out): out[r] = op over the n_red elements
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

// 5b. reduce_partial_f32 / reduce_finish_f32: an f32 reduction with few outputs and many
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
// 6. unary_f32 (ELEMENTWISE): out[k] = act(op, src[k]); 7. bias_act_f32 (ELEMENTWISE, the matmul
// epilogue): out[i] = act(act_op, out[i] + bias[i % n]) in place on the contiguous [rows, n]
// matrix (bias may be NULL, act_op < 0 = identity).
//
// op 0 relu (x < 0 ? 0 : x, so NaN and -0 pass through as on the CPU), 1 gelu = x Phi(x) =
// 0.5 x (1 + erf(x / sqrt 2)), written 0.5 x erfc(-x / sqrt 2) to avoid the cancellation of
// 1 + erf for negative x, 2 PyTorch's tanh gelu 0.5 x (1 + tanh(k (x + 0.044715 x^3))), written
// x / (1 + exp(-2 k (x + 0.044715 x^3))) (the same function, no cancellation; same infinities),
// 3 tanhf, 4 expf. The CPU evaluates both gelus in double: results agree to a few f32 ulps.

__device__ __forceinline__ float activate(int op, float x) {
    switch (op) {
    case 0: return x < 0.0f ? 0.0f : x;
    case 1: return 0.5f * x * erfcf(x * -0.70710678118654752f);
    case 2: {
        const float y = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return x / (1.0f + expf(-2.0f * y));
    }
    case 3: return tanhf(x);
    case 4: return expf(x);
    default: return x;
    }
}

extern "C" __global__ void unary_f32(int op, const float* __restrict__ src, float* __restrict__ out, u64 n) {
    FOR_EACH(k, n) out[k] = activate(op, src[k]);
}

extern "C" __global__ void bias_act_f32(float* __restrict__ out, const float* __restrict__ bias, u64 rows, u64 n,
                                        int act) {
    const u64 len = rows * n;
    FOR_EACH(i, len) {
        float v = out[i];
        if (bias) v += bias[i - udiv(i, n) * n];
        if (act >= 0) v = activate(act, v);
        out[i] = v;
    }
}

// ---------------------------------------------------------------------------------------------
// 8. softmax_f32 (ROW, rows = outer * inner): row r = (o, i) = (r / inner, r % inner) holds
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

// ---------------------------------------------------------------------------------------------
// 9. arg_reduce_f32 (ROW, rows = outer * inner, rows indexed as softmax): values[r], indices[r]
// = the max (op 0) or min (op 1) of row r and its index: the first index among equals, and the
// first NaN beats every number (PyTorch, the CPU). ArgBest is a total order, so the result is
// exactly the sequential scan's. n == 0 (which the front-end rules out) gives NaN and -1.

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

// ---------------------------------------------------------------------------------------------
// 10. layer_norm_f32 (ROW, rows = rows) and 11. group_norm_f32 (ROW, rows = batch * groups): the
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

// ---------------------------------------------------------------------------------------------
// 14. index_select_u16/_u32/_u64 (ELEMENTWISE over outer * count * inner outputs):
// out[(o count + k) inner + i] = src[(o n + idx[k]) inner + i]. An index outside 0..n is never
// read through: that output gets 0, and the first thread to find a bad index records it in the
// host-mapped err: it claims err[0] (0 -> 1 by compare-and-swap), writes err[1] = the index,
// fences and then publishes (err[0] = 2), so that a host reading err[0] == 2 (the only state it
// trusts) reads the complete index (the host may look while the kernel still runs); which bad
// index is recorded when there are several depends on timing, the outputs do not.

template <typename T>
__device__ __forceinline__ void index_select(const T* __restrict__ src, const i64* __restrict__ idx,
                                             T* __restrict__ out, u64 outer, u64 n, u64 inner, u64 count,
                                             u64* err) {
    const u64 total = outer * count * inner;
    FOR_EACH(e, total) {
        const u64 t = udiv(e, inner), i = e - t * inner;
        const u64 o = udiv(t, count), k = t - o * count;
        const i64 r = idx[k];
        if (r < 0 || (u64)r >= n) {
            out[e] = (T)0;
            if (atomicCAS(&err[0], 0ULL, 1ULL) == 0ULL) {
                atomicExch(&err[1], (u64)r);
                __threadfence_system();
                atomicExch(&err[0], 2ULL);
            }
        } else {
            out[e] = src[(o * n + (u64)r) * inner + i];
        }
    }
}

extern "C" __global__ void index_select_u16(const u16* src, const i64* idx, u16* out, u64 outer, u64 n, u64 inner,
                                            u64 count, u64* err) {
    index_select(src, idx, out, outer, n, inner, count, err);
}
extern "C" __global__ void index_select_u32(const u32* src, const i64* idx, u32* out, u64 outer, u64 n, u64 inner,
                                            u64 count, u64* err) {
    index_select(src, idx, out, outer, n, inner, count, err);
}
extern "C" __global__ void index_select_u64(const u64* src, const i64* idx, u64* out, u64 outer, u64 n, u64 inner,
                                            u64 count, u64* err) {
    index_select(src, idx, out, outer, n, inner, count, err);
}

// ---------------------------------------------------------------------------------------------
// 15. attention_f32 (WARP ROWS: blockDim.x = 32 * warps, gridDim.x <= 65535, dynamic shared
// memory warps * s f32): global warp w = blockIdx.x * warps + warp takes rows w, w + gridDim.x *
// warps, ...; row (b, i) = (row / l, row % l) is query i of batch entry b (row-major over
// a.shape[0..nb]), so a block's warps mostly share b and read its keys and values through L1.
// Each view's element [b.., r, c] is at sum b_d strides[t][d] + r strides[t][MAX_DIMS] +
// c strides[t][MAX_DIMS + 1] (t = 0 q, 1 k, 2 v, 3 out, 4 mask).
// 1. Lane t computes the scores j = t, t + 32, ...: q . k_j, one fmaf chain over d = 0, 1, ...,
//    into the warp's s f32 of shared memory.
// 2. The softmax of scale * score over j < s as softmax_f32 computes it (entries dropped for
//    j > i when causal, or where the mask is 0; max in f32 skipping NaN, sum of expf in double,
//    p = e / sum rounded once, a dropped p = 0 / sum): lane t folds its own j in increasing
//    order, then the warp's fixed shuffle tree; p is written over the scores.
// 3. out[d] for d = t, t + 32, ...: sum over j = 0, 1, ..., s - 1 of p_j v[j, d], one fmaf chain
//    (dropped keys included, as the matmul after a softmax includes them). A query with no kept
//    key is 0 (PyTorch's attention since 2.5).
// No block-wide synchronization: a row belongs to one warp. Every value is made in a fixed
// order, so the same launch on the same input gives the same bits.

#define ATTN_VIEWS 5
struct Attn {
    i64 nb;
    i64 shape[MAX_DIMS];
    i64 strides[ATTN_VIEWS][MAX_DIMS + 2];
    u64 l, s, e, ev;
    float scale;
    int causal;
};

// v folded over the warp by a fixed tree, returned to every lane.
template <typename T, typename F>
__device__ __forceinline__ T warp_all(T v, F f) {
    return shfl0(warp_reduce(v, f));
}

extern "C" __global__ void attention_f32(const float* __restrict__ q, const float* __restrict__ k,
                                         const float* __restrict__ v, float* __restrict__ out,
                                         const i64* __restrict__ mask, Attn a) {
    extern __shared__ float smem[];
    const int R = MAX_DIMS, C = MAX_DIMS + 1;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float* p = smem + (u64)warp * a.s;
    u64 batch = 1;
    for (int d = 0; d < (int)a.nb; ++d) batch *= (u64)a.shape[d];
    const u64 rows = batch * a.l;
    for (u64 row = (u64)blockIdx.x * warps + warp; row < rows; row += (u64)gridDim.x * warps) {
        u64 b = udiv(row, a.l);
        const u64 i = row - b * a.l;
        i64 off[ATTN_VIEWS] = {0, 0, 0, 0, 0};
        for (int d = (int)a.nb - 1; d >= 0; --d) {
            const u64 n = (u64)a.shape[d], up = udiv(b, n);
            const i64 r = (i64)(b - up * n);
            for (int t = 0; t < ATTN_VIEWS; ++t) off[t] += r * a.strides[t][d];
            b = up;
        }
        const float* qr = q + off[0] + (i64)i * a.strides[0][R];
        const float* kb = k + off[1];
        const float* vb = v + off[2];
        float* orow = out + off[3] + (i64)i * a.strides[3][R];
        const i64* mr = mask ? mask + off[4] + (i64)i * a.strides[4][R] : 0;
        const u64 lim = a.causal ? (i + 1 < a.s ? i + 1 : a.s) : a.s;
        const i64 qc = a.strides[0][C], kr = a.strides[1][R], kc = a.strides[1][C];
        __syncwarp(); // the warp's previous row is done with p
        for (u64 j = lane; j < a.s; j += 32) {
            const float* kj = kb + (i64)j * kr;
            float acc = 0.0f;
            for (u64 d = 0; d < a.e; ++d) acc = fmaf(qr[(i64)d * qc], kj[(i64)d * kc], acc);
            p[j] = acc;
        }
#define ATTN_KEPT(j) ((j) < lim && (!mr || mr[(i64)(j) * a.strides[4][C]] != 0))
        float mx = -F32_INF;
        i64 any = 0;
        for (u64 j = lane; j < lim; j += 32) {
            if (ATTN_KEPT(j)) {
                any = 1;
                mx = MaxSkipNan()(mx, __fmul_rn(a.scale, p[j]));
            }
        }
        any = warp_all(any, OrI());
        if (!any) {
            for (u64 d = lane; d < a.ev; d += 32) orow[(i64)d * a.strides[3][C]] = 0.0f;
            continue;
        }
        mx = warp_all(mx, MaxSkipNan());
        double sum = 0.0;
        for (u64 j = lane; j < lim; j += 32) {
            if (ATTN_KEPT(j)) sum += (double)expf(__fmul_rn(a.scale, p[j]) - mx);
        }
        sum = warp_all(sum, AddF());
        const float dropped = (float)(0.0 / sum);
        // Lane t rewrites the p[j] it alone wrote and read (j = t, t + 32, ...).
        for (u64 j = lane; j < a.s; j += 32) {
            p[j] = ATTN_KEPT(j) ? (float)((double)expf(__fmul_rn(a.scale, p[j]) - mx) / sum) : dropped;
        }
#undef ATTN_KEPT
        __syncwarp(); // every p[j] written before any lane reads them all
        const i64 vr = a.strides[2][R], vc = a.strides[2][C];
        for (u64 d = lane; d < a.ev; d += 32) {
            const float* vd = vb + (i64)d * vc;
            float acc = 0.0f;
            for (u64 j = 0; j < a.s; ++j) acc = fmaf(p[j], vd[(i64)j * vr], acc);
            orow[(i64)d * a.strides[3][C]] = acc;
        }
    }
}
