//! A worker thread: runs its own instance of every operator of the chain
//! for the keys routed to it, in arrival order.
//!
//! Events come in batches ([`Batch`]). An event handled by operator `i`
//! yields emitted events for operator `i + 1`, routed by their (new) key:
//! to this worker inline, or batched to the owning peer. After the last
//! operator, emitted events become output lines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::io::{format_output, push_json_or_string, SinkMsg};
use crate::operator::{EventRef, Operator};
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

/// One event in a batch; key and value are ranges of the batch's bytes.
#[derive(Clone, Copy)]
struct Ev {
    /// Index of the operator that handles it.
    stage: u16,
    key: (u32, u32),
    value: (u32, u32),
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
        let k0 = self.data.len() as u32;
        self.data.extend_from_slice(key.as_bytes());
        let v0 = self.data.len() as u32;
        self.data.extend_from_slice(value);
        let v1 = self.data.len() as u32;
        self.events.push(Ev {
            stage,
            key: (k0, v0),
            value: (v0, v1),
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
        std::str::from_utf8(&self.data[e.key.0 as usize..e.key.1 as usize]).expect("keys are UTF-8")
    }
}

/// Counters of one operator on one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Events handled successfully.
    pub handled: u64,
    /// Events that failed (dead-lettered).
    pub failed: u64,
    /// Events emitted.
    pub emitted: u64,
}

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
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                    r.map_err(|e| format!("worker {}: {e}", self.id))?;
                }
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

    /// Handles a batch: each run of consecutive events for the same
    /// operator goes to that operator in one `handle_many` call.
    fn handle_batch(&mut self, batch: &Batch) -> Result<(), StoreError> {
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
                    value: &batch.data[e.value.0 as usize..e.value.1 as usize],
                    time: e.time,
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
    ) -> Result<(), StoreError> {
        let last = stage + 1 == self.ops.len();
        let workers = self.peers.len();
        let me = self.id;
        // Emitted events this worker handles itself, for the next operator.
        let mut local = Batch::default();
        let Worker {
            ops,
            stats,
            dead,
            out,
            outbox,
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
                    // `payload` last, inline when JSON.
                    let mut s = serde_json::to_vec(&rec).expect("json");
                    s.pop();
                    s.extend_from_slice(b",\"payload\":");
                    push_json_or_string(&mut s, e.value);
                    s.extend_from_slice(b"}\n");
                    dead.extend_from_slice(&s);
                }
            }
            for em in emitted.drain(..) {
                if last {
                    format_output(out, &em.key, &em.value);
                } else {
                    let target = route(&em.key, workers);
                    let b = if target == me {
                        &mut local
                    } else {
                        &mut outbox[target]
                    };
                    b.push(stage as u16 + 1, &em.key, &em.value, e.time, lines[i]);
                }
            }
        })?;
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
