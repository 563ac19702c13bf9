//! A Kafka source: the reader thread (`eddy-kafka-reader`) consumes every
//! partition of the input topics from where the run resumes, and hands the
//! coordinator records in batches.
//!
//! Where each partition starts, and how far is a replay, is decided before
//! the thread starts ([`KafkaPlan`]): the state directory's checkpointed
//! offsets say where the state is; the consumer group's committed offsets
//! (committed in the sink's transactions) say which outputs Kafka already
//! has. Records between the two are replayed with outputs suppressed
//! (see `docs/kafka.md`, "Exactly once"). During the replay every partition
//! stops at its replay end (it is paused, and what librdkafka had already
//! fetched past it is held), so that nothing after the replay is handled
//! while outputs are suppressed; then [`KafkaMsg::ReplayDone`] is sent and
//! every partition resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::EddyContext;

use crate::config::KafkaInput;
use crate::state::Store;

/// Records per batch handed to the coordinator.
const BATCH: usize = 1024;
/// Batches the reader may hold ready before it waits for the coordinator.
const AHEAD: usize = 8;
/// How long a call to the broker may take at start before it is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer Eddy reads with.
pub type KafkaConsumer = BaseConsumer<EddyContext>;

/// The consumer, shared by the reader and the sink (which asks it for the
/// group's metadata at each transaction).
pub type SharedConsumer = Arc<KafkaConsumer>;

/// One partition of an input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: i32,
    /// The operator of the chain its records go to: 0 for the input's
    /// topics; in Kafka group mode, a later operator's for its
    /// repartition topic.
    pub stage: u16,
}

impl Part {
    /// The name of its checkpointed offset in the state directory.
    pub fn meta_name(&self) -> String {
        format!("kafka-offset:{}:{}", self.topic, self.partition)
    }
}

/// A record read: which partition (an index into [`KafkaPlan::parts`]),
/// its offset, key, value and timestamp.
#[derive(Debug)]
pub struct Record {
    /// Index of its partition in [`KafkaPlan::parts`].
    pub part: u16,
    /// Its offset.
    pub offset: i64,
    /// The message key, if any.
    pub key: Option<Vec<u8>>,
    /// The message value (empty for a null value).
    pub value: Vec<u8>,
    /// The message timestamp (ms since the epoch), if any.
    pub timestamp: Option<i64>,
}

/// What the reader hands the coordinator.
#[derive(Debug)]
pub enum KafkaMsg {
    /// Records, in each partition's order.
    Records(Vec<Record>),
    /// Every partition reached its replay end: everything before this was
    /// a replay (outputs suppressed), everything after is new.
    ReplayDone,
    /// `until_end`: every partition was read to its end.
    End,
    /// Group mode: these partitions (indexes into the parts) are taken
    /// from this process. Handle every record sent before, checkpoint,
    /// forget their keys, then reply: the reader then gives them up.
    Revoke {
        /// The partitions.
        parts: Vec<u16>,
        /// Told when they may go.
        reply: Sender<()>,
    },
    /// Group mode: these partitions now belong to this process, their
    /// state restored into the state directory as of the offset given
    /// (the group's committed one; `None`: none, read from the
    /// beginning). Their records follow.
    Assigned {
        /// `(partition index, start)`.
        parts: Vec<(u16, Option<i64>)>,
        /// Keys restored from the changelog topics.
        restored: u64,
    },
    /// Group mode: these partitions were lost (this process was cut off
    /// from the group for longer than its session timeout): another
    /// process owns them now.
    Lost(Vec<u16>),
}

/// Where each partition starts, and how far is a replay.
#[derive(Debug, Clone)]
pub struct KafkaPlan {
    /// Every partition of the input topics, in topic then partition order.
    pub parts: Arc<[Part]>,
    /// Per partition, the next offset to read (`None`: the beginning).
    pub start: Vec<Option<i64>>,
    /// Per partition, the offset the replay ends at (exclusive): Kafka
    /// already has the outputs of what comes before it. `None`: nothing to
    /// replay.
    pub replay_until: Vec<Option<i64>>,
}

impl KafkaPlan {
    /// Whether the run begins with a replay.
    pub fn replays(&self) -> bool {
        self.replay_until.iter().any(Option::is_some)
    }
}

/// Creates the consumer of `input` (a `read_committed` consumer in its
/// group, with the user's properties).
pub fn consumer(input: &KafkaInput) -> Result<KafkaConsumer> {
    let mut props = vec![("bootstrap.servers".to_string(), input.bootstrap.clone())];
    props.extend(input.properties.iter().cloned());
    let mut config = eddy_kafka::config::read_committed_consumer(&props, &input.group)?;
    if input.until_end {
        config.set("enable.partition.eof", "true");
    }
    // librdkafka's default (1000 ms) pauses a partition's fetching for a
    // second whenever its prefetch queue is full (queued.min.messages): the
    // consumer then idles most of the time. Measured on this machine: 190k
    // records/s with the default, 900k with 10 ms (docs/kafka.md).
    if config.get("fetch.queue.backoff.ms").is_none() {
        config.set("fetch.queue.backoff.ms", "10");
    }
    // Partition ends for `eddy status` (the lag), from librdkafka's own
    // fetch responses: no extra requests.
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", "1000");
    }
    // A position the broker no longer has (retention deleted it while the
    // pipeline lagged) resumes at the oldest record still there, not at
    // the end: only what retention took is skipped.
    if config.get("auto.offset.reset").is_none() {
        config.set("auto.offset.reset", "earliest");
    }
    config
        .create_with_context(EddyContext::new("source"))
        .context("creating the Kafka consumer")
}

/// Calls `f` until it succeeds, logging each failure and waiting longer
/// each time (up to 5 s), for as long as `stop` is not raised and at most
/// `tries` times.
pub fn retry<T>(
    what: &str,
    tries: u32,
    stop: &dyn Fn() -> bool,
    mut f: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T> {
    let mut wait = Duration::from_millis(200);
    let mut last = None;
    for attempt in 1..=tries {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!("Kafka: {what} failed (attempt {attempt} of {tries}): {e}; retrying in {wait:?}");
                last = Some(e);
            }
        }
        if stop() {
            return Err(anyhow!(
                "Kafka: stopped as asked while {what} was still failing (after {attempt} attempts: {}); nothing was read or written",
                last.map_or("none".to_string(), |e| e.to_string())
            ));
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    Err(anyhow!(
        "Kafka: {what} failed: {}",
        last.map_or("stopped".to_string(), |e| e.to_string())
    ))
}

/// Every partition of the input topics, in topic then partition order.
pub fn partitions(
    input: &KafkaInput,
    consumer: &KafkaConsumer,
    stop: &dyn Fn() -> bool,
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for topic in &input.topics {
        let md = retry(
            &format!("reading the partitions of topic `{topic}`"),
            60,
            stop,
            || consumer.fetch_metadata(Some(topic), CALL_TIMEOUT),
        )?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| anyhow!("Kafka: the broker did not describe topic `{topic}`"))?;
        if let Some(e) = t.error() {
            return Err(anyhow!(
                "Kafka input topic `{topic}`: {} (create it first, or check its name)",
                eddy_kafka::rdkafka::types::RDKafkaErrorCode::from(e)
            ));
        }
        if t.partitions().is_empty() {
            return Err(anyhow!(
                "Kafka input topic `{topic}` has no partitions (does it exist?)"
            ));
        }
        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ps.sort_unstable();
        parts.extend(ps.into_iter().map(|partition| Part {
            topic: topic.clone(),
            partition,
            stage: 0,
        }));
    }
    if parts.len() > u16::MAX as usize {
        return Err(anyhow!(
            "Kafka input: {} partitions; at most {} are supported",
            parts.len(),
            u16::MAX
        ));
    }
    Ok(parts)
}

/// Plans where each partition of `input` starts: from the offsets in the
/// state directory (`store`), replaying up to the group's committed offsets
/// when `exactly_once` and Kafka is ahead.
pub fn plan(
    input: &KafkaInput,
    consumer: &KafkaConsumer,
    store: &Store,
    exactly_once: bool,
    stop: &dyn Fn() -> bool,
) -> Result<KafkaPlan> {
    let parts = partitions(input, consumer, stop)?;
    let mut start = Vec::with_capacity(parts.len());
    for p in &parts {
        let at = store
            .meta(&p.meta_name())?
            .map(|v| {
                v.as_slice()
                    .try_into()
                    .map(i64::from_le_bytes)
                    .map_err(|_| {
                        anyhow!(
                            "state directory: the offset of {}/{} is corrupt",
                            p.topic,
                            p.partition
                        )
                    })
            })
            .transpose()?;
        start.push(at);
    }
    let mut replay_until = vec![None; parts.len()];
    if exactly_once {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition(&p.topic, p.partition);
        }
        let committed = retry(
            "reading the consumer group's committed offsets",
            60,
            stop,
            || consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT),
        )?;
        for (i, p) in parts.iter().enumerate() {
            let Some(Offset::Offset(k)) = committed
                .find_partition(&p.topic, p.partition)
                .map(|e| e.offset())
            else {
                continue;
            };
            match start[i] {
                Some(s) if s > k => tracing::warn!(
                    "Kafka {}/{}: the state directory is at offset {s} but group `{}` committed only {k} (were its offsets reset?); resuming at {s}",
                    p.topic,
                    p.partition,
                    input.group
                ),
                Some(s) if s == k => {}
                _ => replay_until[i] = Some(k),
            }
        }
    }
    // Records retention deleted: neither resume nor replay below the
    // oldest record still there.
    for (i, p) in parts.iter().enumerate() {
        if start[i].is_none() && replay_until[i].is_none() {
            continue;
        }
        let (low, _) = retry(
            &format!("reading the oldest offset of {}/{}", p.topic, p.partition),
            60,
            stop,
            || consumer.fetch_watermarks(&p.topic, p.partition, CALL_TIMEOUT),
        )?;
        clamp_to_retained(p, low, &mut start[i], &mut replay_until[i]);
    }
    Ok(KafkaPlan {
        parts: parts.into(),
        start,
        replay_until,
    })
}

/// Adjusts partition `p`'s start and replay end to `low`, the oldest
/// offset the broker still has. A replay whose records are all gone is
/// skipped (resuming at its end, the group's committed offset: the
/// outputs of those records are committed already); one partly gone
/// starts at `low`. Either way the state directory misses what retention
/// took, which is said in a warning.
fn clamp_to_retained(p: &Part, low: i64, start: &mut Option<i64>, until: &mut Option<i64>) {
    let from = start.unwrap_or(0);
    if from >= low {
        return;
    }
    match *until {
        Some(k) if k <= low => {
            tracing::warn!(
                "Kafka {}/{}: records {from}..{k} to replay are gone (retention deleted everything below {low}); their effect on state is lost, their outputs are already committed; resuming at {k}",
                p.topic,
                p.partition
            );
            *start = Some(k);
            *until = None;
        }
        Some(k) => {
            tracing::warn!(
                "Kafka {}/{}: records {from}..{low} to replay are gone (retention); replaying {low}..{k}",
                p.topic,
                p.partition
            );
            *start = Some(low);
        }
        None if start.is_some() => {
            tracing::warn!(
                "Kafka {}/{}: records {from}..{low} are gone (retention deleted them before they were read); resuming at {low}",
                p.topic,
                p.partition
            );
            *start = Some(low);
        }
        None => {}
    }
}

/// The reader thread; stopped and joined by [`KafkaReader::stop`] (or
/// when dropped).
pub struct KafkaReader {
    ctx: Arc<EddyContext>,
    rx: Option<Receiver<KafkaMsg>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl KafkaReader {
    /// Assigns `consumer` every partition of `plan` at its start and starts
    /// reading on a thread.
    pub fn start(
        consumer: SharedConsumer,
        plan: &KafkaPlan,
        until_end: bool,
    ) -> Result<KafkaReader> {
        let mut tpl = TopicPartitionList::new();
        for (p, s) in plan.parts.iter().zip(&plan.start) {
            let offset = s.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&p.topic, p.partition, offset)?;
        }
        consumer
            .assign(&tpl)
            .context("Kafka: assigning the input partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded(AHEAD);
        let ctx = consumer.context().clone();
        let mut r = Reader {
            consumer,
            parts: plan.parts.clone(),
            next: plan.start.iter().map(|s| s.unwrap_or(0)).collect(),
            until: plan.replay_until.clone(),
            replaying: plan.replays(),
            done: vec![false; plan.parts.len()],
            held: Vec::new(),
            until_end,
            eof: vec![false; plan.parts.len()],
            tx,
            stop: stop.clone(),
            batch: Vec::with_capacity(BATCH),
        };
        if r.replaying {
            // Partitions with nothing to replay wait until the replay ends.
            for i in 0..r.parts.len() {
                if r.until[i].is_none_or(|u| u <= r.next[i]) {
                    r.part_done(i)?;
                }
            }
        }
        let thread = std::thread::Builder::new()
            .name("eddy-kafka-reader".into())
            .spawn(move || r.run())?;
        Ok(KafkaReader {
            ctx,
            rx: Some(rx),
            stop,
            thread: Some(thread),
        })
    }

    /// A reader from parts already made (group mode).
    pub(super) fn from_parts(
        ctx: Arc<EddyContext>,
        rx: Receiver<KafkaMsg>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Result<()>>,
    ) -> KafkaReader {
        KafkaReader {
            ctx,
            rx: Some(rx),
            stop,
            thread: Some(thread),
        }
    }

    /// The consumer's context (partition ends for the lag).
    pub fn context(&self) -> &Arc<EddyContext> {
        &self.ctx
    }

    /// What it reads.
    pub fn messages(&self) -> &Receiver<KafkaMsg> {
        self.rx.as_ref().expect("the reader runs")
    }

    /// Why it stopped early, if it did (joins it).
    pub fn failure(&mut self) -> anyhow::Error {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => anyhow!("the Kafka reader panicked"),
            _ => anyhow!("the Kafka reader stopped unexpectedly"),
        }
    }

    /// Stops the reader and joins it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Reader {
    consumer: SharedConsumer,
    parts: Arc<[Part]>,
    /// Per partition, the next offset expected: a record below it was
    /// already handed over (librdkafka may deliver again what it had
    /// fetched when a partition is paused and resumed).
    next: Vec<i64>,
    /// Per partition, where its replay ends.
    until: Vec<Option<i64>>,
    replaying: bool,
    /// Per partition, during a replay: it reached its end (and is paused).
    done: Vec<bool>,
    /// Records read past a replay end, handed over once the replay ends.
    held: Vec<Record>,
    until_end: bool,
    /// Per partition, with `until_end`: read to its end.
    eof: Vec<bool>,
    tx: Sender<KafkaMsg>,
    stop: Arc<AtomicBool>,
    batch: Vec<Record>,
}

impl Reader {
    fn run(mut self) -> Result<()> {
        let mut last_error: Option<(String, Instant)> = None;
        while !self.stop.load(Ordering::Acquire) {
            let wait = if self.batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => {
                    if !self.flush()? {
                        return Ok(());
                    }
                    if self.until_end && self.eof.iter().all(|&e| e) && !self.replaying {
                        let _ = self.send(KafkaMsg::End);
                        return Ok(());
                    }
                }
                Some(Ok(m)) => {
                    let Some(part) = self.index(m.topic(), m.partition()) else {
                        continue;
                    };
                    let rec = Record {
                        part: part as u16,
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        timestamp: m.timestamp().to_millis(),
                    };
                    drop(m);
                    self.record(rec)?;
                    if self.batch.len() >= BATCH && !self.flush()? {
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    for i in 0..self.parts.len() {
                        if self.parts[i].partition == partition {
                            self.eof[i] = true;
                            if self.replaying && !self.done[i] {
                                self.part_done(i)?;
                            }
                        }
                    }
                    if !self.replay_check()? {
                        return Ok(());
                    }
                }
                Some(Err(e)) => {
                    // librdkafka retries by itself; say so once in a while.
                    let text = e.to_string();
                    let repeat = last_error.as_ref().is_some_and(|(t, at)| {
                        *t == text && at.elapsed() < Duration::from_secs(10)
                    });
                    if !repeat {
                        tracing::warn!("Kafka source: {text} (retrying)");
                        last_error = Some((text, Instant::now()));
                    }
                }
            }
        }
        Ok(())
    }

    fn index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
    }

    /// Takes `rec` in: handed over, held past a replay end, or dropped as a
    /// repeat.
    fn record(&mut self, rec: Record) -> Result<()> {
        let i = rec.part as usize;
        if rec.offset < self.next[i] {
            return Ok(());
        }
        self.eof[i] = false;
        if self.replaying {
            if let Some(u) = self.until[i] {
                if rec.offset >= u {
                    self.next[i] = rec.offset + 1;
                    self.held.push(rec);
                    if !self.done[i] {
                        self.part_done(i)?;
                    }
                    self.replay_check()?;
                    return Ok(());
                }
            }
            if self.done[i] {
                // Fetched before the pause took effect.
                self.next[i] = rec.offset + 1;
                self.held.push(rec);
                return Ok(());
            }
        }
        self.next[i] = rec.offset + 1;
        let end = self.replaying && self.until[i].is_some_and(|u| rec.offset + 1 >= u);
        self.batch.push(rec);
        if end {
            self.part_done(i)?;
            self.replay_check()?;
        }
        Ok(())
    }

    /// Partition `i` reached its replay end: pause it.
    fn part_done(&mut self, i: usize) -> Result<()> {
        self.done[i] = true;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.parts[i].topic, self.parts[i].partition);
        self.consumer.pause(&tpl).with_context(|| {
            format!(
                "Kafka: pausing {}/{}",
                self.parts[i].topic, self.parts[i].partition
            )
        })
    }

    /// Ends the replay once every partition reached its end: hands over
    /// what was read, then [`KafkaMsg::ReplayDone`], then what was held,
    /// and resumes every partition. `false` when the coordinator is gone.
    fn replay_check(&mut self) -> Result<bool> {
        if !self.replaying || !self.done.iter().all(|&d| d) {
            return Ok(true);
        }
        self.replaying = false;
        if !self.flush()? || !self.send(KafkaMsg::ReplayDone) {
            return Ok(false);
        }
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.iter() {
            tpl.add_partition(&p.topic, p.partition);
        }
        self.consumer
            .resume(&tpl)
            .context("Kafka: resuming the input partitions after the replay")?;
        self.batch.append(&mut self.held);
        Ok(true)
    }

    /// Hands the batch over; `false` when the coordinator is gone.
    fn flush(&mut self) -> Result<bool> {
        if self.batch.is_empty() {
            return Ok(true);
        }
        let b = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        Ok(self.send(KafkaMsg::Records(b)))
    }

    /// Sends `msg`, waiting for room while not stopped; `false` when the
    /// coordinator is gone or the reader is stopped.
    fn send(&self, mut msg: KafkaMsg) -> bool {
        loop {
            match self.tx.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(m)) => {
                    if self.stop.load(Ordering::Acquire) {
                        return false;
                    }
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_replays_are_clamped_to_what_retention_left() {
        let p = Part {
            topic: "t".into(),
            partition: 0,
            stage: 0,
        };
        let clamp = |low, mut start, mut until| {
            clamp_to_retained(&p, low, &mut start, &mut until);
            (start, until)
        };
        // Everything still there: unchanged.
        assert_eq!(clamp(0, Some(5), Some(9)), (Some(5), Some(9)));
        assert_eq!(clamp(5, Some(5), None), (Some(5), None));
        assert_eq!(clamp(3, None, None), (None, None));
        // The whole replay gone: none, resume at its end (no partition
        // waits for records that will never come).
        assert_eq!(clamp(9, Some(5), Some(9)), (Some(9), None));
        assert_eq!(clamp(20, None, Some(9)), (Some(9), None));
        // Part of it gone: replay what is left.
        assert_eq!(clamp(7, Some(5), Some(9)), (Some(7), Some(9)));
        assert_eq!(clamp(7, None, Some(9)), (Some(7), Some(9)));
        // No replay, the position gone: the oldest record left.
        assert_eq!(clamp(7, Some(5), None), (Some(7), None));
    }
}
