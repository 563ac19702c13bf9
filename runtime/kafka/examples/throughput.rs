//! How fast librdkafka moves small keyed messages through the local test
//! broker with transactions: a probe for issue 15's benchmark, not the
//! benchmark itself.
//!
//! ```text
//! tests/kafka/broker.sh start
//! cargo run --release -p eddy-kafka --example throughput -- \
//!     127.0.0.1:PORT [messages=1000000] [partitions=8] [per_transaction=100000] \
//!     [compression=none]
//! ```
//!
//! Produces `messages` JSON events (100,000 keys) in transactions of
//! `per_transaction` messages to a new topic, then reads them back with a
//! `read_committed` consumer, and prints both rates.

use std::time::{Duration, Instant};

use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::{admin, config};

const TIMEOUT: Duration = Duration::from_secs(60);

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| a.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("EDDY_KAFKA_BOOTSTRAP").ok())
        .ok_or(
            "usage: throughput BOOTSTRAP [messages] [partitions] [per_transaction] [compression]",
        )?;
    let messages = arg(2, 1_000_000);
    let partitions = arg(3, 8) as i32;
    let per_transaction = arg(4, 100_000).max(1);
    let compression = std::env::args()
        .nth(5)
        .unwrap_or_else(|| "none".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!("throughput-{nanos}");
    admin::create_topic(&bootstrap, &topic, partitions, 1, TIMEOUT).await?;
    let user = vec![
        ("bootstrap.servers".to_string(), bootstrap.clone()),
        ("linger.ms".to_string(), "20".to_string()),
        (
            "queue.buffering.max.messages".to_string(),
            "1000000".to_string(),
        ),
        (
            "queue.buffering.max.kbytes".to_string(),
            "1048576".to_string(),
        ),
    ];

    let producer: BaseProducer =
        config::transactional_producer(&user, &format!("throughput-{nanos}"))?.create()?;
    producer.init_transactions(TIMEOUT)?;
    let t0 = Instant::now();
    let mut in_transaction = 0;
    producer.begin_transaction()?;
    for i in 0..messages {
        let key = format!("user-{}", i % 100_000);
        let value = format!("{{\"user\":\"{key}\",\"n\":{i}}}");
        let mut record = BaseRecord::to(&topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        in_transaction += 1;
        if in_transaction == per_transaction {
            producer.commit_transaction(TIMEOUT)?;
            producer.begin_transaction()?;
            in_transaction = 0;
        }
    }
    producer.commit_transaction(TIMEOUT)?;
    let produce = t0.elapsed();
    println!(
        "produced {messages} in transactions of {per_transaction} to {partitions} partitions \
         ({compression}): {:.2} s, {:.0} messages/s",
        produce.as_secs_f64(),
        messages as f64 / produce.as_secs_f64()
    );

    let consumer: BaseConsumer =
        config::read_committed_consumer(&user[..1], &format!("throughput-{nanos}"))?
            .set("enable.partition.eof", "true")
            .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let t0 = Instant::now();
    let (mut read, mut ended) = (0u64, 0);
    while ended < partitions {
        match consumer.poll(Duration::from_secs(10)) {
            None => return Err("no message within 10 s".into()),
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => read += 1,
        }
    }
    let consume = t0.elapsed();
    println!(
        "read {read} read_committed: {:.2} s, {:.0} messages/s",
        consume.as_secs_f64(),
        read as f64 / consume.as_secs_f64()
    );
    if read != messages {
        return Err(format!("read {read} messages, produced {messages}").into());
    }
    Ok(())
}
