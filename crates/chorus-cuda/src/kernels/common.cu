// The CUDA C kernels of chorus-cuda, compiled once per device with NVRTC
// (`--gpu-architecture=sm_XY --std=c++17`) and launched by name with cuLaunchKernel.
//
// One program in several files: module.rs (`SOURCE`) concatenates kernels/*.cu in a fixed order,
// this file first (the types, macros and device helpers every family uses), then one file per
// kernel family, each next to the Rust module that launches its kernels (kernels/<family>.rs).
// Self-contained: no #include (NVRTC has no standard library here), only CUDA built-ins.
// Semantics are those of the CPU backend (crates/chorus-cpu/src/kernels/*.rs, documented on
// `Kernel` in crates/chorus-core/src/kernel.rs). randn_f32 matches it bit for bit (required);
// so do the kernels whose arithmetic is the same IEEE operations in the same order (fill, copies,
// index_select, binary, relu, bias add, i64 arithmetic, arg_reduce, adaptive_avg_pool2d, f32
// max/min up to NaN payloads); the others (summation trees, libm-style functions) match to
// rounding.
//
// Launch shapes (the Rust side, kernels/*.rs, does exactly this):
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
