//! The coordinator thread (`eddy-coordinator`): drives the input through
//! the workers, carries out swaps at a barrier, makes checkpoints, and
//! when it ends stops and joins every other thread of the pipeline
//! ([`Coordinator::finish`], the one shutdown path).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use super::{OperatorSummary, Shutdown, Summary};
use crate::checkpoint::{self, Writer};
use crate::clock::Clock;
use crate::config::{Output, Pipeline};
use crate::control::Server;
use crate::operator::Loaded;
use crate::sink::{SinkMsg, SinkThread};
use crate::source::{file_id, ReaderThread, Resume, WatermarkGen};
use crate::state::{Checkpoint, SourcePos};
use crate::stats::{Live, OpStats};
use crate::swap::{self, Command, Controller, NotDurable, SwapReport};
use crate::worker::{BarrierReply, Batch, Msg, Workers};

mod compact;
mod input;
mod kafka;

pub(super) use kafka::KafkaFeed;

/// Events per batch sent to a worker.
const BATCH: usize = 1024;
/// Batches in flight per worker before the coordinator waits.
const MAX_INFLIGHT_PER_WORKER: usize = 16;

/// A swap made at a barrier, to be reported once durable.
type SwapAck = (Sender<Result<SwapReport, NotDurable>>, SwapReport);

/// What [`super::start`] hands the coordinator.
pub(super) struct Parts<'a> {
    pub p: Pipeline,
    pub begun: Instant,
    pub resume: Resume,
    pub operators: &'a [Loaded],
    pub workers: Workers,
    pub sink: SinkThread,
    pub writer: Writer<SwapAck>,
    pub controller: Arc<Controller>,
    pub ctl: Receiver<Command>,
    pub server: Option<Server>,
    pub watcher: Option<JoinHandle<()>>,
    /// The file or stdin reader, or
    pub reader: Option<ReaderThread>,
    /// the Kafka input.
    pub kafka: Option<KafkaFeed>,
    pub live: Arc<Live>,
    pub versions_dirty: bool,
}

/// The coordinator and every thread it owns.
pub(super) struct Coordinator {
    p: Pipeline,
    /// When the pipeline started (for [`Summary::elapsed`]).
    begun: Instant,
    workers: Workers,
    sink: SinkThread,
    /// The committer.
    writer: Writer<SwapAck>,
    /// The control endpoint (joined when the pipeline stops).
    server: Option<Server>,
    /// `--watch` (joined when the pipeline stops).
    watcher: Option<JoinHandle<()>>,
    /// The file or stdin reader, or
    reader: Option<ReaderThread>,
    /// the Kafka input.
    kafka: Option<KafkaFeed>,
    /// Counters shown by `eddy status`.
    live: Arc<Live>,
    /// Per-worker batch being filled.
    pending: Vec<Batch>,
    /// Position after the last line routed.
    pos: SourcePos,
    /// The run resumed right after a last line that had no `\n`: a `\n`
    /// alone at the start ends that line and is not counted as one.
    resumed_mid_line: bool,
    input_id: Option<String>,
    out_id: Option<String>,
    dead_id: String,
    /// Latest counters reported by each worker.
    stats: Vec<Vec<OpStats>>,
    summary: Summary,
    since_checkpoint: u64,
    /// Prepared swaps from the controller.
    ctl: Receiver<Command>,
    controller: Arc<Controller>,
    /// Operator versions changed since the last checkpoint.
    versions_dirty: bool,
    /// Swaps made since the last checkpoint: reported once the checkpoint
    /// that records them is durable.
    swaps_unchecked: Vec<SwapAck>,
    /// When the next checkpoint by time is due.
    next_checkpoint: Instant,
    /// When the last checkpoint was made.
    last_checkpoint: Instant,
    /// Operator names, in chain order.
    op_names: Vec<Arc<str>>,
    /// The input's watermark, from its event times.
    watermark: WatermarkGen,
    /// The clock of the watermark's idle timeout.
    clock: Clock,
    /// The clock's time when input was last read.
    last_input_ms: u64,
    /// When the idle timeout is looked at next.
    next_idle: Instant,
    /// [`ABORT_ENV`]: Kafka commits left before the process aborts.
    abort_after_kafka_commits: Option<u64>,
    /// When the state database's free space is looked at next (`[state]
    /// compact`, see [`Coordinator::maybe_compact`]).
    next_compact: Instant,
}

/// How often the watermark's idle timeout is looked at (and the longest
/// the coordinator waits for input before it flushes what it holds).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// The first look at the state database's free space, after the start
/// (sooner when `[state] compact` asks for looks more often).
const FIRST_COMPACT_LOOK: Duration = Duration::from_secs(60);

/// For tests only: `EDDY_TEST_ABORT_AFTER_KAFKA_COMMITS=N` aborts the
/// process right after the Nth Kafka transaction commit (not counting a
/// replay's), before the state directory's commit of the same checkpoint.
const ABORT_ENV: &str = "EDDY_TEST_ABORT_AFTER_KAFKA_COMMITS";

impl Coordinator {
    pub(super) fn new(parts: Parts<'_>) -> Coordinator {
        let Parts {
            p,
            begun,
            resume,
            operators,
            workers,
            sink,
            writer,
            controller,
            ctl,
            server,
            watcher,
            reader,
            kafka,
            live,
            versions_dirty,
        } = parts;
        let n = workers.count();
        let mut pending: Vec<Batch> = (0..n).map(|_| Batch::with_capacity(BATCH)).collect();
        let watermark = match resume.watermark {
            Some(w) => {
                // Each worker takes up the checkpointed watermark before
                // any event; nothing fires for it (it did before).
                for b in &mut pending {
                    b.mark_here(w, resume.pos.line, false);
                }
                WatermarkGen::resume(p.watermark, w)
            }
            None => WatermarkGen::new(p.watermark),
        };
        let mut clock = Clock::from_env();
        let mut kafka = kafka;
        if let Some(k) = &mut kafka {
            k.idle_from(clock.now_ms());
        }
        Coordinator {
            begun,
            workers,
            sink,
            writer,
            server,
            watcher,
            reader,
            kafka,
            live,
            pending,
            pos: resume.pos,
            resumed_mid_line: resume.mid_line,
            input_id: resume.input_id,
            out_id: match &p.output {
                Output::File(path) => Some(file_id(path)),
                Output::Stdout | Output::Kafka(_) => None,
            },
            dead_id: file_id(&p.dead_letter),
            stats: vec![vec![OpStats::default(); operators.len()]; n],
            summary: Summary {
                resumed_after_line: resume.pos.line,
                ..Summary::default()
            },
            since_checkpoint: 0,
            ctl,
            controller,
            versions_dirty,
            swaps_unchecked: Vec::new(),
            next_checkpoint: Instant::now() + p.checkpoint_interval,
            last_checkpoint: Instant::now(),
            op_names: operators.iter().map(|o| o.name.clone()).collect(),
            watermark,
            last_input_ms: clock.now_ms(),
            next_idle: Instant::now(),
            clock,
            abort_after_kafka_commits: std::env::var(ABORT_ENV).ok().and_then(|v| v.parse().ok()),
            next_compact: Instant::now()
                + p.compact
                    .map_or(FIRST_COMPACT_LOOK, |c| c.every.min(FIRST_COMPACT_LOOK)),
            p,
        }
    }

    /// Runs the pipeline until its input ends or `shutdown` is triggered,
    /// makes a final checkpoint, then stops everything.
    pub(super) fn run(mut self, shutdown: &Shutdown) -> Result<Summary> {
        let result = self
            .drive(shutdown)
            .and_then(|()| self.checkpoint())
            .and_then(|()| self.wait_commit());
        self.finish(result)
    }

    /// The one shutdown path, after success or failure: stops and joins
    /// every thread in order (reader; swaps still waiting are told why they
    /// failed; the committer; the control endpoint and `--watch`, with
    /// their connections; the workers; the sink), then reports the first
    /// error, or the run's summary.
    fn finish(mut self, result: Result<()>) -> Result<Summary> {
        if let Some(r) = &mut self.reader {
            r.stop();
        }
        if let Some(k) = &mut self.kafka {
            k.reader.stop();
        }
        self.controller.stopped.store(true, Ordering::Release);
        // Swaps not yet made durable fail; their callers are told.
        let why = match &result {
            Ok(()) => NotDurable::Stopped,
            Err(e) => NotDurable::Failed(format!("{e:#}")),
        };
        let unanswered = self.swaps_unchecked.drain(..).chain(self.writer.stop());
        for (reply, _) in unanswered {
            let _ = reply.send(Err(why.clone()));
        }
        // Prepared swaps not switched to: told, and no more accepted (a
        // request sent after this finds the channel closed).
        let ctl = std::mem::replace(&mut self.ctl, crossbeam_channel::never());
        while let Ok(Command::Swap(prepared)) = ctl.try_recv() {
            let _ = prepared.reply.send(Err(why.clone()));
        }
        drop(ctl);
        // The accept loop ends and joins its connections.
        drop(self.server.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let mut worker_error = None;
        for joined in self.workers.stop().into_iter().flatten() {
            match joined {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    worker_error.get_or_insert(anyhow::Error::from(e));
                }
                Err(_) => {
                    worker_error.get_or_insert(anyhow!("a worker thread panicked"));
                }
            }
        }
        // `None`: the coordinator already took the sink's error into
        // `result`.
        let sink_result = self.sink.stop();
        result?;
        if let Some(e) = worker_error {
            return Err(e);
        }
        if let Some(r) = sink_result {
            r?;
        }
        let mut summary = std::mem::take(&mut self.summary);
        summary.operators = self
            .op_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut s = OperatorSummary {
                    name: name.to_string(),
                    ..Default::default()
                };
                for w in &self.stats {
                    s.handled += w[i].handled;
                    s.failed += w[i].failed;
                    s.emitted += w[i].emitted;
                    s.timers_fired += w[i].timers_fired;
                    s.timers_failed += w[i].timers_failed;
                    s.cache_hits += w[i].cache_hits;
                    s.cache_misses += w[i].cache_misses;
                    s.cache_evictions += w[i].cache_evictions;
                }
                s
            })
            .collect();
        summary.elapsed = self.begun.elapsed();
        Ok(summary)
    }

    fn drive(&mut self, shutdown: &Shutdown) -> Result<()> {
        let ctl = self.ctl.clone();
        let chunks = match &self.reader {
            Some(r) => r.chunks().clone(),
            None => crossbeam_channel::never(),
        };
        let chunks = &chunks;
        let records = match &self.kafka {
            Some(k) => k.reader.messages().clone(),
            None => crossbeam_channel::never(),
        };
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            self.poll_commit()?;
            // The idle timeout, looked at every tick whether input comes
            // or not: on a Kafka input one partition may be quiet while
            // the others keep the loop busy.
            if self.p.watermark.idle_timeout_ms.is_some() && Instant::now() >= self.next_idle {
                self.next_idle = Instant::now() + IDLE_TICK;
                self.idle()?;
            }
            // A worker's state cache is over budget with keys only a
            // checkpoint lets go: checkpoint now (not more often than
            // every 20 ms, whatever the workers ask).
            if self
                .workers
                .pressure
                .load(std::sync::atomic::Ordering::Relaxed)
                && self.last_checkpoint.elapsed() >= Duration::from_millis(20)
            {
                self.workers
                    .pressure
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                self.checkpoint_as(false)?;
            }
            let due = self
                .next_checkpoint
                .saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(ctl) -> cmd => {
                    if let Ok(cmd) = cmd {
                        self.command(cmd)?;
                    }
                }
                recv(chunks) -> chunk => match chunk {
                    Ok(chunk) => {
                        if self.chunk(chunk, chunks)? {
                            return Ok(());
                        }
                    }
                    Err(_) => bail!("the input reader stopped unexpectedly"),
                },
                recv(records) -> msg => match msg {
                    Ok(msg) => {
                        if self.kafka_msg(msg)? {
                            return Ok(());
                        }
                    }
                    Err(_) => {
                        let k = self.kafka.as_mut().expect("a Kafka input");
                        return Err(k.reader.failure());
                    }
                },
                default(due.min(IDLE_TICK)) => {
                    self.flush_batches()?;
                    if Instant::now() >= self.next_checkpoint {
                        self.checkpoint()?;
                    }
                    self.maybe_compact(chunks.is_empty() && records.is_empty())?;
                }
            }
        }
    }

    /// The watermark's idle timeout
    /// ([`crate::config::WatermarkSpec::idle_timeout_ms`]):
    /// once no input has come for that long, the watermark follows the
    /// clock (see [`WatermarkGen::idle`]), and what it passes fires.
    fn idle(&mut self) -> Result<()> {
        let Some(timeout) = self.p.watermark.idle_timeout_ms else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if let Some(k) = &mut self.kafka {
            if let Some(w) = k.idle(now, timeout) {
                tracing::debug!("Kafka input partly idle: watermark {w}");
                self.mark(w);
            }
            return Ok(());
        }
        let idle = now.saturating_sub(self.last_input_ms);
        if idle < timeout {
            return Ok(());
        }
        if let Some(w) = self.watermark.idle(idle) {
            tracing::debug!("input idle for {idle} ms: watermark {w}");
            self.mark(w);
        }
        Ok(())
    }

    /// Carries out a prepared swap: the barrier. Events routed so far go to
    /// the old version, later ones to the new.
    ///
    /// For the first operator of the chain, the barrier travels in band:
    /// each worker's next batch carries the new instance at this point of
    /// its events ([`Batch::switch_here`]), so a worker switches between
    /// two events it holds, without waiting for more input, and nothing is
    /// flushed or drained for it. A later operator also gets events from
    /// other workers: every event in flight is handled first, then each
    /// worker gets [`Msg::Swap`] before any event of after the barrier
    /// (which keeps peers' events in order behind it).
    fn command(&mut self, cmd: Command) -> Result<()> {
        let Command::Swap(prepared) = cmd;
        let swap::Prepared {
            stage,
            generation,
            version,
            instances,
            mut report,
            reply,
            claim,
        } = prepared;
        if stage > 0 {
            // Every event before the barrier is in a worker's inbox, and
            // handled.
            self.flush_batches()?;
            self.wait_inflight(|n| n == 0)?;
        }
        // The barrier: unless its asker gave up meanwhile, the swap happens.
        if !claim.switch() {
            let _ = reply.send(Err(NotDurable::GivenUp));
            return Ok(());
        }
        for (w, op) in instances.into_iter().enumerate() {
            if stage == 0 {
                // Sent with the batch (see `flush_batches`: even with no
                // event, before any checkpoint).
                self.pending[w].switch_here(stage, op, generation);
                continue;
            }
            self.workers
                .send(
                    w,
                    Msg::Swap {
                        stage,
                        op,
                        generation,
                    },
                )
                .map_err(|()| anyhow!("worker {w} stopped"))?;
        }
        {
            let mut versions = self.controller.versions();
            let v = &mut versions[stage];
            v.all.push(version);
            v.active = generation;
        }
        self.versions_dirty = true;
        report.barrier_line = self.pos.line;
        self.swaps_unchecked.push((reply, report));
        // Make it durable soon.
        let soon = Instant::now() + Duration::from_millis(50).min(self.p.checkpoint_interval);
        self.next_checkpoint = self.next_checkpoint.min(soon);
        Ok(())
    }

    /// Takes note of a finished commit, if any, without waiting.
    fn poll_commit(&mut self) -> Result<()> {
        match self.writer.poll() {
            Some(done) => committed(done),
            None => Ok(()),
        }
    }

    /// A worker stopped: its error.
    fn worker_failure(&mut self) -> anyhow::Error {
        self.workers.failure().into()
    }

    /// The sink thread stopped: its error (which names the output and the
    /// OS error).
    fn sink_failure(&mut self) -> anyhow::Error {
        match self.sink.failure() {
            Some(f) => f.into(),
            None => anyhow!("the output writer stopped"),
        }
    }

    /// Waits for the checkpoint being committed, if any.
    fn wait_commit(&mut self) -> Result<()> {
        match self.writer.wait() {
            Some(done) => committed(done),
            None => Ok(()),
        }
    }

    /// Makes a checkpoint: a consistent cut of state, input position and
    /// output lengths, committed by the committer thread.
    fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_as(true)
    }

    /// [`Coordinator::checkpoint`]; a `durable: false` one (asked for by
    /// a state cache over budget, between the checkpoints by time) is
    /// visible at once but reaches the disk with the next durable one
    /// (see [`Checkpoint::durable`]), unless it records a swap.
    fn checkpoint_as(&mut self, durable: bool) -> Result<()> {
        // The input stands still from here to the commit's submit
        // (`/metrics`).
        let stalled = Instant::now();
        self.flush_batches()?;
        self.wait_inflight(|n| n == 0)?;
        let seq = self.summary.checkpoints + 1;
        let mut cp = Checkpoint {
            seq,
            durable,
            ..Default::default()
        };
        // Every worker hands over its state at once (they do it in
        // parallel), then the answers are taken in worker order.
        let mut replies = Vec::with_capacity(self.workers.count());
        for w in 0..self.workers.count() {
            let (rtx, rrx) = bounded(1);
            if self.workers.send(w, Msg::Barrier(seq, rtx)).is_err() {
                return Err(self.worker_failure());
            }
            replies.push(rrx);
        }
        for (w, rrx) in replies.into_iter().enumerate() {
            let reply: BarrierReply = match rrx.recv() {
                Ok(r) => r?,
                Err(_) => return Err(self.worker_failure()),
            };
            // Taken as it is, not copied (see `Writes`).
            cp.writes.add(reply.writes);
            cp.timers.extend(reply.timers);
            self.stats[w] = reply.stats;
        }
        let offsets = match &self.kafka {
            Some(k) => k.next.clone(),
            None => Vec::new(),
        };
        // Group mode: the state changes go to the changelog topics in the
        // transaction (and come back for the state directory).
        let changelog = match &self.kafka {
            Some(k) if k.group.is_some() => Some(Arc::new(crate::sink::Changes {
                writes: std::mem::take(&mut cp.writes),
                timers: std::mem::take(&mut cp.timers),
            })),
            _ => None,
        };
        if let Some(k) = self.kafka.as_ref().filter(|k| k.group.is_none()) {
            for (part, next) in k.parts.iter().zip(&k.next) {
                if let Some(next) = next {
                    cp.meta
                        .push((part.meta_name(), next.to_le_bytes().to_vec()));
                }
            }
        }
        if let Some(k) = &self.kafka {
            if k.watermark != i64::MIN {
                let w = k.watermark.to_le_bytes().to_vec();
                cp.meta.push((format!("watermark:{}", k.id), w));
            }
        }
        let (ftx, frx) = bounded(1);
        let flush = SinkMsg::Flush {
            offsets,
            changelog: changelog.clone(),
            reply: ftx,
        };
        if self.sink.send(flush).is_err() {
            return Err(self.sink_failure());
        }
        let lens = match frx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(self.sink_failure()),
        };
        if let Some(c) = changelog {
            let c = Arc::try_unwrap(c).unwrap_or_else(|c| (*c).clone());
            cp.writes = c.writes;
            cp.timers = c.timers;
        }
        if let Some(k) = &self.kafka {
            k.publish(&self.live);
        }
        // Tests of the exactly-once protocol: die between the Kafka commit
        // and the state directory's, the one window where they disagree.
        if self.kafka.as_ref().is_some_and(|k| !k.replaying) {
            if let Some(n) = &mut self.abort_after_kafka_commits {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    eprintln!(
                        "{ABORT_ENV}: aborting after a Kafka commit, before the state directory's"
                    );
                    std::process::abort();
                }
            }
        }
        // Outputs that are not regular files have no length to keep.
        if let (Some(id), Some(len)) = (&self.out_id, lens.out) {
            cp.sinks.push((id.clone(), len));
        }
        if let Some(len) = lens.dead {
            cp.sinks.push((self.dead_id.clone(), len));
        }
        cp.source = self.input_id.clone().map(|id| (id, self.pos));
        if let Some(id) = &self.input_id {
            if self.watermark.current() != i64::MIN {
                let w = self.watermark.current().to_le_bytes().to_vec();
                cp.meta.push((format!("watermark:{id}"), w));
            }
        }
        // One commit at a time: the previous must be durable first.
        self.wait_commit()?;
        let mut acks = Vec::new();
        if self.versions_dirty {
            self.versions_dirty = false;
            for (op, v) in self.controller.versions().iter().enumerate() {
                let name = swap::Versions::meta_name(&self.op_names[op]);
                cp.meta.push((name, serde_json::to_vec(v).expect("json")));
            }
            acks = std::mem::take(&mut self.swaps_unchecked);
            // A swap is reported once it is on disk.
            cp.durable = true;
        }
        self.live.checkpoints.stalled(stalled.elapsed());
        self.writer.submit(cp, acks)?;
        self.summary.checkpoints += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.next_checkpoint = self.last_checkpoint + self.p.checkpoint_interval;
        Ok(())
    }
}

/// A commit finished: reports the swaps it made durable (or why not).
fn committed(done: checkpoint::Done<SwapAck>) -> Result<()> {
    match done.result {
        Ok(()) => {
            for (reply, report) in done.acks {
                let _ = reply.send(Ok(report));
            }
            Ok(())
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            for (reply, _) in done.acks {
                let _ = reply.send(Err(NotDurable::CheckpointFailed(format!("{e:#}"))));
            }
            Err(e)
        }
    }
}
