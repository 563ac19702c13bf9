//! [`WasmOperator`]: one instance of a component on one worker. A trap
//! replaces the instance (its state cache moves to the new one); state
//! written by another version is migrated before its key is handled.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use wasmtime::component::ResourceTable;
use wasmtime::Store;

use super::batch::MAX_BATCH;
use super::engine::{deadline_ticks, sandbox, MemoryCap};
use super::random::{Random, Scope};
use super::{testing, BatchFn, HostData, Live, OperatorWorld, WasmComponent, WasmOperator};
use crate::operator::host::{cap_reason, Emits, HostError, OpCtx};
use crate::operator::wasm::bindings::eddy::operator::types;
use crate::operator::{handle_each, Done, EventRef, HandleError, Operator, RunError, TimerRef};
use crate::state::StoreError;

/// Bytes of guest stderr kept per instance.
const STDERR_CAPTURE: usize = 4096;

/// Why an operator instance could not start.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("operator `{operator}` ({path}): instantiation failed: {reason}")]
    /// The component could not be instantiated.
    Instantiate {
        /// The operator.
        operator: String,
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    #[error("operator `{operator}` ({path}): init refused its config: {reason}")]
    /// `init` refused the config.
    Refused {
        /// The operator.
        operator: String,
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    #[error("operator `{operator}` ({path}): init trapped: {reason}")]
    /// `init` trapped.
    Trapped {
        /// The operator.
        operator: String,
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Replacement instances that may fail to start in a row (after a trap,
/// each later event tries again) before the operator gives up and the
/// pipeline stops.
pub const MAX_FAILED_STARTS: u32 = 3;

/// A fresh store for an instance of `component`, holding `ctx`.
pub(super) fn new_store(component: &WasmComponent, ctx: OpCtx) -> Store<HostData> {
    let limits = *ctx.limits();
    let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_CAPTURE);
    let mut store = Store::new(
        &component.engine,
        HostData {
            ctx,
            wasi: sandbox(stderr.clone()),
            table: ResourceTable::new(),
            memory: MemoryCap {
                max: limits.max_memory,
            },
            stderr,
            random: Random::default(),
        },
    );
    store.limiter(|d| &mut d.memory);
    store
}

impl WasmOperator {
    /// Instantiates the component in the (fresh) store and calls `init`.
    pub(super) fn start(&mut self) -> Result<(), InitError> {
        let _span = self.span().entered();
        self.live = None;
        let operator = self.store.data().ctx.name().to_string();
        let path = self.component.path.clone();
        let limits = *self.store.data().ctx.limits();
        let store = &mut self.store;
        store.set_epoch_deadline(deadline_ticks(limits.max_call_ms));
        let instantiated = self
            .component
            .pre
            .instance_pre()
            .instantiate(&mut *store)
            .and_then(|instance| {
                let bindings = OperatorWorld::new(&mut *store, &instance)?;
                let batch = match self.component.batched {
                    true => Some(BatchFn::of(&instance, &mut *store)?),
                    false => None,
                };
                let migrate = match self.component.migrates {
                    true => Some(instance.get_typed_func(&mut *store, "migrate")?),
                    false => None,
                };
                let on_timer = match self.component.on_timer {
                    true => Some(instance.get_typed_func(&mut *store, "on-timer")?),
                    false => None,
                };
                Ok(Live {
                    bindings,
                    batch,
                    migrate,
                    on_timer,
                })
            });
        let live = match instantiated {
            Ok(live) => live,
            Err(e) => {
                return Err(InitError::Instantiate {
                    operator,
                    path,
                    reason: format!("{e:#}"),
                });
            }
        };
        let result = live.bindings.call_init(&mut *store, &self.config);
        match result {
            Ok(Ok(())) => {
                self.live = Some(live);
                Ok(())
            }
            Ok(Err(reason)) => Err(InitError::Refused {
                operator,
                path,
                reason: cap_reason(&reason, limits.max_reason),
            }),
            Err(e) => Err(InitError::Trapped {
                operator,
                path,
                reason: self.trap_reason(&e),
            }),
        }
    }

    /// Describes a trap: the limit it broke, or wasmtime's message (with
    /// the guest backtrace when there is one) and what the guest wrote to
    /// stderr.
    pub(super) fn trap_reason(&self, e: &wasmtime::Error) -> String {
        let data = self.store.data();
        let max = data.ctx.limits().max_reason;
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return format!(
                "{}: the call ran longer than max_call_ms = {} ms",
                crate::operator::CPU_LIMIT,
                data.ctx.limits().max_call_ms
            );
        }
        // The cause first, then what the guest printed, then where.
        let mut reason = e.root_cause().to_string();
        let stderr = data.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            reason += "; guest stderr: ";
            reason += stderr;
        }
        if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
            reason += "\n";
            reason += bt.to_string().trim_end();
        }
        if reason.len() > max {
            reason = cap_reason(&reason, max);
        }
        reason
    }

    /// Why a call failed with `e`: a host call the host refused (a limit,
    /// a call outside an event), named as such, or a trap.
    pub(super) fn fault(&self, e: &wasmtime::Error) -> HandleError {
        match e.chain().find_map(|c| c.downcast_ref::<HostError>()) {
            Some(refused) => HandleError::Refused(refused.to_string()),
            None => HandleError::Trap(self.trap_reason(e)),
        }
    }

    /// Handles `events` in frames of at most [`MAX_BATCH`]; returns how
    /// many it handled: all, unless in a span (see
    /// [`Operator::handle_span`]) events from there on need the per-event
    /// path.
    fn frames_of(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        if self.live.is_none() && self.failed_starts >= MAX_FAILED_STARTS {
            return Err(self.gave_up());
        }
        // What the operator logs is tagged with its version.
        let _span = self.span().entered();
        let spanning = self.store.data().ctx.spanning();
        let mut start = 0;
        while start < events.len() {
            let end = (start + MAX_BATCH).min(events.len());
            let from = start;
            let done = &mut |i, r, e: &mut Emits| done(from + i, r, e);
            // Looked up for each frame: a trap replaces the instance.
            let batch = self.live.as_ref().and_then(|l| l.batch);
            // A late event goes to `handle` (which serves `timers.late`),
            // never into a batch; so do all events when TTL refreshes on
            // reads, which the host sees only there.
            let per_event = self.store.data().ctx.per_event_only();
            start += match batch.filter(|_| !self.batch_off && !per_event) {
                Some(batch) => {
                    let took = self.run_frame(batch, &events[start..end], done)?;
                    if let Some(k) = self.span_stop.take() {
                        return Ok(start + k);
                    }
                    took
                }
                None if spanning => {
                    self.span_again = true;
                    return Ok(start);
                }
                None => {
                    handle_each(self, &events[start..end], 0, done)?;
                    end - start
                }
            };
        }
        Ok(events.len())
    }

    /// The per-event path for `events[from..]` of a frame; in a span,
    /// where they would not see their own watermark, a stop there instead.
    pub(super) fn per_event(
        &mut self,
        events: &[EventRef<'_>],
        from: usize,
        done: &mut Done<'_>,
    ) -> Result<(), RunError> {
        if self.store.data().ctx.spanning() {
            self.span_stop = Some(from);
            self.span_again = true;
            return Ok(());
        }
        handle_each(self, events, from, done)
    }

    /// The component this instance runs.
    pub fn component(&self) -> &Arc<WasmComponent> {
        &self.component
    }

    /// Whether the next events take the batched path: the component exports
    /// `handle-batch` and none of its batches asked for the per-event path
    /// (an event that used map or list state, or randomness).
    pub fn batching(&self) -> bool {
        !self.batch_off && self.live.as_ref().is_some_and(|l| l.batch.is_some())
    }

    /// How many events so far had their outcome from a `handle-batch`
    /// result (not counting those replayed per event after a trap or a
    /// refused result, nor those from a `stop` on).
    pub fn batched_events(&self) -> u64 {
        self.batched_events
    }

    /// Sets the content hash of each earlier generation of this operator,
    /// which `migrate` receives as the previous version's identity.
    pub fn set_history(&mut self, history: Arc<Vec<String>>) {
        self.history = history;
    }

    /// The tracing span of a call into this instance: the log lines the
    /// operator writes (`eddy:operator/log`) carry its version (the first
    /// 12 hex digits of the component's SHA-256) besides the operator and
    /// the key they name themselves.
    fn span(&self) -> tracing::Span {
        let hash = self.component.hash();
        tracing::info_span!("operator", version = hash.get(..12).unwrap_or(hash))
    }

    /// Migrates `key` when its state was last written by another version
    /// (see `migrate` in `wit/world.wit`). Called outside an event bracket;
    /// the migration's writes are kept only when it succeeds.
    pub(super) fn migrate_if_stale(
        &mut self,
        key: &str,
    ) -> Result<Result<(), HandleError>, StoreError> {
        let Some(migrate) = self.live.as_ref().and_then(|l| l.migrate) else {
            return Ok(Ok(()));
        };
        let Some(from) = self.ctx().stale(key)? else {
            return Ok(Ok(()));
        };
        let previous = self.history.get(from as usize).cloned().unwrap_or_default();
        self.ctx().begin_migration(key)?;
        let store = &mut self.store;
        store.set_epoch_deadline(deadline_ticks(store.data().ctx.limits().max_call_ms));
        store.data_mut().random.enter(Scope::Migrate);
        let shown = if previous.is_empty() {
            "an unknown version".to_string()
        } else {
            format!("version {previous}")
        };
        let max_reason = store.data().ctx.limits().max_reason;
        match migrate.call(&mut *store, (previous,)) {
            Ok((Ok(()),)) => match self.ctx().check_event() {
                Ok(()) => {
                    self.ctx().finish_migration(true);
                    Ok(Ok(()))
                }
                Err(e) => {
                    self.ctx().finish_migration(false);
                    Ok(Err(HandleError::Refused(format!(
                        "migrating the state of key `{key}` from {shown}: {e}"
                    ))))
                }
            },
            Ok((Err(reason),)) => {
                self.ctx().finish_migration(false);
                let reason = cap_reason(&reason, max_reason);
                Ok(Err(HandleError::Failed(format!(
                    "migrating the state of key `{key}` from {shown} failed: {reason}"
                ))))
            }
            Err(trap) => {
                let fault = self.fault(&trap);
                self.ctx().finish_migration(false);
                let reason = format!("migrating the state of key `{key}` from {shown}: {fault}");
                if let Err(e) = self.restart() {
                    return Ok(Err(HandleError::Trap(format!(
                        "{reason}; and the replacement instance failed: {e}"
                    ))));
                }
                Ok(Err(match fault {
                    HandleError::Refused(_) => HandleError::Refused(reason),
                    _ => HandleError::Trap(reason),
                }))
            }
        }
    }

    /// Replaces a trapped instance with a fresh one in a fresh store,
    /// moving the context over (it survives a failed start: it stays in
    /// the new store, and the next event tries again).
    pub(super) fn restart(&mut self) -> Result<(), InitError> {
        self.live = None;
        let ctx = self.store.data_mut().ctx.take();
        self.store = new_store(&self.component, ctx);
        let started = match testing::refuse(self.store.data().ctx.name()) {
            Some(reason) => Err(InitError::Refused {
                operator: self.store.data().ctx.name().to_string(),
                path: self.component.path.clone(),
                reason,
            }),
            None => self.start(),
        };
        match &started {
            Ok(()) => self.failed_starts = 0,
            Err(e) => {
                self.failed_starts += 1;
                self.last_start_error = Some(e.to_string());
                tracing::error!("{e}");
            }
        }
        started
    }

    /// Makes sure an instance runs before an event: when the last start
    /// failed, tries a replacement (while fewer than
    /// [`MAX_FAILED_STARTS`] failed in a row). `Err` fails the event;
    /// [`RunError::Stopped`] when the operator gives up.
    pub(super) fn revive(&mut self) -> Result<Result<(), HandleError>, RunError> {
        if self.live.is_some() {
            return Ok(Ok(()));
        }
        if self.failed_starts < MAX_FAILED_STARTS {
            match self.restart() {
                Ok(()) => return Ok(Ok(())),
                Err(e) if self.failed_starts < MAX_FAILED_STARTS => {
                    return Ok(Err(HandleError::Unavailable(format!(
                        "the operator trapped earlier and starting a replacement instance failed ({} of {MAX_FAILED_STARTS} attempts in a row): {e}",
                        self.failed_starts
                    ))))
                }
                Err(_) => {}
            }
        }
        Err(self.gave_up())
    }

    /// The error that stops the pipeline when no instance can be started.
    pub(super) fn gave_up(&self) -> RunError {
        RunError::Stopped(format!(
            "operator `{}` ({}): {MAX_FAILED_STARTS} replacement instances in a row failed to start, so the pipeline stops (state since the last checkpoint is not committed; a restart resumes from there); the last failure: {}",
            self.store.data().ctx.name(),
            self.component.path.display(),
            self.last_start_error.as_deref().unwrap_or("unknown")
        ))
    }
}

impl Operator for WasmOperator {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.store.data_mut().ctx
    }

    fn version(&self) -> &str {
        &self.component.hash
    }

    fn prepare(&mut self, key: &str) -> Result<Result<(), HandleError>, StoreError> {
        match self.revive() {
            Ok(Ok(())) => self.migrate_if_stale(key),
            Ok(Err(e)) => Ok(Err(e)),
            Err(RunError::Store(e)) => Err(e),
            Err(RunError::Stopped(reason)) => Ok(Err(HandleError::Unavailable(reason))),
        }
    }

    fn ready(&mut self, key: &str) -> Result<Result<(), HandleError>, RunError> {
        match self.revive()? {
            Ok(()) => Ok(self.migrate_if_stale(key)?),
            Err(e) => Ok(Err(e)),
        }
    }

    fn handle_many(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<(), RunError> {
        self.frames_of(events, done)?;
        self.span_again = false;
        Ok(())
    }

    fn timer_bound(&self, _event: &EventRef<'_>) -> Option<i64> {
        // On the batched path an event's handling neither reads the
        // watermark nor sets a timer: a batch that would (a `stop`, or a
        // call the host refuses in a span) is handed over again, split at
        // the advances (`handle_span`).
        let batched = self.batching() && !self.store.data().ctx.per_event_only();
        (batched && !self.span_again && !self.span_off).then_some(i64::MAX)
    }

    fn handle_span(
        &mut self,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        self.store.data_mut().ctx.set_spanning(true);
        let r = self.frames_of(events, done);
        self.store.data_mut().ctx.set_spanning(false);
        r
    }

    fn handles_timers(&self) -> bool {
        self.component.on_timer
    }

    fn on_timer(&mut self, timer: TimerRef<'_>) -> Result<(), HandleError> {
        // As `handle`: `ready` came first.
        let Some(live) = &self.live else {
            return Err(HandleError::Unavailable(
                "no operator instance is running (starting a replacement failed)".into(),
            ));
        };
        let Some(on_timer) = live.on_timer else {
            return Err(HandleError::Refused(format!(
                "timer `{}` fired, but the component does not export `on-timer`",
                timer.name
            )));
        };
        let store = &mut self.store;
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        store
            .data_mut()
            .random
            .enter(Scope::Event { line: timer.line });
        match on_timer.call(&mut *store, (timer.key, timer.name, timer.at)) {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(reason),)) => Err(HandleError::Failed(cap_reason(
                &reason,
                store.data().ctx.limits().max_reason,
            ))),
            Err(trap) => {
                let fault = self.fault(&trap);
                if let Err(e) = self.restart() {
                    return Err(HandleError::Trap(format!(
                        "{fault}; and the replacement instance failed: {e}"
                    )));
                }
                Err(fault)
            }
        }
    }

    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError> {
        // `ready` (called before each event) starts a replacement when
        // the last start failed; without one there is nothing to call.
        let Some(live) = &self.live else {
            return Err(HandleError::Unavailable(
                "no operator instance is running (starting a replacement failed)".into(),
            ));
        };
        let store = &mut self.store;
        let bindings = &live.bindings;
        let ev = types::Event {
            key: event.key,
            value: event.value,
            time: event.time,
        };
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        store
            .data_mut()
            .random
            .enter(Scope::Event { line: event.line });
        match bindings.call_handle(&mut *store, ev) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(HandleError::Failed(cap_reason(
                &reason,
                store.data().ctx.limits().max_reason,
            ))),
            Err(trap) => {
                let fault = self.fault(&trap);
                if let Err(e) = self.restart() {
                    return Err(HandleError::Trap(format!(
                        "{}; and the replacement instance failed: {e}",
                        fault
                    )));
                }
                Err(fault)
            }
        }
    }
}
