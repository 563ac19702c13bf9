//! The `handle-batch` frame (`wit/world.wit`): the events of a batch with
//! their keys' single values in, each event's writes and emits (or its
//! failure) out. Built and parsed here only; the result is checked and
//! applied by the host context (`OpCtx::apply`).

use smallvec::SmallVec;

use super::engine::deadline_ticks;
use super::random::Scope;
use super::{BatchFn, WasmOperator};
use crate::config::Limits;
use crate::operator::host::{cap_reason_bytes, Emits, OpCtx};
use crate::operator::{handle_each, Done, EventRef, HandleError, Operator, RunError};

/// Most events per `handle-batch` call.
pub(super) const MAX_BATCH: usize = 256;

impl WasmOperator {
    /// Runs events (at most [`MAX_BATCH`]) through one `handle-batch` call;
    /// returns how many it took care of (at least one): every event of a
    /// frame, fewer when the frame would pass [`frame_cap`] (the rest go in
    /// the next frame; an event too large for a frame alone takes the
    /// per-event path) or when the host refused an event's outcome (the
    /// rest are redone from the host's state). Falls back to per-event
    /// `handle` for a frame that traps (replayed on a fresh instance) and
    /// for events from a "stop" on.
    pub(super) fn run_frame(
        &mut self,
        batch: BatchFn,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        if events.is_empty() {
            return Ok(0);
        }
        let cap = frame_cap(self.store.data().ctx.limits());
        // The frame: distinct keys with their values, then the events.
        // Keys are told apart by cache slot, resolved for the whole batch
        // at once (one hash per event, memory fetched in parallel).
        let mut frame = Vec::with_capacity(events.len() * 64);
        let mut event_slots = Vec::with_capacity(events.len());
        self.ctx()
            .slots(events.iter().map(|e| e.key), &mut event_slots)?;
        let mut index: rustc_hash::FxHashMap<u32, u32> =
            rustc_hash::FxHashMap::with_capacity_and_hasher(events.len(), Default::default());
        let mut key_of = Vec::with_capacity(events.len());
        let mut slots = Vec::with_capacity(events.len());
        frame.extend_from_slice(&0u32.to_le_bytes());
        // Events in this frame.
        let mut n = events.len();
        let migrates = self.live.as_ref().is_some_and(|l| l.migrate.is_some());
        for (i, (e, &slot)) in events.iter().zip(&event_slots).enumerate() {
            let next = index.len() as u32;
            let k = *index.entry(slot).or_insert(next);
            if k == next {
                if migrates && self.ctx().slot_stale(slot) {
                    // Nothing of the batch ran yet: a key whose migration
                    // fails takes the whole batch to the per-event path,
                    // where that key's events are dead-lettered.
                    if self.migrate_if_stale(e.key)?.is_err() {
                        handle_each(self, events, 0, done)?;
                        return Ok(events.len());
                    }
                }
                let mark = frame.len();
                put(&mut frame, e.key.as_bytes());
                frame_slot_values(self.ctx(), slot, &mut frame);
                if frame.len() > cap {
                    // Lengths are u32 and a frame must fit the guest: this
                    // event goes in the next frame, or alone per event.
                    frame.truncate(mark);
                    if i == 0 {
                        handle_each(self, &events[..1], 0, done)?;
                        return Ok(1);
                    }
                    n = i;
                    break;
                }
                slots.push(slot);
            }
            key_of.push(k);
        }
        frame[..4].copy_from_slice(&(slots.len() as u32).to_le_bytes());
        let count_at = frame.len();
        frame.extend_from_slice(&(n as u32).to_le_bytes());
        for (i, (e, k)) in events[..n].iter().zip(&key_of).enumerate() {
            if frame.len() + e.value.len() + 17 > cap {
                if i == 0 {
                    handle_each(self, &events[..1], 0, done)?;
                    return Ok(1);
                }
                n = i;
                frame[count_at..count_at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                break;
            }
            frame.extend_from_slice(&k.to_le_bytes());
            match e.time {
                Some(t) => {
                    frame.push(1);
                    frame.extend_from_slice(&t.to_le_bytes());
                }
                None => frame.push(0),
            }
            put(&mut frame, e.value);
        }
        let events = &events[..n];
        let store = &mut self.store;
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        store.data_mut().random.enter(Scope::Batch);
        let result = match batch.call(&mut *store, (frame,)) {
            Ok((r,)) => r,
            Err(_) => {
                if store.data().random.wanted_in_batch {
                    // Its numbers depend on the event: per event from now.
                    tracing::debug!(operator = %store.data().ctx.name(), "the operator draws random numbers: handling its events one by one");
                    self.batch_off = true;
                }
                // Replay on a fresh instance, event by event: only the
                // event that traps is dead-lettered. When no fresh
                // instance starts, each event tries again (`revive`).
                let _ = self.restart();
                handle_each(self, events, 0, done)?;
                return Ok(n);
            }
        };
        let max_reason = self.store.data().ctx.limits().max_reason;
        let mut r = Frame(&result);
        let mut emitted = Emits::default();
        for i in 0..n {
            let Some(outcome) = r.outcome() else {
                tracing::warn!(operator = %self.ctx().name(), "malformed handle-batch result; handling the rest per event");
                handle_each(self, events, i, done)?;
                return Ok(n);
            };
            let ctx = &mut self.store.data_mut().ctx;
            match outcome {
                Outcome::Stop => {
                    self.batch_off = true;
                    handle_each(self, events, i, done)?;
                    return Ok(n);
                }
                Outcome::Failed(reason) => {
                    let reason = cap_reason_bytes(reason, max_reason);
                    done(i, Err(HandleError::Failed(reason)), &mut emitted);
                }
                Outcome::Ok { writes, emits } => {
                    let slot = slots[key_of[i] as usize];
                    if let Err(err) = ctx.apply(slot, &writes, &emits, &mut emitted) {
                        done(i, Err(HandleError::Refused(err.to_string())), &mut emitted);
                        // The guest computed the rest of the batch on top of
                        // this event's writes, which the host refused: redo
                        // the rest from the host's state.
                        return Ok(i + 1);
                    }
                    done(i, Ok(()), &mut emitted);
                }
            }
            emitted.clear();
        }
        Ok(n)
    }
}

/// Largest `handle-batch` frame: lengths in it are `u32`, and the guest
/// must hold it (and its result) within its memory limit.
fn frame_cap(limits: &Limits) -> usize {
    (limits.max_memory / 4).clamp(1 << 16, u32::MAX as usize)
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// An event's state writes in a `handle-batch` result (`None`: delete).
/// Names and keys are bytes here, checked to be UTF-8 as they are applied
/// (only when they are not a known name or the event's own key).
type Writes<'a> = SmallVec<[(&'a [u8], Option<&'a [u8]>); 4]>;
/// An event's emits in a `handle-batch` result.
type EmitList<'a> = SmallVec<[(&'a [u8], &'a [u8]); 4]>;

/// One event's entry of a `handle-batch` result.
// Lives on the stack for one event: inline vectors spare two allocations.
#[allow(clippy::large_enum_variant)]
enum Outcome<'a> {
    Ok {
        writes: Writes<'a>,
        emits: EmitList<'a>,
    },
    Failed(&'a [u8]),
    Stop,
}

/// Reader of a `handle-batch` result frame.
struct Frame<'a>(&'a [u8]);

impl<'a> Frame<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
    /// The next event's outcome, `None` when the frame is malformed.
    fn outcome(&mut self) -> Option<Outcome<'a>> {
        match self.take(1)?[0] {
            0 => {
                let n = self.u32()?;
                let mut emits = SmallVec::new();
                for _ in 0..n {
                    let k = self.bytes()?;
                    emits.push((k, self.bytes()?));
                }
                let n = self.u32()?;
                let mut writes = SmallVec::new();
                for _ in 0..n {
                    let kind = self.take(1)?[0];
                    let name = self.bytes()?;
                    match kind {
                        0 => writes.push((name, Some(self.bytes()?))),
                        1 => writes.push((name, None)),
                        _ => return None,
                    }
                }
                Some(Outcome::Ok { writes, emits })
            }
            1 => Some(Outcome::Failed(self.bytes()?)),
            2 => Some(Outcome::Stop),
            _ => None,
        }
    }
}

/// Appends the single values of the key in cache slot `slot` to a batch
/// frame: `u32` count, then per value a length-prefixed name and bytes.
fn frame_slot_values(ctx: &OpCtx, slot: u32, out: &mut Vec<u8>) {
    let entity = ctx.slot_entity(slot);
    out.extend_from_slice(&(entity.values().count() as u32).to_le_bytes());
    for (name, bytes) in entity.values() {
        let name = ctx.state_name(name).as_bytes();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
}
