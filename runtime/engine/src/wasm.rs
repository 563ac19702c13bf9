//! Operators compiled to WebAssembly components.
//!
//! A [`Plugin`] is a component compiled and type-checked once (to an
//! `InstancePre`); each worker makes a [`WasmOperator`] from it: its own
//! `Store` and instance. Operators get no file system, network, environment
//! or clock: WASI is linked only so that components built by ordinary
//! toolchains instantiate, and its context grants nothing.
//!
//! # Clocks and randomness
//!
//! Both clocks of `wasi:clocks` are stopped at zero: an operator's only
//! time is its events' time. `wasi:random` is deterministic, so that the
//! same input gives the same outputs with any number of workers and a
//! replay after a crash rebuilds exactly the same state:
//!
//! - while an event is handled (`handle`), `random` and `insecure` draw
//!   from a generator seeded with the operator's name, the event's key, its
//!   input line, and how many earlier events of that key and line drew
//!   numbers at this operator (events a previous operator emitted from one
//!   line get different numbers);
//! - during instantiation and `init`, from one seeded with the operator's
//!   name; during `migrate`, with the operator's name and the key;
//! - `insecure-seed` (what Rust's `HashMap` seeds its hasher from) returns
//!   a value fixed per operator name, whenever it is called;
//! - inside a `handle-batch` call the host cannot tell the events apart:
//!   the first draw traps, the batch is replayed event by event on a fresh
//!   instance, and that instance stays on the per-event path. An operator
//!   that never draws numbers (the Rust SDK itself never does) keeps the
//!   batched path.
//!
//! The numbers are pseudo-random (SplitMix64), not secret: an operator must
//! not use them for keys or tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Linker, ResourceTable};

use crate::cache::{self, Cache, Compiled};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::batch::{Applied, BatchFn, HostBatch};
use crate::bindings::eddy::operator::{log, output, state, types};
use crate::bindings::{Operator as OperatorWorld, OperatorPre};
use crate::host::{cap_reason, Emits, HostError, OpCtx};
use crate::operator::{handle_each, Done, EventRef, HandleError, Operator, RunError};
use crate::store::StoreError;

/// Most events per `handle-batch` call.
const MAX_BATCH: usize = 256;

/// The migration hook (`migrate` of world `migrating-operator`), when the
/// component exports it.
type MigrateFn = wasmtime::component::TypedFunc<(String,), (Result<(), String>,)>;

/// Bytes of guest stderr kept per instance.
const STDERR_CAPTURE: usize = 4096;

/// The contract version this runtime implements (`wit/world.wit`).
pub const CONTRACT: &str = "eddy:operator@0.2.0";

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("plugin {path}: cannot read the file: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
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
    engine_with(true)
}

/// An engine with (or, for measuring its cost, without) the per-call CPU
/// limit; without it, `max_call_ms` is not enforced.
pub fn engine_with(cpu_limit: bool) -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // The synchronous call path is much cheaper without async concurrency.
    config.concurrency_support(false);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPU budget per call: the engine's epoch ticks every EPOCH_TICK and
    // each call gets a deadline of `max_call_ms` worth of ticks.
    config.epoch_interruption(cpu_limit);
    if std::env::var_os("EDDY_PERF_MAP").is_some() {
        // Name JIT-compiled guest functions for `perf report`.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    if !cpu_limit {
        return Ok(engine);
    }
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
    /// Deterministic `wasi:random` (see the module docs).
    random: Random,
}

/// What `wasi:random` numbers are being drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Instantiation and `init`.
    Start,
    /// `handle` of an event from input line `line` (the key is the
    /// context's current key).
    Event { line: u64 },
    /// `migrate` of the context's current key.
    Migrate,
    /// A `handle-batch` call: drawing traps.
    Batch,
}

/// The deterministic generator behind `wasi:random` of one instance.
struct Random {
    scope: Scope,
    /// SplitMix64 state, seeded on the first draw in a scope.
    state: Option<u64>,
    /// Numbers were asked for during a `handle-batch` call.
    wanted_in_batch: bool,
}

impl Default for Random {
    fn default() -> Self {
        Random {
            scope: Scope::Start,
            state: None,
            wanted_in_batch: false,
        }
    }
}

impl Random {
    /// Draws from here on are for `scope` (cheap: seeding waits for the
    /// first draw).
    fn enter(&mut self, scope: Scope) {
        self.scope = scope;
        self.state = None;
    }
}

/// SplitMix64's output function: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from the given parts (FNV-1a over each part and its length, then
/// mixed): stable across runs, processes and versions of the host.
fn seed_of(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&(part.len() as u64).to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    mix64(h)
}

impl HostData {
    /// The next 64 random bits for the current scope; traps inside
    /// `handle-batch` (the batch is then replayed event by event).
    fn next_random(&mut self) -> wasmtime::Result<u64> {
        let state = match self.random.state {
            Some(state) => state,
            None => {
                let scope = self.random.scope;
                // Which of the events of this key and line drawing numbers
                // this one is.
                let n = match scope {
                    Scope::Event { line } => {
                        let key = seed_of(&[self.ctx.current_key().unwrap_or("").as_bytes()]);
                        self.ctx.draw_index(line, key)
                    }
                    _ => 0,
                };
                let name = self.ctx.name().as_bytes();
                let key = self.ctx.current_key().unwrap_or("").as_bytes();
                match scope {
                    Scope::Batch => {
                        self.random.wanted_in_batch = true;
                        return Err(wasmtime::Error::msg(
                            "wasi:random called during handle-batch; the batch is replayed event by event",
                        ));
                    }
                    Scope::Start => seed_of(&[b"init", name]),
                    Scope::Migrate => seed_of(&[b"migrate", name, key]),
                    Scope::Event { line } => {
                        seed_of(&[b"event", name, key, &line.to_le_bytes(), &n.to_le_bytes()])
                    }
                }
            }
        };
        let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.random.state = Some(state);
        Ok(mix64(state))
    }

    /// `len` random bytes (at most the instance's memory limit).
    fn random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        if len > self.memory.max as u64 {
            return Err(wasmtime::Error::msg(format!(
                "wasi:random: {len} bytes asked for, more than max_memory_bytes = {}",
                self.memory.max
            )));
        }
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            let word = self.next_random()?.to_le_bytes();
            let n = word.len().min(len as usize - out.len());
            out.extend_from_slice(&word[..n]);
        }
        Ok(out)
    }
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
    use wasmtime_wasi::p2::bindings::random;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // `wasi:random` replaced by the deterministic one (module docs).
    linker.allow_shadowing(true);
    type Me = wasmtime::component::HasSelf<HostData>;
    random::random::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    random::insecure::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    random::insecure_seed::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    linker.allow_shadowing(false);
    OperatorWorld::add_to_linker::<HostData, wasmtime::component::HasSelf<HostData>>(
        &mut linker,
        |d| d,
    )?;
    // The batch types (`batched-operator` imports their interface).
    linker.instance(crate::batch::INTERFACE)?;
    Ok(linker)
}

/// A component compiled and type-checked against the operator world.
pub struct Plugin {
    path: PathBuf,
    /// Content hash: the first 16 hex digits of the SHA-256 of the bytes.
    /// Identifies a version in logs and status, and names its copy in the
    /// state directory, which is checked against it when read back.
    hash: String,
    engine: Engine,
    /// The component's bytes, kept in the state directory when it runs.
    bytes: Arc<[u8]>,
    pre: OperatorPre<HostData>,
    /// The component exports `handle-batch` (the batched fast path).
    batched: bool,
    /// The component exports `migrate` (the migration hook).
    migrates: bool,
    /// Compiled now or loaded from the cache.
    compiled: Compiled,
}

impl Plugin {
    /// Reads, compiles and type-checks the component at `path`.
    ///
    /// Only a regular file is read, at most
    /// [`MAX_COMPONENT_BYTES`](crate::store::MAX_COMPONENT_BYTES): a FIFO,
    /// a device or a directory is refused at once (it is opened without
    /// blocking and checked with `fstat`), never read until it ends.
    pub fn load(engine: &Engine, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = crate::store::read_regular_file(path, crate::store::MAX_COMPONENT_BYTES, false)
            .map_err(|error| PluginError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Compiles and type-checks component `bytes` (named `path` in errors).
    ///
    /// Compiled code comes from the cache named by the environment
    /// ([`Cache::from_env`]) when it has this component.
    pub fn from_bytes(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<Plugin, PluginError> {
        Self::from_bytes_cached(engine, path, bytes, Cache::from_env().as_ref())
    }

    /// [`Plugin::from_bytes`] with an explicit cache (`None`: always
    /// compile).
    pub fn from_bytes_cached(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        cache: Option<&Cache>,
    ) -> Result<Plugin, PluginError> {
        let path = path.to_path_buf();
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(PluginError::NotWasm { path });
        }
        // Core modules have version 1 and layer 0; components layer 1.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PluginError::CoreModule { path });
        }
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(bytes).into();
        let (component, compiled) =
            cache::compile_digest(cache, engine, bytes, &digest).map_err(|e| {
                PluginError::Invalid {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                }
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
        let hash = crate::store::component_hash_of(&digest);
        let batched = ty.exports(engine).any(|(name, _)| name == "handle-batch");
        let migrates = ty.exports(engine).any(|(name, _)| name == "migrate");
        Ok(Plugin {
            path,
            hash,
            engine: engine.clone(),
            bytes: bytes.into(),
            pre,
            batched,
            migrates,
            compiled,
        })
    }

    /// Whether the compiled code came from the cache.
    pub fn compiled(&self) -> Compiled {
        self.compiled
    }

    /// Where the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Content hash of the component bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The component's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The engine it was compiled for.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the component exports the migration hook.
    pub fn migrates(&self) -> bool {
        self.migrates
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
            store: new_store(self, ctx),
            live: None,
            batch_off: false,
            host_batch: HostBatch::default(),
            history: Arc::default(),
            failed_starts: 0,
            last_start_error: None,
        };
        op.start()?;
        Ok(op)
    }
}

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

/// Replacement instances that may fail to start in a row (after a trap,
/// each later event tries again) before the operator gives up and the
/// pipeline stops.
pub const MAX_FAILED_STARTS: u32 = 3;

/// One instance of a Wasm operator, owned by a worker.
pub struct WasmOperator {
    plugin: Arc<Plugin>,
    /// The config JSON, kept to re-`init` a replacement instance.
    config: String,
    /// The store of the current instance. Its data holds the operator's
    /// context (the worker's state cache, with writes not yet committed),
    /// which moves to each replacement's store and is never dropped with a
    /// failed instance.
    store: Store<HostData>,
    /// The running instance; `None` when the last start failed.
    live: Option<Live>,
    /// The guest asked for the per-event path (it uses map or list state,
    /// or randomness).
    batch_off: bool,
    /// The `handle-batch` batch, its buffers kept from call to call.
    host_batch: HostBatch,
    /// Content hash of each generation of this operator (index: generation),
    /// handed to `migrate` as the previous version's identity.
    history: Arc<Vec<String>>,
    /// Replacement instances that failed to start since the last one that
    /// did (see [`MAX_FAILED_STARTS`]).
    failed_starts: u32,
    /// Why the last replacement failed to start.
    last_start_error: Option<String>,
}

/// The exports of a running instance.
struct Live {
    bindings: OperatorWorld,
    /// `handle-batch`, when exported.
    batch: Option<BatchFn>,
    /// `migrate`, when exported.
    migrate: Option<MigrateFn>,
}

/// A fresh store for an instance of `plugin`, holding `ctx`.
fn new_store(plugin: &Plugin, ctx: OpCtx) -> Store<HostData> {
    let limits = *ctx.limits();
    let stderr = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(STDERR_CAPTURE);
    let mut store = Store::new(
        &plugin.engine,
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
    fn start(&mut self) -> Result<(), InitError> {
        self.live = None;
        let operator = self.store.data().ctx.name().to_string();
        let path = self.plugin.path.clone();
        let limits = *self.store.data().ctx.limits();
        let store = &mut self.store;
        store.set_epoch_deadline(deadline_ticks(limits.max_call_ms));
        let instantiated = self
            .plugin
            .pre
            .instance_pre()
            .instantiate(&mut *store)
            .and_then(|instance| {
                let bindings = OperatorWorld::new(&mut *store, &instance)?;
                let batch = match self.plugin.batched {
                    true => Some(BatchFn::of(&instance, &mut *store)?),
                    false => None,
                };
                let migrate = match self.plugin.migrates {
                    true => Some(instance.get_typed_func(&mut *store, "migrate")?),
                    false => None,
                };
                Ok(Live {
                    bindings,
                    batch,
                    migrate,
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
    fn trap_reason(&self, e: &wasmtime::Error) -> String {
        let data = self.store.data();
        let max = data.ctx.limits().max_reason;
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
        if reason.len() > max {
            reason = cap_reason(&reason, max);
        }
        reason
    }

    /// Why a call failed with `e`: a host call the host refused (a limit,
    /// a call outside an event), named as such, or a trap.
    fn fault(&self, e: &wasmtime::Error) -> HandleError {
        match e.chain().find_map(|c| c.downcast_ref::<HostError>()) {
            Some(refused) => HandleError::Refused(refused.to_string()),
            None => HandleError::Trap(self.trap_reason(e)),
        }
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Sets the content hash of each earlier generation of this operator,
    /// which `migrate` receives as the previous version's identity.
    pub fn set_history(&mut self, history: Arc<Vec<String>>) {
        self.history = history;
    }

    /// Migrates `key` when its state was last written by another version
    /// (see `migrate` in `wit/world.wit`). Called outside an event bracket;
    /// the migration's writes are kept only when it succeeds.
    fn migrate_if_stale(&mut self, key: &str) -> Result<Result<(), HandleError>, StoreError> {
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
    fn restart(&mut self) -> Result<(), InitError> {
        self.live = None;
        let ctx = self.store.data_mut().ctx.take();
        self.store = new_store(&self.plugin, ctx);
        let started = match testing::refuse(self.store.data().ctx.name()) {
            Some(reason) => Err(InitError::Refused {
                operator: self.store.data().ctx.name().to_string(),
                path: self.plugin.path.clone(),
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
    fn revive(&mut self) -> Result<Result<(), HandleError>, RunError> {
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
    fn gave_up(&self) -> RunError {
        RunError::Stopped(format!(
            "operator `{}` ({}): {MAX_FAILED_STARTS} replacement instances in a row failed to start, so the pipeline stops (state since the last checkpoint is not committed; a restart resumes from there); the last failure: {}",
            self.store.data().ctx.name(),
            self.plugin.path.display(),
            self.last_start_error.as_deref().unwrap_or("unknown")
        ))
    }

    /// Runs events (at most [`MAX_BATCH`]) through one `handle-batch` call;
    /// returns how many it took care of (at least one): every event of a
    /// batch, fewer when the batch would pass [`crate::batch::cap`] (the
    /// rest go in the next batch; an event too large for a batch alone
    /// takes the per-event path) or when the host refused an event's
    /// outcome (the rest are redone from the host's state). Falls back to
    /// per-event `handle` for a batch that traps or whose result the codec
    /// refuses (replayed on a fresh instance) and for events from a "stop"
    /// on.
    fn run_frame(
        &mut self,
        batch: BatchFn,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        if events.is_empty() {
            return Ok(0);
        }
        // Taken for the call, so that `self` stays free; its buffers
        // come back with it.
        let mut host_batch = std::mem::take(&mut self.host_batch);
        let r = self.run_batch(&mut host_batch, batch, events, done);
        self.host_batch = host_batch;
        r
    }

    /// [`WasmOperator::run_frame`] with the batch's buffers.
    fn run_batch(
        &mut self,
        host_batch: &mut HostBatch,
        batch: BatchFn,
        events: &[EventRef<'_>],
        done: &mut Done<'_>,
    ) -> Result<usize, RunError> {
        host_batch.resolve(self.ctx(), events)?;
        if self.live.as_ref().is_some_and(|l| l.migrate.is_some()) {
            for &(slot, first) in host_batch.keys() {
                // Nothing of the batch ran yet: a key whose migration fails
                // takes the whole batch to the per-event path, where that
                // key's events are dead-lettered.
                if self.ctx().slot_stale(slot) && self.migrate_if_stale(events[first].key)?.is_err()
                {
                    handle_each(self, events, 0, done)?;
                    return Ok(events.len());
                }
            }
        }
        let cap = crate::batch::cap(self.store.data().ctx.limits());
        let n = host_batch.build(&self.store.data().ctx, events, cap);
        if n == 0 {
            handle_each(self, &events[..1], 0, done)?;
            return Ok(1);
        }
        let events = &events[..n];
        let store = &mut self.store;
        let ticks = deadline_ticks(store.data().ctx.limits().max_call_ms);
        store.set_epoch_deadline(ticks);
        store.data_mut().random.enter(Scope::Batch);
        let result = match batch.call(&mut *store, host_batch.batch()) {
            Ok(r) => r,
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
        let limits = crate::batch::codec_limits(self.store.data().ctx.limits());
        let checked = match eddy_codec::CheckedResult::new(&result, n, &limits) {
            Ok(checked) => checked,
            Err(e) => {
                // Like a trap: nothing of the result takes effect.
                tracing::warn!(operator = %self.ctx().name(), "handle-batch returned a result the host refuses ({e}); replaying the batch event by event on a fresh instance");
                let _ = self.restart();
                handle_each(self, events, 0, done)?;
                return Ok(n);
            }
        };
        match host_batch.apply(self.ctx(), checked, done) {
            Applied::All => Ok(n),
            Applied::Stop(i) => {
                self.batch_off = true;
                handle_each(self, events, i, done)?;
                Ok(n)
            }
            Applied::Refused(i) => Ok(i + 1),
        }
    }
}

impl Operator for WasmOperator {
    fn ctx(&mut self) -> &mut OpCtx {
        &mut self.store.data_mut().ctx
    }

    fn version(&self) -> &str {
        &self.plugin.hash
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
        if self.live.is_none() && self.failed_starts >= MAX_FAILED_STARTS {
            return Err(self.gave_up());
        }
        let mut start = 0;
        while start < events.len() {
            let end = (start + MAX_BATCH).min(events.len());
            let from = start;
            let done = &mut |i, r, e: &mut Emits| done(from + i, r, e);
            // Looked up for each frame: a trap replaces the instance.
            let batch = self.live.as_ref().and_then(|l| l.batch);
            start += match batch.filter(|_| !self.batch_off) {
                Some(batch) => self.run_frame(batch, &events[start..end], done)?,
                None => {
                    handle_each(self, &events[start..end], 0, done)?;
                    end - start
                }
            };
        }
        Ok(())
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

// ---- host imports ---------------------------------------------------------------

type HostResult<T> = wasmtime::Result<T>;

fn trap(e: HostError) -> wasmtime::Error {
    // Kept as a `HostError` so the event's dead letter names the refusal
    // (see `WasmOperator::fault`).
    wasmtime::Error::new(e)
}

impl types::Host for HostData {}

impl wasmtime_wasi::p2::bindings::random::random::Host for HostData {
    fn get_random_bytes(&mut self, len: u64) -> HostResult<Vec<u8>> {
        self.random_bytes(len)
    }
    fn get_random_u64(&mut self) -> HostResult<u64> {
        self.next_random()
    }
}

impl wasmtime_wasi::p2::bindings::random::insecure::Host for HostData {
    fn get_insecure_random_bytes(&mut self, len: u64) -> HostResult<Vec<u8>> {
        self.random_bytes(len)
    }
    fn get_insecure_random_u64(&mut self) -> HostResult<u64> {
        self.next_random()
    }
}

impl wasmtime_wasi::p2::bindings::random::insecure_seed::Host for HostData {
    fn insecure_seed(&mut self) -> HostResult<(u64, u64)> {
        let name = self.ctx.name().as_bytes();
        Ok((
            seed_of(&[b"insecure-seed", name]),
            seed_of(&[b"insecure-seed-2", name]),
        ))
    }
}

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
        self.ctx.emit(&key, &value).map_err(trap)
    }
}

impl log::Host for HostData {
    fn log(&mut self, level: types::Level, message: String) -> HostResult<()> {
        let op = self.ctx.name();
        let key = self.ctx.current_key().unwrap_or("-");
        let max = self.ctx.limits().max_reason;
        let message = match message.len() > max {
            true => cap_reason(&message, max),
            false => message,
        };
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

/// Test hooks: make the start of replacement instances fail, which no
/// component can do on its own (`init` is deterministic: a replacement
/// starts exactly like the first instance did).
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Some hook is set (spares the lock on every restart).
    static ARMED: AtomicBool = AtomicBool::new(false);
    /// Per operator name: how many more replacement starts to refuse.
    static REFUSE: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

    /// Makes the next `n` starts of a replacement instance of operator
    /// `operator` (any worker) fail as if its `init` refused its config.
    /// First instances are not affected.
    pub fn fail_restarts(operator: &str, n: u32) {
        let mut r = REFUSE.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|(o, _)| o != operator);
        r.push((operator.to_string(), n));
        ARMED.store(true, Ordering::Release);
    }

    /// Whether to refuse this start of `operator`: the reason, and one
    /// refusal fewer.
    pub(super) fn refuse(operator: &str) -> Option<String> {
        if !ARMED.load(Ordering::Acquire) {
            return None;
        }
        let mut r = REFUSE.lock().unwrap_or_else(|e| e.into_inner());
        let (_, n) = r.iter_mut().find(|(o, n)| o == operator && *n > 0)?;
        *n -= 1;
        Some("refused by a test hook (wasm::testing::fail_restarts)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are part of what a replay must reproduce: a change to
    /// how they are made changes every operator's random numbers. (The
    /// values were checked against an independent FNV-1a + SplitMix64.)
    #[test]
    fn random_seeds_are_fixed_functions_of_their_parts() {
        assert_eq!(seed_of(&[b"init", b"op"]), seed_of(&[b"init", b"op"]));
        assert_ne!(seed_of(&[b"ab", b"c"]), seed_of(&[b"a", b"bc"]));
        assert_eq!(seed_of(&[b"event", b"op", b"k"]), 0xae1a_7e40_9724_6d6d);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }
}
