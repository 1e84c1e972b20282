// Elementwise kernels: fill, randn, unary activations (and the matmul bias/activation epilogue), binary arithmetic.
// Launched by kernels/elementwise.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// fill_f32 / fill_i64 (ELEMENTWISE): out[k] = v for k < n.

extern "C" __global__ void fill_f32(float* __restrict__ out, u64 n, float v) {
    FOR_EACH(k, n) out[k] = v;
}

extern "C" __global__ void fill_i64(i64* __restrict__ out, u64 n, i64 v) {
    FOR_EACH(k, n) out[k] = v;
}

// ---------------------------------------------------------------------------------------------
// randn_f32 (ELEMENTWISE over counters c < ceil(n / 4)): out[4c .. min(4c + 4, n)) are the
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
// unary_f32 (ELEMENTWISE): out[k] = act(op, src[k]); bias_act_f32 (ELEMENTWISE, the matmul
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
// binary_f32 / binary_i64 (ELEMENTWISE over k < n): out[k] = a[off_a(k)] op b[off_b(k)],
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
