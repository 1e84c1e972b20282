//! The seeds of a round's random inputs: a pure function of the run's base seed, the round's
//! [`RoundKey`] and the operand, so that any thread can recompute any round.

use super::RoundKey;

/// The seed of input `operand` of round `key`: depends on nothing else, so any thread can
/// recompute any round.
pub(crate) fn seed_for(seed: u64, key: RoundKey, operand: u64) -> u64 {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ key.thread);
    h = splitmix64(h ^ key.iter);
    splitmix64(h ^ operand)
}

/// The splitmix64 finalizer over `z + golden gamma`: a bijection with good avalanche.
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_thread_iteration_and_operand() {
        let k = |thread, iter| RoundKey { thread, iter };
        let seeds = [
            seed_for(0, k(0, 0), 0),
            seed_for(0, k(0, 0), 1),
            seed_for(0, k(1, 0), 0),
            seed_for(0, k(0, 1), 0),
            seed_for(1, k(0, 0), 0),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(seed_for(7, k(3, 5), 1), seed_for(7, k(3, 5), 1));
    }
}
