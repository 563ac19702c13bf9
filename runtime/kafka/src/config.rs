//! Client settings for exactly-once.
//!
//! Eddy's exactly-once (issue 15) puts a pipeline's outputs and the input
//! offsets it consumed into one Kafka transaction; a downstream consumer
//! reads with `isolation.level=read_committed`. The functions here build
//! the `rdkafka` [`ClientConfig`]s for that: first the user's properties
//! (bootstrap servers, security, tuning: passed through unchanged), then the
//! settings exactly-once cannot do without. A user property that contradicts
//! one of those is an [`Error::Conflict`], not silently overridden.

use rdkafka::ClientConfig;

use crate::Error;

/// Settings a transactional producer must have.
const PRODUCER_REQUIRED: &[(&str, &str)] = &[
    // Implied by a transactional.id; said here so a user's `false` is
    // caught.
    ("enable.idempotence", "true"),
    ("acks", "all"),
];

/// Producer defaults the user may change.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Place keys in the partitions Java producers (and Kafka Streams) pick:
    // librdkafka's default partitioner hashes with CRC32.
    ("partitioner", "murmur2_random"),
];

/// Settings a consumer of an exactly-once pipeline must have.
const CONSUMER_REQUIRED: &[(&str, &str)] = &[
    // See only committed transactions.
    ("isolation.level", "read_committed"),
    // The consumed offsets are committed inside the producer's transaction
    // (send_offsets_to_transaction), never on their own.
    ("enable.auto.commit", "false"),
];

/// Consumer defaults the user may change.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    // A new group starts at the beginning of the topic.
    ("auto.offset.reset", "earliest"),
];

/// A transactional producer's settings: `user` properties (including
/// `bootstrap.servers`), then `transactional.id` and what transactions need.
pub fn transactional_producer(
    user: &[(String, String)],
    transactional_id: &str,
) -> Result<ClientConfig, Error> {
    let mut config = build(user, PRODUCER_DEFAULTS, PRODUCER_REQUIRED)?;
    require(&mut config, "transactional.id", transactional_id)?;
    Ok(config)
}

/// A `read_committed` consumer's settings in consumer group `group_id`:
/// `user` properties (including `bootstrap.servers`), then what exactly-once
/// needs.
pub fn read_committed_consumer(
    user: &[(String, String)],
    group_id: &str,
) -> Result<ClientConfig, Error> {
    let mut config = build(user, CONSUMER_DEFAULTS, CONSUMER_REQUIRED)?;
    require(&mut config, "group.id", group_id)?;
    Ok(config)
}

/// Group mode's consumer defaults the user may change: a member that
/// stops heartbeating for 6 s (the broker's smallest session timeout by
/// default) loses its partitions, so a `kill -9` moves them within
/// seconds, not librdkafka's default 45.
const GROUP_DEFAULTS: &[(&str, &str)] = &[
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "1500"),
];

/// Group mode's consumer needs the cooperative protocol: a rebalance
/// takes from a member only the partitions that move.
const GROUP_REQUIRED: &[(&str, &str)] = &[("partition.assignment.strategy", "cooperative-sticky")];

/// The consumer of a process that shares its group's partitions with
/// others: [`read_committed_consumer`], with the cooperative-sticky
/// assignor and a 6 s session timeout (both the user may not / may
/// change).
pub fn group_consumer(user: &[(String, String)], group_id: &str) -> Result<ClientConfig, Error> {
    let mut rest = read_committed_consumer(user, group_id)?;
    for (key, value) in GROUP_DEFAULTS {
        if rest.get(key).is_none() {
            rest.set(*key, *value);
        }
    }
    for (key, value) in GROUP_REQUIRED {
        require(&mut rest, key, value)?;
    }
    Ok(rest)
}

fn build(
    user: &[(String, String)],
    defaults: &[(&str, &str)],
    required: &[(&str, &str)],
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::new();
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in user {
        config.set(key, value);
    }
    for (key, value) in required {
        require(&mut config, key, value)?;
    }
    Ok(config)
}

/// Sets `key` to `value` unless the user already set it to something else.
fn require(config: &mut ClientConfig, key: &str, value: &str) -> Result<(), Error> {
    match config.get(key) {
        Some(given) if !same_value(given, value) => Err(Error::Conflict {
            key: key.to_string(),
            required: value.to_string(),
            given: given.to_string(),
        }),
        _ => {
            config.set(key, value);
            Ok(())
        }
    }
}

/// librdkafka reads booleans and enums without regard to case, and `-1`
/// for `acks=all`.
fn same_value(given: &str, required: &str) -> bool {
    given.eq_ignore_ascii_case(required) || (required == "all" && given.trim() == "-1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn user_properties_pass_through() {
        let user = props(&[
            ("bootstrap.servers", "b1:9093,b2:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("partitioner", "consistent_random"),
        ]);
        let c = transactional_producer(&user, "eddy-p0").unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("partitioner"), Some("consistent_random"));
        assert_eq!(c.get("transactional.id"), Some("eddy-p0"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let c = read_committed_consumer(&user, "g").unwrap();
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn defaults() {
        let c = transactional_producer(&[], "t").unwrap();
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
    }

    #[test]
    fn contradictions_are_errors() {
        let err = read_committed_consumer(&props(&[("isolation.level", "read_uncommitted")]), "g")
            .unwrap_err();
        assert!(err.to_string().contains("isolation.level"), "{err}");
        assert!(transactional_producer(&props(&[("acks", "1")]), "t").is_err());
        assert!(transactional_producer(&props(&[("transactional.id", "other")]), "t").is_err());
        // Same meaning, other spelling.
        assert!(transactional_producer(
            &props(&[("acks", "-1"), ("enable.idempotence", "TRUE")]),
            "t"
        )
        .is_ok());
        assert!(read_committed_consumer(&props(&[("group.id", "g")]), "g").is_ok());
    }
}
