//! What a worker runs: an [`Operator`] handles one event at a time against
//! its [`OpCtx`]. Wasm components ([`WasmOperator`]) and native Rust
//! operators ([`NativeCounter`]) implement it the same way.
//!
//! # Layout
//!
//! - [`host`]: [`OpCtx`], the host context (state cache, limits, the event
//!   bracket) with the WIT imports implemented on it, one file per
//!   interface.
//! - [`wasm`]: components compiled once ([`WasmComponent`]) and instantiated per
//!   worker ([`WasmOperator`]).
//! - [`native`]: the native baseline operators.
//! - [`window`]: [`WindowOperator`], windows kept and fired by the host
//!   over an [`Aggregate`].
//! - [`loaded`]: [`Loaded`], an operator of the pipeline ready to be
//!   instantiated on each worker.
//! - [`fire`]: the timers due at a watermark, fired in order.
//! - here: the [`Operator`] trait a worker drives.

use thiserror::Error;

use crate::state::StoreError;

mod fire;
pub(crate) mod host;
mod loaded;
mod native;
pub(crate) mod wasm;
mod window;

pub use fire::{fire_due, FireDone, END_ROUNDS};
pub use host::{cap_reason, CacheStats, Emits, HostError, OpCtx, TimerTable, TimerUse, TTL_PREFIX};
pub use loaded::{
    load_operators, window_operator, Loaded, NativeFactory, OperatorKind, StartError,
};
pub use native::{NativeCounter, WindowSum};
pub use wasm::{
    engine, engine_with, Cache, CacheError, Compiled, ComponentError, InitError, WasmAggregate,
    WasmComponent, WasmOperator, WasmWindow, CONTRACT,
};
pub use window::{Aggregate, WindowInfo, WindowOperator, WINDOW_STATE};

/// Called by [`Operator::handle_many`] as each event completes: its index,
/// its outcome, and what it emitted (to be drained).
pub type Done<'a> = dyn FnMut(usize, Result<(), HandleError>, &mut Emits) + 'a;

/// An event as handed to an operator (borrowed from the worker's batch).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The key it was routed by.
    pub key: &'a str,
    /// Its payload.
    pub value: &'a [u8],
    /// Its event time, when the pipeline names a time field.
    pub time: Option<i64>,
    /// Input line the event derives from: with the key and the operator,
    /// it seeds the operator's random numbers for this event.
    pub line: u64,
}

/// A timer that fired, as handed to [`Operator::on_timer`].
#[derive(Debug, Clone, Copy)]
pub struct TimerRef<'a> {
    /// The key it belongs to (the worker has called [`OpCtx::begin`] for
    /// it).
    pub key: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The event time it was set for.
    pub at: i64,
    /// Input line of the watermark advance that fired it: with the key and
    /// the operator, it seeds the operator's random numbers for the call.
    pub line: u64,
}

/// Why an event was not handled. The event goes to the dead-letter output
/// with this text; its state writes and emits are discarded.
#[derive(Debug, Error)]
pub enum HandleError {
    /// The operator returned `err(reason)`.
    #[error("operator returned an error: {0}")]
    Failed(String),
    /// The operator trapped (the instance is replaced before the next event).
    #[error("operator trapped: {0}")]
    Trap(String),
    /// No instance could be started to handle the event (the last
    /// replacement's instantiation or `init` failed).
    #[error("operator unavailable: {0}")]
    Unavailable(String),
    /// The host refused what the operator did: a limit it broke (named),
    /// or a call it may not make.
    #[error("refused by the host: {0}")]
    Refused(String),
}

/// How a trap's reason starts when the call ran out of its CPU budget.
pub(crate) const CPU_LIMIT: &str = "CPU limit exceeded";

/// How a trap's reason starts when the call went over the memory limit.
pub(crate) const MEMORY_LIMIT: &str = "memory limit exceeded";

/// A sandbox limit a call broke (`/metrics` counts them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The CPU budget per call (`max_call_ms`, an epoch deadline).
    Cpu,
    /// The memory limit (`max_memory_bytes`).
    Memory,
}

impl HandleError {
    /// The CPU or memory limit the call broke, if that is why it failed.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            HandleError::Trap(reason) if reason.starts_with(CPU_LIMIT) => Some(Limit::Cpu),
            HandleError::Trap(reason) if reason.starts_with(MEMORY_LIMIT) => Some(Limit::Memory),
            _ => None,
        }
    }
}

/// Why a worker cannot go on: the pipeline stops, and state since the last
/// checkpoint is not committed (a restart resumes from that checkpoint).
#[derive(Debug, Error)]
pub enum RunError {
    /// The state directory could not be read (a damaged record, say).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operator has no instance and cannot start one.
    #[error("{0}")]
    Stopped(String),
}

/// A running operator instance on one worker.
pub trait Operator: Send {
    /// The host context: state cache and emit buffer.
    fn ctx(&mut self) -> &mut OpCtx;

    /// Which version of the operator runs (a component's content hash),
    /// recorded in dead letters.
    fn version(&self) -> &str {
        "native"
    }

    /// Readies `key` before one of its events is handled, outside the event
    /// (a Wasm operator migrates state written by another version here). An
    /// `Err` fails the event without handling it.
    fn prepare(&mut self, key: &str) -> Result<Result<(), HandleError>, StoreError> {
        let _ = key;
        Ok(Ok(()))
    }

    /// Tries this operator (a new version before a hot swap) on committed
    /// key `key`, changing nothing: an `Err` refuses the swap. The default
    /// is [`Operator::prepare`] (a Wasm operator's migration, whose writes
    /// the trial instance never commits); a window operator finishes one
    /// of the key's windows with the new aggregate.
    fn rehearse(&mut self, key: &str) -> Result<Result<(), HandleError>, StoreError> {
        self.prepare(key)
    }

    /// [`Operator::prepare`] on the event path, where an operator may also
    /// give up for good (a Wasm operator whose replacement instances keep
    /// failing to start), which stops the pipeline.
    fn ready(&mut self, key: &str) -> Result<Result<(), HandleError>, RunError> {
        Ok(self.prepare(key)?)
    }

    /// Handles one event; state calls act on `event.key` (the worker has
    /// called [`OpCtx::begin`] for it).
    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError>;

    /// Whether the operator handles timers (a Wasm operator: its component
    /// exports `on-timer`). One that does not may not set any.
    fn handles_timers(&self) -> bool {
        false
    }

    /// For an operator whose only business at a watermark advance is its
    /// timers, and which never reads the watermark while it handles an
    /// event (a window operator): a time no timer that handling `event`
    /// sets can be earlier than. With it the worker lets a run of events
    /// go on across advances at which nothing can fire, rather than ending
    /// the run at each (the outputs are the same: such an advance does
    /// nothing but move the watermark). `None`, the default: the operator
    /// cannot tell, and every advance ends a run.
    fn timer_bound(&self, event: &EventRef<'_>) -> Option<i64> {
        let _ = event;
        None
    }

    /// [`Operator::handle_many`] for a run of events the worker let go on
    /// across watermark advances (see [`Operator::timer_bound`]), with the
    /// context's watermark already at the last of them. It may stop before
    /// an event whose handling would need the watermark at that event's
    /// own place in the input (a Wasm operator's per-event path, or its
    /// batch reading `timers.watermark`), returning how many events it
    /// handled: the worker then hands it the rest again, split at the
    /// advances. The default handles them all.
    fn handle_span(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        self.handle_many(events, done)?;
        Ok(events.len())
    }

    /// Handles a timer that fired; state and timer calls act on
    /// `timer.key` (the worker has called [`OpCtx::begin`] for it). The
    /// default refuses: an operator that sets timers implements it.
    fn on_timer(&mut self, timer: TimerRef<'_>) -> Result<(), HandleError> {
        Err(HandleError::Refused(format!(
            "timer `{}` fired, but the operator does not handle timers",
            timer.name
        )))
    }

    /// Handles `events` in order, calling `done(i, result, emitted)` for
    /// each as it completes (`emitted` is drained by the callee's caller).
    /// Operators with a batched fast path override this; the default runs
    /// [`Operator::handle`] per event.
    fn handle_many(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<(), RunError> {
        handle_each(self, events, 0, done)
    }
}

/// Handles `events[from..]` one by one with [`Operator::handle`].
pub fn handle_each<O: Operator + ?Sized>(
    op: &mut O,
    events: &[EventRef<'_>],
    from: usize,
    done: &mut Done<'_>,
) -> Result<(), RunError> {
    let mut emitted = Emits::default();
    // Every key's cache slot first: their memory is fetched in parallel.
    let mut slots = Vec::with_capacity(events.len().saturating_sub(from));
    op.ctx().slots(
        events[from.min(events.len())..].iter().map(|e| e.key),
        &mut slots,
    )?;
    for ((i, e), &slot) in events.iter().enumerate().skip(from).zip(&slots) {
        if let Err(err) = op.ready(e.key)? {
            done(i, Err(err), &mut emitted);
            continue;
        }
        op.ctx().set_event_time(e.time);
        op.ctx().begin_slot(slot);
        let mut r = op.handle(*e);
        if r.is_ok() {
            // Limits checked on the event as a whole.
            if let Err(refused) = op.ctx().check_event() {
                r = Err(HandleError::Refused(refused.to_string()));
            }
        }
        op.ctx().finish(r.is_ok(), &mut emitted);
        done(i, r, &mut emitted);
        emitted.clear();
    }
    Ok(())
}
