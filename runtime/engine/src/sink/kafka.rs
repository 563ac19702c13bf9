//! A Kafka sink: the sink thread produces emitted events to a topic, keyed
//! by the emitted key, and at each checkpoint makes them visible.
//!
//! - Exactly once: one Kafka transaction per checkpoint carries the outputs
//!   (and dead letters, when they go to a topic) and, with a Kafka input,
//!   the input offsets of the checkpoint, committed in the consumer group
//!   (`send_offsets_to_transaction`). The coordinator commits the state
//!   directory only after the transaction is committed (see
//!   `docs/kafka.md`, "Exactly once", for why that order).
//! - At least once: no transaction; a checkpoint waits until every record
//!   is acknowledged by the broker.
//!
//! While a restart replays what Kafka already has ([`SinkMsg::Suppress`]),
//! outputs and dead letters bound for a topic are dropped.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use eddy_kafka::rdkafka::consumer::ConsumerGroupMetadata;
use eddy_kafka::rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use eddy_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::EddyContext;

use super::format::unframe;
use super::{Counted, OutputFile, SinkError, SinkLens, SinkMsg, SinkTarget};
use crate::config::{Delivery, KafkaOutput};
use crate::state::StateWrite;

/// How long a flush, commit or other transaction call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a record may wait for room in the producer's queue.
const QUEUE_WAIT: Duration = Duration::from_secs(120);
/// Attempts of a transaction call the broker says may be retried.
const RETRIES: u32 = 8;

/// The producer Eddy writes with.
pub type KafkaProducer = BaseProducer<EddyContext>;

/// Creates the producer of `out` (transactional with `transactional_id`
/// when exactly once) and, when transactional, initialises its
/// transactions: this fences an earlier process with the same id and
/// aborts its open transaction, so it must happen before the input's
/// committed offsets are read.
pub fn producer(out: &KafkaOutput, transactional_id: &str) -> anyhow::Result<KafkaProducer> {
    use anyhow::Context as _;
    let mut props = vec![("bootstrap.servers".to_string(), out.bootstrap.clone())];
    props.extend(out.properties.iter().cloned());
    let config = match out.delivery {
        Delivery::ExactlyOnce => {
            eddy_kafka::config::transactional_producer(&props, transactional_id)?
        }
        Delivery::AtLeastOnce => {
            let mut c = eddy_kafka::rdkafka::ClientConfig::new();
            c.set("partitioner", "murmur2_random");
            c.set("enable.idempotence", "true");
            for (k, v) in &props {
                c.set(k, v);
            }
            c
        }
    };
    let p: KafkaProducer = config
        .create_with_context(EddyContext::new("sink"))
        .context("creating the Kafka producer")?;
    if out.delivery == Delivery::ExactlyOnce {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match p.init_transactions(CALL_TIMEOUT) {
                Ok(()) => break,
                Err(e) if attempt < RETRIES && retriable(&e) => {
                    tracing::warn!(
                        "Kafka sink: initialising transactions (transactional.id `{transactional_id}`) failed: {e}; retrying in {wait:?}"
                    );
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "Kafka sink: initialising transactions (transactional.id `{transactional_id}`): {e}"
                    ))
                }
            }
        }
        p.begin_transaction()
            .context("Kafka sink: beginning a transaction")?;
    }
    Ok(p)
}

/// Checks that `topic` exists (the broker describes it with partitions):
/// a missing output topic is an error at start, not records that time out.
pub fn check_topic(p: &KafkaProducer, topic: &str, what: &str) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=RETRIES {
        match p
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
        {
            Ok(md) => {
                let t = md.topics().iter().find(|t| t.name() == topic);
                return match t {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                    Some(t) => Err(anyhow::anyhow!(
                        "Kafka {what} topic `{topic}`: {} (create it first, or check its name)",
                        t.error()
                            .map(|e| RDKafkaErrorCode::from(e).to_string())
                            .unwrap_or_else(|| "it has no partitions".into())
                    )),
                    None => Err(anyhow::anyhow!(
                        "Kafka {what} topic `{topic}`: the broker does not know it (create it first)"
                    )),
                };
            }
            Err(e) => {
                tracing::warn!(
                    "Kafka sink: describing topic `{topic}` failed (attempt {attempt} of {RETRIES}): {e}; retrying in {wait:?}"
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    Err(anyhow::anyhow!(
        "Kafka {what} topic `{topic}`: the broker could not be reached"
    ))
}

fn retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_retriable(),
        e => matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut)
        ),
    }
}

/// What the Kafka sink thread owns.
pub struct KafkaSink {
    /// The producer (its transactions initialised when exactly once).
    pub producer: KafkaProducer,
    /// The output topic.
    pub topic: String,
    /// Dead letters go to this topic; otherwise to `dead_file`.
    pub dead_topic: Option<String>,
    /// The dead-letter file, when there is no dead-letter topic.
    pub dead_file: Option<OutputFile>,
    /// Exactly once: transactions.
    pub exactly_once: bool,
    /// The producer's transactional id, for messages.
    pub transactional_id: String,
    /// With a Kafka input: its consumer group (the offsets go into each
    /// transaction) and its partitions, in the coordinator's order.
    pub input: Option<KafkaInputRef>,
    /// Group mode: where each operator's state changes go.
    pub changelog: Option<Changelog>,
}

/// A Kafka input as the sink needs it: the consumer group's metadata (asked
/// for at each transaction: a rebalance changes it) and its partitions as
/// `(topic, partition)`, in the coordinator's order.
pub type KafkaInputRef = (GroupMetadata, Arc<[(String, i32)]>);

/// The consumer group's current metadata (its generation and member id),
/// which a transaction's offsets are committed under: a member a rebalance
/// left behind is refused.
pub type GroupMetadata = Arc<dyn Fn() -> Option<ConsumerGroupMetadata> + Send + Sync>;

/// Group mode's changelog topics: a key's state changes go to its
/// operator's topic, in the partition of the key (the input's partition).
pub struct Changelog {
    /// Per operator, its changelog topic.
    pub topics: std::collections::HashMap<Arc<str>, String>,
    /// How the input places keys.
    pub partitioner: eddy_kafka::partition::Partitioner,
    /// The input's partitions (and each changelog topic's).
    pub partitions: i32,
}

/// Runs the Kafka sink until its channel closes.
pub fn run_kafka_sink(mut s: KafkaSink, rx: Receiver<SinkMsg>) -> Result<(), SinkError> {
    let out_target = SinkTarget::Kafka(s.topic.clone());
    let mut dead = match s.dead_file.take() {
        Some(f) => {
            let target = SinkTarget::DeadLetter(f.path.clone());
            Some(
                Counted::new(f, target.clone(), 8 << 10)
                    .map_err(|error| SinkError { target, error })?,
            )
        }
        None => None,
    };
    let fail = |target: &SinkTarget, msg: String| SinkError {
        target: target.clone(),
        error: io::Error::other(msg),
    };
    let mut suppress = false;
    for msg in rx.iter() {
        match msg {
            SinkMsg::Suppress(on) => suppress = on,
            SinkMsg::Out(b) => {
                if suppress {
                    continue;
                }
                for (key, value) in unframe(&b) {
                    s.produce(&s.topic, Some(key), value)
                        .map_err(|m| fail(&out_target, m))?;
                }
                s.producer.poll(Duration::ZERO);
            }
            SinkMsg::Dead(b) => match (&mut dead, &s.dead_topic) {
                (Some(file), _) => file.write(&b)?,
                (None, Some(topic)) => {
                    if suppress {
                        continue;
                    }
                    let target = SinkTarget::Kafka(topic.clone());
                    for line in b.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                        s.produce(topic, None, line).map_err(|m| fail(&target, m))?;
                    }
                }
                (None, None) => {}
            },
            SinkMsg::Flush {
                offsets,
                changelog,
                reply,
            } => {
                let r = (|| {
                    if let Some(d) = &mut dead {
                        d.flush()?;
                    }
                    if let Some(writes) = changelog {
                        s.changelog(&writes).map_err(|m| fail(&out_target, m))?;
                    }
                    if !suppress {
                        s.checkpoint(&offsets).map_err(|m| fail(&out_target, m))?;
                    }
                    Ok(SinkLens {
                        out: None,
                        dead: dead.as_ref().and_then(|d| d.len),
                    })
                })();
                let failed = r.is_err();
                let _ = reply.send(r);
                if failed {
                    return Err(fail(&out_target, "a checkpoint failed".into()));
                }
            }
        }
    }
    if let Some(d) = &mut dead {
        d.flush()?;
    }
    if !s.exactly_once {
        let _ = s.producer.flush(CALL_TIMEOUT);
    }
    Ok(())
}

impl KafkaSink {
    /// Produces the checkpoint's state changes to the changelog topics.
    fn changelog(&self, writes: &[StateWrite]) -> Result<(), String> {
        let Some(c) = &self.changelog else {
            return Ok(());
        };
        for w in writes {
            let topic = c
                .topics
                .get(&w.operator)
                .ok_or_else(|| format!("operator `{}` has no changelog topic", w.operator))?;
            let partition = c.partitioner.partition(w.key.as_bytes(), c.partitions);
            self.send(
                topic,
                Some(w.key.as_bytes()),
                w.record.as_deref(),
                Some(partition),
            )?;
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Produces one record, waiting (bounded) for room in the queue.
    fn produce(&self, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<(), String> {
        self.send(topic, key, Some(value), None)
    }

    /// Produces one record (a `None` value: a tombstone) to `partition`
    /// (`None`: the partitioner's), waiting (bounded) for room in the
    /// queue.
    fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        partition: Option<i32>,
    ) -> Result<(), String> {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        let start = Instant::now();
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if start.elapsed() > QUEUE_WAIT {
                        return Err(format!(
                            "the producer's queue stayed full for {QUEUE_WAIT:?}: is the broker reachable?"
                        ));
                    }
                    rec = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }

    /// Makes what was produced since the last checkpoint visible: commits
    /// the transaction with the input `offsets` (exactly once), or waits
    /// for every acknowledgement (at least once).
    fn checkpoint(&mut self, offsets: &[Option<i64>]) -> Result<(), String> {
        let flushed = self.producer.flush(CALL_TIMEOUT);
        if !self.exactly_once {
            flushed.map_err(|e| format!("waiting for the broker's acknowledgements: {e}"))?;
            let (n, first) = self.producer.context().delivery_failures();
            if n > 0 {
                return Err(format!(
                    "{n} records could not be delivered (first: {})",
                    first.unwrap_or_default()
                ));
            }
            return Ok(());
        }
        if let Some((group, parts)) = &self.input {
            let group = group().ok_or_else(|| {
                "the consumer has no group metadata (it left the group)".to_string()
            })?;
            let group = &group;
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in parts.iter().zip(offsets) {
                if let Some(next) = next {
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                        .map_err(|e| e.to_string())?;
                }
            }
            if tpl.count() > 0 {
                self.txn("sending the input offsets to the transaction", |p| {
                    p.send_offsets_to_transaction(&tpl, group, CALL_TIMEOUT)
                })?;
            }
        }
        self.txn("committing the transaction", |p| {
            p.commit_transaction(CALL_TIMEOUT)
        })?;
        self.producer
            .begin_transaction()
            .map_err(|e| format!("beginning a transaction: {e}"))
    }

    /// A transaction call: retried while the broker says it may be, the
    /// transaction aborted when it must be.
    fn txn(
        &self,
        what: &str,
        mut f: impl FnMut(&KafkaProducer) -> KafkaResult<()>,
    ) -> Result<(), String> {
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=RETRIES {
            let e = match f(&self.producer) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let KafkaError::Transaction(t) = &e {
                if t.is_fatal() {
                    return Err(format!(
                        "{what}: {e}: this producer was fenced or failed for good (is another process running with transactional.id `{}`?); the state directory keeps the last checkpoint, and a restart resumes from it",
                        self.transactional_id
                    ));
                }
                if t.txn_requires_abort() {
                    let _ = self.producer.abort_transaction(CALL_TIMEOUT);
                    return Err(format!(
                        "{what}: {e}: the transaction was aborted, so read_committed readers never see its outputs; a restart resumes from the last checkpoint and writes them again"
                    ));
                }
            }
            if attempt < RETRIES && retriable(&e) {
                tracing::warn!("Kafka sink: {what} failed: {e}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
            return Err(format!("{what}: {e}"));
        }
        Err(format!("{what}: gave up after {RETRIES} attempts"))
    }
}
