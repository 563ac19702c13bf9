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
use super::Changes;
use super::{Counted, OutputFile, SinkError, SinkLens, SinkMsg, SinkTarget};
use crate::config::{Delivery, KafkaOutput};
use crate::state::{CHANGELOG_STATE, CHANGELOG_TIMER};

/// How long a flush, commit or other transaction call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a checkpoint's transaction, aborted by the broker, is made
/// again before the run stops.
const ABORTED_RETRY_FOR: Duration = Duration::from_secs(120);
/// How long a group-mode checkpoint's transaction is made again while the
/// group rebalances under it.
const REBALANCE_RETRY_FOR: Duration = Duration::from_secs(20);
/// At most this many bytes of a transaction's records are kept to make
/// it again; a transaction that holds more is not made again (the run
/// stops where it would have without the retry, and a restart resumes).
const HELD_LIMIT: usize = 256 << 20;
/// A slice of a long wait, between checks that the process still belongs
/// to its group.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// What a group-mode sink says when the group has dropped its process.
const FENCED: &str = "this process was dropped from its consumer group (paused or cut off for longer than session.timeout.ms), so it is fenced: what it did since its last checkpoint is aborted and another process owns its partitions now";
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
    /// Set when a transaction was aborted because the consumer group
    /// rebalanced under it (its generation moved on): group mode tries
    /// the transaction again with the group's new metadata.
    pub rebalanced: bool,
    /// Set when the broker made the open transaction fail (say, its
    /// records timed out while a broker was away) and it was aborted: it
    /// is tried again with the same records.
    pub aborted: bool,
    /// Exactly once: the broker made the open transaction fail (its
    /// records could not be delivered, say while a broker was away), so
    /// it takes no more records: what comes until the checkpoint is only
    /// held, and the checkpoint aborts it and makes it again.
    pub broken: std::cell::Cell<bool>,
    /// Group mode: the member id of the last commit.
    pub committed_as: Option<String>,
}

/// What an exactly-once sink produced since its last commit, kept to
/// produce again if the transaction must be retried: up to
/// [`HELD_LIMIT`] bytes.
#[derive(Default)]
struct HeldRecords {
    records: Vec<Held>,
    bytes: usize,
    /// More than [`HELD_LIMIT`] bytes came: nothing is kept.
    over: bool,
}

impl HeldRecords {
    fn push(&mut self, h: Held) {
        if self.over {
            return;
        }
        self.bytes += match &h {
            Held::Out(b) | Held::Dead(b) | Held::Repartition(b) => b.len(),
        };
        if self.bytes > HELD_LIMIT {
            self.over = true;
            self.records = Vec::new();
        } else {
            self.records.push(h);
        }
    }

    /// Every record, unless there were too many to keep.
    fn all(&self) -> Option<&[Held]> {
        (!self.over).then_some(&self.records[..])
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
        self.over = false;
    }
}

/// One batch of records produced in a transaction.
enum Held {
    Out(Vec<u8>),
    Dead(Vec<u8>),
    Repartition(Vec<u8>),
}

/// A Kafka input as the sink needs it: the consumer group's metadata (asked
/// for at each transaction: a rebalance changes it) and its partitions as
/// `(topic, partition)`, in the coordinator's order.
pub type KafkaInputRef = (GroupMetadata, Arc<[(String, i32)]>);

/// The consumer group's current metadata, which a transaction's offsets
/// are committed under (a member a rebalance left behind is refused).
pub type GroupMetadata = Arc<dyn Fn() -> Option<Member> + Send + Sync>;

/// This process as a member of its consumer group, now.
pub struct Member {
    /// The group's metadata (generation, member id).
    pub metadata: ConsumerGroupMetadata,
    /// The member id.
    pub id: String,
    /// The group took this member's partitions away (its session
    /// expired): it must not commit again.
    pub lost: bool,
}

/// Group mode's changelog topics: a key's state changes go to its
/// operator's topic, in the partition of the key (the input's partition).
pub struct Changelog {
    /// Per operator, its changelog topic.
    pub topics: std::collections::HashMap<Arc<str>, String>,
    /// Per operator of the chain, its repartition topic (`None` for the
    /// first, which reads the input).
    pub repartition: Vec<Option<String>>,
    /// How the input places keys.
    pub partitioner: eddy_kafka::partition::Partitioner,
    /// The input's partitions (and each changelog topic's).
    pub partitions: i32,
}

/// Runs the Kafka sink until its channel closes. On the way out (after a
/// failure too) an exactly-once sink aborts its open transaction, so that
/// what it holds stops holding back read_committed readers at once rather
/// than at the transaction's timeout.
pub fn run_kafka_sink(mut s: KafkaSink, rx: Receiver<SinkMsg>) -> Result<(), SinkError> {
    let r = sink_loop(&mut s, rx);
    if s.exactly_once {
        let _ = s.producer.abort_transaction(Duration::from_secs(10));
    }
    r
}

fn sink_loop(s: &mut KafkaSink, rx: Receiver<SinkMsg>) -> Result<(), SinkError> {
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
    // Exactly once: this transaction's records, in case it must be made
    // again.
    let keep = s.exactly_once;
    let mut held = HeldRecords::default();
    for msg in rx.iter() {
        match msg {
            SinkMsg::Suppress(on) => suppress = on,
            SinkMsg::Out(b) => {
                if suppress {
                    continue;
                }
                s.produce_out(&b).map_err(|m| fail(&out_target, m))?;
                s.producer.poll(Duration::ZERO);
                if keep {
                    held.push(Held::Out(b));
                }
            }
            SinkMsg::Repartition(b) => {
                s.produce_repartition(&b)
                    .map_err(|m| fail(&out_target, m))?;
                s.producer.poll(Duration::ZERO);
                if keep {
                    held.push(Held::Repartition(b));
                }
            }
            SinkMsg::Dead(b) => match (&mut dead, &s.dead_topic) {
                (Some(file), _) => file.write(&b)?,
                (None, Some(topic)) => {
                    if suppress {
                        continue;
                    }
                    let target = SinkTarget::Kafka(topic.clone());
                    s.produce_dead(&b).map_err(|m| fail(&target, m))?;
                    if keep {
                        held.push(Held::Dead(b));
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
                    // A replay outside group mode commits nothing to
                    // Kafka (Kafka has it all).
                    if keep && (s.changelog.is_some() || !suppress) {
                        let none = Changes::default();
                        let changes = changelog.as_deref().unwrap_or(&none);
                        s.txn_checkpoint(held.all(), changes, &offsets)
                            .map_err(|m| fail(&out_target, m))?;
                        held.clear();
                    } else if !suppress {
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
    /// Produces framed outputs `b` to the output topic.
    fn produce_out(&self, b: &[u8]) -> Result<(), String> {
        for (key, value) in unframe(b) {
            self.produce(&self.topic, Some(key), value)?;
        }
        Ok(())
    }

    /// Produces events for later operators (framed by
    /// [`super::format::frame_repartition`]) to their repartition topics,
    /// each in its key's partition, with its event time as the record's
    /// timestamp.
    fn produce_repartition(&self, b: &[u8]) -> Result<(), String> {
        let Some(c) = &self.changelog else {
            return Err("events for a repartition topic without group mode".into());
        };
        for (stage, time, key, value) in super::format::unframe_repartition(b) {
            let topic = c
                .repartition
                .get(stage as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| format!("operator {stage} has no repartition topic"))?;
            let partition = c.partitioner.partition(key, c.partitions);
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .key(key)
                .payload(value)
                .partition(partition);
            if let Some(t) = time {
                rec = rec.timestamp(t);
            }
            self.send_record(rec)?;
        }
        Ok(())
    }

    /// Produces dead-letter lines `b` to the dead-letter topic.
    fn produce_dead(&self, b: &[u8]) -> Result<(), String> {
        if let Some(topic) = &self.dead_topic {
            for line in b.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                self.produce(topic, None, line)?;
            }
        }
        Ok(())
    }

    /// An exactly-once checkpoint: in group mode the state changes to the
    /// changelog topics, then the commit with the input offsets (under
    /// the group's current metadata). The transaction is made again, with
    /// what it held produced anew, when
    /// - the broker made it fail and it was aborted (its records timed
    ///   out while a broker was away, say), for up to
    ///   [`ABORTED_RETRY_FOR`]: a restart would do the same, from the same
    ///   checkpoint;
    /// - group mode: the group rebalanced under it (the broker refused its
    ///   offsets for an old generation), for up to
    ///   [`REBALANCE_RETRY_FOR`]: a member keeps its partitions until it
    ///   gives them up (cooperative protocol), so its offsets are
    ///   accepted under the new generation.
    ///
    /// A member the group dropped is never let commit again: it fails
    /// with [`FENCED`].
    fn txn_checkpoint(
        &mut self,
        held: Option<&[Held]>,
        changes: &Changes,
        offsets: &[Option<i64>],
    ) -> Result<(), String> {
        let mut wait = Duration::from_millis(100);
        let begun = Instant::now();
        for attempt in 1.. {
            if attempt > 1 {
                // (Made again only when its records were kept.)
                for h in held.unwrap_or_default() {
                    match h {
                        Held::Out(b) => self.produce_out(b)?,
                        Held::Dead(b) => self.produce_dead(b)?,
                        Held::Repartition(b) => self.produce_repartition(b)?,
                    }
                }
            }
            self.rebalanced = false;
            self.aborted = false;
            let r = match self.broken.get() {
                true => self.abort_broken(),
                // (A transaction that failed after this point cannot
                // commit: librdkafka refuses it, and it is aborted.)
                false => self
                    .changelog(changes)
                    .and_then(|()| match self.broken.get() {
                        true => self.abort_broken(),
                        false => self.checkpoint(offsets),
                    }),
            };
            let e = match r {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let why = match (self.rebalanced, self.aborted) {
                (true, _) if begun.elapsed() < REBALANCE_RETRY_FOR => "the group rebalanced",
                (false, true) if begun.elapsed() < ABORTED_RETRY_FOR => {
                    "the broker aborted its transaction"
                }
                _ => return Err(e),
            };
            if held.is_none() {
                return Err(format!(
                    "{e} (its records, over {} MiB, were too many to keep for making it again)",
                    HELD_LIMIT >> 20
                ));
            }
            if self.changelog.is_some() {
                // Only a member that kept its partitions (the same
                // member, not one the group dropped and let in again)
                // may commit what it did with them.
                let now = self.input.as_ref().and_then(|(m, _)| m());
                let same = match (&now, &self.committed_as) {
                    (Some(m), Some(was)) => !m.lost && m.id == *was,
                    (Some(m), None) => !m.lost,
                    (None, _) => false,
                };
                if !same {
                    return Err(format!("{e}: {FENCED}"));
                }
            }
            tracing::warn!(
                "Kafka sink: {why} during a checkpoint ({e}); making the transaction again with the same records (attempt {})",
                attempt + 1
            );
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(2));
            self.producer
                .begin_transaction()
                .map_err(|e| format!("beginning a transaction: {e}"))?;
        }
        unreachable!("the loop returns")
    }

    /// Produces the checkpoint's changes to the changelog topics: a key's
    /// state under `s` + the key, a pending timer (or TTL deadline) under
    /// `t` + the key + NUL + its name with its time (i64, little-endian);
    /// `None` (deleted, fired, cleared) as a tombstone. Each in the
    /// partition of its key.
    fn changelog(&self, changes: &Changes) -> Result<(), String> {
        let Some(c) = &self.changelog else {
            return Ok(());
        };
        let topic = |op: &Arc<str>| {
            c.topics
                .get(op)
                .ok_or_else(|| format!("operator `{op}` has no changelog topic"))
        };
        let mut k = Vec::new();
        for w in &changes.writes {
            let partition = c.partitioner.partition(w.key.as_bytes(), c.partitions);
            k.clear();
            k.push(CHANGELOG_STATE);
            k.extend_from_slice(w.key.as_bytes());
            self.send(
                topic(&w.operator)?,
                Some(&k),
                w.record.as_deref(),
                Some(partition),
            )?;
        }
        for t in &changes.timers {
            let partition = c.partitioner.partition(t.key.as_bytes(), c.partitions);
            k.clear();
            k.push(CHANGELOG_TIMER);
            k.extend_from_slice(t.key.as_bytes());
            k.push(0);
            k.extend_from_slice(t.name.as_bytes());
            let at = t.at.map(i64::to_le_bytes);
            self.send(
                topic(&t.operator)?,
                Some(&k),
                at.as_ref().map(|a| &a[..]),
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
        if self.broken.get() {
            return Ok(());
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        self.send_record(rec)
    }

    /// Produces `rec`, waiting (bounded) for room in the queue.
    fn send_record(&self, mut rec: BaseRecord<'_, [u8], [u8]>) -> Result<(), String> {
        let start = Instant::now();
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.check_fenced()?;
                    if start.elapsed() > QUEUE_WAIT {
                        return Err(format!(
                            "the producer's queue stayed full for {QUEUE_WAIT:?}: is the broker reachable?"
                        ));
                    }
                    rec = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::State), _))
                    if self.exactly_once =>
                {
                    tracing::warn!(
                        "Kafka sink: the broker made the open transaction fail (its records could not be delivered in time); what comes until the checkpoint is held, and the checkpoint makes the transaction again"
                    );
                    self.broken.set(true);
                    return Ok(());
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }

    /// Aborts a transaction the broker made fail ([`KafkaSink::broken`]):
    /// an error to make it again with, or the reason it cannot be.
    fn abort_broken(&mut self) -> Result<(), String> {
        self.broken.set(false);
        match self.producer.abort_transaction(CALL_TIMEOUT) {
            Ok(()) => {
                self.aborted = true;
                Err("the open transaction failed (its records could not be delivered) and was aborted".into())
            }
            Err(e) => Err(format!(
                "aborting the transaction that failed: {e}: a restart resumes from the last checkpoint and writes its outputs again"
            )),
        }
    }

    /// Group mode: an error when the group has taken this process's
    /// partitions away (its session expired while it was paused or cut
    /// off). Checked before each call that can wait long, so that a zombie
    /// stops within a second or so of learning it is one instead of after
    /// its calls' timeouts and retries.
    fn check_fenced(&self) -> Result<(), String> {
        if self.changelog.is_none() {
            return Ok(());
        }
        match self.input.as_ref().and_then(|(m, _)| m()) {
            Some(m) if !m.lost => Ok(()),
            _ => Err(FENCED.into()),
        }
    }

    /// Waits for every record produced so far to be acknowledged; in group
    /// mode a second at a time, stopping early when the process is fenced.
    fn flush(&self) -> Result<(), String> {
        if self.changelog.is_none() {
            return self.producer.flush(CALL_TIMEOUT).map_err(|e| e.to_string());
        }
        let start = Instant::now();
        loop {
            match self.producer.flush(SHORT_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= CALL_TIMEOUT => return Err(e.to_string()),
                Err(_) => self.check_fenced()?,
            }
        }
    }

    /// Makes what was produced since the last checkpoint visible: commits
    /// the transaction with the input `offsets` (exactly once), or waits
    /// for every acknowledgement (at least once).
    fn checkpoint(&mut self, offsets: &[Option<i64>]) -> Result<(), String> {
        self.check_fenced()?;
        let flushed = self.flush();
        self.check_fenced()?;
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
        let mut member_id = None;
        if let Some((group, parts)) = &self.input {
            let member = group().ok_or_else(|| {
                "the consumer has no group metadata (it left the group)".to_string()
            })?;
            if member.lost && self.changelog.is_some() {
                let _ = self.producer.abort_transaction(CALL_TIMEOUT);
                return Err(FENCED.into());
            }
            member_id = Some(member.id);
            let group = &member.metadata;
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
        if member_id.is_some() {
            self.committed_as = member_id;
        }
        self.producer
            .begin_transaction()
            .map_err(|e| format!("beginning a transaction: {e}"))
    }

    /// A transaction call: retried while the broker says it may be, the
    /// transaction aborted when it must be.
    fn txn(
        &mut self,
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
                    if let Err(a) = self.producer.abort_transaction(CALL_TIMEOUT) {
                        return Err(format!(
                            "{what}: {e}; aborting the transaction failed too: {a}: a restart resumes from the last checkpoint and writes its outputs again"
                        ));
                    }
                    if self.changelog.is_some()
                        && matches!(
                            t.code(),
                            RDKafkaErrorCode::IllegalGeneration
                                | RDKafkaErrorCode::UnknownMemberId
                                | RDKafkaErrorCode::RebalanceInProgress
                        )
                    {
                        self.rebalanced = true;
                        return Err(format!("{what}: {e}"));
                    }
                    self.aborted = true;
                    return Err(format!(
                        "{what}: {e}: the transaction was aborted, so read_committed readers never see its outputs; a restart resumes from the last checkpoint and writes them again"
                    ));
                }
            }
            if attempt < RETRIES && retriable(&e) {
                tracing::warn!("Kafka sink: {what} failed: {e}; retrying in {wait:?}");
                if let Err(fenced) = self.check_fenced() {
                    let _ = self.producer.abort_transaction(SHORT_TIMEOUT);
                    return Err(format!("{what}: {e}: {fenced}"));
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
            return Err(format!("{what}: {e}"));
        }
        Err(format!("{what}: gave up after {RETRIES} attempts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_records_are_kept_up_to_the_limit_then_none_until_cleared() {
        let mut h = HeldRecords::default();
        h.push(Held::Out(vec![1; 10]));
        h.push(Held::Dead(vec![2; 20]));
        assert_eq!(h.all().map(<[Held]>::len), Some(2));
        // Past the limit: nothing is kept (not a part of the records).
        h.push(Held::Repartition(vec![0; HELD_LIMIT]));
        assert!(h.all().is_none());
        h.push(Held::Out(vec![3; 1]));
        assert!(
            h.all().is_none(),
            "still over until the checkpoint clears it"
        );
        h.clear();
        assert_eq!(h.all().map(<[Held]>::len), Some(0));
        h.push(Held::Out(vec![4; 5]));
        match h.all() {
            Some([Held::Out(b)]) => assert_eq!(b, &vec![4; 5]),
            _ => panic!("one record kept after the clear"),
        }
    }
}
