//! The `Randn` kernel: counter-based standard normal numbers, Philox4x32-10 (Random123) followed
//! by Box–Muller in f32 with only IEEE `+ - * / sqrt` in a fixed order (no libm, no fused
//! multiply-add), so that every backend can reproduce it bit for bit. Number `i` of seed `s` depends only on `(s, i)`, never on the buffer
//! length or on who computes it, so a GPU backend can reproduce it bit for bit.

use super::mem::slice_mut;
use chorus_core::kernel::Randn;

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

/// A uniform f32 in (0, 1) from the top 23 bits of `w`: `(2k + 1) / 2^24`, exact.
fn uniform(w: u32) -> f32 {
    ((2 * (w >> 9) + 1) as f32) * (1.0 / 16_777_216.0)
}

/// `ln(u)` for `u` in (0, 1): `u = m 2^e` with `m` in [√½, √2), then
/// `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`, by its series to `s^9`.
fn ln(u: f32) -> f32 {
    let bits = u.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let mut p = 1.0 / 9.0;
    p = p * z + 1.0 / 7.0;
    p = p * z + 1.0 / 5.0;
    p = p * z + 1.0 / 3.0;
    p = p * z + 1.0;
    (e as f32) * std::f32::consts::LN_2 + 2.0 * s * p
}

/// `(sin, cos)` of `2π u` for `u` in (0, 1): the quadrant `q = ⌊4u⌋` is split off exactly, the
/// rest is `π/4 + a` with `a` in [-π/4, π/4), where Taylor polynomials to degree 9 and 10 are
/// accurate to about 2e-9.
fn sin_cos_2pi(u: f32) -> (f32, f32) {
    let x = u * 4.0;
    let q = x as u32;
    let a = (x - q as f32 - 0.5) * std::f32::consts::FRAC_PI_2;
    let z = a * a;
    let mut sp = 1.0 / 362_880.0;
    sp = sp * z - 1.0 / 5_040.0;
    sp = sp * z + 1.0 / 120.0;
    sp = sp * z - 1.0 / 6.0;
    let sin_a = a + a * (z * sp);
    let mut cp = -1.0 / 3_628_800.0;
    cp = cp * z + 1.0 / 40_320.0;
    cp = cp * z - 1.0 / 720.0;
    cp = cp * z + 1.0 / 24.0;
    cp = cp * z - 0.5;
    let cos_a = 1.0 + z * cp;
    let s = (sin_a + cos_a) * std::f32::consts::FRAC_1_SQRT_2;
    let c = (cos_a - sin_a) * std::f32::consts::FRAC_1_SQRT_2;
    let (s, c) = if q & 1 == 1 { (c, s) } else { (s, c) };
    let sin_sign = if q >= 2 { -1.0 } else { 1.0 };
    let cos_sign = if q == 1 || q == 2 { -1.0 } else { 1.0 };
    (sin_sign * s, cos_sign * c)
}

/// Box–Muller in f32: the (cos, sin) pair of standard normals from two words.
fn box_muller(wa: u32, wb: u32) -> (f32, f32) {
    let r = (-2.0 * ln(uniform(wa))).sqrt();
    let (sin, cos) = sin_cos_2pi(uniform(wb));
    (r * cos, r * sin)
}

/// The four normals `4c .. 4c + 4` of `seed`.
fn block(seed: u64, c: u64) -> [f32; 4] {
    let key = [seed as u32, (seed >> 32) as u32];
    let [w0, w1, w2, w3] = philox4x32_10([c as u32, (c >> 32) as u32, 0, 0], key);
    let (z0, z1) = box_muller(w0, w1);
    let (z2, z3) = box_muller(w2, w3);
    [z0, z1, z2, z3]
}

/// Counters per batch: the batch's Philox rounds and Box–Muller steps run lane by lane over
/// fixed-size arrays, which the compiler vectorizes.
const LANES: usize = 8;

/// Normals `4c .. 4(c + LANES)` of `seed`.
fn blocks(seed: u64, c: u64) -> [[f32; 4]; LANES] {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut w = [[0u32; 4]; LANES];
    for (l, w) in w.iter_mut().enumerate() {
        let c = c + l as u64;
        *w = philox4x32_10([c as u32, (c >> 32) as u32, 0, 0], key);
    }
    let mut out = [[0f32; 4]; LANES];
    for (o, w) in out.iter_mut().zip(&w) {
        let (z0, z1) = box_muller(w[0], w[1]);
        let (z2, z3) = box_muller(w[2], w[3]);
        *o = [z0, z1, z2, z3];
    }
    out
}

/// `out[i]` = standard normal number `i` of `seed`, for `i < len`.
///
/// # Safety
/// `out` is valid and aligned for `len` f32 writes and not otherwise accessed during the call.
pub(super) unsafe fn randn(k: &Randn) {
    let Randn { out, len, seed, .. } = *k;
    // SAFETY: caller's contract.
    let out = unsafe { slice_mut::<f32>(out, len) };
    let mut chunks = out.chunks_exact_mut(4 * LANES);
    let mut c = 0u64;
    for chunk in &mut chunks {
        let z = blocks(seed, c);
        for (dst, src) in chunk.chunks_exact_mut(4).zip(&z) {
            dst.copy_from_slice(src);
        }
        c += LANES as u64;
    }
    for chunk in chunks.into_remainder().chunks_mut(4) {
        let z = block(seed, c);
        chunk.copy_from_slice(&z[..chunk.len()]);
        c += 1;
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
            execute(&Kernel::Randn(chorus_core::kernel::Randn {
                out: ptr_mut(&mut v),
                len,
                seed,
                dtype: chorus_core::DType::F32,
            }))
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
        assert_eq!(uniform(0), 1.0 / 16_777_216.0);
        assert_eq!(uniform(u32::MAX), 1.0 - 1.0 / 16_777_216.0);
    }

    #[test]
    fn ln_and_sin_cos_are_accurate() {
        for i in 0..100_000u32 {
            let w = i.wrapping_mul(0x9E37_79B9);
            let u = uniform(w);
            let want = f64::from(u).ln();
            assert!(
                (f64::from(ln(u)) - want).abs() <= 2e-6 * want.abs().max(1.0),
                "ln({u})"
            );
            let (s, c) = sin_cos_2pi(u);
            let (ws, wc) = (std::f64::consts::TAU * f64::from(u)).sin_cos();
            assert!(
                (f64::from(s) - ws).abs() < 1e-6 && (f64::from(c) - wc).abs() < 1e-6,
                "sincos({u})"
            );
        }
    }

    #[test]
    fn follows_the_documented_formula() {
        // Box–Muller from the Philox words, against an f64 evaluation.
        let v = generate(4096, 3);
        for (i, &z) in v.iter().enumerate() {
            let w = philox4x32_10([(i / 4) as u32, 0, 0, 0], [3, 0]);
            let (wa, wb) = if i % 4 < 2 {
                (w[0], w[1])
            } else {
                (w[2], w[3])
            };
            let ua = f64::from(((2 * (wa >> 9) + 1) as f32) / 16_777_216.0);
            let ub = f64::from(((2 * (wb >> 9) + 1) as f32) / 16_777_216.0);
            let r = (-2.0 * ua.ln()).sqrt();
            let t = std::f64::consts::TAU * ub;
            let want = if i % 2 == 0 { r * t.cos() } else { r * t.sin() };
            assert!(
                (f64::from(z) - want).abs() < 2e-5 * want.abs().max(1.0),
                "element {i}: {z} vs {want}"
            );
        }
    }

    /// The exact bits of the first numbers of seed 0 and seed 2^40 + 5: every backend must
    /// produce these (a change here changes what seeds mean).
    #[test]
    fn known_bits() {
        let a: Vec<u32> = generate(6, 0).iter().map(|v| v.to_bits()).collect();
        let b: Vec<u32> = generate(6, (1 << 40) + 5)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(a, KNOWN_SEED_0.to_vec(), "seed 0: {a:#010x?}");
        assert_eq!(b, KNOWN_SEED_BIG.to_vec(), "seed 2^40+5: {b:#010x?}");
    }
    const KNOWN_SEED_0: [u32; 6] = [
        0x3f7dbb30, 0xbf6cb6b3, 0xbf1e1ba0, 0xbef6d1a9, 0xbe1d5355, 0x3e392a68,
    ];
    const KNOWN_SEED_BIG: [u32; 6] = [
        0x3f6d0c65, 0x3f889703, 0x3fe0b36d, 0x3ef7796d, 0x3f14c05e, 0xbfc019ca,
    ];

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
