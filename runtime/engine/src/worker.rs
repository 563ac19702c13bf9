//! A worker thread: runs its own instance of every operator of the chain
//! for the keys routed to it, in arrival order.
//!
//! Events come in batches ([`Batch`]). An event handled by operator `i`
//! yields emitted events for operator `i + 1`, routed by their (new) key:
//! to this worker inline, or batched to the owning peer. After the last
//! operator, emitted events become output lines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crossbeam_channel::{Receiver, Sender};

use crate::io::{format_output, push_field, SinkMsg};
use crate::operator::{EventRef, Operator, RunError};
use crate::store::{StateWrite, Store, StoreError};

/// Number of key groups: keys hash into groups, groups map onto workers.
pub const KEY_GROUPS: u64 = 256;

/// The worker owning `key` among `workers`.
pub fn route(key: &str, workers: usize) -> usize {
    let h = rustc_hash::FxBuildHasher.hash_one(key.as_bytes());
    // Fx's low bits are weak: take the high ones for the group.
    let group = (h >> 32) % KEY_GROUPS;
    (group % workers as u64) as usize
}

use std::hash::BuildHasher;

/// One event in a batch; key and value are ranges of the batch's bytes:
/// the key `start..mid`, the value `mid..end` (`usize`: no amount of
/// emitted bytes can wrap them).
#[derive(Clone, Copy)]
struct Ev {
    /// Index of the operator that handles it.
    stage: u16,
    start: usize,
    mid: usize,
    end: usize,
    time: Option<i64>,
    /// Input line it derives from (for dead letters).
    line: u64,
}

/// Events packed in one buffer: one allocation per batch, not per event.
#[derive(Default)]
pub struct Batch {
    data: Vec<u8>,
    events: Vec<Ev>,
}

impl Batch {
    /// An empty batch with room for `n` events.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(n * 64),
            events: Vec::with_capacity(n),
        }
    }

    /// Appends an event for operator `stage`.
    pub fn push(&mut self, stage: u16, key: &str, value: &[u8], time: Option<i64>, line: u64) {
        let start = self.data.len();
        self.data.extend_from_slice(key.as_bytes());
        let mid = self.data.len();
        self.data.extend_from_slice(value);
        let end = self.data.len();
        self.events.push(Ev {
            stage,
            start,
            mid,
            end,
            time,
            line,
        });
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there is no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn key(&self, e: &Ev) -> &str {
        // Only ever filled from `&str` keys.
        std::str::from_utf8(&self.data[e.start..e.mid]).expect("keys are UTF-8")
    }
}

/// Counters of one operator on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Events handled successfully.
    pub handled: u64,
    /// Events that failed (dead-lettered).
    pub failed: u64,
    /// Events emitted.
    pub emitted: u64,
}

/// One hot swap as a worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SwapPause {
    /// Operator index in the chain.
    pub stage: usize,
    /// Generation swapped in.
    pub generation: u32,
    /// Time from the end of the last event the old version handled on this
    /// worker to the start of the first event the new version handled, in
    /// microseconds.
    pub pause_us: f64,
    /// The part of `pause_us` before the worker took the swap message (the
    /// old version's last event to the switch), in microseconds.
    pub before_switch_us: f64,
}

/// What a worker shows of itself while it runs (`eddy status`), updated
/// after every batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerLive {
    /// Counters per operator.
    pub ops: Vec<OpStats>,
    /// Input line of the last event this worker handled (its position).
    pub line: u64,
    /// The most recent swaps (at most [`PAUSES_KEPT`]), oldest first.
    pub pauses: Vec<SwapPause>,
}

/// Output (or dead letters) a worker buffers before handing it to the sink
/// in the middle of a batch.
const FLUSH_BYTES: usize = 4 << 20;

/// Swap pauses kept per worker for `eddy status` and the bench.
pub const PAUSES_KEPT: usize = 4096;

/// Every worker's [`WorkerLive`], by worker id.
pub type Live = Arc<Vec<Mutex<WorkerLive>>>;

/// A worker's answer to a checkpoint barrier.
pub struct BarrierReply {
    pub writes: Vec<StateWrite>,
    pub stats: Vec<OpStats>,
}

/// Messages to a worker.
pub enum Msg {
    Batch(Batch),
    /// All events before it are handled: hand over the changed state.
    Barrier(Sender<Result<BarrierReply, StoreError>>),
    /// Hot swap: from here on operator `stage` is `op` (already
    /// instantiated and initialised), running generation `generation`. It
    /// takes over the old instance's state cache.
    Swap {
        stage: usize,
        op: Box<dyn Operator>,
        generation: u32,
    },
    Stop,
}

/// What a worker thread owns.
pub struct Worker {
    pub id: usize,
    pub ops: Vec<Box<dyn Operator>>,
    /// Every worker's inbox, this one's included.
    pub peers: Vec<Sender<Msg>>,
    pub sink: Sender<SinkMsg>,
    /// Batches sent to workers and not yet fully handled.
    pub inflight: Arc<AtomicUsize>,
    pub store: Store,
    pub stats: Vec<OpStats>,
    /// Events bound for peers, per peer.
    pub outbox: Vec<Batch>,
    pub out: Vec<u8>,
    pub dead: Vec<u8>,
    /// Shared with `eddy status`.
    pub live: Live,
    /// Per operator: when its last run of events ended (for swap pauses).
    pub last_end: Vec<Option<Instant>>,
    /// Per operator: a swap happened; the end of the old version's last
    /// event and the switch, until the new version's first event.
    pub swapped_at: Vec<Option<(Instant, Instant, u32)>>,
    /// Input line of the last event handled.
    pub line: u64,
    /// Instances swapped out, dropped at the next barrier (off the swap's
    /// critical path).
    pub retired: Vec<Box<dyn Operator>>,
}

/// A fatal worker error: the pipeline stops (state since the last
/// checkpoint is not committed).
pub type Fatal = String;

impl Worker {
    /// Runs until [`Msg::Stop`] or until the inbox closes.
    pub fn run(mut self, inbox: Receiver<Msg>) -> Result<Vec<OpStats>, Fatal> {
        for msg in inbox {
            match msg {
                Msg::Batch(batch) => {
                    let r = self.handle_batch(&batch);
                    self.flush();
                    self.publish();
                    if let Err(e) = r {
                        return Err(self.fail(e));
                    }
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                }
                Msg::Swap {
                    stage,
                    op,
                    generation,
                } => self.swap(stage, op, generation),
                Msg::Barrier(reply) => {
                    let r = self.barrier();
                    let failed = r.as_ref().err().map(|e| format!("worker {}: {e}", self.id));
                    let _ = reply.send(r);
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
                Msg::Stop => break,
            }
        }
        Ok(self.stats)
    }

    /// Gives up after `e`: the batch in hand is never done, and nothing
    /// more is sent here. The coordinator, which waits on batches in flight
    /// before it sends one (or a checkpoint barrier), then finds this
    /// thread finished and reports `e`; a send it was making meanwhile
    /// fails and reports `e` too (see `Coordinator::worker_failure`).
    fn fail(&self, e: RunError) -> Fatal {
        let e = format!("worker {}: {e}", self.id);
        tracing::error!("{e}");
        self.inflight.fetch_add(usize::MAX / 8, Ordering::AcqRel);
        e
    }

    /// Puts operator `stage`'s new instance in place, handing it the old
    /// one's state cache.
    fn swap(&mut self, stage: usize, mut op: Box<dyn Operator>, generation: u32) {
        let old = &mut self.ops[stage];
        std::mem::swap(op.ctx(), old.ctx());
        op.ctx().set_generation(generation);
        let old = std::mem::replace(&mut self.ops[stage], op);
        self.retired.push(old);
        let now = Instant::now();
        let end = self.last_end[stage].unwrap_or(now);
        self.swapped_at[stage] = Some((end, now, generation));
    }

    /// Shows this worker's counters and position to `eddy status`.
    fn publish(&mut self) {
        let mut live = self.live[self.id].lock().unwrap_or_else(|e| e.into_inner());
        live.ops.clone_from(&self.stats);
        live.line = self.line;
    }

    /// Handles a batch: each run of consecutive events for the same
    /// operator goes to that operator in one `handle_many` call.
    fn handle_batch(&mut self, batch: &Batch) -> Result<(), RunError> {
        let mut start = 0;
        while start < batch.events.len() {
            let stage = batch.events[start].stage;
            let end = batch.events[start..]
                .iter()
                .position(|e| e.stage != stage)
                .map_or(batch.events.len(), |n| start + n);
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
            self.process_run(stage as usize, &events, &lines)?;
            start = end;
        }
        Ok(())
    }

    /// Handles `events` with operator `stage`, then (depth first, in
    /// order) what they emitted.
    fn process_run(
        &mut self,
        stage: usize,
        events: &[EventRef<'_>],
        lines: &[u64],
    ) -> Result<(), RunError> {
        let last = stage + 1 == self.ops.len();
        let workers = self.peers.len();
        let me = self.id;
        // Emitted events this worker handles itself, for the next operator.
        let mut local = Batch::default();
        if let Some((end, switched, generation)) = self.swapped_at[stage].take() {
            let pause = SwapPause {
                stage,
                generation,
                pause_us: end.elapsed().as_secs_f64() * 1e6,
                before_switch_us: (switched - end).as_secs_f64() * 1e6,
            };
            let mut live = self.live[me].lock().unwrap_or_else(|e| e.into_inner());
            if live.pauses.len() >= PAUSES_KEPT {
                live.pauses.remove(0);
            }
            live.pauses.push(pause);
        }
        if let Some(&l) = lines.last() {
            self.line = self.line.max(l);
        }
        let Worker {
            ops,
            stats,
            dead,
            out,
            outbox,
            last_end,
            sink,
            ..
        } = self;
        let op = &mut ops[stage];
        let name = op.ctx().name().clone();
        let version = op.version().to_string();
        let stats = &mut stats[stage];
        op.handle_many(events, &mut |i, result, emitted| {
            let e = &events[i];
            match result {
                Ok(()) => {
                    stats.handled += 1;
                    stats.emitted += emitted.len() as u64;
                }
                Err(err) => {
                    stats.failed += 1;
                    let rec = serde_json::json!({
                        "operator": &*name,
                        "version": &version,
                        "key": e.key,
                        "line": lines[i],
                        "error": err.to_string(),
                    });
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
                    format_output(out, key, value);
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
            if dead.len() >= FLUSH_BYTES {
                let _ = sink.send(SinkMsg::Dead(std::mem::take(dead)));
            }
        })?;
        last_end[stage] = Some(Instant::now());
        if !local.is_empty() {
            self.handle_batch(&local)?;
        }
        Ok(())
    }

    /// Sends batched peer events and output.
    fn flush(&mut self) {
        for (i, b) in self.outbox.iter_mut().enumerate() {
            if !b.is_empty() {
                let b = std::mem::take(b);
                self.inflight.fetch_add(1, Ordering::AcqRel);
                if self.peers[i].send(Msg::Batch(b)).is_err() {
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        if !self.out.is_empty() {
            let _ = self.sink.send(SinkMsg::Out(std::mem::take(&mut self.out)));
        }
        if !self.dead.is_empty() {
            let _ = self
                .sink
                .send(SinkMsg::Dead(std::mem::take(&mut self.dead)));
        }
    }

    fn barrier(&mut self) -> Result<BarrierReply, StoreError> {
        self.retired.clear();
        let mut writes = Vec::new();
        for op in &mut self.ops {
            let reader = self.store.reader()?;
            op.ctx().take_dirty(Some(reader), &mut writes);
        }
        Ok(BarrierReply {
            writes,
            stats: self.stats.clone(),
        })
    }
}
