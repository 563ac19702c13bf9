//! `eddy kafka`: small tools around a pipeline's topics: create a topic,
//! produce JSON Lines to it, read a topic as a `read_committed` consumer
//! sees it.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use eddy_kafka::rdkafka::config::ClientConfig;
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::EddyContext;

/// Create, fill and read Kafka topics (for demos, tests and debugging).
#[derive(Args)]
pub struct KafkaArgs {
    /// The brokers, HOST:PORT[,HOST:PORT] [default: $EDDY_KAFKA_BOOTSTRAP].
    #[arg(long, global = true)]
    bootstrap: Option<String>,
    #[command(subcommand)]
    command: KafkaCommand,
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Create a topic (an existing one is left as it is).
    CreateTopic {
        /// The topic.
        topic: String,
        /// Partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Produce the JSON lines of stdin to a topic, keyed by a field (a line
    /// without it is produced without a key, with a warning).
    Produce {
        /// The topic.
        topic: String,
        /// The field of each line that is the message key (a string or
        /// number); the whole line is the value.
        #[arg(long, default_value = "key")]
        key: String,
    },
    /// Print a topic as a read_committed consumer sees it, one JSON line per
    /// record: {"partition","offset","key","value"}.
    Consume {
        /// The topic.
        topic: String,
        /// Stop at the end of every partition instead of waiting for more.
        #[arg(long)]
        until_end: bool,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `eddy kafka`.
pub fn run(a: KafkaArgs) -> Result<()> {
    let bootstrap = match a.bootstrap {
        Some(b) => b,
        None => std::env::var(eddy_kafka::testing::BOOTSTRAP_ENV).map_err(|_| {
            anyhow!(
                "no broker: give --bootstrap HOST:PORT (or set {})",
                eddy_kafka::testing::BOOTSTRAP_ENV
            )
        })?,
    };
    match a.command {
        KafkaCommand::CreateTopic { topic, partitions } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match rt.block_on(eddy_kafka::admin::create_topic(
                &bootstrap, &topic, partitions, 1, TIMEOUT,
            )) {
                Ok(()) => eprintln!("eddy: created topic `{topic}` ({partitions} partitions)"),
                Err(eddy_kafka::Error::CreateTopic {
                    code: eddy_kafka::rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    ..
                }) => {
                    eprintln!("eddy: topic `{topic}` exists")
                }
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        KafkaCommand::Produce { topic, key } => produce(&bootstrap, &topic, &key),
        KafkaCommand::Consume { topic, until_end } => consume(&bootstrap, &topic, until_end),
    }
}

fn produce(bootstrap: &str, topic: &str, field: &str) -> Result<()> {
    let p: BaseProducer<EddyContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create_with_context(EddyContext::new("producer"))
        .context("creating the Kafka producer")?;
    let mut n = 0u64;
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let key = match eddy_runtime::decode(line.as_bytes(), field, None) {
            Ok(d) => Some(d.key.into_owned()),
            Err(e) => {
                eprintln!("eddy: stdin line {}: {e}: produced without a key", i + 1);
                None
            }
        };
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(line.as_bytes());
        if let Some(k) = &key {
            rec = rec.key(k.as_bytes());
        }
        let start = Instant::now();
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), r)) if start.elapsed() < TIMEOUT => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("producing stdin line {} to `{topic}`: {e}", i + 1),
            }
        }
        n += 1;
    }
    p.flush(TIMEOUT)
        .with_context(|| format!("waiting for the broker to acknowledge `{topic}`"))?;
    eprintln!("eddy: produced {n} records to `{topic}`");
    Ok(())
}

fn consume(bootstrap: &str, topic: &str, until_end: bool) -> Result<()> {
    let c: BaseConsumer<EddyContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("eddy-consume-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(EddyContext::new("consumer"))
        .context("creating the Kafka consumer")?;
    let md = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("describing topic `{topic}`"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        bail!("Kafka topic `{topic}` does not exist (or has no partitions)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut at_end = std::collections::BTreeSet::new();
    let out = std::io::stdout();
    let mut out = out.lock();
    while !(until_end && at_end.len() == parts.len()) {
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => eprintln!("eddy: Kafka: {e} (retrying)"),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let text = |b: Option<&[u8]>| -> serde_json::Value {
                    let b = b.unwrap_or_default();
                    match serde_json::from_slice::<serde_json::Value>(b) {
                        Ok(v) => v,
                        Err(_) => String::from_utf8_lossy(b).into_owned().into(),
                    }
                };
                let line = serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": String::from_utf8_lossy(m.key().unwrap_or_default()),
                    "value": text(m.payload()),
                });
                if writeln!(out, "{line}").is_err() {
                    return Ok(()); // stdout closed (| head)
                }
            }
        }
    }
    Ok(())
}
