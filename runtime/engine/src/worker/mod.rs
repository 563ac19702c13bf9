//! The workers: each thread (`eddy-worker-N`) runs its own instance of
//! every operator of the chain for the keys routed to it, in arrival order.
//!
//! Events come in batches ([`Batch`]). An event handled by operator `i`
//! yields emitted events for operator `i + 1`, routed by their (new) key:
//! to this worker inline, or batched to the owning peer. After the last
//! operator, emitted events become output lines for the sink.
//!
//! The watermark of the first operator's input advances in band too
//! ([`Batch::mark_here`]): at its place among the events, the worker fires
//! that operator's timers due there, in (time, key, name) order, and routes
//! what they emit as it does an event's emits.
//!
//! A hot swap reaches a worker in band, at its barrier's place in the
//! stream: between two events of a batch for the first operator of the
//! chain (so the new version starts on the very next event, with no wait
//! for input), as [`Msg::Swap`] for a later one. The old instance hands its
//! state cache over and is dropped on the reaper thread (unmapping its
//! memory is not the worker's time).
//!
//! # Layout
//!
//! - [`batch`]: [`Batch`], events packed in one buffer.
//! - [`pool`]: [`Workers`], the threads started together and stopped
//!   together, and [`InFlight`], the count of batches not yet handled.
//! - here: [`Worker`], one thread's loop.
//! - `tests`: a worker on its own (swaps in a batch, their pauses).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::operator::{fire_due, EventRef, Operator, RunError, TimerUse};
use crate::route::route;
use crate::sink::format::{frame_repartition, push_field, Formats};
use crate::sink::SinkMsg;
use crate::state::{StateWrite, Store, StoreError, TimerWrite};
use crate::stats::{Live, OpStats, SwapPause, PAUSES_KEPT};

mod batch;
mod pool;
#[cfg(test)]
mod tests;

pub use batch::Batch;
pub use pool::{InFlight, Workers};

use batch::{Cut, Switch};

/// Output (or dead letters) a worker buffers before handing it to the sink
/// in the middle of a batch.
const FLUSH_BYTES: usize = 4 << 20;

/// A worker's answer to a checkpoint barrier.
pub struct BarrierReply {
    /// Its keys' state changed since the last checkpoint.
    pub writes: Vec<StateWrite>,
    /// Its keys' timers changed since the last checkpoint.
    pub timers: Vec<TimerWrite>,
    /// Its counters, per operator.
    pub stats: Vec<OpStats>,
}

/// Messages to a worker.
pub enum Msg {
    /// Events to handle (and swaps between them); send it with
    /// [`Msg::batch`], which notes when.
    Batch(Batch),
    /// All events before it are handled: hand over the changed state, for
    /// checkpoint number `.0` (see [`crate::state::Checkpoint::seq`]).
    Barrier(u64, Sender<Result<BarrierReply, StoreError>>),
    /// Hot swap: from here on operator `stage` is `op` (already
    /// instantiated and initialised), running generation `generation`. It
    /// takes over the old instance's state cache.
    Swap {
        /// The operator's index in the chain.
        stage: usize,
        /// The new version's instance for this worker.
        op: Box<dyn Operator>,
        /// The new version's generation.
        generation: u32,
    },
    /// Group mode, after a checkpoint that made every key clean: renew
    /// the readers of committed state (a restore may have written keys
    /// this worker will now read), then drop every cached key `drop`
    /// selects (their partitions moved to another process, which changes
    /// them from now on).
    Release {
        /// Which keys go.
        drop: KeyFilter,
        /// Keys whose pending timers to load from the state directory
        /// (their partitions were restored into it).
        load: Option<KeyFilter>,
        /// How many selected keys could not go (changed since the last
        /// checkpoint: none should), or why the readers could not be
        /// renewed.
        reply: Sender<Result<usize, StoreError>>,
    },
    /// Let go of every reader of committed state (so that the state
    /// database can be compacted), then answer. The readers are renewed
    /// before the next message is handled: the sender sends none until
    /// the compaction is over.
    DropReaders(Sender<()>),
    /// Stop after what came before.
    Stop,
}

/// Selects keys of an operator (by its index in the chain): in Kafka group
/// mode, by the partition they hash to.
pub type KeyFilter = Arc<KeyFilterFn>;

/// What a [`KeyFilter`] calls.
pub type KeyFilterFn = dyn Fn(usize, &str) -> bool + Send + Sync;

impl Msg {
    /// `batch`, noted as handed over now (the earliest its events can be
    /// handled, for swap pauses).
    pub fn batch(mut batch: Batch) -> Msg {
        batch.sent = Some(Instant::now());
        Msg::Batch(batch)
    }
}

/// A swap as a worker made it, until the new version's first event.
#[derive(Clone, Copy)]
struct Switched {
    /// When the old version's last event on this worker ended (`None`: it
    /// handled none).
    old_end: Option<Instant>,
    /// When the new instance was put in place.
    at: Instant,
    generation: u32,
}

/// Why a worker stopped: the pipeline stops (state since the last
/// checkpoint is not committed; a restart resumes from there).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Handling events failed.
    #[error("worker {worker}: {error}")]
    Failed {
        /// Which worker.
        worker: usize,
        /// What went wrong.
        error: RunError,
    },
    /// Handing over its state at a checkpoint failed; the error went to
    /// the coordinator with the barrier's answer.
    #[error("worker {worker}: its checkpoint barrier failed")]
    Barrier {
        /// Which worker.
        worker: usize,
    },
}

/// What a worker thread owns.
struct Worker {
    id: usize,
    ops: Vec<Box<dyn Operator>>,
    /// Every worker's inbox, this one's included.
    peers: Vec<Sender<Msg>>,
    sink: Sender<SinkMsg>,
    /// Batches sent to workers and not yet fully handled.
    inflight: Arc<InFlight>,
    store: Store,
    stats: Vec<OpStats>,
    /// Events bound for peers, per peer.
    outbox: Vec<Batch>,
    /// Kafka group mode: events for later operators, framed for their
    /// repartition topics.
    regroup: Vec<u8>,
    /// Output lines not yet handed to the sink.
    out: Vec<u8>,
    /// Dead letters not yet handed to the sink.
    dead: Vec<u8>,
    /// Shared with `eddy status`.
    live: Arc<Live>,
    /// Per operator: when its last run of events ended (for swap pauses).
    last_end: Vec<Option<Instant>>,
    /// Per operator: a swap happened, until the new version's first event.
    swapped_at: Vec<Option<Switched>>,
    /// Per operator: how long the new version's first run took, and for
    /// how many events, until its second run gives its usual pace.
    first_run: Vec<Option<(Duration, usize)>>,
    /// When the batch being handled was handed to this worker: its events
    /// could not be handled earlier (for swap pauses).
    avail: Instant,
    /// Input line of the last event handled.
    line: u64,
    /// Instances swapped out go there to be dropped, off this thread.
    reaper: Sender<Box<dyn Operator>>,
    /// How outputs and dead letters are written for the sink.
    formats: Formats,
    /// This worker's share of the state cache's memory budget
    /// (`usize::MAX`: unbounded).
    budget: usize,
    /// Set to ask the coordinator for a checkpoint now: the cache is
    /// over budget with keys that only a checkpoint lets go.
    pressure: Arc<AtomicBool>,
    /// The barrier and durable checkpoint numbers when an eviction last
    /// fell short: no new sweep until one of them moves.
    futile: Option<(u64, u64)>,
    /// Number of the last checkpoint barrier.
    taken: u64,
    /// The readers were let go ([`Msg::DropReaders`]): renew them before
    /// handling anything.
    readers_dropped: bool,
}

impl Worker {
    /// Runs until [`Msg::Stop`] or until the inbox closes.
    fn run(mut self, inbox: Receiver<Msg>) -> Result<Vec<OpStats>, WorkerError> {
        for msg in inbox {
            if self.readers_dropped && !matches!(msg, Msg::Stop | Msg::DropReaders(_)) {
                if let Err(e) = self.renew_readers() {
                    return Err(self.fail(e.into()));
                }
            }
            match msg {
                Msg::DropReaders(reply) => {
                    for op in &mut self.ops {
                        op.ctx().drop_reader();
                    }
                    self.readers_dropped = true;
                    let _ = reply.send(());
                }
                Msg::Batch(mut batch) => {
                    let r = self.handle_batch(&mut batch);
                    self.flush();
                    let r = r.and_then(|()| Ok(self.trim()?));
                    self.publish();
                    if let Err(e) = r {
                        return Err(self.fail(e));
                    }
                    self.inflight.done();
                }
                Msg::Swap {
                    stage,
                    op,
                    generation,
                } => self.swap(stage, op, generation),
                Msg::Barrier(seq, reply) => {
                    let r = self.barrier(seq);
                    let failed = r.is_err();
                    let _ = reply.send(r);
                    if failed {
                        return Err(WorkerError::Barrier { worker: self.id });
                    }
                }
                Msg::Release { drop, load, reply } => {
                    let r = self.release(&*drop, load.as_deref());
                    self.publish();
                    let _ = reply.send(r);
                }
                Msg::Stop => break,
            }
        }
        Ok(self.stats)
    }

    /// Gives up after `e`: the batch in hand is never done, and nothing
    /// more is sent here. The coordinator, which waits on batches in flight
    /// before it sends one (or a checkpoint barrier), is woken when this
    /// thread ends ([`InFlight::ended`]) and joins it for `e`; a send it
    /// was making meanwhile fails and reports `e` too.
    fn fail(&self, e: RunError) -> WorkerError {
        let e = WorkerError::Failed {
            worker: self.id,
            error: e,
        };
        tracing::error!("{e}");
        e
    }

    /// Puts operator `stage`'s new instance in place, handing it the old
    /// one's state cache (an O(1) exchange); the old instance goes to the
    /// reaper.
    fn swap(&mut self, stage: usize, mut op: Box<dyn Operator>, generation: u32) {
        let old = &mut self.ops[stage];
        std::mem::swap(op.ctx(), old.ctx());
        op.ctx().set_generation(generation);
        let old = std::mem::replace(&mut self.ops[stage], op);
        self.allow_timers(stage);
        if let Err(unsent) = self.reaper.send(old) {
            // No reaper (it only ends after every worker): drop it here.
            drop(unsent.into_inner());
        }
        self.swapped_at[stage] = Some(Switched {
            old_end: self.last_end[stage],
            at: Instant::now(),
            generation,
        });
    }

    /// Tells operator `stage`'s context whether it may set timers: only
    /// the first operator of the chain, and only when it handles them.
    fn allow_timers(&mut self, stage: usize) {
        let op = &mut self.ops[stage];
        let use_ = match (stage, op.handles_timers()) {
            (0, true) => TimerUse::Allowed,
            (0, false) => TimerUse::NoHandler,
            _ => TimerUse::LaterStage,
        };
        op.ctx().set_timer_use(use_);
    }

    /// Notes the pause of the swap of operator `stage`, whose new version
    /// starts its first event now.
    fn pause(&mut self, stage: usize, sw: Switched) {
        let start = Instant::now();
        // The new version could have started once the old one was done
        // and this event had reached the worker: the pause is what the
        // swap added from there. Before that the worker had no event of
        // after the barrier to handle (`idle_us`).
        let ready = sw.old_end.map_or(self.avail, |end| end.max(self.avail));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pause = SwapPause {
            stage,
            generation: sw.generation,
            pause_us: us(start.saturating_duration_since(ready)),
            before_switch_us: us(sw.at.saturating_duration_since(ready)),
            idle_us: sw
                .old_end
                .map_or(0.0, |end| us(ready.saturating_duration_since(end))),
            first_run_extra_us: 0.0,
        };
        let mut live = self.live.worker(self.id);
        if live.pauses.len() >= PAUSES_KEPT {
            live.pauses.remove(0);
        }
        live.pauses.push(pause);
    }

    /// Notes how much longer the new version of operator `stage` took on
    /// its first run of events than at the pace of its second (a new
    /// instance's first call meets fresh memory and cold caches): part of
    /// what its swap costs.
    fn first_run_extra(
        &mut self,
        stage: usize,
        (first, n1): (Duration, usize),
        (second, n2): (Duration, usize),
    ) {
        let pace = second.as_secs_f64() / n2.max(1) as f64;
        let extra_us = (first.as_secs_f64() - pace * n1 as f64).max(0.0) * 1e6;
        let mut live = self.live.worker(self.id);
        if let Some(p) = live.pauses.iter_mut().rev().find(|p| p.stage == stage) {
            p.first_run_extra_us = extra_us;
        }
    }

    /// Keeps the state cache within this worker's budget, between
    /// batches: evicts cold keys (largest caches first), renewing the
    /// readers first when a checkpoint became durable. When that falls
    /// short, or when the keys changed since the last checkpoint take a
    /// quarter of the budget, asks for a checkpoint: it lets them go.
    fn trim(&mut self) -> Result<(), StoreError> {
        if self.budget == usize::MAX {
            return Ok(());
        }
        let (mut total, mut dirty) = (0usize, 0usize);
        for op in &mut self.ops {
            total += op.ctx().cache_bytes();
            dirty += op.ctx().dirty_bytes();
        }
        if dirty > self.budget / 4 {
            self.pressure.store(true, Ordering::Relaxed);
        }
        if total <= self.budget {
            return Ok(());
        }
        let durable = self.store.durable_seq();
        if self.futile == Some((self.taken, durable)) {
            return Ok(());
        }
        // Down to 7/8 of the budget, so that eviction runs in sweeps, not
        // at every batch.
        let mut want = total - self.budget / 8 * 7;
        let mut order: Vec<usize> = (0..self.ops.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.ops[i].ctx().cache_bytes()));
        for i in order {
            let ctx = self.ops[i].ctx();
            if durable > ctx.reader_seq() {
                let reader = self.store.reader()?;
                ctx.renew_reader(reader, durable);
            }
            want = want.saturating_sub(ctx.evict(want));
            if want == 0 {
                break;
            }
        }
        if want > 0 {
            self.futile = Some((self.taken, durable));
            self.pressure.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// New readers of committed state for every operator, after
    /// [`Msg::DropReaders`].
    fn renew_readers(&mut self) -> Result<(), StoreError> {
        for op in &mut self.ops {
            let durable = self.store.durable_seq();
            let reader = self.store.reader()?;
            op.ctx().renew_reader(reader, durable);
        }
        self.readers_dropped = false;
        Ok(())
    }

    /// [`Msg::Release`].
    fn release(
        &mut self,
        drop: &KeyFilterFn,
        load: Option<&KeyFilterFn>,
    ) -> Result<usize, StoreError> {
        let durable = self.store.durable_seq();
        let workers = self.peers.len();
        let mut kept = 0;
        for (i, op) in self.ops.iter_mut().enumerate() {
            let ctx = op.ctx();
            let reader = self.store.reader()?;
            ctx.renew_reader(reader, durable);
            kept += ctx.release(&|key| drop(i, key));
            if let Some(load) = load {
                let name = ctx.name().to_string();
                for (key, timer, at) in self.store.timers(&name)? {
                    if load(i, &key) && route(&key, workers) == self.id {
                        ctx.restore_timer(&key, &timer, at)?;
                    }
                }
            }
        }
        Ok(kept)
    }

    /// Shows this worker's counters and position to `eddy status`.
    fn publish(&mut self) {
        for (op, stats) in self.ops.iter_mut().zip(&mut self.stats) {
            let c = op.ctx().cache_stats();
            stats.cache_hits = c.hits;
            stats.cache_misses = c.misses;
            stats.cache_evictions = c.evictions;
            stats.cache_keys = c.keys;
            stats.cache_bytes = c.bytes;
        }
        let mut live = self.live.worker(self.id);
        live.ops.clone_from(&self.stats);
        live.line = self.line;
    }

    /// Handles a batch, making its swaps where they fall between its
    /// events.
    fn handle_batch(&mut self, batch: &mut Batch) -> Result<(), RunError> {
        let outer = self.avail;
        self.avail = batch.sent.unwrap_or_else(Instant::now);
        let mut cuts: VecDeque<Cut> = std::mem::take(&mut batch.cuts).into();
        let len = batch.events.len();
        let mut from = 0;
        // Events `from..scanned` wait to be handled across advances that
        // fire nothing; `bound` is the earliest time a timer they set can
        // have (see `Worker::quiet`).
        let (mut scanned, mut bound) = (0, i64::MAX);
        // The advances the run in hand goes on across, and the watermark
        // before the first of them.
        let mut passed: Vec<Cut> = Vec::new();
        let mut before = i64::MIN;
        let r = loop {
            let cut = cuts.pop_front();
            let at = cut.as_ref().map_or(len, |c| c.at().clamp(from, len));
            if let Some(Cut::Mark { w, fire: true, .. }) = cut {
                if self.quiet(batch, &mut scanned, &mut bound, at, w) {
                    if passed.is_empty() {
                        before = self.ops[0].ctx().watermark();
                    }
                    self.ops[0].ctx().set_watermark(w);
                    passed.extend(cut);
                    continue;
                }
            }
            (scanned, bound) = (at, i64::MAX);
            let reached = match self.handle_events(batch, from, at, !passed.is_empty()) {
                Ok(reached) => reached,
                Err(e) => break Err(e),
            };
            if reached < at {
                // The first operator stopped the run before event
                // `reached`, which needs its own watermark: the advances
                // after it are made again, from there.
                if let Some(c) = cut {
                    cuts.push_front(c);
                }
                let mut w = before;
                for c in passed.drain(..).rev() {
                    match c {
                        Cut::Mark { at, w: cw, .. } if at <= reached => w = w.max(cw),
                        c => cuts.push_front(c),
                    }
                }
                self.ops[0].ctx().set_watermark(w);
                from = reached;
                (scanned, bound) = (reached, i64::MAX);
                continue;
            }
            passed.clear();
            let Some(cut) = cut else { break Ok(()) };
            match cut {
                Cut::Switch(Switch {
                    stage,
                    op,
                    generation,
                    ..
                }) => self.swap(stage, op, generation),
                Cut::Mark { w, line, fire, .. } => {
                    if !fire {
                        self.ops[0].ctx().set_watermark(w);
                    } else if let Err(e) = self.advance(w, line) {
                        break Err(e);
                    }
                }
            }
            from = at;
        };
        self.avail = outer;
        r
    }

    /// Whether the watermark advance to `w` before the batch's event `at`
    /// can be passed over without ending the run of events in hand: the
    /// first operator says when the timers its events set can be due
    /// ([`Operator::timer_bound`]), none of them (`scanned..at`, added to
    /// `bound`) nor of its pending ones is due at `w`, it has no state
    /// time to live to expire, and `w` is not the end of the input. Then
    /// the advance would do nothing but move the watermark, which that
    /// operator does not read while it handles events.
    fn quiet(
        &mut self,
        batch: &Batch,
        scanned: &mut usize,
        bound: &mut i64,
        at: usize,
        w: i64,
    ) -> bool {
        if w == i64::MAX {
            return false;
        }
        let op = &mut self.ops[0];
        for e in &batch.events[(*scanned).min(at)..at] {
            if e.stage != 0 {
                continue;
            }
            if e.late {
                // Handled on its own, with the watermark of its place.
                *bound = i64::MIN;
                break;
            }
            let event = EventRef {
                key: batch.key(e),
                value: &batch.data[e.mid..e.end],
                time: e.time,
                line: e.line,
            };
            match op.timer_bound(&event) {
                Some(b) => *bound = (*bound).min(b),
                None => {
                    // It cannot tell: nothing more to look at.
                    *bound = i64::MIN;
                    break;
                }
            }
        }
        *scanned = at;
        let ctx = op.ctx();
        *bound >= w && ctx.timers().next().is_none_or(|next| next >= w) && !ctx.has_ttl()
    }

    /// Handles the batch's events `from..to`: each run of consecutive
    /// events for the same operator goes to that operator in one
    /// `handle_many` call.
    ///
    /// `span`: the events go on across watermark advances the worker
    /// passed over ([`Worker::quiet`]); the first operator may then stop
    /// early ([`Operator::handle_span`]). Returns the index of the first
    /// event not handled (`to` when all were).
    fn handle_events(
        &mut self,
        batch: &Batch,
        from: usize,
        to: usize,
        span: bool,
    ) -> Result<usize, RunError> {
        let mut start = from;
        while start < to {
            let stage = batch.events[start].stage;
            let late = batch.events[start].late;
            // A late event (delivered under `late = "deliver"`) is handled
            // on its own, with the flag set.
            let end = if late {
                start + 1
            } else {
                batch.events[start..to]
                    .iter()
                    .position(|e| e.stage != stage || e.late)
                    .map_or(to, |n| start + n)
            };
            let run = &batch.events[start..end];
            let events: Vec<EventRef<'_>> = run
                .iter()
                .map(|e| EventRef {
                    key: batch.key(e),
                    value: &batch.data[e.mid..e.end],
                    time: e.time,
                    line: e.line,
                })
                .collect();
            let lines: Vec<u64> = run.iter().map(|e| e.line).collect();
            if late {
                self.ops[stage as usize].ctx().set_late(true);
            }
            let r = self.process_run(stage as usize, &events, &lines, span && stage == 0);
            if late {
                self.ops[stage as usize].ctx().set_late(false);
            }
            let n = r?;
            if n < events.len() {
                return Ok(start + n);
            }
            start = end;
        }
        Ok(to)
    }

    /// Handles `events` with operator `stage`, then (depth first, in
    /// order) what they emitted; with `span`, through
    /// [`Operator::handle_span`], which may handle only the first ones.
    /// Returns how many were handled.
    fn process_run(
        &mut self,
        stage: usize,
        events: &[EventRef<'_>],
        lines: &[u64],
        span: bool,
    ) -> Result<usize, RunError> {
        let last = stage + 1 == self.ops.len();
        let workers = self.peers.len();
        let me = self.id;
        // Emitted events this worker handles itself, for the next operator.
        let mut local = Batch::default();
        let first = match self.swapped_at[stage].take() {
            Some(sw) => {
                self.pause(stage, sw);
                true
            }
            None => false,
        };
        let run_start = Instant::now();
        if let Some(&l) = lines.last() {
            self.line = self.line.max(l);
        }
        let Worker {
            ops,
            stats,
            dead,
            out,
            regroup,
            outbox,
            last_end,
            sink,
            formats,
            ..
        } = self;
        let op = &mut ops[stage];
        let name = op.ctx().name().clone();
        let version = op.version().to_string();
        let stats = &mut stats[stage];
        let on_done: &mut crate::operator::Done<'_> = &mut |i, result, emitted| {
            let e = &events[i];
            match result {
                Ok(()) => {
                    stats.handled += 1;
                    stats.emitted += emitted.len() as u64;
                }
                Err(err) => {
                    stats.failed += 1;
                    stats.count_limit(&err);
                    let mut rec = serde_json::json!({
                        "operator": &*name,
                        "version": &version,
                        "key": e.key,
                        "line": lines[i],
                        "error": err.to_string(),
                    });
                    formats.position(&mut rec);
                    // `payload` last, inline when JSON (`payload_base64`
                    // when not UTF-8).
                    let mut s = serde_json::to_vec(&rec).expect("json");
                    s.pop();
                    s.push(b',');
                    push_field(&mut s, "payload", e.value);
                    s.extend_from_slice(b"}\n");
                    dead.extend_from_slice(&s);
                }
            }
            for (key, value) in emitted.iter() {
                if last {
                    formats.output(out, key, value);
                } else if formats.repartition {
                    frame_repartition(regroup, stage as u16 + 1, e.time, key, value);
                } else {
                    let target = route(key, workers);
                    let b = if target == me {
                        &mut local
                    } else {
                        &mut outbox[target]
                    };
                    b.push(stage as u16 + 1, key, value, e.time, lines[i]);
                }
            }
            emitted.clear();
            // What a run's events emit can add up to far more than one
            // event may: hand output over as it grows, not at the end.
            if out.len() >= FLUSH_BYTES {
                let _ = sink.send(SinkMsg::Out(std::mem::take(out)));
            }
            if regroup.len() >= FLUSH_BYTES {
                let _ = sink.send(SinkMsg::Repartition(std::mem::take(regroup)));
            }
            if dead.len() >= FLUSH_BYTES {
                let _ = sink.send(SinkMsg::Dead(std::mem::take(dead)));
            }
        };
        let handled = match span {
            true => op.handle_span(events, on_done)?,
            false => {
                op.handle_many(events, on_done)?;
                events.len()
            }
        };
        let end = Instant::now();
        last_end[stage] = Some(end);
        let took = end - run_start;
        self.live.ops[stage].handling.observe(took);
        if first {
            self.first_run[stage] = Some((took, events.len()));
        } else if let Some(first) = self.first_run[stage].take() {
            self.first_run_extra(stage, first, (took, events.len()));
        }
        if !local.is_empty() {
            // Its events exist from now on.
            local.sent = Some(Instant::now());
            self.handle_batch(&mut local)?;
        }
        Ok(handled)
    }

    /// Advances the watermark of the first operator's input to `w` (at
    /// input line `line`) and fires its timers due there; what they emit
    /// goes on as an event's emits do (then, depth first, is handled).
    /// A firing that fails is dead-lettered with its timer.
    fn advance(&mut self, w: i64, line: u64) -> Result<(), RunError> {
        let stage = 0;
        let last = stage + 1 == self.ops.len();
        let workers = self.peers.len();
        let me = self.id;
        let mut local = Batch::default();
        self.line = self.line.max(line);
        let Worker {
            ops,
            stats,
            dead,
            out,
            regroup,
            outbox,
            sink,
            formats,
            ..
        } = self;
        let op = &mut ops[stage];
        // Entries whose time to live ran out go first: nothing handled
        // from here on reads them.
        op.ctx().set_watermark(w);
        op.ctx().expire_due(w);
        if op
            .ctx()
            .timers()
            .next()
            .is_none_or(|next| next >= w && w != i64::MAX)
        {
            op.ctx().set_watermark(w);
            return Ok(());
        }
        let name = op.ctx().name().clone();
        let version = op.version().to_string();
        let stats = &mut stats[stage];
        fire_due(
            &mut **op,
            w,
            line,
            &mut |key, timer, at, result, emitted| {
                stats.timers_fired += 1;
                if let Err(err) = result {
                    stats.timers_failed += 1;
                    stats.count_limit(&err);
                    let mut rec = serde_json::json!({
                        "operator": &*name,
                        "version": &version,
                        "key": key,
                        "line": line,
                        "error": err.to_string(),
                        "timer": { "name": timer, "at": at },
                    });
                    formats.position(&mut rec);
                    let mut s = serde_json::to_vec(&rec).expect("json");
                    s.push(b'\n');
                    dead.extend_from_slice(&s);
                }
                stats.emitted += emitted.len() as u64;
                for (key, value) in emitted.iter() {
                    if last {
                        formats.output(out, key, value);
                    } else if formats.repartition {
                        frame_repartition(regroup, stage as u16 + 1, Some(at), key, value);
                    } else {
                        let target = route(key, workers);
                        let b = if target == me {
                            &mut local
                        } else {
                            &mut outbox[target]
                        };
                        b.push(stage as u16 + 1, key, value, Some(at), line);
                    }
                }
                emitted.clear();
                if out.len() >= FLUSH_BYTES {
                    let _ = sink.send(SinkMsg::Out(std::mem::take(out)));
                }
                if regroup.len() >= FLUSH_BYTES {
                    let _ = sink.send(SinkMsg::Repartition(std::mem::take(regroup)));
                }
                if dead.len() >= FLUSH_BYTES {
                    let _ = sink.send(SinkMsg::Dead(std::mem::take(dead)));
                }
            },
        )?;
        if !local.is_empty() {
            local.sent = Some(Instant::now());
            self.handle_batch(&mut local)?;
        }
        Ok(())
    }

    /// Sends batched peer events and output.
    fn flush(&mut self) {
        for (i, b) in self.outbox.iter_mut().enumerate() {
            if !b.is_empty() {
                let b = std::mem::take(b);
                self.inflight.add();
                if self.peers[i].send(Msg::batch(b)).is_err() {
                    self.inflight.done();
                }
            }
        }
        if !self.out.is_empty() {
            let _ = self.sink.send(SinkMsg::Out(std::mem::take(&mut self.out)));
        }
        if !self.regroup.is_empty() {
            let _ = self
                .sink
                .send(SinkMsg::Repartition(std::mem::take(&mut self.regroup)));
        }
        if !self.dead.is_empty() {
            let _ = self
                .sink
                .send(SinkMsg::Dead(std::mem::take(&mut self.dead)));
        }
    }

    fn barrier(&mut self, seq: u64) -> Result<BarrierReply, StoreError> {
        let mut writes = Vec::new();
        let mut timers = Vec::new();
        self.taken = seq;
        for op in &mut self.ops {
            op.ctx().take_dirty(seq, &mut writes);
            op.ctx().take_timer_writes(&mut timers);
            // The reader sees at least the checkpoints durable before it
            // was made.
            let durable = self.store.durable_seq();
            let reader = self.store.reader()?;
            op.ctx().renew_reader(reader, durable);
        }
        self.publish();
        Ok(BarrierReply {
            writes,
            timers,
            stats: self.stats.clone(),
        })
    }
}
