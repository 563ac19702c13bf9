//! Operators compiled to WebAssembly components.
//!
//! A [`Plugin`] is a component compiled and type-checked once (to an
//! `InstancePre`); each worker makes a [`WasmOperator`] from it: its own
//! `Store` and instance. Operators get no file system, network, environment
//! or clock: WASI is linked only so that components built by ordinary
//! toolchains instantiate, and its context grants nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::bindings::eddy::operator::{log, output, state, types};
use crate::bindings::{Operator as OperatorWorld, OperatorPre};
use crate::host::OpCtx;
use crate::operator::{EventRef, HandleError, Operator};

/// Bytes of guest stderr kept per instance.
const STDERR_CAPTURE: usize = 4096;

/// The contract version this runtime implements (`wit/world.wit`).
pub const CONTRACT: &str = "eddy:operator@0.1.0";

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("plugin {path}: cannot read the file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin {path}: not a WebAssembly file (it does not start with the `\\0asm` magic bytes)"
    )]
    NotWasm { path: PathBuf },
    #[error("plugin {path}: a core WebAssembly module, not a component; build it for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)")]
    CoreModule { path: PathBuf },
    #[error("plugin {path}: invalid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("plugin {path}: built against {found}, but this eddy implements {CONTRACT}")]
    Version { path: PathBuf, found: String },
    #[error("plugin {path}: not an eddy operator (world `{CONTRACT}/operator`): {reason}")]
    WrongWorld { path: PathBuf, reason: String },
}

/// The engine all operators share.
pub fn engine() -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // The synchronous call path is much cheaper without async concurrency.
    config.concurrency_support(false);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPU budget per call: the engine's epoch ticks every EPOCH_TICK and
    // each call gets a deadline of `max_call_ms` worth of ticks.
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("eddy-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
}

/// Granularity of the per-call CPU budget.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks for a budget of `ms` milliseconds (at least one full tick).
fn deadline_ticks(ms: u64) -> u64 {
    ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Caps an instance's linear memory, naming the limit when it is hit.
struct MemoryCap {
    max: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            return Err(wasmtime::Error::msg(format!(
                "memory limit exceeded: growing linear memory to {desired} bytes, over max_memory_bytes = {}",
                self.max
            )));
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

/// Store data of one operator instance.
pub struct HostData {
    ctx: OpCtx,
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    /// What the guest wrote to stderr (a Rust panic message, say), quoted
    /// in the dead letter when it traps.
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
}

impl WasiView for HostData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock stopped at zero: operators get no time but the event's.
struct NoClock;
impl HostWallClock for NoClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
impl HostMonotonicClock for NoClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn sandbox(stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe) -> WasiCtx {
    // No preopened directories, no environment, no arguments, no network,
    // stopped clocks; stdout is discarded, stderr captured.
    let mut b = WasiCtxBuilder::new();
    b.stderr(stderr);
    b.wall_clock(NoClock)
        .monotonic_clock(NoClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

fn linker(engine: &Engine) -> anyhow::Result<Linker<HostData>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    OperatorWorld::add_to_linker::<HostData, wasmtime::component::HasSelf<HostData>>(
        &mut linker,
        |d| d,
    )?;
    Ok(linker)
}

/// A component compiled and type-checked against the operator world.
pub struct Plugin {
    path: PathBuf,
    /// Hex SHA-256-free content hash (FxHash of the bytes): identifies a
    /// version in logs and status.
    hash: String,
    engine: Engine,
    pre: OperatorPre<HostData>,
}

impl Plugin {
    /// Reads, compiles and type-checks the component at `path`.
    pub fn load(engine: &Engine, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Compiles and type-checks component `bytes` (named `path` in errors).
    pub fn from_bytes(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let path = path.to_path_buf();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(PluginError::NotWasm { path });
        }
        // Core modules have version 1 and layer 0; components layer 1.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PluginError::CoreModule { path });
        }
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Invalid {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        // A component built against another version of the contract imports
        // `eddy:operator/...@<other>`: say so rather than "missing import".
        let ty = component.component_type();
        for (name, _) in ty.imports(engine) {
            if let Some(rest) = name.strip_prefix("eddy:operator/") {
                if let Some((_, version)) = rest.split_once('@') {
                    let found = format!("eddy:operator@{version}");
                    if found != CONTRACT {
                        return Err(PluginError::Version { path, found });
                    }
                }
            }
        }
        let linker = linker(engine).map_err(|e| PluginError::Invalid {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::WrongWorld {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
        let pre = OperatorPre::new(pre).map_err(|e| PluginError::WrongWorld {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
        let hash = format!("{:016x}", rustc_hash::FxBuildHasher.hash_one(bytes));
        Ok(Plugin {
            path,
            hash,
            engine: engine.clone(),
            pre,
        })
    }

    /// Where the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Instantiates the operator and calls `init(config)`.
    pub fn instantiate(
        self: &Arc<Self>,
        ctx: OpCtx,
        config: &str,
    ) -> Result<WasmOperator, InitError> {
        let mut op = WasmOperator {
            plugin: self.clone(),
            config: config.to_string(),
            store: None,
            bindings: None,
        };
        op.start(ctx)?;
        Ok(op)
    }
}

use std::hash::BuildHasher;

/// Why an operator instance could not start.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("operator `{operator}` ({path}): instantiation failed: {reason}")]
    Instantiate {
        operator: String,
        path: PathBuf,
        reason: String,
    },
    #[error("operator `{operator}` ({path}): init refused its config: {reason}")]
    Refused {
        operator: String,
        path: PathBuf,
        reason: String,
    },
    #[error("operator `{operator}` ({path}): init trapped: {reason}")]
    Trapped {
        operator: String,
        path: PathBuf,
        reason: String,
    },
}

/// One instance of a Wasm operator, owned by a worker.
pub struct WasmOperator {
    plugin: Arc<Plugin>,
    /// The config JSON, kept to re-`init` a replacement instance.
    config: String,
    /// `None` only while being (re)started.
    store: Option<Store<HostData>>,
    bindings: Option<OperatorWorld>,
}

impl WasmOperator {
    fn start(&mut self, ctx: OpCtx) -> Result<(), InitError> {
        let operator = ctx.name().to_string();
        let path = self.plugin.path.clone();
        let limits = *ctx.limits();
        let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut store = Store::new(
            &self.plugin.engine,
            HostData {
                ctx,
                wasi: sandbox(stderr.clone()),
                table: ResourceTable::new(),
                memory: MemoryCap {
                    max: limits.max_memory,
                },
                stderr,
            },
        );
        store.limiter(|d| &mut d.memory);
        store.set_epoch_deadline(deadline_ticks(limits.max_call_ms));
        let bindings = match self.plugin.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => {
                self.store = Some(store);
                return Err(InitError::Instantiate {
                    operator,
                    path,
                    reason: format!("{e:#}"),
                });
            }
        };
        let result = bindings.call_init(&mut store, &self.config);
        self.store = Some(store);
        match result {
            Ok(Ok(())) => {
                self.bindings = Some(bindings);
                Ok(())
            }
            Ok(Err(reason)) => Err(InitError::Refused {
                operator,
                path,
                reason,
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
    fn trap_reason(&self, e: &wasmtime::Error) -> String {
        let data = self.store.as_ref().expect("store present").data();
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return format!(
                "CPU limit exceeded: the call ran longer than max_call_ms = {} ms",
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
        reason
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Replaces a trapped instance with a fresh one, keeping the context.
    fn restart(&mut self) -> Result<(), InitError> {
        let store = self.store.take().expect("store present");
        self.bindings = None;
        self.start(store.into_data().ctx)
    }
}

impl Operator for WasmOperator {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.store.as_mut().expect("store present").data_mut().ctx
    }

    fn handle(&mut self, event: EventRef<'_>) -> Result<(), HandleError> {
        let store = self.store.as_mut().expect("store present");
        let bindings = self.bindings.as_ref().expect("instance present");
        let ev = types::Event {
            key: event.key,
            value: event.value,
            time: event.time,
        };
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        match bindings.call_handle(&mut *store, ev) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(HandleError::Failed(reason)),
            Err(trap) => {
                let reason = self.trap_reason(&trap);
                if let Err(e) = self.restart() {
                    return Err(HandleError::Trap(format!(
                        "{reason}; and the replacement instance failed: {e}"
                    )));
                }
                Err(HandleError::Trap(reason))
            }
        }
    }
}

// ---- host imports ---------------------------------------------------------------

type HostResult<T> = wasmtime::Result<T>;

fn trap(e: crate::host::HostError) -> wasmtime::Error {
    wasmtime::Error::msg(e.to_string())
}

impl types::Host for HostData {}

impl state::Host for HostData {
    fn get(&mut self, name: String) -> HostResult<Option<Vec<u8>>> {
        self.ctx
            .get(&name)
            .map(|v| v.map(<[u8]>::to_vec))
            .map_err(trap)
    }
    fn set(&mut self, name: String, value: Vec<u8>) -> HostResult<()> {
        self.ctx.set(&name, &value).map_err(trap)
    }
    fn delete(&mut self, name: String) -> HostResult<bool> {
        self.ctx.delete(&name).map_err(trap)
    }
    fn map_get(&mut self, name: String, field: String) -> HostResult<Option<Vec<u8>>> {
        self.ctx
            .map_get(&name, &field)
            .map(|v| v.map(<[u8]>::to_vec))
            .map_err(trap)
    }
    fn map_set(&mut self, name: String, field: String, value: Vec<u8>) -> HostResult<()> {
        self.ctx.map_set(&name, field, value).map_err(trap)
    }
    fn map_delete(&mut self, name: String, field: String) -> HostResult<bool> {
        self.ctx.map_delete(&name, &field).map_err(trap)
    }
    fn map_entries(&mut self, name: String) -> HostResult<Vec<(String, Vec<u8>)>> {
        self.ctx.map_entries(&name).map_err(trap)
    }
    fn map_len(&mut self, name: String) -> HostResult<u32> {
        self.ctx.map_len(&name).map_err(trap)
    }
    fn list_push(&mut self, name: String, item: Vec<u8>) -> HostResult<u32> {
        self.ctx.list_push(&name, item).map_err(trap)
    }
    fn list_len(&mut self, name: String) -> HostResult<u32> {
        self.ctx.list_len(&name).map_err(trap)
    }
    fn list_range(&mut self, name: String, start: u32, end: u32) -> HostResult<Vec<Vec<u8>>> {
        self.ctx.list_range(&name, start, end).map_err(trap)
    }
    fn list_trim(&mut self, name: String, keep: u32) -> HostResult<u32> {
        self.ctx.list_trim(&name, keep).map_err(trap)
    }
    fn clear(&mut self) -> HostResult<()> {
        self.ctx.clear().map_err(trap)
    }
}

impl output::Host for HostData {
    fn emit(&mut self, key: String, value: Vec<u8>) -> HostResult<()> {
        self.ctx.emit(key, value).map_err(trap)
    }
}

impl log::Host for HostData {
    fn log(&mut self, level: types::Level, message: String) -> HostResult<()> {
        let op = self.ctx.name();
        let key = self.ctx.current_key().unwrap_or("-");
        match level {
            types::Level::Trace => tracing::trace!(operator = %op, key, "{message}"),
            types::Level::Debug => tracing::debug!(operator = %op, key, "{message}"),
            types::Level::Info => tracing::info!(operator = %op, key, "{message}"),
            types::Level::Warn => tracing::warn!(operator = %op, key, "{message}"),
            types::Level::Error => tracing::error!(operator = %op, key, "{message}"),
        }
        Ok(())
    }
}
