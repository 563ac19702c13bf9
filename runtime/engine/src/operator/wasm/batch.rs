//! The batched fast path (`handle-batch`, types in `wit/batch.wit`): the
//! typed batch a Wasm operator is handed (built with the codec's
//! [`BatchBuilder`], buffers kept from batch to batch), the call, the
//! result checked by the codec ([`CheckedResult`], shared with the Rust
//! SDK) before anything of it is applied, and the outcomes applied to the
//! operator's context.
//!
//! What happens when a call traps (the batch is replayed event by event on
//! a fresh instance), when the codec refuses the result (the same, with a
//! warning naming what is wrong) or when an outcome is `stop` (the rest per
//! event) is decided in [`WasmOperator::run_frame`].

use eddy_codec::wit::{Batch, BatchResult};
use eddy_codec::{BatchBuilder, CheckedResult, Handled};
use wasmtime::component::{Func, Instance, TypedFunc};
use wasmtime::AsContextMut;

use super::engine::deadline_ticks;
use super::random::Scope;
use super::WasmOperator;
use crate::config::Limits;
use crate::operator::host::{cap_reason, Emits, HostError, OpCtx};
use crate::operator::{Done, EventRef, HandleError, Operator, RunError};
use crate::state::StoreError;

/// Most events per `handle-batch` call.
pub(super) const MAX_BATCH: usize = 256;

impl WasmOperator {
    /// Runs events (at most [`MAX_BATCH`]) through one `handle-batch` call;
    /// returns how many it took care of (at least one): every event of a
    /// batch, fewer when the batch would pass [`cap`] (the rest go in the
    /// next batch; an event too large for a batch alone takes the per-event
    /// path) or when the host refused an event's outcome (the rest are
    /// redone from the host's state). Falls back to per-event `handle` for
    /// a batch that traps or whose result the codec refuses (replayed on a
    /// fresh instance) and for events from a `stop` on.
    pub(super) fn run_frame(
        &mut self,
        batch: BatchFn,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        if events.is_empty() {
            return Ok(0);
        }
        // Taken for the call, so that `self` stays free; its buffers come
        // back with it.
        let mut frames = std::mem::take(&mut self.frames);
        let r = self.run_batch(&mut frames, batch, events, done);
        self.frames = frames;
        r
    }

    /// [`WasmOperator::run_frame`] with the batch's buffers.
    fn run_batch(
        &mut self,
        frames: &mut HostBatch,
        batch: BatchFn,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        frames.resolve(self.ctx(), events)?;
        if self.live.as_ref().is_some_and(|l| l.migrate.is_some()) {
            for &(slot, first) in frames.keys() {
                // Nothing of the batch ran yet: a key whose migration fails
                // takes the whole batch to the per-event path, where that
                // key's events are dead-lettered.
                if self.ctx().slot_stale(slot) && self.migrate_if_stale(events[first].key)?.is_err()
                {
                    self.per_event(events, 0, done)?;
                    return Ok(events.len());
                }
            }
        }
        let n = frames.build(
            &self.store.data().ctx,
            events,
            cap(self.store.data().ctx.limits()),
        );
        if n == 0 {
            self.per_event(&events[..1], 0, done)?;
            return Ok(1);
        }
        let events = &events[..n];
        let store = &mut self.store;
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        store.data_mut().random.enter(Scope::Batch);
        store.data_mut().ctx.batch_logs = Some(0);
        let called = batch.call(&mut *store, frames.batch());
        let logged = store.data_mut().ctx.batch_logs.take().unwrap_or(0);
        let result = match called {
            Ok(_) if logged > 0 => {
                // Its lines cannot be told apart by event: nothing of the
                // result takes effect, and the batch is replayed event by
                // event on a fresh instance (as after a trap), where each
                // line is logged with its key. An operator that logs in two
                // batches in a row logs often: per event from then on.
                if self.logged_last_batch {
                    tracing::debug!(operator = %self.ctx().name(), "the operator logs in batch after batch: handling its events one by one");
                    self.batch_off = true;
                }
                self.logged_last_batch = true;
                let _ = self.restart();
                self.per_event(events, 0, done)?;
                return Ok(n);
            }
            Ok(r) => {
                self.logged_last_batch = false;
                r
            }
            Err(e) => {
                if e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<HostError>(),
                        Some(HostError::WatermarkInSpan)
                    )
                }) {
                    // It reads the watermark in its batches: its runs stop
                    // at every advance from now on.
                    self.span_off = true;
                }
                if store.data().random.wanted_in_batch {
                    // Its numbers depend on the event: per event from now.
                    tracing::debug!(operator = %store.data().ctx.name(), "the operator draws random numbers: handling its events one by one");
                    self.batch_off = true;
                }
                // Replay on a fresh instance, event by event: only the
                // event that traps is dead-lettered. When no fresh
                // instance starts, each event tries again (`revive`).
                let _ = self.restart();
                self.per_event(events, 0, done)?;
                return Ok(n);
            }
        };
        let limits = codec_limits(self.store.data().ctx.limits());
        let checked = match CheckedResult::new(&result, n, &limits) {
            Ok(checked) => checked,
            Err(e) => {
                // Like a trap: nothing of the result takes effect.
                tracing::warn!(operator = %self.ctx().name(), "handle-batch returned a result the host refuses ({e}); replaying the batch event by event on a fresh instance");
                let _ = self.restart();
                self.per_event(events, 0, done)?;
                return Ok(n);
            }
        };
        match frames.apply(self.ctx(), checked, done) {
            Applied::All => {
                self.batched_events += n as u64;
                Ok(n)
            }
            Applied::Stop(i) => {
                self.batched_events += i as u64;
                self.batch_off = true;
                self.per_event(events, i, done)?;
                Ok(n)
            }
            Applied::Refused(i) => {
                self.batched_events += i as u64 + 1;
                Ok(i + 1)
            }
        }
    }
}

/// The interface of the batch types. A component built for the
/// `batched-operator` world imports it (types only); the linker defines it.
pub const INTERFACE: &str = "eddy:operator/batch@0.3.0";

/// A component's `handle-batch`, type-checked against the codec's types
/// when the instance started.
#[derive(Clone, Copy)]
pub struct BatchFn(Func);

impl BatchFn {
    /// `instance`'s `handle-batch`; an error when it is missing or its type
    /// is not `func(batch: batch) -> batch-result`.
    pub fn of(instance: &Instance, mut store: impl AsContextMut) -> wasmtime::Result<BatchFn> {
        let func = instance
            .get_func(&mut store, "handle-batch")
            .ok_or_else(|| wasmtime::Error::msg("no `handle-batch` export"))?;
        func.typed::<(&Batch,), (BatchResult,)>(&store)?;
        Ok(BatchFn(func))
    }

    /// Calls `handle-batch` with `batch`.
    pub fn call(&self, store: impl AsContextMut, batch: &Batch) -> wasmtime::Result<BatchResult> {
        // SAFETY: `BatchFn::of` checked the function's type against exactly
        // these parameter and result types (the generated bindings of
        // `bindgen!` do the same); a `Func` stays with its instance's store.
        let typed = unsafe { TypedFunc::<(&Batch,), (BatchResult,)>::new_unchecked(self.0) };
        Ok(typed.call(store, (batch,))?.0)
    }
}

/// Most bytes a batch may take in the guest's memory: its spans are `u32`,
/// and the guest must hold it (and its result) within its memory limit.
pub fn cap(limits: &Limits) -> usize {
    (limits.max_memory / 4).clamp(1 << 16, u32::MAX as usize)
}

/// The per-item limits the codec holds a result to, from the operator's.
pub fn codec_limits(limits: &Limits) -> eddy_codec::Limits {
    eddy_codec::Limits {
        max_name: limits.max_name,
        max_value: limits.max_state_value,
        max_emit_key: limits.max_emit_key,
        max_emit: limits.max_emit,
    }
}

/// A write as `OpCtx::apply` takes it: name, new bytes (`None`: delete).
type Write<'a> = (&'a [u8], Option<&'a [u8]>);

/// How far the outcomes of a batch were applied.
pub enum Applied {
    /// All of them.
    All,
    /// Outcome `i` is `stop`: events from `i` on need the per-event path.
    Stop(usize),
    /// The host refused event `i`'s outcome (a limit on the event as a
    /// whole): the guest computed the rest on top of it, so they must be
    /// redone.
    Refused(usize),
}

/// The batch of a Wasm operator, its buffers kept from batch to batch.
#[derive(Default)]
pub struct HostBatch {
    builder: BatchBuilder,
    /// Per event: its key's cache slot (scratch).
    event_slots: Vec<u32>,
    /// Key index in the batch of each cache slot seen.
    index: rustc_hash::FxHashMap<u32, u32>,
    /// Per event: its key's index in the batch.
    key_of: Vec<u32>,
    /// Per key index: its cache slot, and the first event of the key.
    keys: Vec<(u32, usize)>,
    /// Per event: its time (writes to TTL'd state are stamped with it).
    times: Vec<Option<i64>>,
}

impl HostBatch {
    /// Resolves the keys of `events`: their cache slots (loading keys on
    /// first touch, all at once so their memory is fetched in parallel)
    /// and the batch's distinct keys, in order of first appearance.
    pub fn resolve(&mut self, ctx: &mut OpCtx, events: &[EventRef<'_>]) -> Result<(), StoreError> {
        self.event_slots.clear();
        self.index.clear();
        self.key_of.clear();
        self.keys.clear();
        self.times.clear();
        self.times.extend(events.iter().map(|e| e.time));
        ctx.slots(events.iter().map(|e| e.key), &mut self.event_slots)?;
        for (i, &slot) in self.event_slots.iter().enumerate() {
            let next = self.keys.len() as u32;
            let k = *self.index.entry(slot).or_insert(next);
            if k == next {
                self.keys.push((slot, i));
            }
            self.key_of.push(k);
        }
        Ok(())
    }

    /// The distinct keys of the events resolved: (cache slot, index of the
    /// key's first event).
    pub fn keys(&self) -> &[(u32, usize)] {
        &self.keys
    }

    /// Builds the batch of `events` (resolved by [`HostBatch::resolve`],
    /// with the keys' state as `ctx` holds it now), at most `cap` bytes in
    /// the guest; returns how many events it holds (the first ones; 0 when
    /// the first event alone does not fit).
    pub fn build(&mut self, ctx: &OpCtx, events: &[EventRef<'_>], cap: usize) -> usize {
        let b = &mut self.builder;
        b.clear();
        b.set_cap(cap);
        for (i, e) in events.iter().enumerate() {
            let k = self.key_of[i];
            if k as usize == b.key_count() {
                // The key's first event: the key and its values go first.
                let (slot, _) = self.keys[k as usize];
                let entity = ctx.slot_entity(slot);
                let values = entity.values().map(|(n, v)| (ctx.state_name(n), v));
                if b.key(e.key, values).is_err() {
                    return i;
                }
            }
            if b.event(k, e.time, e.value).is_err() {
                return i;
            }
        }
        events.len()
    }

    /// The batch built.
    pub fn batch(&self) -> &Batch {
        self.builder.batch()
    }

    /// Applies the checked outcomes of the batch to `ctx`, calling `done`
    /// for each event as it completes (as `Operator::handle_many`).
    pub fn apply(
        &self,
        ctx: &mut OpCtx,
        result: CheckedResult<'_>,
        done: &mut Done<'_>,
    ) -> Applied {
        let max_reason = ctx.limits().max_reason;
        let mut emitted = Emits::default();
        // Reused from event to event: one allocation each per batch.
        let mut writes: Vec<Write<'_>> = Vec::with_capacity(8);
        let mut emits: Vec<(&[u8], &[u8])> = Vec::with_capacity(8);
        for (i, outcome) in result.iter().enumerate() {
            match outcome {
                Handled::Stop => return Applied::Stop(i),
                Handled::Failed { reason } => {
                    let reason = cap_reason(reason, max_reason);
                    done(i, Err(HandleError::Failed(reason)), &mut emitted);
                }
                Handled::Ok {
                    emits: e,
                    writes: w,
                } => {
                    writes.clear();
                    for (name, value) in w {
                        writes.push((name.as_bytes(), value));
                    }
                    emits.clear();
                    for (key, payload) in e {
                        emits.push((key.as_bytes(), payload));
                    }
                    let (slot, _) = self.keys[self.key_of[i] as usize];
                    ctx.set_event_time(self.times[i]);
                    if let Err(err) = ctx.apply(slot, &writes, &emits, &mut emitted) {
                        done(i, Err(HandleError::Refused(err.to_string())), &mut emitted);
                        return Applied::Refused(i);
                    }
                    done(i, Ok(()), &mut emitted);
                }
            }
            emitted.clear();
        }
        Applied::All
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_codec::{BatchView, ResultBuilder};

    fn event<'a>(key: &'a str, value: &'a [u8]) -> EventRef<'a> {
        EventRef {
            key,
            value,
            time: None,
            line: 1,
        }
    }

    #[test]
    fn the_batch_interface_is_the_contract_version() {
        let (_, version) = crate::CONTRACT.rsplit_once('@').unwrap();
        assert_eq!(INTERFACE, format!("eddy:operator/batch@{version}"));
    }

    /// A batch carries each key once with its values, its events in order;
    /// a result built for it is applied (writes, emits, failures) and a
    /// `stop` is reported where it is.
    #[test]
    fn a_batch_is_built_from_the_cache_and_its_result_applied() {
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let mut out = Emits::default();
        ctx.begin("a").unwrap();
        ctx.set("n", b"1").unwrap();
        ctx.finish(true, &mut out);
        let events = [
            event("a", b"e0"),
            event("b", b"e1"),
            event("a", b"e2"),
            event("c", b"e3"),
        ];
        let mut hb = HostBatch::default();
        hb.resolve(&mut ctx, &events).unwrap();
        assert_eq!(hb.keys().len(), 3);
        assert_eq!(hb.build(&ctx, &events, usize::MAX), 4);
        let view = BatchView::new(hb.batch()).unwrap();
        let keys: Vec<&str> = view.keys().map(|k| k.key).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let a = view.keys().next().unwrap();
        assert_eq!(view.value(a.values.start), ("n", &b"1"[..]));
        let seen: Vec<(u32, &[u8])> = view.events().map(|e| (e.key, e.payload)).collect();
        assert_eq!(
            seen,
            [
                (0, &b"e0"[..]),
                (1, &b"e1"[..]),
                (0, &b"e2"[..]),
                (2, &b"e3"[..])
            ]
        );

        // Event 0 writes and emits, 1 fails, 2 deletes, 3 stops.
        let mut r = ResultBuilder::new();
        r.emit("a", b"2");
        r.write(b"n", Some(b"2"));
        r.ok();
        r.failed("no");
        r.write(b"n", None);
        r.ok();
        r.stop();
        let result = r.finish();
        let checked = CheckedResult::new(&result, 4, &eddy_codec::Limits::NONE).unwrap();
        let mut log = Vec::new();
        let applied = hb.apply(&mut ctx, checked, &mut |i, r, e: &mut Emits| {
            let emits: Vec<String> = e.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            log.push((i, r.map_err(|e| e.to_string()), emits));
        });
        assert!(matches!(applied, Applied::Stop(3)));
        assert_eq!(log.len(), 3);
        assert_eq!(log[0], (0, Ok(()), vec![format!("a={:?}", b"2")]));
        assert_eq!(
            log[1],
            (1, Err("operator returned an error: no".into()), vec![])
        );
        assert_eq!(log[2], (2, Ok(()), vec![]));
        ctx.begin("a").unwrap();
        assert_eq!(ctx.get("n").unwrap(), None, "event 2 deleted it");
        ctx.finish(true, &mut out);
    }

    /// A batch stops before the event that would take it past its cap; an
    /// event too large alone gives an empty batch (the caller handles it per
    /// event).
    #[test]
    fn a_batch_stays_within_its_cap() {
        let mut ctx = OpCtx::new("op".into(), None, Limits::default());
        let big = vec![b'x'; 100];
        let events = [event("a", b"e0"), event("b", &big), event("c", b"e2")];
        let mut hb = HostBatch::default();
        hb.resolve(&mut ctx, &events).unwrap();
        assert_eq!(hb.build(&ctx, &events, 60), 1);
        assert_eq!(hb.batch().event_keys.len(), 1);
        hb.resolve(&mut ctx, &events[1..]).unwrap();
        assert_eq!(hb.build(&ctx, &events[1..], 60), 0);
        hb.resolve(&mut ctx, &events).unwrap();
        assert_eq!(hb.build(&ctx, &events, 10_000), 3);
    }
}
