//! The `Randn` kernel: counter-based standard normal numbers, Philox4x32-10 (Random123) followed
//! by Box–Muller in f64. Number `i` of seed `s` depends only on `(s, i)`, never on the buffer
//! length or on who computes it, so a GPU backend can reproduce it bit for bit.

use super::slice_mut;
use chorus_core::kernel::DevicePtr;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// High and low 32 bits of the 64-bit product `a * b`.
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds, exactly as Random123's `philox4x32_R(10, ctr, key)`: the first
/// round uses `key`, and the key is bumped by (W0, W1) before each of the other nine.
pub(crate) fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = ctr;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c0);
        let (hi1, lo1) = mulhilo(M1, c2);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// A uniform number in (0, 1) from the top 24 bits of `w`.
fn uniform(w: u32) -> f64 {
    (f64::from(w >> 8) + 0.5) * (1.0 / (1u32 << 24) as f64)
}

/// Box–Muller: the (cos, sin) pair of standard normals from two words, computed in f64.
fn box_muller(wa: u32, wb: u32) -> (f32, f32) {
    let r = (-2.0 * uniform(wa).ln()).sqrt();
    let (sin, cos) = (std::f64::consts::TAU * uniform(wb)).sin_cos();
    ((r * cos) as f32, (r * sin) as f32)
}

/// The four normals `4c .. 4c + 4` of `seed`.
fn block(seed: u64, c: u64) -> [f32; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let [w0, w1, w2, w3] = philox4x32_10([c as u32, (c >> 32) as u32, 0, 0], key);
    let (z0, z1) = box_muller(w0, w1);
    let (z2, z3) = box_muller(w2, w3);
    [z0, z1, z2, z3]
}

/// `out[i]` = standard normal number `i` of `seed`, for `i < len`.
///
/// # Safety
/// `out` is valid and aligned for `len` f32 writes and not otherwise accessed during the call.
pub(super) unsafe fn randn(out: DevicePtr, len: usize, seed: u64) {
    // SAFETY: caller's contract.
    let out = unsafe { slice_mut::<f32>(out, len) };
    for (c, chunk) in out.chunks_mut(4).enumerate() {
        let z = block(seed, c as u64);
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::execute;
    use super::super::test_util::ptr_mut;
    use super::*;
    use chorus_core::kernel::Kernel;

    fn generate(len: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![f32::NAN; len];
        // SAFETY: `v` is a live Vec of `len` f32.
        unsafe {
            execute(&Kernel::Randn {
                out: ptr_mut(&mut v),
                len,
                seed,
            })
        };
        v
    }

    /// Known-answer vectors of Random123's `kat_vectors` for philox4x32_10.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniform_stays_inside_the_open_interval() {
        assert!(uniform(0) > 0.0 && uniform(u32::MAX) < 1.0);
        assert_eq!(uniform(0), 0.5 / 16_777_216.0);
    }

    #[test]
    fn follows_the_documented_formula() {
        let seed = 0x0123_4567_89ab_cdef_u64;
        let v = generate(10, seed);
        for (i, &z) in v.iter().enumerate() {
            let c = (i / 4) as u64;
            let w = philox4x32_10(
                [c as u32, (c >> 32) as u32, 0, 0],
                [0x89ab_cdef, 0x0123_4567],
            );
            let pair = i % 4 / 2 * 2;
            let r = (-2.0 * uniform(w[pair]).ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * uniform(w[pair + 1]);
            let expect = if i % 2 == 0 {
                r * th.cos()
            } else {
                r * th.sin()
            };
            assert_eq!(z.to_bits(), (expect as f32).to_bits(), "element {i}");
        }
    }

    #[test]
    fn standard_normal_moments() {
        let v = generate(100_000, 42);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn element_independent_of_length_and_seed_matters() {
        let long = generate(1000, 7);
        for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 998, 999] {
            assert_eq!(
                generate(i + 1, 7)[i].to_bits(),
                long[i].to_bits(),
                "element {i}"
            );
        }
        assert_ne!(generate(8, 8), long[..8]);
        assert_ne!(generate(8, 7 | 1 << 40), long[..8]);
        assert_eq!(generate(1000, 7), long);
        assert!(generate(0, 7).is_empty());
    }
}
