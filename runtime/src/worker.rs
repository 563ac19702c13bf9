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

use crate::host::Emitted;
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
    /// Per-stage scratch for emitted events (a stage's list is in use while
    /// later stages run).
    pub scratch: Vec<Vec<Emitted>>,
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

    fn handle_batch(&mut self, batch: &Batch) -> Result<(), StoreError> {
        for e in &batch.events {
            let value = &batch.data[e.value.0 as usize..e.value.1 as usize];
            self.process(e.stage as usize, batch.key(e), value, e.time, e.line)?;
        }
        Ok(())
    }

    /// Handles one event with operator `stage`, then what it emitted.
    fn process(
        &mut self,
        stage: usize,
        key: &str,
        value: &[u8],
        time: Option<i64>,
        line: u64,
    ) -> Result<(), StoreError> {
        let mut emitted = std::mem::take(&mut self.scratch[stage]);
        let op = &mut self.ops[stage];
        op.ctx().begin(key)?;
        let result = op.handle(EventRef { key, value, time });
        op.ctx().finish(result.is_ok(), &mut emitted);
        match result {
            Ok(()) => {
                self.stats[stage].handled += 1;
                self.stats[stage].emitted += emitted.len() as u64;
            }
            Err(err) => {
                self.stats[stage].failed += 1;
                let name = op.ctx().name().clone();
                let rec = serde_json::json!({
                    "operator": &*name,
                    "key": key,
                    "line": line,
                    "error": err.to_string(),
                });
                // `payload` last, inline when JSON.
                let mut s = serde_json::to_vec(&rec).expect("json");
                s.pop();
                s.extend_from_slice(b",\"payload\":");
                push_json_or_string(&mut s, value);
                s.extend_from_slice(b"}\n");
                self.dead.extend_from_slice(&s);
            }
        }
        let last = stage + 1 == self.ops.len();
        for em in emitted.drain(..) {
            if last {
                format_output(&mut self.out, &em.key, &em.value);
            } else {
                let target = route(&em.key, self.peers.len());
                if target == self.id {
                    self.process(stage + 1, &em.key, &em.value, time, line)?;
                } else {
                    self.outbox[target].push(stage as u16 + 1, &em.key, &em.value, time, line);
                }
            }
        }
        self.scratch[stage] = emitted;
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
