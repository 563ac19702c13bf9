//! Which partition a key goes to, computed as Kafka's producers place it:
//! a pipeline whose processes share a consumer group keeps each key's
//! state in the unit of the partition the key hashes to, and checks that
//! every record arrived there.

/// How producers map a record key to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// Kafka's default for keyed records in the Java client (and Kafka
    /// Streams): `(murmur2(key) & 0x7fffffff) % partitions`. librdkafka's
    /// `murmur2` and `murmur2_random` place keys the same way; Eddy's own
    /// producers use it.
    #[default]
    Murmur2,
    /// librdkafka's default (`consistent_random`, also `consistent`):
    /// `crc32(key) % partitions`. Clients built on librdkafka (Python's
    /// confluent-kafka, Go, .NET, Node's node-rdkafka) use it unless told
    /// otherwise.
    Crc32,
}

impl Partitioner {
    /// The partition of `key` among `partitions` (which must be positive).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        debug_assert!(partitions > 0);
        let n = partitions.max(1) as u32;
        let h = match self {
            Partitioner::Murmur2 => (murmur2(key) as u32) & 0x7fff_ffff,
            Partitioner::Crc32 => crc32fast::hash(key),
        };
        (h % n) as i32
    }

    /// Its name in the pipeline file.
    pub fn name(self) -> &'static str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
        }
    }
}

/// Kafka's 32-bit murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`),
/// with its seed.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let (chunks, rest) = data.as_chunks::<4>();
    for c in chunks {
        let mut k = u32::from_le_bytes(*c);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Kafka's own tests expect of `Utils.murmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key),
                *want,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for p in [Partitioner::Murmur2, Partitioner::Crc32] {
            for n in [1, 3, 12] {
                for i in 0..1000 {
                    let key = format!("k{i}");
                    let a = p.partition(key.as_bytes(), n);
                    assert!((0..n).contains(&a));
                    assert_eq!(a, p.partition(key.as_bytes(), n));
                }
            }
        }
        // Both spread keys: no partition of 12 is left empty by 1000 keys.
        let mut seen = [false; 12];
        for i in 0..1000 {
            seen[Partitioner::Murmur2.partition(format!("k{i}").as_bytes(), 12) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
