//! Consumer groups on the shared broker, as a scaled-out Eddy uses them:
//! the group protocol assigns the partitions, and the group's metadata
//! (generation, member id) goes into the transaction with the offsets, so
//! that a member that lost its partitions cannot commit for them (Kafka
//! Streams' exactly-once v2).

use std::collections::BTreeSet;
use std::time::Instant;

use eddy_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::{admin, config};

use crate::util::{self, read_to_end, unique, user, TIMEOUT};

/// For both group protocols: the classic one and KIP-848's `consumer`
/// (the broker assigns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_commit_offsets_in_transaction() {
    let Some(bootstrap) = util::broker("kafka subscribe_and_commit_offsets_in_transaction") else {
        return;
    };
    for protocol in ["classic", "consumer"] {
        let (input, output, group) = (unique("gin"), unique("gout"), unique("group"));
        admin::create_topic(&bootstrap, &input, 4, 1, TIMEOUT)
            .await
            .unwrap();
        admin::create_topic(&bootstrap, &output, 4, 1, TIMEOUT)
            .await
            .unwrap();
        let plain: FutureProducer = eddy_kafka::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        for i in 0..20 {
            let (key, value) = (format!("k{i}"), format!("v{i}"));
            plain
                .send(FutureRecord::to(&input).key(&key).payload(&value), TIMEOUT)
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }

        let mut settings = user(&bootstrap);
        settings.push(("group.protocol".into(), protocol.into()));
        let consumer: StreamConsumer = config::read_committed_consumer(&settings, &group)
            .unwrap()
            .create()
            .unwrap();
        consumer.subscribe(&[&input]).unwrap();
        let t0 = Instant::now();
        let mut consumed = Vec::new();
        while consumed.len() < 20 {
            let m = tokio::time::timeout(TIMEOUT, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("{protocol}: input within {TIMEOUT:?}"))
                .unwrap();
            consumed.push((m.partition(), m.offset(), m.payload().unwrap().to_vec()));
        }
        eprintln!(
            "group protocol {protocol}: assigned and read 20 messages in {:?}",
            t0.elapsed()
        );
        let assigned: BTreeSet<i32> = consumer
            .assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        assert_eq!(
            assigned,
            (0..4).collect(),
            "{protocol}: the only member has every partition"
        );

        let producer: FutureProducer =
            config::transactional_producer(&user(&bootstrap), &unique("txn"))
                .unwrap()
                .create()
                .unwrap();
        producer.init_transactions(TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
        for (_, _, value) in &consumed {
            producer
                .send(FutureRecord::<(), _>::to(&output).payload(value), TIMEOUT)
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let mut offsets = TopicPartitionList::new();
        for partition in 0..4 {
            let next = consumed
                .iter()
                .filter(|(p, _, _)| *p == partition)
                .map(|(_, o, _)| o + 1)
                .max()
                .unwrap_or(0);
            offsets
                .add_partition_offset(&input, partition, Offset::Offset(next))
                .unwrap();
        }
        // The member's metadata (generation, member id), not only the
        // group's name.
        let metadata = consumer.group_metadata().unwrap();
        producer
            .send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
            .unwrap_or_else(|e| panic!("{protocol}: send_offsets_to_transaction: {e}"));
        producer
            .commit_transaction(TIMEOUT)
            .unwrap_or_else(|e| panic!("{protocol}: commit_transaction: {e}"));

        assert_eq!(
            read_to_end(&bootstrap, &output, 4, "read_committed").len(),
            20
        );
        let stored = consumer.committed(TIMEOUT).unwrap();
        for partition in 0..4 {
            let want = offsets.find_partition(&input, partition).unwrap().offset();
            let got = stored.find_partition(&input, partition).unwrap().offset();
            assert_eq!(
                got, want,
                "{protocol}: committed offset of partition {partition}"
            );
        }
    }
}
