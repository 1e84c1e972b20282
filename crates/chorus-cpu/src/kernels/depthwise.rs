//! The depthwise path of the `Conv2d` kernel (`groups == c_in == c_out`): direct loops per
//! channel plane.
//!
//! Each input plane is first copied into a zero-padded scratch plane, so that every tap of every
//! output reads inside it and the loops below have no bounds logic; at a stride above 1 each
//! padded row is also split into its column phases (`row[sw·t + p]` for each phase `p`), in which
//! the columns one tap reads for consecutive outputs are consecutive. Each output row is then
//! computed in blocks of [`BLOCK`] outputs held in a register-sized accumulator across all
//! `kh × kw` taps (one store per output, contiguous loads the compiler vectorizes); the last block
//! ends at the row's end, overlapping the one before when the width is not a multiple of the
//! block (those outputs are recomputed to the same value). Every output is `bias + Σ tap · input`
//! summed in the same order (kernel rows, then columns, ascending), so results are deterministic.

use chorus_core::kernel::Conv2d as Conv;

/// Outputs per block.
const BLOCK: usize = 16;

/// `y` (holding the bias, the same in every output of a plane) `+=` the taps of each channel's
/// own kernel over `x`.
pub(super) fn depthwise(x: &[f32], wt: &[f32], y: &mut [f32], c: &Conv) {
    let ([h, w], [kh, kw], [sh, sw], [ph, pw], [oh, ow]) =
        (c.hw, c.khw, c.stride, c.padding, c.out_hw);
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    // Start of each column phase in a padded row, and where the column `kj` read by output 0 of
    // a block lies in it.
    let phase_start: Vec<usize> = (0..sw)
        .scan(0, |at, p| {
            let len = (wp - p.min(wp)).div_ceil(sw);
            Some(std::mem::replace(at, *at + len))
        })
        .collect();
    let tap_at: Vec<usize> = (0..kw).map(|kj| phase_start[kj % sw] + kj / sw).collect();
    // A narrow row is one block whose outputs past the row are dropped: the slack at the end of
    // the plane keeps its reads in bounds.
    let starts: Vec<usize> = if ow >= BLOCK {
        (0..ow - BLOCK).step_by(BLOCK).chain([ow - BLOCK]).collect()
    } else {
        vec![0]
    };
    let width = ow.min(BLOCK);
    let mut plane = vec![0.0f32; hp * wp + BLOCK * sw + kw];
    let mut padded_row = vec![0.0f32; wp];
    let planes = x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow));
    for (k, (xp, yp)) in planes.enumerate() {
        // Rows `ph..ph + h` of the padded plane; the borders stay zero.
        for (xr, dst) in xp
            .chunks_exact(w)
            .zip(plane[ph * wp..].chunks_exact_mut(wp))
        {
            if sw == 1 {
                dst[pw..pw + w].copy_from_slice(xr);
                continue;
            }
            padded_row[pw..pw + w].copy_from_slice(xr);
            split_phases(&padded_row, dst, &phase_start, sw);
        }
        let taps = &wt[(k % c.c_in) * kh * kw..][..kh * kw];
        let bias = yp[0];
        for (oi, yr) in yp.chunks_exact_mut(ow).enumerate() {
            // Each kernel row's padded input row, up to the end of the plane (a narrow block
            // reads past its row).
            let rows = (0..kh).map(|ki| &plane[(oi * sh + ki) * wp..]);
            let rows = rows.zip(taps.chunks_exact(kw));
            for &o0 in &starts {
                let mut acc = [bias; BLOCK];
                for (xr, row_taps) in rows.clone() {
                    for (&t, &at) in row_taps.iter().zip(&tap_at) {
                        let src: &[f32; BLOCK] =
                            xr[at + o0..][..BLOCK].try_into().expect("a block");
                        for (a, &v) in acc.iter_mut().zip(src) {
                            *a += t * v;
                        }
                    }
                }
                if width == BLOCK {
                    let out: &mut [f32; BLOCK] =
                        (&mut yr[o0..o0 + BLOCK]).try_into().expect("a block");
                    *out = acc;
                } else {
                    yr.copy_from_slice(&acc[..width]);
                }
            }
        }
    }
}

/// `dst[phase_start[p] + t] = row[sw·t + p]`: the row's column phases one after the other.
fn split_phases(row: &[f32], dst: &mut [f32], phase_start: &[usize], sw: usize) {
    if sw == 2 {
        // Pairs of columns to the two phases (a shuffle the compiler vectorizes).
        let (even, odd) = dst.split_at_mut(phase_start[1]);
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
            (*e, *o) = (pair[0], pair[1]);
        }
        if row.len() % 2 == 1 {
            even[row.len() / 2] = row[row.len() - 1];
        }
        return;
    }
    for (p, &start) in phase_start.iter().enumerate() {
        let src = row[p.min(row.len())..].iter().step_by(sw);
        for (d, &v) in dst[start..].iter_mut().zip(src) {
            *d = v;
        }
    }
}
