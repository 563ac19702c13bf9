//! Window aggregates in components (world `window-operator`,
//! `wit/window.wit`): [`WasmWindow`], a component compiled and checked
//! once, and [`WasmAggregate`], its instance on one worker, the
//! [`Aggregate`] a [`WindowOperator`](crate::operator::WindowOperator)
//! runs.
//!
//! A batch of events is folded in one `add` call (the accumulators it
//! touches and the events' payloads and times, as columns); a trap, or a
//! result that does not fit the call, replaces the instance and fails the
//! call, and the window operator then redoes the batch one event per call,
//! so a trap costs only the event that caused it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eddy_codec::wit::{Added, Adds, Bounds, Strings};
use wasmtime::component::{Func, InstancePre, ResourceTable, TypedFunc};
use wasmtime::{Engine, Store};

use super::component::{check, Checked};
use super::engine::{deadline_ticks, sandbox, MemoryCap};
use super::random::{Random, Scope};
use super::{ComponentError, HostData, InitError};
use crate::config::Limits;
use crate::operator::host::{cap_reason, HostError, OpCtx};
use crate::operator::window::{Aggregate, WindowInfo};
use crate::operator::{EventRef, HandleError};

/// Bytes of guest stderr kept per instance.
const STDERR_CAPTURE: usize = 4096;

/// The exports of world `window-operator` the host calls.
const EXPORTS: [&str; 4] = ["init", "add", "merge", "finish"];

/// A window aggregate component, compiled and checked once; workers
/// instantiate it.
pub struct WasmWindow {
    path: PathBuf,
    hash: String,
    engine: Engine,
    pre: InstancePre<HostData>,
    /// The component's bytes (kept in the state directory for a rollback).
    bytes: Arc<[u8]>,
}

impl WasmWindow {
    /// Reads, compiles and checks the component at `path`, of operator
    /// `operator` whose `window` setting is `at` (`pipeline file F, line
    /// N`, for errors): it must export the window aggregate (world
    /// `window-operator`).
    pub fn load(
        engine: &Engine,
        path: &Path,
        operator: &str,
        at: &str,
    ) -> Result<WasmWindow, ComponentError> {
        let bytes = crate::state::read_regular_file(path, crate::state::MAX_COMPONENT_BYTES, false)
            .map_err(|error| ComponentError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        Self::from_bytes(engine, path, &bytes, operator, at)
    }

    /// [`WasmWindow::load`] from the component's bytes (`path`: where they
    /// came from, for messages).
    pub fn from_bytes(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        operator: &str,
        at: &str,
    ) -> Result<WasmWindow, ComponentError> {
        let Checked {
            path,
            hash,
            pre,
            exports,
            ..
        } = check(
            engine,
            path,
            bytes,
            super::cache::Cache::from_env().as_ref(),
        )?;
        let missing: Vec<&str> = EXPORTS
            .iter()
            .copied()
            .filter(|name| !exports.iter().any(|e| e == name))
            .collect();
        if !missing.is_empty() {
            return Err(ComponentError::NotWindow {
                path,
                operator: operator.to_string(),
                at: at.to_string(),
                missing: missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(WasmWindow {
            path,
            hash,
            engine: engine.clone(),
            pre,
            bytes: bytes.into(),
        })
    }

    /// The component's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The engine it was compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// An instance for one worker of operator `name`, `init`ialized with
    /// `config`.
    pub fn instantiate(
        self: &Arc<Self>,
        name: &Arc<str>,
        limits: Limits,
        config: &str,
    ) -> Result<WasmAggregate, InitError> {
        let mut agg = WasmAggregate {
            window: self.clone(),
            name: name.clone(),
            limits,
            config: config.to_string(),
            store: self.new_store(name, limits),
            live: None,
            adds: Adds::default(),
        };
        agg.start()?;
        Ok(agg)
    }

    fn new_store(&self, name: &Arc<str>, limits: Limits) -> Store<HostData> {
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut store = Store::new(
            &self.engine,
            HostData {
                // The aggregate imports no state: its context only names
                // the operator in its log lines.
                ctx: OpCtx::new(name.clone(), None, limits),
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
}

/// The exports of a running aggregate instance, their types checked.
struct Live {
    add: Func,
    merge: Func,
    finish: Func,
}

type AddFn<'a> = TypedFunc<(&'a Adds,), (Added,)>;
type MergeFn<'a> = TypedFunc<(&'a Strings,), (Result<Vec<u8>, String>,)>;
type FinishFn<'a> = TypedFunc<(&'a Bounds, &'a Strings), (Result<Option<Vec<u8>>, String>,)>;

/// A window aggregate component's instance on one worker.
pub struct WasmAggregate {
    window: Arc<WasmWindow>,
    name: Arc<str>,
    limits: Limits,
    /// The config JSON, kept to `init` a replacement instance.
    config: String,
    store: Store<HostData>,
    /// `None` after a trap: the next call starts a fresh instance.
    live: Option<Live>,
    /// The `add` call's columns, their buffers kept from call to call.
    adds: Adds,
}

impl WasmAggregate {
    /// Instantiates the component in the (fresh) store and calls `init`.
    fn start(&mut self) -> Result<(), InitError> {
        let operator = self.name.to_string();
        let path = self.window.path.clone();
        let store = &mut self.store;
        store.set_epoch_deadline(deadline_ticks(self.limits.max_call_ms));
        store.data_mut().random.enter(Scope::Start);
        let started = self
            .window
            .pre
            .instantiate(&mut *store)
            .and_then(|instance| {
                let func = |store: &mut Store<HostData>, name: &str| {
                    instance
                        .get_func(&mut *store, name)
                        .ok_or_else(|| wasmtime::Error::msg(format!("no `{name}` export")))
                };
                let init = func(store, "init")?;
                let add = func(store, "add")?;
                add.typed::<(&Adds,), (Added,)>(&*store)?;
                let merge = func(store, "merge")?;
                merge.typed::<(&Strings,), (Result<Vec<u8>, String>,)>(&*store)?;
                let finish = func(store, "finish")?;
                finish.typed::<(&Bounds, &Strings), (Result<Option<Vec<u8>>, String>,)>(&*store)?;
                let init = init.typed::<(&str,), (Result<(), String>,)>(&*store)?;
                Ok((init, Live { add, merge, finish }))
            });
        let (init, live) = started.map_err(|e| InitError::Instantiate {
            operator: operator.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        match init.call(&mut *store, (&self.config,)) {
            Ok((Ok(()),)) => {
                store.data_mut().random.enter(Scope::Batch);
                self.live = Some(live);
                Ok(())
            }
            Ok((Err(reason),)) => Err(InitError::Refused {
                operator,
                path,
                reason: cap_reason(&reason, self.limits.max_reason),
            }),
            Err(e) => Err(InitError::Trapped {
                operator,
                path,
                reason: self.trap_reason(&e),
            }),
        }
    }

    /// The running instance's exports, starting a fresh instance after a
    /// trap (in a fresh store).
    fn live(&mut self) -> Result<&Live, HandleError> {
        if self.live.is_none() {
            self.store = self.window.new_store(&self.name, self.limits);
            self.start()
                .map_err(|e| HandleError::Unavailable(e.to_string()))?;
        }
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.max_call_ms));
        Ok(self.live.as_ref().expect("started"))
    }

    /// Describes a trap (as a Wasm operator's are described), and drops
    /// the instance: the next call starts a fresh one.
    fn trapped(&mut self, e: &wasmtime::Error) -> HandleError {
        self.live = None;
        if let Some(refused) = e.chain().find_map(|c| c.downcast_ref::<HostError>()) {
            return HandleError::Refused(refused.to_string());
        }
        HandleError::Trap(self.trap_reason(e))
    }

    fn trap_reason(&self, e: &wasmtime::Error) -> String {
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return format!(
                "{}: the call ran longer than max_call_ms = {} ms",
                crate::operator::CPU_LIMIT,
                self.limits.max_call_ms
            );
        }
        let mut reason = e.root_cause().to_string();
        let stderr = self.store.data().stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            reason += "; guest stderr: ";
            reason += stderr;
        }
        cap_reason(&reason, self.limits.max_reason)
    }

    /// A reason from the guest, capped and checked.
    fn reason(&self, bytes: &[u8]) -> HandleError {
        HandleError::Failed(cap_reason(
            &String::from_utf8_lossy(bytes),
            self.limits.max_reason,
        ))
    }
}

fn strings<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Strings {
    let mut s = Strings::default();
    for i in items {
        s.push(i);
    }
    s
}

impl Aggregate for WasmAggregate {
    fn add(&mut self, acc: &mut Option<Vec<u8>>, event: &EventRef<'_>) -> Result<(), HandleError> {
        let mut accs = [acc.take()];
        let mut outcomes = Vec::with_capacity(1);
        let r = self.add_many(&mut accs, &[(0, *event)], &mut outcomes);
        let [a] = accs;
        *acc = a;
        r?;
        outcomes.pop().unwrap_or(Ok(()))
    }

    fn add_many(
        &mut self,
        accs: &mut [Option<Vec<u8>>],
        events: &[(u32, EventRef<'_>)],
        outcomes: &mut Vec<Result<(), HandleError>>,
    ) -> Result<(), HandleError> {
        let mut adds = std::mem::take(&mut self.adds);
        adds.accumulators.clear();
        adds.fresh.clear();
        adds.targets.clear();
        adds.payloads.clear();
        adds.times.clear();
        for (i, a) in accs.iter().enumerate() {
            match a {
                Some(a) => adds.accumulators.push(a),
                None => {
                    adds.accumulators.push(&[]);
                    adds.fresh.push(i as u32);
                }
            }
        }
        for (i, e) in events {
            adds.targets.push(*i);
            adds.payloads.push(e.value);
            adds.times.push(e.time.unwrap_or(i64::MIN));
        }
        let r = self.call_add(&adds);
        self.adds = adds;
        let added = r?;
        let mut failed = added.failed.iter().zip(0..).peekable();
        for i in 0..events.len() {
            match failed.peek() {
                Some(&(&f, n)) if f as usize == i => {
                    failed.next();
                    outcomes.push(Err(self.reason(added.reasons.get(n).unwrap_or_default())));
                }
                _ => outcomes.push(Ok(())),
            }
        }
        for (i, a) in accs.iter_mut().enumerate() {
            let bytes = added.accumulators.get(i).unwrap_or_default();
            match a {
                Some(a) => {
                    a.clear();
                    a.extend_from_slice(bytes);
                }
                // A new accumulator none of whose events kept it stays new.
                None if events
                    .iter()
                    .zip(outcomes[outcomes.len() - events.len()..].iter())
                    .all(|((t, _), o)| *t as usize != i || o.is_err()) => {}
                None => *a = Some(bytes.to_vec()),
            }
        }
        Ok(())
    }

    fn merge(&mut self, accs: &[&[u8]]) -> Result<Vec<u8>, HandleError> {
        let column = strings(accs.iter().copied());
        let merge = self.live()?.merge;
        // SAFETY: `start` checked the export's type against exactly these
        // parameter and result types; a `Func` stays with its store.
        let typed = unsafe { MergeFn::new_unchecked(merge) };
        match typed.call(&mut self.store, (&column,)) {
            Ok((Ok(bytes),)) => Ok(bytes),
            Ok((Err(reason),)) => Err(self.reason(reason.as_bytes())),
            Err(e) => Err(self.trapped(&e)),
        }
    }

    fn finish(
        &mut self,
        window: &WindowInfo<'_>,
        accs: &[&[u8]],
    ) -> Result<Option<Vec<u8>>, HandleError> {
        let column = strings(accs.iter().copied());
        let bounds = Bounds {
            key: window.key.to_string(),
            start: window.start,
            end: window.end,
        };
        let finish = self.live()?.finish;
        // SAFETY: as in `merge`.
        let typed = unsafe { FinishFn::new_unchecked(finish) };
        match typed.call(&mut self.store, (&bounds, &column)) {
            Ok((Ok(out),)) => Ok(out),
            Ok((Err(reason),)) => Err(self.reason(reason.as_bytes())),
            Err(e) => Err(self.trapped(&e)),
        }
    }

    fn version(&self) -> &str {
        &self.window.hash
    }
}

impl WasmAggregate {
    /// One `add` call, its result checked against the call.
    fn call_add(&mut self, adds: &Adds) -> Result<Added, HandleError> {
        let add = self.live()?.add;
        // SAFETY: as in `merge`.
        let typed = unsafe { AddFn::new_unchecked(add) };
        let added = match typed.call(&mut self.store, (adds,)) {
            Ok((added,)) => added,
            Err(e) => return Err(self.trapped(&e)),
        };
        if let Err(e) = added.check(adds) {
            self.live = None;
            tracing::warn!(
                "operator `{}`: the window aggregate's `add` returned a result the host refuses ({e}); its events are redone one by one",
                self.name
            );
            return Err(HandleError::Refused(format!(
                "the window aggregate's `add` returned a result the host refuses: {e}"
            )));
        }
        Ok(added)
    }
}
