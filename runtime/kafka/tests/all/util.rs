//! Helpers for the Kafka tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eddy_kafka::rdkafka::config::ClientConfig;
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::testing::{self, OwnBroker};

/// How long any one broker operation may take in a test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where skipped tests are listed for the summary `tests/run-tests.sh`
/// prints after the run (the same file as eddy-tests').
pub const SKIPPED_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/eddy-skipped.txt");

/// Says "SKIPPED" on stderr and lists the test in [`SKIPPED_FILE`]; in CI
/// (`CI` set) a test that cannot run its subject fails instead.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI must run {test}, but there is no Kafka broker: {why}");
    }
    eprintln!("SKIPPED: {test}: no Kafka broker: {why}");
    let line = format!("SKIPPED: {test}: no Kafka broker\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_FILE)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// The shared broker's bootstrap address, or `None` after [`skip`].
pub fn broker(test: &str) -> Option<String> {
    match testing::shared_bootstrap() {
        Ok(bootstrap) => Some(bootstrap),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// A broker of the test's own in `dir`, or `None` after [`skip`].
pub fn own_broker(test: &str, dir: &Path) -> Option<OwnBroker> {
    match OwnBroker::start(dir) {
        Ok(broker) => Some(broker),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// A topic name no other test or earlier run used.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The user's properties for a client of `bootstrap`.
pub fn user(bootstrap: &str) -> Vec<(String, String)> {
    vec![("bootstrap.servers".to_string(), bootstrap.to_string())]
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
}

/// Every record of `topic` (with `partitions` partitions) from the start to
/// its end as `isolation` (`read_committed` or `read_uncommitted`) sees it:
/// for read_committed, the end is the last stable offset, so no
/// transaction may be open on the topic.
pub fn read_to_end(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = BTreeMap::new();
    let mut records = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} ({isolation}): no end of partitions {:?} within {TIMEOUT:?}",
            (0..partitions)
                .filter(|p| !at_end.contains_key(p))
                .collect::<Vec<_>>()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition, ());
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            }),
        }
    }
    records
}

/// The values of `records`, sorted.
pub fn values(records: &[Record]) -> Vec<String> {
    let mut values: Vec<String> = records.iter().map(|r| r.value.clone()).collect();
    values.sort();
    values
}
