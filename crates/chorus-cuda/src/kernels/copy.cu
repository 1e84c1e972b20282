// Data movement: strided copy (Copy, CopyInto) and the index_select gather.
// Launched by kernels/copy.rs; part of the one NVRTC program that crates/chorus-cuda/src/module.rs
// assembles from kernels/*.cu (common.cu first: the types, macros and helpers used here).

// ---------------------------------------------------------------------------------------------
// copy_strided_u16/_u32/_u64 (ELEMENTWISE over k < n): dst[offset_d(idx)] = src[offset_s(idx)]
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
// index_select_u16/_u32/_u64 (ELEMENTWISE over outer * count * inner outputs):
// out[(o count + k) inner + i] = src[(o n + idx[k]) inner + i]. An index outside 0..n is never
// read through: that output gets 0, and the first thread to find a bad index records it in the
// launch's fault word err (device memory, FaultWord in chorus-core): it claims err[0] (0 -> 1 by
// compare-and-swap), writes err[1] = the index, fences and then publishes (err[0] = 2); the host
// reads the word back after the kernel and trusts only 2. Which bad index is recorded when
// there are several depends on timing, the outputs do not.

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
                __threadfence();
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
