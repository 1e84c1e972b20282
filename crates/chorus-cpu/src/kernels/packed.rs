//! Matrix products with many rows on AVX-512: `out = act(lhs @ rhs + bias)`, both operands
//! copied into the layouts the register tile reads (the BLIS scheme):
//!
//! - `lhs`, [`LHS_BLOCK`] f32 at most at a time (a block of rows), once per block, shared among
//!   the cores like the panels (the first chunks of the block, which the others wait for): the
//!   rows of each tile (`h` = [`MR`] rows, fewer at the end) as one sliver of `k` steps of `h`
//!   f32 (`[p][r]`), so the tile reads them through one pointer;
//! - `rhs`, by whichever thread computes those columns: [`KC`] rows at a time of a panel of
//!   [`NR`] columns (`[p][c]`, zeros past `n`), which stay in L1 while every tile of the block
//!   runs over them. `linear`'s `Wᵀ` (unit row stride) is read along `W`'s rows and transposed
//!   16 × 16 in registers. A weight (`rhs` with its storage's cache, [`Derived`]) is packed
//!   whole the first time, all panels one after the other ([`pack_all`]), and kept in the cache
//!   for every later product: the packed copy is as large as the weight (columns rounded up to
//!   [`NR`]) and lives as long as the weight does.
//!
//! A register tile of `h` rows × [`NR`] columns runs over one panel's `KC` rows of `p`, storing
//! its sums to `out`; the tile of the next `KC` rows starts from them. The last one adds
//! `linear`'s bias and applies ReLU in registers before its store ([`Finish`]; other
//! activations run over the output afterwards). So every output is still
//! one chain of fused multiply-adds over `p = 0, 1, …, k - 1` in order, started from zero
//! ([`reference`]), and its bits depend on its row of `lhs`, its column of `rhs` and `k` only:
//! not on `m` (among the products this kernel takes: fewer rows go to `rowdot`, whose bits
//! differ), the blocking, the tiling, or how the panels are split among cores.
//!
//! The chunks of a block are shared among cores ([`share`]); its helpers linger for [`LINGER`]
//! after a product, for the next one (the next layer's) comes at once.
//!
//! Machines without AVX-512 use `gemm` instead (`super::matmul`).

use super::share::{self, Shared};
use super::unary;
use chorus_core::kernel::{Derived, Epilogue, UnaryOp};
use chorus_sync::atomic::{AtomicUsize, Ordering};
use chorus_sync::Arc;
use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_mask_mov_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps, _mm512_storeu_ps,
    _mm512_unpackhi_ps, _mm512_unpacklo_ps, _CMP_LT_OQ,
};

/// Rows of the register tile (2·MR accumulators + 2 panel registers + 1 broadcast ≤ 32).
const MR: usize = 14;
/// Columns of a panel (two AVX-512 registers).
const NR: usize = 32;
/// Steps of `p` per panel block (`KC × NR` f32: 32 KiB, in L1 while the tiles use it).
const KC: usize = 256;
/// Most f32 of packed `lhs` at a time (1 MiB, in L2 with the panels), unless `k` is so long
/// that one tile of rows takes more.
const LHS_BLOCK: usize = 1 << 18;
/// Rows of `lhs` per packing chunk (whole tiles).
const PACK_ROWS: usize = 2 * MR;
/// Panels per chunk that one thread takes at a time.
const CHUNK_PANELS: usize = 1;
/// How long the helpers wait for the next product when done with one's chunks (`share`).
const LINGER: std::time::Duration = std::time::Duration::from_micros(50);
/// Below this many multiply-adds a block runs on one core.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// Fewest rows of a product this module runs (`super::matmul`): with fewer, `rowdot`'s tiles
/// are as fast or faster in `linear`'s layout (measured at k, n of 512 and 1024, 1 and 2 cores:
/// about even at 20 rows, these 10-30 % faster at 24 and 25-50 % at 32).
pub(super) const MIN_ROWS: usize = 24;

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

/// Rows of the tile that starts with `left` rows to go: [`MR`] while that many are left, then the
/// largest of 8, 4, 2, 1 that fits. Packing and tiling walk the rows alike with it.
fn tile_height(left: usize) -> usize {
    match left {
        MR.. => MR,
        8.. => 8,
        4.. => 4,
        2.. => 2,
        _ => 1,
    }
}

/// The 16 × 16 transpose: element `c` of result `r` is element `r` of `rows[c]`.
#[target_feature(enable = "avx512f")]
fn transpose(rows: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved, then quadruples: `u[4g + c]`, 128-bit lane `l` holds rows
    // `4g..4g + 4` of column `c + 4l`.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + (c / 2)], t[4 * g + 2 + (c / 2)]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // 128-bit lanes gathered from `u[c]` and `u[4 + c]`: `v[c]` holds lanes 0, 2 of each
    // (columns `c` and `c + 8`, rows 0..8), `v[4 + c]` lanes 1, 3 (columns `c + 4`, `c + 12`);
    // `v[8..]` likewise from `u[8..]`, rows 8..16.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (half, odd, c) = (i / 8, (i / 4) % 2, i % 4);
        let (a, b) = (u[8 * half + c], u[8 * half + 4 + c]);
        if odd == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    });
    // Column `c + 4l`: its rows 0..8 from `v[..8]`, rows 8..16 from `v[8..]`.
    std::array::from_fn(|j| {
        let (c, l) = (j % 4, j / 4);
        let (a, b) = (v[4 * (l % 2) + c], v[8 + 4 * (l % 2) + c]);
        if l < 2 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    })
}

/// Packs rows `part` (from a multiple of [`MR`] to one or to `rows`: whole tiles) of the `rows`
/// rows of `lhs` (`k` columns), whose packing starts at `buf`: the tile of `h` rows that starts
/// at row `t` as `buf[t * k + p * h + r]` = `lhs[t + r, p]`.
///
/// # Safety
/// AVX-512F is present; `lhs` is readable at `[i, p]` for every `i` in `part`, `p < k`; `buf`
/// is writable at `part.start * k..part.end * k` and nobody else accesses those f32 during the
/// call.
#[target_feature(enable = "avx512f")]
unsafe fn pack_lhs(lhs: Mat, rows: usize, k: usize, part: std::ops::Range<usize>, buf: *mut f32) {
    // SAFETY: caller's contract.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.add(part.start * k), part.len() * k) };
    let mut t = part.start;
    while t < part.end {
        let h = tile_height(rows - t);
        let src = lhs.ptr.wrapping_add(t * lhs.rs);
        let sliver = &mut buf[(t - part.start) * k..][..h * k];
        let mut p = 0;
        if lhs.cs == 1 {
            // Rows along `k`: 16 steps of each row at a time, transposed (rows past `h` unused).
            let mask = ((1u32 << h) - 1) as u16;
            while p + 16 <= k {
                let block = std::array::from_fn(|r| {
                    if r < h {
                        // SAFETY: row `t + r < rows`, columns `p..p + 16 <= k`: readable.
                        unsafe { _mm512_loadu_ps(src.add(r * lhs.rs + p)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for (q, col) in transpose(block).into_iter().enumerate() {
                    // SAFETY: the mask writes `h` f32 at `(p + q) * h`, inside the sliver of
                    // `k * h` since `p + q < k`.
                    unsafe {
                        _mm512_mask_storeu_ps(sliver.as_mut_ptr().add((p + q) * h), mask, col)
                    };
                }
                p += 16;
            }
        }
        for p in p..k {
            for (r, v) in sliver[p * h..][..h].iter_mut().enumerate() {
                // SAFETY: row `t + r < rows`, column `p < k`: readable (caller's contract).
                *v = unsafe { *src.add(r * lhs.rs + p * lhs.cs) };
            }
        }
        t += h;
    }
}

/// Packs `rhs[k0 + p, j + c]` for `p < kc`, `c < w` into `panel[p * NR + c]`, zeros for
/// `w <= c < NR`.
///
/// # Safety
/// AVX-512F is present; `rhs` is readable at those elements; `panel` holds `kc * NR` f32.
#[target_feature(enable = "avx512f")]
unsafe fn pack_rhs(rhs: Mat, (j, w): (usize, usize), (k0, kc): (usize, usize), panel: &mut [f32]) {
    let panel = &mut panel[..kc * NR];
    if w < NR {
        panel.fill(0.0);
    }
    let at = |p: usize, c: usize| rhs.ptr.wrapping_add((k0 + p) * rhs.rs + (j + c) * rhs.cs);
    if rhs.cs == 1 {
        for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
            // SAFETY: `p < kc`: row `k0 + p` is readable at the `w` contiguous columns `j..j + w`.
            row[..w].copy_from_slice(unsafe { std::slice::from_raw_parts(at(p, 0), w) });
        }
        return;
    }
    // Columns `0..wide` and steps `0..deep` go 16 × 16 through registers when the columns run
    // along `k` (`linear`'s `Wᵀ`); the rest one by one.
    let (wide, deep) = if rhs.rs == 1 {
        (w / 16 * 16, kc / 16 * 16)
    } else {
        (0, 0)
    };
    for c0 in (0..wide).step_by(16) {
        for p0 in (0..deep).step_by(16) {
            // SAFETY: columns `c0..c0 + 16 <= w`, steps `p0..p0 + 16 <= kc`: readable, 16
            // contiguous f32 per column (unit row stride).
            let block = std::array::from_fn(|c| unsafe { _mm512_loadu_ps(at(p0, c0 + c)) });
            for (q, row) in transpose(block).into_iter().enumerate() {
                // SAFETY: `(p0 + q) * NR + c0 + 16 <= kc * NR`.
                unsafe { _mm512_storeu_ps(panel.as_mut_ptr().add((p0 + q) * NR + c0), row) };
            }
        }
    }
    for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
        let from = if p < deep { wide } else { 0 };
        for (c, v) in row[..w].iter_mut().enumerate().skip(from) {
            // SAFETY: `p < kc`, `c < w`: readable (caller's contract).
            *v = unsafe { *at(p, c) };
        }
    }
}

/// The epilogue the last block of a tile applies in registers before storing: `act(sum + bias)`
/// as [`unary::bias_act`] computes it, for the activations it has here.
#[derive(Clone, Copy)]
struct Finish {
    /// The bias from the tile's first column, or null.
    bias: *const f32,
    /// `max(x, 0)` after the bias (`x < 0 ? 0 : x`, NaN kept), else none.
    relu: bool,
}

impl Finish {
    /// The part of `epilogue` the tiles apply (`None`: all of it runs after them, per row).
    fn of(epilogue: Epilogue) -> Option<Finish> {
        let relu = match epilogue.act {
            None => false,
            Some(UnaryOp::Relu) => true,
            Some(_) => return None,
        };
        let bias = epilogue.bias.map_or(std::ptr::null(), |b| {
            super::mem::host::<f32>(b).cast_const()
        });
        Some(Finish { bias, relu })
    }
}

/// `R` rows × `NR` columns of `out` (row stride `n`, `cols` ≤ NR valid columns): each output's
/// chain of fused multiply-adds continued over `kc` steps of `a` (`[p][r]`) and `panel`
/// (`[p][c]`) from its stored value, or started from zero when not `resume`; `finish`, if any,
/// applied before storing (the last block).
///
/// # Safety
/// AVX-512F is present; `a` holds `kc * R` f32; `panel` holds `kc * NR` f32; `out` is readable
/// (when `resume`) and writable at rows `0..R`, columns `0..cols`; a finish's bias, if not null,
/// is readable at `0..cols`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(
    a: *const f32,
    panel: *const f32,
    kc: usize,
    out: *mut f32,
    (n, cols): (usize, usize),
    resume: bool,
    finish: Option<Finish>,
) {
    let mask = |from: usize| {
        let c = cols.saturating_sub(from).min(16);
        ((1u32 << c) - 1) as u16
    };
    let masks = [mask(0), mask(16)];
    let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
    if resume {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (h, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r`, columns `16h..` masked to `0..cols`: readable.
                *acc = unsafe { _mm512_maskz_loadu_ps(masks[h], out.add(r * n + 16 * h)) };
            }
        }
    }
    for p in 0..kc {
        // SAFETY: the panel holds `kc * NR` f32 and `p < kc`.
        let (b0, b1) = unsafe {
            let b = panel.add(p * NR);
            (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)))
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `a` holds `kc * R` f32 and `p * R + r < kc * R`.
            let x = _mm512_set1_ps(unsafe { *a.add(p * R + r) });
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
    }
    if let Some(f) = finish {
        let bias: [__m512; 2] = std::array::from_fn(|h| {
            if f.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                // SAFETY: columns `16h..` masked to `0..cols`: readable (contract).
                unsafe { _mm512_maskz_loadu_ps(masks[h], f.bias.add(16 * h)) }
            }
        });
        for acc in &mut acc {
            for (acc, b) in acc.iter_mut().zip(bias) {
                if !f.bias.is_null() {
                    *acc = _mm512_add_ps(*acc, b);
                }
                if f.relu {
                    let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(*acc, _mm512_setzero_ps());
                    *acc = _mm512_mask_mov_ps(*acc, below, _mm512_setzero_ps());
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (h, acc) in acc.iter().enumerate() {
            // SAFETY: row `r`, columns `16h..` masked to `0..cols`: writable.
            unsafe { _mm512_mask_storeu_ps(out.add(r * n + 16 * h), masks[h], *acc) };
        }
    }
}

/// Where a weight's packing is kept in its storage's cache: the operand as this module reads it.
#[derive(PartialEq, Eq)]
struct PackedKey {
    ptr: usize,
    rs: usize,
    cs: usize,
    k: usize,
    n: usize,
}

/// `rhs` (`k × n`) packed whole: the panel of columns `q·NR..` at `q · k · NR`, its steps
/// `[p][c]` (the [`KC`]-step blocks [`pack_rhs`] makes, one after the other).
///
/// # Safety
/// AVX-512F is present; `rhs` is readable at every `[p, j]`, `p < k`, `j < n`.
#[target_feature(enable = "avx512f")]
unsafe fn pack_all(rhs: Mat, k: usize, n: usize) -> Vec<f32> {
    let mut all = vec![0f32; n.div_ceil(NR) * k * NR];
    for (q, panel) in all.chunks_exact_mut(k * NR).enumerate() {
        let (j, w) = (q * NR, (n - q * NR).min(NR));
        for k0 in (0..k).step_by(KC) {
            let kc = (k - k0).min(KC);
            // SAFETY: columns `j..j + w` and steps `k0..k0 + kc` are in range (contract); the
            // panel holds `(k - k0) * NR >= kc * NR` f32 from step `k0`.
            unsafe { pack_rhs(rhs, (j, w), (k0, kc), &mut panel[k0 * NR..]) };
        }
    }
    all
}

/// Output columns `cols` (whole panels, the last possibly partial) of `rows` rows whose `lhs`
/// is packed at `a` ([`pack_lhs`]), with `rhs` packed here, or taken from `whole` if given
/// ([`pack_all`]).
///
/// # Safety
/// AVX-512F is present; `a` holds `rows * k` packed f32; `rhs` is readable at `[p, j]` for
/// `p < k`, `j` in `cols`; `whole`, if any, is `rhs` packed by [`pack_all`]; `out` (row stride
/// `n`) is writable at rows `0..rows`, columns `cols`, and not otherwise accessed; a bias is `n`
/// readable f32.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    a: *const f32,
    rhs: Mat,
    whole: Option<&[f32]>,
    out: *mut f32,
    (rows, n, k): (usize, usize, usize),
    cols: std::ops::Range<usize>,
    epilogue: Epilogue,
    panel: &mut Vec<f32>,
) {
    // Sized once per thread; `pack_rhs` writes every element the tiles read.
    panel.resize(KC * NR, 0.0);
    let fused = Finish::of(epilogue);
    let mut j = cols.start;
    while j < cols.end {
        let w = (cols.end - j).min(NR);
        for k0 in (0..k).step_by(KC) {
            let kc = (k - k0).min(KC);
            let b = match whole {
                // `j` is a multiple of `NR`: the block's `kc * NR` f32 lie inside `whole`.
                Some(whole) => whole[(j / NR) * k * NR + k0 * NR..][..kc * NR].as_ptr(),
                None => {
                    // SAFETY: columns `j..j + w`, steps `k0..k0 + kc` are in range (caller's
                    // contract); the panel holds `KC * NR` f32; AVX-512F is present.
                    unsafe { pack_rhs(rhs, (j, w), (k0, kc), panel) };
                    panel.as_ptr()
                }
            };
            let mut t = 0;
            while t < rows {
                let h = tile_height(rows - t);
                // The tile's sliver from step `k0` on, and its first output.
                let (s, o) = (a.wrapping_add(t * k + k0 * h), out.wrapping_add(t * n + j));
                let (shape, resume) = ((n, w), k0 > 0);
                let fin = fused.filter(|_| k0 + kc == k).map(|f| Finish {
                    bias: if f.bias.is_null() {
                        f.bias
                    } else {
                        f.bias.wrapping_add(j)
                    },
                    ..f
                });
                // SAFETY: the sliver holds `k * h` f32 from `t * k`, so `kc * h` from step `k0`;
                // the panel block at `b` holds `kc * NR`; rows `t..t + h` and columns
                // `j..j + w` of `out` are ours and, when resuming, were written by the previous
                // block; a bias is `n` readable f32, so `w` from column `j`; AVX-512F is present.
                unsafe {
                    match h {
                        MR => tile::<MR>(s, b, kc, o, shape, resume, fin),
                        8 => tile::<8>(s, b, kc, o, shape, resume, fin),
                        4 => tile::<4>(s, b, kc, o, shape, resume, fin),
                        2 => tile::<2>(s, b, kc, o, shape, resume, fin),
                        _ => tile::<1>(s, b, kc, o, shape, resume, fin),
                    }
                }
                t += h;
            }
        }
        j += w;
    }
    if fused.is_none() {
        // SAFETY: the columns `cols` of the `rows` rows are ours and were written above; a bias
        // is `n` readable f32 (caller's contract).
        unsafe { unary::epilogue_columns(out, (rows, n), cols, epilogue) };
    }
}

std::thread_local! {
    /// The calling thread's panel buffer, kept between calls (`KC × NR` f32, which a fresh
    /// allocation would also zero on every call).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's packed `lhs`, kept between calls ([`LHS_BLOCK`] f32, or one tile of
    /// rows where `k` is longer).
    static LHS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's panel buffer (`columns` never nests, so it is free).
fn with_panel<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PANEL.with(|p| f(&mut p.borrow_mut()))
}

/// Adds one to its counter when dropped, with release ordering (a packing chunk's writes happen
/// before a computing chunk sees it counted).
struct Count<'a>(&'a AtomicUsize);

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// `out = act(lhs @ rhs + bias)`, `lhs` `[m, k]`, `rhs` `[k, n]`, `out` `[m, n]` contiguous;
/// blocks of rows one after the other, the panels of each shared among up to `cores` cores;
/// `rhs` packed whole into `rhs_derived` (once) when given.
///
/// # Safety
/// AVX-512F is present ([`available`]); `lhs` and `rhs` are readable at every in-range element;
/// a bias is `n` readable f32; `out` is valid for `m * n` f32 writes, overlaps no input and is
/// not otherwise accessed during the call; `rhs_derived`, if any, is the cache of the storage
/// `rhs` lies in.
pub(super) unsafe fn matmul(
    lhs: Mat,
    rhs: Mat,
    out: *mut f32,
    (m, n, k): (usize, usize, usize),
    epilogue: Epilogue,
    cores: usize,
    rhs_derived: Option<&Derived>,
) {
    let key = PackedKey {
        ptr: rhs.ptr as usize,
        rs: rhs.rs,
        cs: rhs.cs,
        k,
        n,
    };
    // SAFETY: AVX-512F is present and `rhs` readable (contract). The storage's contents never
    // change while it lives, and the cache lives and dies with it (`Derived`), so a packing
    // found under this operand's key is this operand's.
    let whole = rhs_derived.map(|d| d.get_or_insert_with(key, || unsafe { pack_all(rhs, k, n) }));
    // As few blocks as keep each within `LHS_BLOCK` (a tile at least), of even heights.
    let blocks = m.div_ceil((LHS_BLOCK / k.max(1)).max(MR)).max(1);
    let block_rows = m.div_ceil(blocks);
    let chunk = CHUNK_PANELS * NR;
    let chunks = n.div_ceil(chunk);
    // `columns` never runs `matmul`, so the buffer is free.
    LHS.with(|buf| {
        let buf = &mut *buf.borrow_mut();
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(block_rows);
            if buf.len() < rows * k {
                buf.resize(rows * k, 0.0);
            }
            let block = Mat {
                ptr: lhs.ptr.wrapping_add(i * lhs.rs),
                ..lhs
            };
            let (a, o) = (buf.as_mut_ptr(), out.wrapping_add(i * n));
            if cores <= 1 || chunks <= 1 || rows * n * k < PARALLEL_MIN_WORK {
                // SAFETY: rows `i..i + rows` of `lhs` are readable (caller's contract); `buf`
                // holds `rows * k` f32; AVX-512F is present.
                unsafe { pack_lhs(block, rows, k, 0..rows, a) };
                // SAFETY: caller's contract for rows `i..i + rows`, all columns; `a` holds
                // them packed.
                unsafe {
                    with_panel(|p| {
                        columns(
                            a,
                            rhs,
                            whole.as_deref().map(Vec::as_slice),
                            o,
                            (rows, n, k),
                            0..n,
                            epilogue,
                            p,
                        )
                    })
                };
            } else {
                let packs = rows.div_ceil(PACK_ROWS);
                let packed = Arc::new(AtomicUsize::new(0));
                let (a, block, rhs, o) = (Shared(a), Shared(block), Shared(rhs), Shared(o));
                let whole = whole.clone();
                share::run(packs + chunks, cores - 1, LINGER, move |c| {
                    let (a, block, rhs, o) = (a, block, rhs, o);
                    if c < packs {
                        // Counted done even if it panics (`share` then panics after the rest).
                        let _done = Count(&packed);
                        let part = c * PACK_ROWS..((c + 1) * PACK_ROWS).min(rows);
                        // SAFETY: as above, for the rows `part` (whole tiles, from a multiple
                        // of `MR`) and their part of `buf`, which only this chunk writes;
                        // `share` runs every chunk exactly once before `run` returns (`buf` is
                        // not touched until then).
                        unsafe { pack_lhs(block.0, rows, k, part, a.0) };
                        return;
                    }
                    // Chunks are claimed in order, so every packing chunk is claimed, by a
                    // thread running it: this wait ends.
                    while packed.load(Ordering::Acquire) < packs {
                        std::hint::spin_loop();
                    }
                    let c = c - packs;
                    // SAFETY: caller's contract for rows `i..i + rows`, the chunk's columns
                    // (disjoint from every other chunk's); `a` holds the rows packed (all
                    // packing chunks are done, acquire above) and is not written any more.
                    unsafe {
                        with_panel(|p| {
                            columns(
                                a.0,
                                rhs.0,
                                whole.as_deref().map(Vec::as_slice),
                                o.0,
                                (rows, n, k),
                                c * chunk..((c + 1) * chunk).min(n),
                                epilogue,
                                p,
                            )
                        })
                    };
                });
            }
            i += rows;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::Rng;

    /// Row-major `[rows, cols]` over `data`, or column-major when `transposed`.
    fn mat(data: &[f32], rows: usize, cols: usize, transposed: bool) -> Mat {
        let (rs, cs) = if transposed { (1, rows) } else { (cols, 1) };
        Mat {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }

    /// `lhs @ rhs`, each operand given transposed or not, checked bit for bit against
    /// [`reference`]: `rhs` packed by the product itself, then packed whole into a cache (the
    /// first cached call) and taken from it (the second).
    fn check(m: usize, n: usize, k: usize, transposed: (bool, bool), cores: usize) -> Vec<f32> {
        let mut rng = Rng::new((m * 7 + n * 13 + k) as u64);
        let (a, b) = (rng.f32s(m * k), rng.f32s(k * n));
        let (lhs, rhs) = (mat(&a, m, k, transposed.0), mat(&b, k, n, transposed.1));
        let cache = Derived::new();
        let run = |derived: Option<&Derived>| {
            let mut out = vec![f32::NAN; m * n];
            let dims = (m, n, k);
            // SAFETY: AVX-512F checked by the callers; buffers sized for the call; the cache
            // is only ever used with `b`.
            unsafe {
                matmul(
                    lhs,
                    rhs,
                    out.as_mut_ptr(),
                    dims,
                    Epilogue::default(),
                    cores,
                    derived,
                )
            };
            out
        };
        let out = run(None);
        assert_eq!(
            run(Some(&cache)),
            out,
            "{m}x{n}x{k} {transposed:?}, packing it"
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(
            run(Some(&cache)),
            out,
            "{m}x{n}x{k} {transposed:?}, from the cache"
        );
        assert_eq!(cache.len(), 1);
        for i in 0..m {
            for j in 0..n {
                let ai = (0..k).map(|p| a[i * lhs.rs + p * lhs.cs]);
                let bj = (0..k).map(|p| b[p * rhs.rs + j * rhs.cs]);
                let r = reference(ai, bj);
                assert_eq!(
                    out[i * n + j].to_bits(),
                    r.to_bits(),
                    "[{i}, {j}] of {m}x{n}x{k} {transposed:?}"
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
        // Tails of rows, columns (a partial panel, one with a partial 16-column group) and `k`
        // (a partial `KC` block, steps past the last 16); `k = 1800` takes two blocks of rows.
        for &(m, n, k) in &[
            (1, 1, 1),
            (15, 33, 7),
            (29, 64, 100),
            (130, 70, 256),
            (67, 50, 300),
            (150, 40, 1800),
        ] {
            for transposed in [(false, false), (false, true), (true, false), (true, true)] {
                check(m, n, k, transposed, 1);
                check(m, n, k, transposed, 3);
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_rows_or_cores() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512F on this machine");
            return;
        }
        let big = check(100, 300, 512, (false, true), 2);
        let alone = check(100, 300, 512, (false, true), 1);
        assert_eq!(big, alone);
    }

    /// The epilogue fused into the tiles (bias, relu; NaN, -0 and partial panels included) and
    /// the one run after them (gelu) give the bits of the product followed by `bias_act`.
    #[test]
    fn fused_epilogue_is_bias_act_after_the_product() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512F on this machine");
            return;
        }
        let (m, n, k) = (40, 70, 300);
        let mut rng = Rng::new(9);
        let (mut a, b, mut bias) = (rng.f32s(m * k), rng.f32s(k * n), rng.f32s(n));
        a[5 * k + 3] = f32::NAN;
        bias[1] = -0.0;
        bias[2] = f32::NAN;
        let (lhs, rhs) = (mat(&a, m, k, false), mat(&b, k, n, true));
        let run = |epilogue: Epilogue| {
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: AVX-512F checked; buffers sized for the call; the bias holds `n` f32.
            unsafe { matmul(lhs, rhs, out.as_mut_ptr(), (m, n, k), epilogue, 2, None) };
            out
        };
        let plain = run(Epilogue::default());
        let ptr = chorus_core::kernel::DevicePtr(bias.as_ptr() as u64);
        for bias_ptr in [None, Some(ptr)] {
            for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::Gelu)] {
                let mut want = plain.clone();
                for row in want.chunks_exact_mut(n) {
                    unary::bias_act(row, bias_ptr.map(|_| &bias[..]), act);
                }
                let got = run(Epilogue {
                    bias: bias_ptr,
                    act,
                });
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "bias {bias_ptr:?}, act {act:?}");
            }
        }
    }

    /// GFLOP/s of `linear`'s layout (`x @ Wᵀ`) at MLP sizes on 1 and 2 cores: `cargo test
    /// --release -p chorus-cpu --lib packed::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark"]
    fn throughput() {
        if !available() {
            eprintln!("SKIPPED: no AVX-512F on this machine");
            return;
        }
        for (m, n, k) in [(64, 1024, 1024), (256, 1024, 512), (256, 1024, 1024)] {
            let mut rng = Rng::new(1);
            let (a, b) = (rng.f32s(m * k), rng.f32s(n * k));
            // The output 64-byte aligned, as the runtime's buffers are.
            let mut out = vec![0f32; m * n + 16];
            let skip = out.as_ptr().align_offset(64);
            let cache = Derived::new();
            for (cores, cached) in [(1, false), (1, true), (2, false), (2, true)] {
                let mut run = || {
                    let (lhs, rhs) = (mat(&a, m, k, false), mat(&b, k, n, true));
                    let (dims, derived) = ((m, n, k), cached.then_some(&cache));
                    // SAFETY: AVX-512F checked; buffers sized for the call; the cache is only
                    // used with `b`.
                    unsafe {
                        let o = out.as_mut_ptr().add(skip);
                        matmul(lhs, rhs, o, dims, Epilogue::default(), cores, derived)
                    }
                };
                let mut best = f64::MAX;
                for _ in 0..10 {
                    let t = std::time::Instant::now();
                    for _ in 0..20 {
                        run();
                    }
                    best = best.min(t.elapsed().as_secs_f64() / 20.0);
                }
                let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
                let how = if cached {
                    "weight packed once"
                } else {
                    "packed per call"
                };
                eprintln!("{m}x{k} @ ({n}x{k})ᵀ, {cores} core(s), {how}: {gflops:.1} GFLOP/s");
            }
        }
    }
}
