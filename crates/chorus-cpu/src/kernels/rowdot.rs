//! Matrix products with few rows whose operands both run along `k` contiguously: `lhs` is
//! `[m, k]` with unit column stride and `rhs` is `Wᵀ` for a `W` of `[n, k]` with unit row
//! stride. That is `linear`'s layout (`x @ weightᵀ`) and attention's `q @ kᵀ`; for few rows
//! `gemm` runs them far below what the memory allows (~20 GFLOP/s at m = 1).
//!
//! Every output is the dot product of two contiguous rows, computed in [`LANES`] lanes: lane `l`
//! accumulates the products at `p ≡ l (mod LANES)` with fused multiply-adds in increasing `p`
//! (past `k` the lanes see zeros), then the lanes are summed in a fixed tree ([`sum_lanes`]).
//! So the bits of `out[i, j]` depend on row `i` of `lhs`, row `j` of `W` and `k` only: not on
//! `m` within this kernel's range (how many requests a batch holds; from `packed::MIN_ROWS`
//! rows on, `matmul` takes the packed kernel, one in-order chain per output, whose bits differ),
//! not on the tiling, not on how the columns are split among cores, and not on which of the
//! code paths below runs (they compute the same lanes; the tests compare them bit for bit with
//! [`reference()`]).
//!
//! Columns are split among cores when the worker was given several (`super::PARALLELISM`) and
//! the product is large enough to gain from it.

use super::share::{self, Shared};
use super::unary;
use chorus_core::kernel::Epilogue;

/// Lanes of every dot product (one AVX-512 register of f32).
pub(super) const LANES: usize = 16;
/// Rows of `lhs` per tile.
const MR: usize = 4;
/// Rows of `W` (columns of the output) per tile.
const NR: usize = 4;
/// Below this many multiply-adds a product runs on one core (waking another costs more).
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Whether [`matmul`] should run a product of `m` rows with these strides.
pub(super) fn applies(m: usize, lhs_col_stride: usize, rhs_row_stride: usize) -> bool {
    m <= 64 && lhs_col_stride == 1 && rhs_row_stride == 1
}

/// The lanes of one dot product summed in a fixed order (pairwise, halves first).
#[inline(always)]
fn sum_lanes(mut v: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            v[l] += v[l + width];
        }
        width /= 2;
    }
    v[0]
}

/// The lanes of `x · w` for `x`, `w` of `k` elements, portable (the definition).
#[inline(always)]
fn lanes_portable(x: &[f32], w: &[f32]) -> [f32; LANES] {
    let mut acc = [0.0f32; LANES];
    let mut xs = x.chunks(LANES);
    for (xc, wc) in (&mut xs).zip(w.chunks(LANES)) {
        for (l, lane) in acc.iter_mut().enumerate() {
            let (a, b) = (
                xc.get(l).copied().unwrap_or(0.0),
                wc.get(l).copied().unwrap_or(0.0),
            );
            *lane = a.mul_add(b, *lane);
        }
    }
    acc
}

/// `x · w` as every path computes it.
pub(super) fn reference(x: &[f32], w: &[f32]) -> f32 {
    sum_lanes(lanes_portable(x, w))
}

/// A `MR' × NR'` tile of outputs: `out[i][j] = x[i] · w[j]`, each `k` long.
///
/// # Safety
/// Every `x[i]` and `w[j]` is readable for `k` f32.
#[inline(always)]
unsafe fn tile_portable<const R: usize, const C: usize>(
    x: [*const f32; R],
    w: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    let mut out = [[0.0; C]; R];
    for i in 0..R {
        for j in 0..C {
            // SAFETY: caller's contract: `k` readable f32 at each pointer.
            let (xr, wr) = unsafe {
                (
                    std::slice::from_raw_parts(x[i], k),
                    std::slice::from_raw_parts(w[j], k),
                )
            };
            out[i][j] = reference(xr, wr);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{sum_lanes, LANES};
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    /// [`super::tile_portable`] with one AVX-512 register per lane set.
    ///
    /// # Safety
    /// The CPU has AVX-512F; every `x[i]` and `w[j]` is readable for `k` f32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
        x: [*const f32; R],
        w: [*const f32; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        // One step: the `C` rows of `w` at `p` in registers, then one row of `x` at a time
        // (so that at most `R·C + C + 1` registers are live).
        let step = |acc: &mut [[__m512; C]; R], load: &dyn Fn(*const f32) -> __m512| {
            let wv: [__m512; C] = std::array::from_fn(|j| load(w[j]));
            for i in 0..R {
                let xv = load(x[i]);
                for j in 0..C {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
        };
        for q in 0..k / LANES {
            let p = q * LANES;
            // SAFETY: `p + LANES <= k`: inside every row (caller's contract).
            step(&mut acc, &|row| unsafe { _mm512_loadu_ps(row.add(p)) });
        }
        let rem = k % LANES;
        if rem > 0 {
            let p = k - rem;
            let mask = (1u16 << rem) - 1;
            // SAFETY: the mask loads only the `rem` elements left in every row; the others
            // read as zero (like the portable definition's padding) and are not accessed.
            step(&mut acc, &|row| unsafe {
                _mm512_maskz_loadu_ps(mask, row.add(p))
            });
        }
        let mut out = [[0.0; C]; R];
        for i in 0..R {
            for j in 0..C {
                let mut lanes = [0.0f32; LANES];
                // SAFETY: `lanes` holds LANES f32.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                out[i][j] = sum_lanes(lanes);
            }
        }
        out
    }
}

/// Which implementation this process runs (decided once).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Avx512,
    Portable,
}

fn path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Path::Avx512;
        }
    }
    Path::Portable
}

/// A tile by `path`.
///
/// # Safety
/// As [`tile_portable`]; `Path::Avx512` only where the CPU has it.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    path: Path,
    x: [*const f32; R],
    w: [*const f32; C],
    k: usize,
) -> [[f32; C]; R] {
    match path {
        // SAFETY: `path` is `Avx512` only where the CPU has AVX-512F; rows per the caller.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512::tile(x, w, k) },
        // SAFETY: rows per the caller.
        _ => unsafe { tile_portable(x, w, k) },
    }
}

/// Output columns `cols` of `out = act(x @ Wᵀ + bias)`.
///
/// # Safety
/// `x` is `m` rows of `k` readable f32 at row stride `x_rs`; `w` is `n` rows of `k` readable f32
/// at row stride `w_rs`; `out` is `m × n` row-major, valid for writes at every column in
/// `cols` and not accessed by anyone else at those columns during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    path: Path,
    x: *const f32,
    x_rs: usize,
    w: *const f32,
    w_rs: usize,
    out: *mut f32,
    (m, n, k): (usize, usize, usize),
    cols: std::ops::Range<usize>,
    epilogue: Epilogue,
) {
    let xr = |i: usize| x.wrapping_add(i * x_rs);
    let wr = |j: usize| w.wrapping_add(j * w_rs);
    let put = |i: usize, j: usize, v: f32| {
        // SAFETY: `i < m`, `j` in `cols` (caller's contract: writable, ours alone).
        unsafe { *out.add(i * n + j) = v };
    };
    // Columns `j..j + C` of every row: tiles of `MR` rows, then single rows.
    let block = |j: usize, c_width: usize| {
        fn go<const C: usize>(
            path: Path,
            m: usize,
            k: usize,
            xr: &dyn Fn(usize) -> *const f32,
            ws: [*const f32; C],
            put: &dyn Fn(usize, usize, f32),
            j: usize,
        ) {
            let mut i = 0;
            while i + MR <= m {
                // SAFETY: rows `i..i + MR` of `x` and the rows in `ws` exist (caller's contract).
                let t = unsafe { tile::<MR, C>(path, std::array::from_fn(|r| xr(i + r)), ws, k) };
                for (r, row) in t.iter().enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        put(i + r, j + c, v);
                    }
                }
                i += MR;
            }
            for i in i..m {
                // SAFETY: as above.
                let t = unsafe { tile::<1, C>(path, [xr(i)], ws, k) };
                for (c, &v) in t[0].iter().enumerate() {
                    put(i, j + c, v);
                }
            }
        }
        if c_width == NR {
            go::<NR>(path, m, k, &xr, std::array::from_fn(|c| wr(j + c)), &put, j);
        } else {
            go::<1>(path, m, k, &xr, [wr(j)], &put, j);
        }
    };
    let mut j = cols.start;
    while j + NR <= cols.end {
        block(j, NR);
        j += NR;
    }
    for j in j..cols.end {
        block(j, 1);
    }
    // SAFETY: the columns `cols` of the `m` rows are ours and were written above; a bias is `n`
    // readable f32 (caller's contract via `matmul`).
    unsafe { unary::epilogue_columns(out, (m, n), cols, epilogue) };
}

/// Columns per chunk handed out by `share`.
const CHUNK: usize = 16 * NR;

/// `out = act(x @ Wᵀ + bias)` for `x` `[m, k]` (row stride `x_rs`), `W` `[n, k]` (row stride
/// `w_rs`), `out` `[m, n]` contiguous; columns shared among up to `cores` cores.
///
/// # Safety
/// `x` and `w` readable as described; the epilogue's bias, if any, `n` readable f32; `out` valid
/// for `m * n` f32 writes, overlapping no input, not otherwise accessed during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    x: *const f32,
    x_rs: usize,
    w: *const f32,
    w_rs: usize,
    out: *mut f32,
    (m, n, k): (usize, usize, usize),
    epilogue: Epilogue,
    cores: usize,
) {
    let path = path();
    let chunks = n.div_ceil(CHUNK);
    if cores <= 1 || chunks <= 1 || m * n * k < PARALLEL_MIN_WORK {
        // SAFETY: caller's contract, all columns.
        unsafe { columns(path, x, x_rs, w, w_rs, out, (m, n, k), 0..n, epilogue) };
        return;
    }
    let (x, w, out) = (Shared(x), Shared(w), Shared(out));
    share::run(chunks, cores - 1, std::time::Duration::ZERO, move |c| {
        let (x, w, out) = (x, w, out);
        // SAFETY: caller's contract; `share` runs every chunk exactly once before `run` returns
        // (so while the caller's borrows last), and chunks cover disjoint columns.
        unsafe {
            columns(
                path,
                x.0,
                x_rs,
                w.0,
                w_rs,
                out.0,
                (m, n, k),
                c * CHUNK..((c + 1) * CHUNK).min(n),
                epilogue,
            )
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::Rng;

    /// `x @ Wᵀ` by [`matmul`] with `cores`, each output checked against [`reference`].
    fn run(m: usize, n: usize, k: usize, cores: usize) -> Vec<f32> {
        let mut rng = Rng::new((m * 131 + n * 7 + k) as u64);
        let (x, w) = (rng.f32s(m * k), rng.f32s(n * k));
        let mut out = vec![f32::NAN; m * n];
        // SAFETY: `x`, `w` and `out` have exactly the sizes the call reads and writes.
        unsafe {
            matmul(
                x.as_ptr(),
                k,
                w.as_ptr(),
                k,
                out.as_mut_ptr(),
                (m, n, k),
                Epilogue::default(),
                cores,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let r = reference(&x[i * k..][..k], &w[j * k..][..k]);
                assert_eq!(
                    out[i * n + j].to_bits(),
                    r.to_bits(),
                    "[{i}, {j}] of {m}x{n}x{k} on {cores} cores ({:?})",
                    path()
                );
            }
        }
        out
    }

    #[test]
    fn every_output_is_the_reference_dot_product() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 5, 17),
            (3, 9, 33),
            (4, 4, 16),
            (7, 13, 100),
            (64, 33, 64),
            (5, 300, 1000),
        ] {
            run(m, n, k, 1);
            run(m, n, k, 3);
        }
    }

    #[test]
    fn the_portable_tile_equals_the_reference() {
        let mut rng = Rng::new(3);
        let k = 45;
        let (x, w) = (rng.f32s(2 * k), rng.f32s(3 * k));
        // SAFETY: two rows of `x` and three of `w`, each `k` long.
        let t = unsafe {
            tile_portable::<2, 3>(
                [x.as_ptr(), x[k..].as_ptr()],
                [w.as_ptr(), w[k..].as_ptr(), w[2 * k..].as_ptr()],
                k,
            )
        };
        for i in 0..2 {
            for j in 0..3 {
                let r = reference(&x[i * k..][..k], &w[j * k..][..k]);
                assert_eq!(t[i][j].to_bits(), r.to_bits());
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_rows_or_cores() {
        let (n, k) = (1000, 1000);
        let alone = run(1, n, k, 1);
        assert_eq!(alone, run(1, n, k, 2));
        // The first row of a larger product is the same row computed alone.
        let mut rng = Rng::new((131 + n * 7 + k) as u64);
        let (x1, w) = (rng.f32s(k), rng.f32s(n * k));
        let mut x = x1.clone();
        x.extend(Rng::new(99).f32s(8 * k));
        let mut out = vec![0.0; 9 * n];
        // SAFETY: `x` is 9 rows, `w` n rows, of `k`; `out` is 9 × n.
        unsafe {
            matmul(
                x.as_ptr(),
                k,
                w.as_ptr(),
                k,
                out.as_mut_ptr(),
                (9, n, k),
                Epilogue::default(),
                2,
            )
        };
        assert_eq!(&out[..n], &alone[..]);
    }
}
