// Scaled dot-product attention as one kernel.
// Launched by kernels/attention.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// attention_f32 (WARP ROWS: blockDim.x = 32 * warps, gridDim.x <= 65535, dynamic shared
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
