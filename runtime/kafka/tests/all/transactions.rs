//! Transactions on the shared broker: what Eddy's exactly-once protocol
//! builds on.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use eddy_kafka::rdkafka::types::RDKafkaErrorCode;
use eddy_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use eddy_kafka::{admin, config};

use crate::util::{self, read_to_end, unique, user, values, Record, TIMEOUT};

/// Produces `values` to `topic` keyed `k<i>`, without a transaction.
async fn produce_plain(bootstrap: &str, topic: &str, values: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload(value), TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("produce input");
    }
}

/// Consume-transform-produce in two transactions: the first commits its
/// outputs and the input offsets it consumed, the second aborts. A
/// read_committed reader sees the first's outputs only, a read_uncommitted
/// one sees both (so the aborted records were really written), and the
/// group's committed input offsets are the first transaction's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_abort_with_offsets() {
    let Some(bootstrap) = util::broker("kafka commit_and_abort_with_offsets") else {
        return;
    };
    let (input, output, group) = (unique("in"), unique("out"), unique("group"));
    admin::create_topic(&bootstrap, &input, 2, 1, TIMEOUT)
        .await
        .unwrap();
    admin::create_topic(&bootstrap, &output, 3, 1, TIMEOUT)
        .await
        .unwrap();
    let inputs: Vec<String> = (0..10).map(|i| format!("event-{i}")).collect();
    produce_plain(&bootstrap, &input, &inputs).await;

    // The pipeline's consumer: its group's offsets move only through the
    // producer's transactions.
    let consumer: StreamConsumer = config::read_committed_consumer(&user(&bootstrap), &group)
        .unwrap()
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..2 {
        assignment
            .add_partition_offset(&input, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut consumed = Vec::new();
    while consumed.len() < inputs.len() {
        let m = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("input within the timeout")
            .expect("input");
        consumed.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: String::from_utf8_lossy(m.key().unwrap()).into_owned(),
            value: String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
        });
    }
    let group_metadata = consumer.group_metadata().expect("group metadata");

    // The positions after `records`: the next offset to read per partition.
    let positions = |records: &[Record]| {
        let mut next = BTreeMap::new();
        for r in records {
            let n = next.entry(r.partition).or_insert(0);
            *n = (*n).max(r.offset + 1);
        }
        next
    };
    let offsets = |next: &BTreeMap<i32, i64>| {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in next {
            tpl.add_partition_offset(&input, *partition, Offset::Offset(*offset))
                .unwrap();
        }
        tpl
    };

    let producer: FutureProducer =
        config::transactional_producer(&user(&bootstrap), &unique("txn"))
            .unwrap()
            .create()
            .unwrap();
    // These calls block until the broker answers; a test may block a
    // runtime thread, the engine should use spawn_blocking.
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");

    let (committed, aborted) = consumed.split_at(5);
    for (batch, outcome) in [(committed, "commit"), (aborted, "abort")] {
        producer.begin_transaction().expect("begin_transaction");
        for r in batch {
            let value = format!("{outcome}:{}", r.value);
            producer
                .send(
                    FutureRecord::to(&output).key(&r.key).payload(&value),
                    TIMEOUT,
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce in the transaction");
        }
        // Offsets of everything consumed so far.
        let upto = &consumed[..committed.len() + if outcome == "abort" { batch.len() } else { 0 }];
        producer
            .send_offsets_to_transaction(&offsets(&positions(upto)), &group_metadata, TIMEOUT)
            .expect("send_offsets_to_transaction");
        if outcome == "commit" {
            producer
                .commit_transaction(TIMEOUT)
                .expect("commit_transaction");
        } else {
            producer
                .abort_transaction(TIMEOUT)
                .expect("abort_transaction");
        }
    }

    let expected: Vec<String> = {
        let mut v: Vec<String> = committed
            .iter()
            .map(|r| format!("commit:{}", r.value))
            .collect();
        v.sort();
        v
    };
    let read = read_to_end(&bootstrap, &output, 3, "read_committed");
    assert_eq!(
        values(&read),
        expected,
        "read_committed sees the committed transaction only"
    );
    let all = read_to_end(&bootstrap, &output, 3, "read_uncommitted");
    assert_eq!(
        all.len(),
        10,
        "read_uncommitted sees the aborted records too: {all:?}"
    );
    assert_eq!(
        all.iter().filter(|r| r.value.starts_with("abort:")).count(),
        5
    );
    // Keys are placed by murmur2 as Java producers place them: the same
    // key always in one partition.
    for r in &read {
        let again = all.iter().find(|a| a.key == r.key).unwrap();
        assert_eq!(again.partition, r.partition);
    }

    // The group's committed offsets are the committed transaction's.
    let mut ask = TopicPartitionList::new();
    for partition in 0..2 {
        ask.add_partition(&input, partition);
    }
    let stored = consumer
        .committed_offsets(ask, TIMEOUT)
        .expect("committed offsets");
    let want = positions(committed);
    for partition in 0..2 {
        let got = stored.find_partition(&input, partition).unwrap().offset();
        let expected = want
            .get(&partition)
            .map_or(Offset::Invalid, |o| Offset::Offset(*o));
        assert_eq!(got, expected, "committed offset of {input}/{partition}");
    }
}

/// A second producer with the same transactional.id (a restarted Eddy)
/// fences the first (a zombie): the zombie's open transaction is aborted
/// and it can no longer commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_producer_is_fenced() {
    let Some(bootstrap) = util::broker("kafka zombie_producer_is_fenced") else {
        return;
    };
    let topic = unique("fence");
    admin::create_topic(&bootstrap, &topic, 1, 1, TIMEOUT)
        .await
        .unwrap();
    let id = unique("txn");
    let producer = || -> FutureProducer {
        config::transactional_producer(&user(&bootstrap), &id)
            .unwrap()
            .create()
            .unwrap()
    };
    let zombie = producer();
    zombie.init_transactions(TIMEOUT).unwrap();
    zombie.begin_transaction().unwrap();
    zombie
        .send(FutureRecord::to(&topic).key("k").payload("zombie"), TIMEOUT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let successor = producer();
    successor
        .init_transactions(TIMEOUT)
        .expect("successor init_transactions");
    let err = zombie
        .commit_transaction(Duration::from_secs(10))
        .expect_err("the zombie's commit must fail");
    let code = match &err {
        KafkaError::Transaction(e) => e.code(),
        other => other
            .rdkafka_error_code()
            .unwrap_or(RDKafkaErrorCode::Unknown),
    };
    assert!(
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        ),
        "the zombie's commit failed, but not as fenced: {err} ({code:?})"
    );

    successor.begin_transaction().unwrap();
    successor
        .send(
            FutureRecord::to(&topic).key("k").payload("successor"),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    successor.commit_transaction(TIMEOUT).unwrap();
    let read = read_to_end(&bootstrap, &topic, 1, "read_committed");
    assert_eq!(values(&read), ["successor"]);
}
