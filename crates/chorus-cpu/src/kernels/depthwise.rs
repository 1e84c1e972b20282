//! The depthwise path of the `Conv2d` kernel (`groups == c_in == c_out`): direct loops per
//! channel plane, no scratch beyond one plane.
//!
//! Each output row (already holding the bias) is split into an interior, where every tap reads
//! inside the input, and two edges. The interior goes in blocks of [`BLOCK`] outputs kept in a
//! register-sized accumulator array across all `kh × kw` taps (one load and one store per output
//! instead of one per tap); the edges go tap by tap over the columns that read inside the input.
//! Both read the input through contiguous slices, so the inner loops vectorize: at stride 1 the
//! input rows are used as they are, at a larger stride each plane is first split into its column
//! phases (`x[sw·t + p]` for each phase `p`), in which the columns a tap reads are consecutive.
//! Every output adds its taps in the same order (kernel rows, then columns, ascending) whatever
//! the path, so results are deterministic.

use super::conv::{Conv, Span};

/// Outputs per interior block.
const BLOCK: usize = 16;

/// `y` (holding the bias, the same in every output of a plane) `+=` the taps of each channel's own kernel over `x`.
pub(super) fn depthwise(x: &[f32], wt: &[f32], y: &mut [f32], c: &Conv) {
    let ([h, w], [kh, kw], [sh, sw], [ph, _], [oh, ow]) =
        (c.hw, c.khw, c.stride, c.padding, c.out_hw);
    let spans = c.col_spans();
    // Start of each column phase in a split row, and where each tap's first column `first` lies
    // in its (split) row.
    let phase_start: Vec<usize> = (0..sw)
        .scan(0, |at, p| {
            Some(std::mem::replace(at, *at + (w - p.min(w)).div_ceil(sw)))
        })
        .collect();
    let taps_at: Vec<Span> = spans
        .iter()
        .map(|&(lo, hi, first)| (lo, hi, phase_start[first % sw] + first / sw))
        .collect();
    // Interior: the output columns every tap reads inside the input.
    let (lo_all, hi_all) = spans
        .iter()
        .fold((0, ow), |(a, b), &(lo, hi, _)| (a.max(lo), b.min(hi)));
    // Blocks cover the interior, the last one ending at its end (overlapping the one before
    // when the interior is not a multiple of the block: those outputs are recomputed, from the
    // bias, to the same value).
    let block_starts: Vec<usize> = if hi_all >= lo_all + BLOCK {
        let last = hi_all - BLOCK;
        (lo_all..last).step_by(BLOCK).chain([last]).collect()
    } else {
        Vec::new()
    };
    let edges = match block_starts.is_empty() {
        true => [(0, ow), (ow, ow)],
        false => [(0, lo_all), (hi_all, ow)],
    };
    let mut split = vec![0.0f32; if sw > 1 { h * w } else { 0 }];
    let planes = x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow));
    for (k, (xp, yp)) in planes.enumerate() {
        let xs: &[f32] = if sw == 1 {
            xp
        } else {
            for (row, dst) in xp.chunks_exact(w).zip(split.chunks_exact_mut(w)) {
                if sw == 2 {
                    // Pairs of columns to the two phases (a shuffle the compiler vectorizes).
                    let (even, odd) = dst.split_at_mut(phase_start[1]);
                    for ((e, o), pair) in even.iter_mut().zip(odd).zip(row.chunks_exact(2)) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                    if w % 2 == 1 {
                        even[w / 2] = row[w - 1];
                    }
                    continue;
                }
                for (p, &start) in phase_start.iter().enumerate() {
                    let src = row[p.min(w)..].iter().step_by(sw);
                    for (d, &v) in dst[start..].iter_mut().zip(src) {
                        *d = v;
                    }
                }
            }
            &split
        };
        let taps = &wt[(k % c.c_in) * kh * kw..][..kh * kw];
        let bias = yp[0];
        for (oi, yr) in yp.chunks_exact_mut(ow).enumerate() {
            // Kernel rows reading inside the input, and the input row of the first of them.
            let top = oi * sh;
            let ki_lo = ph.saturating_sub(top);
            let ki_hi = kh.min((h + ph).saturating_sub(top));
            let rows =
                (ki_lo..ki_hi).map(|ki| (&taps[ki * kw..][..kw], &xs[(top + ki - ph) * w..][..w]));
            for &o0 in &block_starts {
                let mut acc = [bias; BLOCK];
                for (row_taps, xr) in rows.clone() {
                    for (&t, &(lo, _, at)) in row_taps.iter().zip(&taps_at) {
                        let src: &[f32; BLOCK] =
                            xr[at + o0 - lo..][..BLOCK].try_into().expect("a block");
                        for (a, &v) in acc.iter_mut().zip(src) {
                            *a += t * v;
                        }
                    }
                }
                yr[o0..o0 + BLOCK].copy_from_slice(&acc);
            }
            for (a, b) in edges {
                for (row_taps, xr) in rows.clone() {
                    for (&t, &(lo, hi, at)) in row_taps.iter().zip(&taps_at) {
                        let (l, r) = (lo.max(a), hi.min(b));
                        if l < r {
                            let src = &xr[at + l - lo..][..r - l];
                            for (o, &v) in yr[l..r].iter_mut().zip(src) {
                                *o += t * v;
                            }
                        }
                    }
                }
            }
        }
    }
}
