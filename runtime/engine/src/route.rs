//! Routing: key → key group → worker. All events of one key go to one
//! worker (per-key order and isolation); a later operator's events are
//! routed again by the key they were emitted with.

use std::hash::BuildHasher;

/// Number of key groups: keys hash into groups, groups map onto workers.
pub const KEY_GROUPS: u64 = 256;

/// The key group of `key` (`0..KEY_GROUPS`): a fixed function of the key's
/// bytes, the same in every process and run.
pub fn key_group(key: &str) -> u64 {
    let h = rustc_hash::FxBuildHasher.hash_one(key.as_bytes());
    // Fx's low bits are weak: take the high ones for the group.
    (h >> 32) % KEY_GROUPS
}

/// The worker owning `key` among `workers` (`workers` > 0).
pub fn route(key: &str, workers: usize) -> usize {
    (key_group(key) % workers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_worker_of_its_group() {
        for key in [
            "",
            "a",
            "k000042",
            "card-4242",
            "é",
            "12345678901234567890123",
        ] {
            let g = key_group(key);
            assert!(g < KEY_GROUPS);
            // A fixed function of the key: the same in every call.
            assert_eq!(key_group(key), g);
            assert_eq!(route(key, 1), 0);
            for workers in [2, 3, 7, 256, 1024] {
                assert_eq!(route(key, workers), (g % workers as u64) as usize);
            }
        }
    }

    #[test]
    fn the_key_groups_are_pinned() {
        // Routing decides which worker handles a key, so which outputs a
        // worker writes in which order: these values must not change by
        // accident (a change is a new routing, to be made on purpose).
        let groups: Vec<u64> = ["a", "b", "k000042", "card-4242"]
            .iter()
            .map(|k| key_group(k))
            .collect();
        assert_eq!(groups, PINNED);
    }

    /// `key_group` of "a", "b", "k000042", "card-4242".
    const PINNED: [u64; 4] = [46, 5, 0, 6];

    #[test]
    fn keys_spread_over_every_group_and_worker() {
        let mut groups = vec![0u32; KEY_GROUPS as usize];
        let mut workers = [0u32; 3];
        for i in 0..100_000 {
            let key = format!("k{i:06}");
            groups[key_group(&key) as usize] += 1;
            workers[route(&key, 3)] += 1;
        }
        // 100,000 keys over 256 groups: about 390 each.
        let (min, max) = (groups.iter().min().unwrap(), groups.iter().max().unwrap());
        assert!(*min > 250 && *max < 550, "groups from {min} to {max} keys");
        // 256 groups over 3 workers: 86, 85 and 85 groups.
        for (w, &n) in workers.iter().enumerate() {
            assert!((30_000..37_000).contains(&n), "worker {w} has {n} keys");
        }
    }
}
