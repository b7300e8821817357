//! Bytes for request ids when the host gives no randomness (the id's format is the wire
//! contract's: `gatehouse_core::wire::format_request_id`).

use gatehouse_core::wire::REQUEST_ID_RANDOM_BYTES;

/// Bytes for an id when the host gives no randomness: unique per VM (the counter) and
/// unlikely to repeat across VMs and restarts (the seed mixes in time and context).
/// Not secret, which a request id does not need to be.
pub fn fallback_bytes(seed: u64, counter: u64) -> [u8; REQUEST_ID_RANDOM_BYTES] {
    let a = splitmix64(seed ^ counter.rotate_left(32));
    let b = splitmix64(a ^ counter);
    let mut both = [0; 16];
    let (hi, lo) = both.split_at_mut(8);
    hi.copy_from_slice(&a.to_le_bytes());
    lo.copy_from_slice(&b.to_le_bytes());
    let mut out = [0; REQUEST_ID_RANDOM_BYTES];
    for (o, b) in out.iter_mut().zip(both) {
        *o = b;
    }
    out
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_ids_differ_per_counter_and_seed() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            for counter in 0..50 {
                assert!(seen.insert(fallback_bytes(seed, counter)));
            }
        }
    }
}
