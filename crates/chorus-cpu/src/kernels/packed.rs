//! Matrix products with many rows on AVX-512: `out = act(lhs @ rhs + bias)` with `rhs` copied
//! into panels of [`NR`] columns (contiguous along `k`, zero past `n`) and a register tile of
//! up to [`MR`] rows × [`NR`] columns accumulated over the whole of `k`.
//!
//! Every output is one chain of fused multiply-adds over `p = 0, 1, …, k - 1` in order, started
//! from zero ([`reference`]). So its bits depend on its row of `lhs`, its column of `rhs` and
//! `k` only: not on `m`, the tiling, or how the panels are split among cores.
//!
//! Machines without AVX-512 use `gemm` instead (`super::matmul`).

use super::share::{self, Shared};
use super::unary;
use chorus_core::kernel::Epilogue;
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Rows of the register tile (2·MR accumulators + 2 panel registers + 1 broadcast ≤ 32).
const MR: usize = 14;
/// Columns of a panel (two AVX-512 registers).
pub(super) const NR: usize = 32;
/// Panels per chunk that one thread takes at a time.
const CHUNK_PANELS: usize = 2;
/// Below this many multiply-adds a product runs on one core.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// Whether this machine runs these products (else `gemm` does).
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// `Σ_p lhs[p] · rhs[p]` as one in-order chain of fused multiply-adds (the definition).
#[cfg(test)]
pub(super) fn reference(lhs: impl Iterator<Item = f32>, rhs: impl Iterator<Item = f32>) -> f32 {
    lhs.zip(rhs).fold(0.0f32, |acc, (a, b)| a.mul_add(b, acc))
}

/// An operand: element `[r, c]` at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `R` rows × `NR` columns of `lhs @ panel`, stored to `out` (row stride `n`, `cols` ≤ NR valid
/// columns).
///
/// # Safety
/// AVX-512F is present; `lhs` rows `0..R` are readable at columns `0..k`; `panel` holds
/// `k * NR` f32; `out` is writable at rows `0..R`, columns `0..cols`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(
    lhs: Mat,
    panel: *const f32,
    k: usize,
    out: *mut f32,
    n: usize,
    cols: usize,
) {
    let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
    let mut a: [*const f32; R] = std::array::from_fn(|r| lhs.ptr.wrapping_add(r * lhs.rs));
    for p in 0..k {
        // SAFETY: the panel holds `k * NR` f32 and `p < k`.
        let (b0, b1) = unsafe {
            let b = panel.add(p * NR);
            (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)))
        };
        for r in 0..R {
            // SAFETY: row `r` of `lhs` is readable at column `p < k`.
            let x = _mm512_set1_ps(unsafe { *a[r] });
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
            a[r] = a[r].wrapping_add(lhs.cs);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let dst = out.wrapping_add(r * n);
        // SAFETY: row `r` of `out` is writable at columns `0..cols`; the masks cover exactly
        // those of the two registers.
        unsafe {
            if cols == NR {
                _mm512_storeu_ps(dst, acc[0]);
                _mm512_storeu_ps(dst.add(16), acc[1]);
            } else {
                let mask = |from: usize| {
                    let c = cols.saturating_sub(from).min(16);
                    ((1u32 << c) - 1) as u16
                };
                _mm512_mask_storeu_ps(dst, mask(0), acc[0]);
                _mm512_mask_storeu_ps(dst.add(16), mask(16), acc[1]);
            }
        }
    }
}

/// Rows `0..m` of one panel: tiles of `MR` rows, the rest in smaller tiles (the bits of a row
/// do not depend on the tile it is in).
///
/// # Safety
/// As [`tile`] for rows `0..m`.
unsafe fn panel_rows(
    lhs: Mat,
    panel: *const f32,
    m: usize,
    k: usize,
    out: *mut f32,
    n: usize,
    cols: usize,
) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        let l = Mat {
            ptr: lhs.ptr.wrapping_add(i * lhs.rs),
            ..lhs
        };
        let o = out.wrapping_add(i * n);
        // SAFETY: caller's contract for rows `i..i + taken`; AVX-512F present.
        let taken = unsafe {
            match rows {
                MR => {
                    tile::<MR>(l, panel, k, o, n, cols);
                    MR
                }
                8..MR => {
                    tile::<8>(l, panel, k, o, n, cols);
                    8
                }
                4..8 => {
                    tile::<4>(l, panel, k, o, n, cols);
                    4
                }
                2..4 => {
                    tile::<2>(l, panel, k, o, n, cols);
                    2
                }
                _ => {
                    tile::<1>(l, panel, k, o, n, cols);
                    1
                }
            }
        };
        i += taken;
    }
}

/// Copies columns `j..j + w` of `rhs` (`k` rows) into `panel` as `k` rows of `NR` (zeros past
/// `w`), row by row (measured: faster than following `rhs`'s contiguous dimension when that is `k`).
///
/// # Safety
/// `rhs` is readable at `[p, j + c]` for every `p < k`, `c < w`; `panel` holds `k * NR` f32.
unsafe fn pack(rhs: Mat, j: usize, w: usize, k: usize, panel: &mut [f32]) {
    if w < NR {
        panel.fill(0.0);
    }
    for p in 0..k {
        for (c, v) in panel[p * NR..][..w].iter_mut().enumerate() {
            // SAFETY: `p < k`, `c < w`: readable (caller's contract).
            *v = unsafe { *rhs.ptr.add(p * rhs.rs + (j + c) * rhs.cs) };
        }
    }
}

/// Output columns `j0..j1` (whole panels, the last possibly partial) of the product.
///
/// # Safety
/// As [`matmul`], for those columns; only they are written.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    lhs: Mat,
    rhs: Mat,
    out: *mut f32,
    (m, n, k): (usize, usize, usize),
    cols: std::ops::Range<usize>,
    epilogue: Epilogue,
    panel: &mut Vec<f32>,
) {
    // Sized once per thread; `pack` writes every element the tiles read.
    panel.resize(k * NR, 0.0);
    let mut j = cols.start;
    while j < cols.end {
        let w = (cols.end - j).min(NR);
        // SAFETY: columns `j..j + w` are in range (caller's contract); the panel was sized.
        unsafe { pack(rhs, j, w, k, panel) };
        // SAFETY: caller's contract; the panel holds `k * NR` f32; AVX-512F was checked by
        // `matmul`'s caller (`available`).
        unsafe { panel_rows(lhs, panel.as_ptr(), m, k, out.wrapping_add(j), n, w) };
        j += w;
    }
    // SAFETY: the columns `cols` of the `m` rows are ours and were written above; a bias is `n`
    // readable f32 (caller's contract).
    unsafe { unary::epilogue_columns(out, (m, n), cols, epilogue) };
}

std::thread_local! {
    /// The calling thread's panel buffer, kept between calls (a panel is `k × NR` f32: 128 KiB
    /// at k = 1024, which a fresh allocation would also zero on every call).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's panel buffer (`columns` never nests, so it is free).
fn with_panel<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PANEL.with(|p| f(&mut p.borrow_mut()))
}

/// `out = act(lhs @ rhs + bias)`, `lhs` `[m, k]`, `rhs` `[k, n]`, `out` `[m, n]` contiguous;
/// panels shared among up to `cores` cores.
///
/// # Safety
/// AVX-512F is present ([`available`]); `lhs` and `rhs` are readable at every in-range element;
/// a bias is `n` readable f32; `out` is valid for `m * n` f32 writes, overlaps no input and is
/// not otherwise accessed during the call.
pub(super) unsafe fn matmul(
    lhs: Mat,
    rhs: Mat,
    out: *mut f32,
    (m, n, k): (usize, usize, usize),
    epilogue: Epilogue,
    cores: usize,
) {
    let chunk = CHUNK_PANELS * NR;
    let chunks = n.div_ceil(chunk);
    if cores <= 1 || chunks <= 1 || m * n * k < PARALLEL_MIN_WORK {
        // SAFETY: caller's contract, all columns.
        unsafe { with_panel(|p| columns(lhs, rhs, out, (m, n, k), 0..n, epilogue, p)) };
        return;
    }
    let (lhs, rhs, out) = (Shared(lhs), Shared(rhs), Shared(out));
    share::run(chunks, cores - 1, move |c| {
        let (lhs, rhs, out) = (lhs, rhs, out);
        // SAFETY: caller's contract; `share` runs every chunk exactly once before `run`
        // returns, and chunks cover disjoint columns.
        unsafe {
            with_panel(|p| {
                columns(
                    lhs.0,
                    rhs.0,
                    out.0,
                    (m, n, k),
                    c * chunk..((c + 1) * chunk).min(n),
                    epilogue,
                    p,
                )
            })
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::Rng;

    /// `lhs @ rhs` for row-major `lhs` `[m, k]` and `rhs` given transposed or not.
    fn check(m: usize, n: usize, k: usize, rhs_transposed: bool, cores: usize) -> Vec<f32> {
        let mut rng = Rng::new((m * 7 + n * 13 + k) as u64);
        let (a, b) = (rng.f32s(m * k), rng.f32s(k * n));
        let rhs = if rhs_transposed {
            Mat {
                ptr: b.as_ptr(),
                rs: 1,
                cs: k,
            }
        } else {
            Mat {
                ptr: b.as_ptr(),
                rs: n,
                cs: 1,
            }
        };
        let lhs = Mat {
            ptr: a.as_ptr(),
            rs: k,
            cs: 1,
        };
        let mut out = vec![f32::NAN; m * n];
        // SAFETY: AVX-512F checked by the callers; buffers sized for the call.
        unsafe {
            matmul(
                lhs,
                rhs,
                out.as_mut_ptr(),
                (m, n, k),
                Epilogue::default(),
                cores,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let bj = (0..k).map(|p| b[p * rhs.rs + j * rhs.cs]);
                let r = reference(a[i * k..][..k].iter().copied(), bj);
                assert_eq!(
                    out[i * n + j].to_bits(),
                    r.to_bits(),
                    "[{i}, {j}] of {m}x{n}x{k}"
                );
            }
        }
        out
    }

    #[test]
    fn every_output_is_one_in_order_chain() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512F on this machine");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (15, 33, 7), (29, 64, 100), (130, 70, 256)] {
            for t in [false, true] {
                check(m, n, k, t, 1);
                check(m, n, k, t, 3);
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_rows_or_cores() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512F on this machine");
            return;
        }
        let big = check(100, 300, 512, true, 2);
        let alone = check(100, 300, 512, true, 1);
        assert_eq!(big, alone);
    }
}
