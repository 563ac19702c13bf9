//! Group mode's Kafka reader: this process is one of several `eddy run`
//! processes with the same consumer group, which share the input's
//! partitions. The broker decides who owns which (cooperative-sticky
//! assignment: a rebalance moves only the partitions that must move).
//!
//! A partition is a unit of state: a key's state lives with the partition
//! the key hashes to (the input's partitioner), and is kept in a compacted
//! changelog topic per operator, written in the same Kafka transaction as
//! the outputs and the consumed offsets. So when this process is given a
//! partition, the rebalance hook (on the reader thread, inside `poll`)
//! restores the partition's state from the changelog into the state
//! directory, as of the group's committed offset, and the partition is
//! read from that offset: nothing is replayed. When a partition is taken
//! away, the hook asks the coordinator for a checkpoint first (so the new
//! owner starts where this one stopped) and for its keys to be dropped
//! from the workers' caches.
//!
//! See `docs/kafka.md`, "Many processes", for the argument.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use crossbeam_channel::{bounded, RecvTimeoutError, SendTimeoutError, Sender};
use eddy_kafka::context::{RebalanceHook, RebalanceKind};
use eddy_kafka::partition::Partitioner;
use eddy_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eddy_kafka::rdkafka::error::KafkaError;
use eddy_kafka::rdkafka::message::Message;
use eddy_kafka::rdkafka::{Offset, TopicPartitionList};
use eddy_kafka::EddyContext;

use super::kafka::{retry, KafkaMsg, KafkaReader, Part, Record, SharedConsumer};
use crate::config::KafkaInput;
use crate::state::{ChangelogTimer, ChangelogWrite, Store, CHANGELOG_STATE, CHANGELOG_TIMER};

/// Records per batch handed to the coordinator.
const BATCH: usize = 1024;
/// Batches the reader may hold ready before it waits for the coordinator.
const AHEAD: usize = 8;
/// How long one call to the broker may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Standby: changelog records read per operator in one step.
const STANDBY_STEP: u64 = 50_000;
/// How long restoring the partitions of one rebalance may take.
const RESTORE_LIMIT: Duration = Duration::from_secs(600);

/// The changelog topic of operator `operator` in group `group`.
pub fn changelog_topic(group: &str, operator: &str) -> String {
    format!("{group}-{operator}-changelog")
}

/// The repartition topic of operator `operator` (not the first of its
/// chain) in group `group`: what the operator before it emits, keyed by
/// the emitted key.
pub fn repartition_topic(group: &str, operator: &str) -> String {
    format!("{group}-{operator}-repartition")
}

/// Creates the consumer of a group-mode input.
pub fn group_consumer(input: &KafkaInput) -> Result<KafkaConsumer> {
    let mut props = vec![("bootstrap.servers".to_string(), input.bootstrap.clone())];
    props.extend(input.properties.iter().cloned());
    let mut config = eddy_kafka::config::group_consumer(&props, &input.group)?;
    if config.get("fetch.queue.backoff.ms").is_none() {
        config.set("fetch.queue.backoff.ms", "10");
    }
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", "1000");
    }
    config
        .create_with_context(EddyContext::new("source"))
        .context("creating the Kafka consumer")
}

type KafkaConsumer = BaseConsumer<EddyContext>;

/// What the group reader needs besides its consumer.
pub struct GroupSetup {
    /// The input.
    pub input: KafkaInput,
    /// Every partition of the input topic, in partition order.
    pub parts: Arc<[Part]>,
    /// The state directory, restored into.
    pub store: Store,
    /// Per operator (its stage in the chain): its name and its changelog
    /// topic.
    pub changelogs: Vec<(Arc<str>, String)>,
    /// Raised (for good) when the group takes this process's partitions
    /// away without a hand-over: the sink then never commits again.
    pub lost: Arc<AtomicBool>,
}

/// Subscribes `consumer` to the input topic of `setup` and starts the
/// reader thread; partitions arrive (restored) as the group assigns them.
pub fn start_group(consumer: SharedConsumer, setup: GroupSetup) -> Result<KafkaReader> {
    let n = setup.parts.len();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = bounded(AHEAD);
    let restorer = Restorer::new(&setup)?;
    let standby = setup.input.standby;
    let (jobs, job_rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        parts: setup.parts.clone(),
        tx,
        stop: stop.clone(),
        st: Mutex::new(St {
            batch: Vec::with_capacity(BATCH),
            next: vec![0; n],
            owned: vec![false; n],
            assigned: vec![false; n],
        }),
        error: Mutex::new(None),
        jobs,
        restoring: Mutex::new(()),
        lost: setup.lost.clone(),
    });
    let restore_thread = {
        let (shared, consumer) = (shared.clone(), consumer.clone());
        std::thread::Builder::new()
            .name("eddy-kafka-restore".into())
            .spawn(move || restore_loop(&shared, &consumer, &restorer, &job_rx, standby))?
    };
    consumer
        .context()
        .set_rebalance(Box::new(Hook(shared.clone())));
    let mut topics: Vec<&str> = setup.parts.iter().map(|p| p.topic.as_str()).collect();
    topics.dedup();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("Kafka: subscribing to topics {}", topics.join(", ")))?;
    let ctx = consumer.context().clone();
    let reader = GroupReader {
        consumer,
        shared,
        restore_thread: Some(restore_thread),
    };
    let thread = std::thread::Builder::new()
        .name("eddy-kafka-reader".into())
        .spawn(move || reader.run())?;
    Ok(KafkaReader::from_parts(ctx, rx, stop, thread))
}

/// What the reader thread and its rebalance hook share.
struct Shared {
    parts: Arc<[Part]>,
    tx: Sender<KafkaMsg>,
    stop: Arc<AtomicBool>,
    st: Mutex<St>,
    /// Why the reader must stop (a restore failed).
    error: Mutex<Option<anyhow::Error>>,
    /// Partitions assigned, to restore (by the restore thread).
    jobs: Sender<Vec<u16>>,
    /// Held while a restore runs: a revocation waits for it.
    restoring: Mutex<()>,
    lost: Arc<AtomicBool>,
}

struct St {
    /// Records read, not yet handed over.
    batch: Vec<Record>,
    /// Per partition, the next offset expected (a record below it was
    /// handed over already, or is before the restored state).
    next: Vec<i64>,
    /// Per partition: this process owns it (restored, read).
    owned: Vec<bool>,
    /// Per partition: the group assigned it to this process (it may be
    /// still restoring).
    assigned: Vec<bool>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn index(&self, topic: &str, partition: i32) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
    }

    /// Sends `msg`, waiting for room while not stopped; `false` when the
    /// coordinator is gone or the reader is stopped.
    fn send(&self, mut msg: KafkaMsg) -> bool {
        loop {
            match self.tx.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(m)) => {
                    if self.stopped() {
                        return false;
                    }
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Takes a record in (dropped when its partition is not owned, or
    /// when it comes before the next offset expected); `true` when the
    /// batch is full.
    fn push(&self, rec: Record) -> bool {
        let mut st = self.st.lock().expect("reader state");
        let i = rec.part as usize;
        if !st.owned[i] || rec.offset < st.next[i] {
            return false;
        }
        st.next[i] = rec.offset + 1;
        st.batch.push(rec);
        st.batch.len() >= BATCH
    }

    /// Hands the batch over; `false` when the coordinator is gone.
    fn flush(&self) -> bool {
        let b = {
            let mut st = self.st.lock().expect("reader state");
            if st.batch.is_empty() {
                return true;
            }
            std::mem::replace(&mut st.batch, Vec::with_capacity(BATCH))
        };
        self.send(KafkaMsg::Records(b))
    }

    /// The partition numbers of `parts`, for messages.
    fn names(&self, parts: &[u16]) -> String {
        parts
            .iter()
            .map(|&i| self.parts[i as usize].partition.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn fail(&self, e: anyhow::Error) {
        let mut slot = self.error.lock().expect("reader error");
        slot.get_or_insert(e);
    }
}

struct GroupReader {
    consumer: SharedConsumer,
    shared: Arc<Shared>,
    restore_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.restore_thread.take() {
            let _ = t.join();
        }
    }
}

/// The restore thread: restores the partitions assigned, one assignment at
/// a time, while the others keep flowing; then tells the coordinator, and
/// starts reading them at the group's committed offset.
fn restore_loop(
    s: &Shared,
    consumer: &KafkaConsumer,
    restorer: &Restorer,
    jobs: &crossbeam_channel::Receiver<Vec<u16>>,
    standby: bool,
) {
    let mut last_warning: Option<Instant> = None;
    // Standby: the copy read changelog records in its last step (it says
    // so once when it has caught up).
    let mut behind = true;
    while !s.stopped() {
        // A copy behind takes its next step at once (a job first).
        let idle = match standby && behind {
            true => Duration::ZERO,
            false => Duration::from_millis(100),
        };
        let parts = match jobs.recv_timeout(idle) {
            Ok(p) => p,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if standby {
                    follow(s, restorer, &mut behind, &mut last_warning);
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let _held = s.restoring.lock().expect("restore lock");
        // Only what is still assigned (a revocation may have come first).
        let parts: Vec<u16> = {
            let st = s.st.lock().expect("reader state");
            parts
                .into_iter()
                .filter(|&i| st.assigned[i as usize] && !st.owned[i as usize])
                .collect()
        };
        if parts.is_empty() {
            continue;
        }
        let names = s.names(&parts);
        let chosen: Vec<Part> = parts.iter().map(|&i| s.parts[i as usize].clone()).collect();
        let begun = Instant::now();
        let (starts, caught) = match restorer.restore(&chosen, &|| s.stopped()) {
            Ok(r) => r,
            Err(e) => {
                s.fail(e.context(format!(
                    "Kafka group: restoring the state of partitions {names}"
                )));
                return;
            }
        };
        tracing::info!(
            "Kafka group: partitions {names} restored ({} keys, {} changelog records read) in {:?}",
            caught.keys,
            caught.records,
            begun.elapsed()
        );
        {
            let mut st = s.st.lock().expect("reader state");
            for (&i, start) in parts.iter().zip(&starts) {
                st.owned[i as usize] = true;
                st.next[i as usize] = start.unwrap_or(0);
            }
        }
        let msg = KafkaMsg::Assigned {
            parts: parts.iter().copied().zip(starts.iter().copied()).collect(),
            restored: caught.keys,
        };
        if !s.send(msg) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (&i, start) in parts.iter().zip(&starts) {
            let p = &s.parts[i as usize];
            let at = start.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.add_partition_offset(&p.topic, p.partition, at) {
                s.fail(anyhow!(
                    "Kafka group: starting {}/{}: {e}",
                    p.topic,
                    p.partition
                ));
                return;
            }
        }
        let started = consumer
            .seek_partitions(tpl.clone(), CALL_TIMEOUT)
            .map_err(anyhow::Error::from)
            .and_then(
                |r| match r.elements().iter().find_map(|e| e.error().err()) {
                    Some(e) => Err(anyhow::Error::from(e)),
                    None => Ok(()),
                },
            )
            .and_then(|()| consumer.resume(&tpl).map_err(anyhow::Error::from));
        if let Err(e) = started {
            s.fail(e.context(format!("Kafka group: starting partitions {names}")));
            return;
        }
    }
}

/// Standby, between restores: moves this directory's copy of the
/// partitions assigned elsewhere closer to their changelogs' ends (a
/// bounded step, so that a partition assigned meanwhile waits little);
/// says when it has caught up after reading something. A failure is only
/// warned about (once a minute): the copy is a head start,
/// and a restore reads whatever it lacks.
fn follow(s: &Shared, restorer: &Restorer, behind: &mut bool, last_warning: &mut Option<Instant>) {
    let others: Vec<Part> = {
        let st = s.st.lock().expect("reader state");
        s.parts
            .iter()
            .enumerate()
            .filter(|&(i, _)| !st.assigned[i])
            .map(|(_, p)| p.clone())
            .collect()
    };
    if others.is_empty() {
        return;
    }
    match restorer.follow(&others, STANDBY_STEP, &|| s.stopped()) {
        Ok(n) if n > 0 => {
            *behind = true;
            tracing::debug!("Kafka group: standby copy moved {n} changelog records on")
        }
        Ok(_) => {
            if std::mem::take(behind) {
                tracing::info!(
                    "Kafka group: the standby copy of partitions {} is current",
                    others
                        .iter()
                        .map(|p| p.partition.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Err(e) => {
            // The next step after the usual pause.
            *behind = false;
            if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!("Kafka group: following the other processes' changelogs: {e:#}");
                *last_warning = Some(Instant::now());
            }
        }
    }
}

impl GroupReader {
    fn run(self) -> Result<()> {
        let mut last_error: Option<(String, Instant)> = None;
        while !self.shared.stopped() {
            let empty = self
                .shared
                .st
                .lock()
                .expect("reader state")
                .batch
                .is_empty();
            let wait = if empty {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(wait);
            if let Some(e) = self.shared.error.lock().expect("reader error").take() {
                return Err(e);
            }
            match polled {
                None => {
                    if !self.shared.flush() {
                        return Ok(());
                    }
                }
                Some(Ok(m)) => {
                    let Some(part) = self.shared.index(m.topic(), m.partition()) else {
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
                    if self.shared.push(rec) && !self.shared.flush() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => {
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
}

/// The rebalance hook.
struct Hook(Arc<Shared>);

impl RebalanceHook for Hook {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<EddyContext>,
        kind: RebalanceKind,
        tpl: &mut TopicPartitionList,
    ) {
        let s = &self.0;
        let parts: Vec<u16> = tpl
            .elements()
            .iter()
            .filter_map(|e| s.index(e.topic(), e.partition()))
            .map(|i| i as u16)
            .collect();
        let names = || s.names(&parts);
        match kind {
            RebalanceKind::Assign if parts.is_empty() => {
                if let Err(e) = consumer.incremental_assign(tpl) {
                    tracing::warn!("Kafka group: rebalance: {e}");
                }
            }
            RebalanceKind::Revoke { .. } if parts.is_empty() => {
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::warn!("Kafka group: rebalance: {e}");
                }
            }
            RebalanceKind::Assign => {
                tracing::info!(
                    "Kafka group: partitions {} assigned; restoring their state",
                    names()
                );
                {
                    let mut st = s.st.lock().expect("reader state");
                    for &i in &parts {
                        st.assigned[i as usize] = true;
                    }
                }
                // Taken but not read until restored: the other partitions
                // keep flowing meanwhile.
                let taken = consumer
                    .incremental_assign(tpl)
                    .and_then(|()| consumer.pause(tpl));
                if let Err(e) = taken {
                    s.fail(anyhow!("Kafka group: taking partitions {}: {e}", names()));
                    return;
                }
                let _ = s.jobs.send(parts.clone());
            }
            RebalanceKind::Revoke { lost } => {
                // A restore under way finishes first; one not begun is
                // dropped.
                let _held = s.restoring.lock().expect("restore lock");
                let mut st = s.st.lock().expect("reader state");
                for &i in &parts {
                    st.assigned[i as usize] = false;
                }
                drop(st);
                self.revoke(consumer, &parts, lost, tpl, &names());
            }
            RebalanceKind::Error(e) => {
                tracing::warn!("Kafka group: rebalance failed: {e:?}");
            }
        }
    }
}

impl Hook {
    fn revoke(
        &self,
        consumer: &BaseConsumer<EddyContext>,
        parts: &[u16],
        lost: bool,
        tpl: &mut TopicPartitionList,
        names: &str,
    ) {
        let s = &self.0;
        let names = || names.to_string();
        match lost {
            false => {
                tracing::info!(
                    "Kafka group: partitions {} move to another process; checkpointing them",
                    names()
                );
                // What was read of them is handled and checkpointed first.
                if s.flush() {
                    {
                        let mut st = s.st.lock().expect("reader state");
                        for &i in parts {
                            st.owned[i as usize] = false;
                        }
                    }
                    let (rtx, rrx) = bounded(1);
                    if s.send(KafkaMsg::Revoke {
                        parts: parts.to_vec(),
                        reply: rtx,
                    }) {
                        loop {
                            match rrx.recv_timeout(Duration::from_millis(100)) {
                                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                                Err(RecvTimeoutError::Timeout) if s.stopped() => break,
                                Err(RecvTimeoutError::Timeout) => {}
                            }
                        }
                    }
                } else {
                    let mut st = s.st.lock().expect("reader state");
                    for &i in parts {
                        st.owned[i as usize] = false;
                    }
                }
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::warn!("Kafka group: giving up partitions {}: {e}", names());
                }
            }
            true => {
                s.lost.store(true, Ordering::Release);
                {
                    let mut st = s.st.lock().expect("reader state");
                    for &i in parts {
                        st.owned[i as usize] = false;
                    }
                }
                tracing::error!(
                    "Kafka group: partitions {} were lost: this process was cut off from the group for longer than session.timeout.ms, and another process owns them now",
                    names()
                );
                fenced_watchdog(s.stop.clone());
                s.send(KafkaMsg::Lost(parts.to_vec()));
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::warn!("Kafka group: giving up partitions {}: {e}", names());
                }
            }
        }
    }
}

/// Group mode: how long a process whose partitions were lost may take to
/// stop before it exits at once.
const FENCED_GRACE: Duration = Duration::from_secs(30);

/// Started when the group took this process's partitions away: the
/// coordinator then stops the pipeline (the reader's `stop` is raised as
/// it goes). Should that stop not begin within [`FENCED_GRACE`] (a wait
/// somewhere that does not see the process was fenced), the process exits
/// with the reason. Exiting loses nothing: what it did since its last
/// checkpoint is in a transaction that is never committed, and other
/// processes own its partitions from their last commit, as after a
/// `kill -9`.
fn fenced_watchdog(stop: Arc<AtomicBool>) {
    let watch = move || {
        let deadline = Instant::now() + FENCED_GRACE;
        while Instant::now() < deadline {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::error!(
            "Kafka group: this process lost its partitions {FENCED_GRACE:?} ago (it was cut off from its group for longer than session.timeout.ms) and has not stopped yet: exiting now; nothing it wrote since its last checkpoint becomes visible, and other processes own its partitions. Start it again to rejoin the group"
        );
        eprintln!(
            "error: Kafka group: this process was fenced (its partitions were lost) and exits"
        );
        std::process::exit(1);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("eddy-fenced-watchdog".into())
        .spawn(watch)
    {
        tracing::warn!("Kafka group: starting the fenced process's watchdog: {e}");
    }
}

/// Restores partitions' state from the changelog topics.
struct Restorer {
    consumer: KafkaConsumer,
    store: Store,
    changelogs: Vec<(Arc<str>, String)>,
    partitioner: Partitioner,
    partitions: i32,
}

impl Restorer {
    fn new(setup: &GroupSetup) -> Result<Restorer> {
        let mut props = vec![(
            "bootstrap.servers".to_string(),
            setup.input.bootstrap.clone(),
        )];
        props.extend(setup.input.properties.iter().cloned());
        // In the group (for its committed offsets), but never joining it:
        // it only `assign`s changelog partitions.
        let mut config = eddy_kafka::config::read_committed_consumer(&props, &setup.input.group)?;
        config.set("enable.partition.eof", "true");
        config.set("auto.offset.reset", "earliest");
        // At a partition's end the broker holds a fetch this long before
        // answering that nothing more is there (librdkafka's default
        // 500 ms): the end of a restore is found sooner.
        if config.get("fetch.wait.max.ms").is_none() {
            config.set("fetch.wait.max.ms", "10");
        }
        let consumer: KafkaConsumer = config
            .create_with_context(EddyContext::new("restore"))
            .context("creating the Kafka restore consumer")?;
        Ok(Restorer {
            consumer,
            store: setup.store.clone(),
            changelogs: setup.changelogs.clone(),
            partitioner: setup.input.partitioner,
            partitions: setup.parts.len() as i32,
        })
    }

    /// Restores the state of `parts` into the state directory: per
    /// partition, the group's committed offset (stable: a transaction
    /// still open on it is waited for), then every operator's changelog
    /// partition read to its end (the last stable offset, so what the
    /// committed offset's transaction wrote is there), from where this
    /// directory's copy of it is (standby) or its beginning. Returns the
    /// starts, and what was read.
    fn restore(
        &self,
        parts: &[Part],
        stop: &dyn Fn() -> bool,
    ) -> Result<(Vec<Option<i64>>, CaughtUp)> {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition(&p.topic, p.partition);
        }
        let begun = Instant::now();
        let committed = retry(
            "reading the group's committed offsets of the partitions assigned",
            30,
            stop,
            || self.consumer.committed_offsets(tpl.clone(), CALL_TIMEOUT),
        )?;
        let starts: Vec<Option<i64>> = parts
            .iter()
            .map(|p| {
                match committed
                    .find_partition(&p.topic, p.partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(k)) => Some(k),
                    _ => None,
                }
            })
            .collect();
        tracing::debug!(
            "Kafka group: committed offsets read in {:?}",
            begun.elapsed()
        );
        let mut caught = CaughtUp::default();
        for (stage, (op, topic)) in self.changelogs.iter().enumerate() {
            // An operator's partitions are those of the topic it reads.
            let units: Vec<i32> = parts
                .iter()
                .filter(|p| p.stage as usize == stage)
                .map(|p| p.partition)
                .collect();
            if units.is_empty() {
                continue;
            }
            let c = self.catch_up(op, topic, &units, None, stop)?;
            caught.keys += c.keys;
            caught.records += c.records;
            // Taken: this process writes their keys from now on, so its
            // copy stops following the changelog.
            let forget: Vec<(&str, i32, Option<u64>)> =
                units.iter().map(|&p| (topic.as_str(), p, None)).collect();
            self.store.apply_changelog(op, &[], &[], &forget)?;
        }
        Ok((starts, caught))
    }

    /// Standby: brings this directory's copy of partitions `parts` (owned
    /// by other processes) closer to their changelogs' ends, reading at
    /// most `limit` records of each operator's changelog. Returns the
    /// records read.
    fn follow(&self, parts: &[Part], limit: u64, stop: &dyn Fn() -> bool) -> Result<u64> {
        let mut records = 0;
        for (stage, (op, topic)) in self.changelogs.iter().enumerate() {
            let units: Vec<i32> = parts
                .iter()
                .filter(|p| p.stage as usize == stage)
                .map(|p| p.partition)
                .collect();
            if !units.is_empty() {
                records += self.catch_up(op, topic, &units, Some(limit), stop)?.records;
            }
        }
        Ok(records)
    }

    /// Reads changelog `topic` of operator `op`, partitions `units`, from
    /// where this directory's copy of each is (its beginning when it keeps
    /// none) to its end (the last stable offset), or until `limit` records
    /// are read, and applies what it read: a partition read from its
    /// beginning has its keys replaced by what was read, the others get
    /// the changes. The copy's positions move to where the reading
    /// stopped, in the same transaction as the changes.
    fn catch_up(
        &self,
        op: &Arc<str>,
        topic: &str,
        units: &[i32],
        limit: Option<u64>,
        stop: &dyn Fn() -> bool,
    ) -> Result<CaughtUp> {
        let mut ctpl = TopicPartitionList::new();
        let mut fresh = HashSet::new();
        for &p in units {
            let at = match self.store.changelog_position(topic, p)? {
                Some(at) => Offset::Offset(at as i64),
                None => {
                    fresh.insert(p);
                    Offset::Beginning
                }
            };
            ctpl.add_partition_offset(topic, p, at)?;
        }
        self.consumer
            .assign(&ctpl)
            .with_context(|| format!("reading changelog topic `{topic}`"))?;
        let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut timers: HashMap<(String, String), Option<i64>> = HashMap::new();
        let mut at_end = HashSet::new();
        let mut read_from = HashSet::new();
        let begun = Instant::now();
        let mut last_error: Option<String> = None;
        let mut records: u64 = 0;
        while at_end.len() < units.len() && limit.is_none_or(|l| records < l) {
            if stop() {
                bail!("stopped while restoring");
            }
            if begun.elapsed() > RESTORE_LIMIT {
                bail!(
                    "changelog topic `{topic}`: not read to its end in {RESTORE_LIMIT:?}{}",
                    last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    records += 1;
                    read_from.insert(m.partition());
                    let bad = |why: &str| {
                        anyhow!(
                            "changelog topic `{topic}` partition {} offset {}: {why} (is the topic Eddy's?)",
                            m.partition(),
                            m.offset()
                        )
                    };
                    let raw = m.key().unwrap_or_default();
                    let (&tag, rest) = raw.split_first().ok_or_else(|| bad("no key"))?;
                    let text =
                        std::str::from_utf8(rest).map_err(|_| bad("the key is not UTF-8"))?;
                    match tag {
                        CHANGELOG_STATE => {
                            latest.insert(text.to_string(), m.payload().map(<[u8]>::to_vec));
                        }
                        CHANGELOG_TIMER => {
                            let (key, name) = text
                                .split_once('\0')
                                .ok_or_else(|| bad("a timer record without a name"))?;
                            let at = match m.payload() {
                                None => None,
                                Some(v) => Some(i64::from_le_bytes(
                                    v.try_into()
                                        .map_err(|_| bad("a timer's time is not 8 bytes"))?,
                                )),
                            };
                            timers.insert((key.to_string(), name.to_string()), at);
                        }
                        _ => return Err(bad("an unknown record kind")),
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => {
                    tracing::warn!("Kafka restore of `{topic}`: {e} (retrying)");
                    last_error = Some(e.to_string());
                }
            }
        }
        // Where each partition's reading stopped: the next offset.
        let position = self
            .consumer
            .position()
            .with_context(|| format!("the position in changelog topic `{topic}`"))?;
        self.consumer
            .unassign()
            .with_context(|| format!("done reading changelog topic `{topic}`"))?;
        tracing::debug!(
            "Kafka group: changelog `{topic}` read in {:?} ({records} records, {} keys)",
            begun.elapsed(),
            latest.len()
        );
        let mut positions: Vec<(&str, i32, Option<u64>)> = Vec::new();
        // A partition read from its beginning has a copy only once
        // something of it was read, or its (empty) end reached.
        let mut replaced = HashSet::new();
        for &p in units {
            let at = position
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o as u64),
                    _ => None,
                });
            let read = at_end.contains(&p) || read_from.contains(&p);
            match at {
                Some(at) if read => {
                    positions.push((topic, p, Some(at)));
                    if fresh.contains(&p) {
                        replaced.insert(p);
                    }
                }
                _ => {}
            }
        }
        let (partitioner, n) = (self.partitioner, self.partitions);
        let part_of = |key: &str| partitioner.partition(key.as_bytes(), n);
        let keys = latest.values().filter(|r| r.is_some()).count() as u64;
        // Replaced: every key of those partitions goes, then what was read.
        let (mut whole, mut changes): (Vec<ChangelogWrite>, Vec<ChangelogWrite>) = latest
            .into_iter()
            .filter(|(k, _)| !fresh.contains(&part_of(k)) || replaced.contains(&part_of(k)))
            .partition(|(k, _)| replaced.contains(&part_of(k)));
        whole.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (whole_timers, mut timer_changes): (Vec<ChangelogTimer>, Vec<ChangelogTimer>) = timers
            .into_iter()
            .map(|((k, name), at)| (k, name, at))
            .filter(|(k, _, _)| !fresh.contains(&part_of(k)) || replaced.contains(&part_of(k)))
            .partition(|(k, _, _)| replaced.contains(&part_of(k)));
        if !replaced.is_empty() {
            let mut whole_timers: Vec<(String, String, i64)> = whole_timers
                .into_iter()
                .filter_map(|(k, name, at)| Some((k, name, at?)))
                .collect();
            whole_timers.sort_unstable();
            let select = |key: &str| replaced.contains(&part_of(key));
            self.store
                .replace_keys(op, &select, &whole, &whole_timers)?;
        }
        timer_changes.sort_unstable();
        self.store
            .apply_changelog(op, &changes, &timer_changes, &positions)?;
        Ok(CaughtUp { keys, records })
    }
}

/// What reading changelog partitions found.
#[derive(Debug, Default, Clone, Copy)]
struct CaughtUp {
    /// Keys with state read.
    keys: u64,
    /// Changelog records read.
    records: u64,
}
