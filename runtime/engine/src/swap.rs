//! Hot swap: the versions of each operator, and a [`Controller`] that
//! prepares a swap off the hot path and hands it to the coordinator.
//!
//! A swap goes in three steps:
//!
//! 1. **Prepare** (on the caller's thread, the pipeline keeps running): read
//!    and compile the component, type-check it against the operator world,
//!    instantiate it and call `init` with the operator's config; when it
//!    exports `migrate`, try the migration on a sample of committed keys
//!    (writes discarded). Any failure refuses the swap with the reason and
//!    changes nothing. Then keep a copy of the component in the state
//!    directory and make one initialised instance per worker.
//! 2. **Switch** (the coordinator, see `runner`): a barrier in the event
//!    stream. Every event routed before it is handled by the old version,
//!    every event after it by the new one. For the first operator of a chain
//!    the barrier is a message in each worker's inbox, between two batches;
//!    for a later operator the coordinator first waits until every event in
//!    flight is handled. Each worker hands the old instance's state cache to
//!    the new instance, which is an O(1) exchange.
//! 3. **Commit**: the next checkpoint records the new active version with
//!    the state and input position in one transaction; the swap is reported
//!    done once that is durable, so a restart comes back on it.
//!
//! State written by one version and first touched by another is migrated
//! lazily (see `migrate` in `wit/world.wit`): each key carries the
//! generation of the version that last wrote it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender};
use serde::{Deserialize, Serialize};

use crate::host::OpCtx;
use crate::operator::Operator;
use crate::runner::{Loaded, OperatorKind};
use crate::store::Store;
use crate::wasm::Plugin;
use crate::worker::{Live, OpStats, SwapPause};

/// Committed keys on which a new version's migration is tried before a swap.
const TRIAL_KEYS: usize = 64;

/// One version of an operator that ran on this state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number: 0 for the first, then one more per swap or rollback.
    pub generation: u32,
    /// Content hash of the component (`native` for a native operator).
    pub hash: String,
    /// Where the component was loaded from.
    pub source: String,
    /// When it was put in service, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
}

/// The versions of one operator, kept in the state directory's metadata
/// (`versions:<operator>`) and written with each checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Generation running now.
    pub active: u32,
    /// Content hash of the pipeline's own component when `active` was put
    /// in service. While the pipeline still names that component, a restart
    /// runs `active`; when it names another, that one is a new version.
    pub base: String,
    /// Every version, indexed by generation.
    pub all: Vec<Version>,
}

impl Versions {
    /// The running version.
    pub fn current(&self) -> &Version {
        &self.all[self.active as usize]
    }

    /// Content hash of each generation, for `migrate`'s `previous`.
    pub fn history(&self) -> Arc<Vec<String>> {
        Arc::new(self.all.iter().map(|v| v.hash.clone()).collect())
    }

    /// Name of the metadata entry holding `operator`'s versions.
    pub fn meta_name(operator: &str) -> String {
        format!("versions:{operator}")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides which version of `op` runs on `store` (see [`Versions::base`]),
/// loading it from the state directory when a swap put another one in
/// service, and sets `op`'s generation and history. Returns the versions
/// and whether they changed (so the next checkpoint writes them).
pub fn resolve(store: &Store, op: &mut Loaded) -> anyhow::Result<(Versions, bool)> {
    let OperatorKind::Wasm(plugin) = &op.kind else {
        let v = Version {
            generation: 0,
            hash: "native".into(),
            source: "native".into(),
            loaded_at_ms: now_ms(),
        };
        return Ok((
            Versions {
                active: 0,
                base: v.hash.clone(),
                all: vec![v],
            },
            false,
        ));
    };
    let plugin = plugin.clone();
    let hash = plugin.hash().to_string();
    let source = plugin.path().display().to_string();
    store.keep_component(&hash, plugin.bytes())?;
    let mut recorded: Option<Versions> = store.meta_json(&Versions::meta_name(&op.name))?;
    let mut renamed = false;
    if let Some(v) = &mut recorded {
        renamed = adopt_legacy_names(v, plugin.bytes(), &hash);
        if renamed {
            tracing::info!(
                operator = %op.name,
                "the state directory named this component by the hash of an earlier eddy; it is now {hash}"
            );
        }
    }
    let (versions, changed) = match recorded {
        None => (
            Versions {
                active: 0,
                base: hash.clone(),
                all: vec![Version {
                    generation: 0,
                    hash,
                    source,
                    loaded_at_ms: now_ms(),
                }],
            },
            true,
        ),
        Some(v) if v.base == hash && (v.active as usize) < v.all.len() => {
            let current = v.current();
            if current.hash != hash {
                let path = store.component_path(&current.hash);
                // Checked against its content hash before it runs.
                let loaded = match store.load_component(&current.hash) {
                    Ok(b) => {
                        Plugin::from_bytes(plugin.engine(), &path, &b).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let swapped = loaded.map_err(|e| {
                    anyhow::anyhow!(
                        "operator `{}`: the state directory {} runs version {} (swapped in from {}), but it cannot be loaded: {e}",
                        op.name,
                        store.dir().display(),
                        current.hash,
                        current.source
                    )
                })?;
                tracing::info!(
                    operator = %op.name,
                    "running version {} (generation {}, swapped in from {}), not the pipeline's {}",
                    current.hash,
                    current.generation,
                    current.source,
                    plugin.path().display()
                );
                op.kind = OperatorKind::Wasm(Arc::new(swapped));
            }
            (v, renamed)
        }
        Some(mut v) if (v.active as usize) < v.all.len() && v.current().hash == hash => {
            // The pipeline now names the version that runs (one swapped in
            // earlier): the same version, not a new one.
            v.base = hash;
            (v, true)
        }
        Some(mut v) => {
            // The pipeline names another component than when the running
            // version was chosen: a new deployment, a new version.
            let generation = v.all.len() as u32;
            tracing::info!(
                operator = %op.name,
                "the pipeline's component changed to {hash} ({source}): generation {generation}; keys written by earlier versions migrate on first touch"
            );
            v.all.push(Version {
                generation,
                hash: hash.clone(),
                source,
                loaded_at_ms: now_ms(),
            });
            v.active = generation;
            v.base = hash;
            (v, true)
        }
    };
    op.generation = versions.active;
    op.history = versions.history();
    Ok((versions, changed))
}

/// Renames, in `v`, the versions an earlier eddy named by the 64-bit
/// FxHash of `bytes` to `hash` (their SHA-256 name): the pipeline's own
/// component keeps its versions and generation across the upgrade, so its
/// keys need no migration. Returns whether anything was renamed. (A
/// version swapped in under an old name cannot be verified and is not
/// loaded: its kept file is refused by [`Store::load_component`].)
fn adopt_legacy_names(v: &mut Versions, bytes: &[u8], hash: &str) -> bool {
    let legacy = crate::store::legacy_component_hash(bytes);
    let mut renamed = false;
    if v.base == legacy {
        v.base = hash.to_string();
        renamed = true;
    }
    for version in &mut v.all {
        if version.hash == legacy {
            version.hash = hash.to_string();
            renamed = true;
        }
    }
    renamed
}

/// What a completed swap did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapReport {
    pub operator: String,
    pub from: Version,
    pub to: Version,
    /// Input line after which the new version handles events: every event
    /// of a line up to it went to the old version.
    pub barrier_line: u64,
    /// Time to read and compile the component, in milliseconds.
    pub compile_ms: f64,
    /// Time to check it (init, trial migration) and make the instances.
    pub prepare_ms: f64,
    /// The component exports `migrate`: keys migrate on first touch.
    pub migrates: bool,
}

/// A swap ready for the coordinator: one initialised instance per worker.
pub struct Prepared {
    pub stage: usize,
    pub generation: u32,
    pub version: Version,
    pub instances: Vec<Box<dyn Operator>>,
    pub report: SwapReport,
    /// Where the coordinator reports the swap durable (or why it failed).
    pub reply: Sender<Result<SwapReport, String>>,
    /// Decided once: switched by the coordinator, or given up by its asker.
    pub claim: Arc<Claim>,
}

/// Who decides a prepared swap, once: the coordinator at the barrier
/// ([`Claim::switch`]), or the asker that stopped waiting before it
/// ([`Claim::abandon`]), whichever comes first. So a swap its client gave
/// up on is never carried out later, however long the coordinator took to
/// reach it.
#[derive(Debug, Default)]
pub struct Claim(std::sync::atomic::AtomicU8);

impl Claim {
    const PENDING: u8 = 0;
    const SWITCHED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The coordinator takes the swap; `false` if its asker gave it up.
    pub fn switch(&self) -> bool {
        self.0
            .compare_exchange(
                Self::PENDING,
                Self::SWITCHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The asker gives the swap up; `false` if it was switched already.
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(
                Self::PENDING,
                Self::ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// Requests from the controller to the coordinator.
pub enum Command {
    Swap(Prepared),
}

/// What `eddy status` shows of one operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorStatus {
    pub name: String,
    pub version: Version,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// Totals over the workers.
    pub handled: u64,
    pub failed: u64,
    pub emitted: u64,
    /// Counters per worker.
    pub workers: Vec<OpStats>,
}

/// What `eddy status` shows of one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: usize,
    /// Input line of the last event it handled.
    pub line: u64,
    /// Its most recent swap pauses.
    pub pauses: Vec<SwapPause>,
}

/// A running pipeline, as `eddy status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub state_dir: String,
    pub input: String,
    /// Input lines read so far (the next line's number is one more).
    pub lines_read: u64,
    pub operators: Vec<OperatorStatus>,
    pub workers: Vec<WorkerStatus>,
}

/// Whoever asked for a swap or rollback, as the controller sees it: the
/// request is given up, changing nothing, if the switch cannot start by
/// `deadline` or its asker no longer waits for the answer (a client that
/// gave up must not find its swap carried out later).
pub struct Asker<'a> {
    /// The switch must start by then.
    pub deadline: Instant,
    /// Whether the asker still waits for the answer.
    pub waiting: &'a dyn Fn() -> bool,
}

impl Asker<'static> {
    /// An asker that waits up to `wait` and never goes away (`--watch`,
    /// the library).
    pub fn patient(wait: Duration) -> Asker<'static> {
        Asker {
            deadline: Instant::now() + wait,
            waiting: &always,
        }
    }
}

fn always() -> bool {
    true
}

impl Asker<'_> {
    /// Whether the request still stands; why not, when it does not.
    fn stands(&self) -> Result<(), String> {
        if !(self.waiting)() {
            return Err("the client went away before the switch".into());
        }
        if Instant::now() > self.deadline {
            return Err("the request's waiting time ran out before the switch".into());
        }
        Ok(())
    }
}

/// One swap or rollback at a time: a lock whose waiters give up at a
/// deadline, so a swap that hangs cannot block every later one.
#[derive(Default)]
struct Gate {
    busy: Mutex<bool>,
    free: Condvar,
}

/// Holds the [`Gate`]; frees it when dropped.
struct GateGuard<'a>(&'a Gate);

impl Gate {
    /// Waits for the gate until `deadline`; `None` if it stayed busy.
    fn enter(&self, deadline: Instant) -> Option<GateGuard<'_>> {
        let mut busy = lock(&self.busy);
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            busy = self
                .free
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy = true;
        Some(GateGuard(self))
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = false;
        self.0.free.notify_one();
    }
}

/// Why a swap or rollback was refused. The old version keeps running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The pipeline's swap and status service, shared by the control endpoint
/// and the `--watch` thread.
pub struct Controller {
    store: Store,
    workers: usize,
    /// Static description of each operator of the chain.
    ops: Vec<Loaded>,
    /// Versions of each operator; the coordinator changes `active` at the
    /// barrier and writes them at checkpoints.
    versions: Mutex<Vec<Versions>>,
    /// Compiled components by content hash, for instant rollback.
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    /// One swap at a time.
    swapping: Gate,
    to_coordinator: Sender<Command>,
    live: Live,
    /// Input lines read so far (updated by the coordinator).
    pub lines_read: AtomicU64,
    input: String,
    /// Raised when the pipeline stops: pending swaps fail, threads end.
    pub stopped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// A controller for `ops` (as resolved by [`resolve`]).
    pub fn new(
        store: Store,
        workers: usize,
        ops: Vec<Loaded>,
        versions: Vec<Versions>,
        to_coordinator: Sender<Command>,
        live: Live,
        input: String,
    ) -> Controller {
        let mut plugins = HashMap::new();
        for op in &ops {
            if let OperatorKind::Wasm(p) = &op.kind {
                plugins.insert(p.hash().to_string(), p.clone());
            }
        }
        Controller {
            store,
            workers,
            ops,
            versions: Mutex::new(versions),
            plugins: Mutex::new(plugins),
            swapping: Gate::default(),
            to_coordinator,
            live,
            lines_read: AtomicU64::new(0),
            input,
            stopped: AtomicBool::new(false),
        }
    }

    /// The versions of every operator.
    pub fn versions(&self) -> MutexGuard<'_, Vec<Versions>> {
        lock(&self.versions)
    }

    fn stage(&self, operator: &str) -> Result<usize, Refused> {
        self.ops
            .iter()
            .position(|o| &*o.name == operator)
            .ok_or_else(|| {
                let names: Vec<&str> = self.ops.iter().map(|o| &*o.name).collect();
                Refused(format!(
                    "no operator named `{operator}` in this pipeline (it runs: {})",
                    names.join(", ")
                ))
            })
    }

    /// Waits for the other swaps and rollbacks to finish, as long as
    /// `asker` waits.
    fn one_at_a_time(&self, what: &str, asker: &Asker) -> Result<GateGuard<'_>, Refused> {
        self.swapping.enter(asker.deadline).ok_or_else(|| {
            Refused(format!(
                "{what} refused: another swap or rollback of this pipeline was still in progress when the request's waiting time ran out; nothing changed, try again"
            ))
        })
    }

    /// Replaces operator `operator` by the component at `path`.
    pub fn swap(&self, operator: &str, path: &Path, asker: &Asker) -> Result<SwapReport, Refused> {
        let _one = self.one_at_a_time(&format!("swap of `{operator}`"), asker)?;
        let stage = self.stage(operator)?;
        let running = self.versions()[stage].current().hash.clone();
        let started = Instant::now();
        let engine = self.engine(stage)?;
        let plugin = Plugin::load(&engine, path).map_err(|e| {
            Refused(format!(
                "swap of `{operator}` refused: {e}; version {running} keeps running"
            ))
        })?;
        let compile = started.elapsed();
        self.activate(stage, Arc::new(plugin), compile, asker)
    }

    /// Returns operator `operator` to the version that ran before the
    /// current one.
    pub fn rollback(&self, operator: &str, asker: &Asker) -> Result<SwapReport, Refused> {
        let _one = self.one_at_a_time(&format!("rollback of `{operator}`"), asker)?;
        let stage = self.stage(operator)?;
        let (previous, running) = {
            let v = &self.versions()[stage];
            let running = v.current().clone();
            match v.active.checked_sub(1) {
                Some(g) => (v.all[g as usize].clone(), running),
                None => {
                    return Err(Refused(format!(
                        "rollback of `{operator}` refused: version {} is its first version; there is nothing to roll back to",
                        running.hash
                    )))
                }
            }
        };
        let started = Instant::now();
        let cached = lock(&self.plugins).get(&previous.hash).cloned();
        let plugin = match cached {
            Some(p) => p,
            None => {
                let engine = self.engine(stage)?;
                let path = self.store.component_path(&previous.hash);
                // Checked against its content hash before it runs.
                let loaded = match self.store.load_component(&previous.hash) {
                    Ok(b) => Plugin::from_bytes(&engine, &path, &b).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                Arc::new(loaded.map_err(|e| {
                    Refused(format!(
                        "rollback of `{operator}` to version {} refused: {e}; version {} keeps running",
                        previous.hash, running.hash
                    ))
                })?)
            }
        };
        self.activate(stage, plugin, started.elapsed(), asker)
    }

    fn engine(&self, stage: usize) -> Result<wasmtime::Engine, Refused> {
        match &self.ops[stage].kind {
            OperatorKind::Wasm(p) => Ok(p.engine().clone()),
            OperatorKind::Native(_) => Err(Refused(format!(
                "operator `{}` is native code, not a component: it cannot be swapped",
                self.ops[stage].name
            ))),
        }
    }

    /// Checks `plugin` as operator `stage`, makes its instances and has the
    /// coordinator switch to them; returns once the switch is durable.
    fn activate(
        &self,
        stage: usize,
        plugin: Arc<Plugin>,
        compile: Duration,
        asker: &Asker,
    ) -> Result<SwapReport, Refused> {
        let started = Instant::now();
        let op = &self.ops[stage];
        let name = &op.name;
        let (generation, history, from) = {
            let v = &self.versions()[stage];
            if v.current().hash == plugin.hash() {
                return Err(Refused(format!(
                    "`{name}` already runs version {} ({}): nothing to swap",
                    plugin.hash(),
                    plugin.path().display()
                )));
            }
            let mut history: Vec<String> = v.all.iter().map(|v| v.hash.clone()).collect();
            history.push(plugin.hash().to_string());
            (v.all.len() as u32, Arc::new(history), v.current().clone())
        };
        let refused = |what: String| {
            Refused(format!(
                "swap of `{name}` to {} ({}) refused: {what}; version {} keeps running",
                plugin.hash(),
                plugin.path().display(),
                from.hash
            ))
        };
        let store_err = |e: crate::store::StoreError| refused(e.to_string());
        // Try it: init, and the migration on committed keys.
        let mut ctx = OpCtx::new(
            name.clone(),
            Some(self.store.reader().map_err(store_err)?),
            op.limits,
        );
        ctx.set_generation(generation);
        let mut trial = plugin
            .instantiate(ctx, &op.config)
            .map_err(|e| refused(e.to_string()))?;
        trial.set_history(history.clone());
        if plugin.migrates() {
            for key in self
                .store
                .sample_keys(name, TRIAL_KEYS)
                .map_err(store_err)?
            {
                if let Err(e) = trial.prepare(&key).map_err(store_err)? {
                    return Err(refused(format!(
                        "its migration failed on committed key `{key}`: {e}"
                    )));
                }
            }
        }
        drop(trial);
        self.store
            .keep_component(plugin.hash(), plugin.bytes())
            .map_err(store_err)?;
        let mut instances = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            let mut ctx = OpCtx::new(name.clone(), None, op.limits);
            ctx.set_generation(generation);
            let mut inst = plugin
                .instantiate(ctx, &op.config)
                .map_err(|e| refused(e.to_string()))?;
            inst.set_history(history.clone());
            instances.push(Box::new(inst) as Box<dyn Operator>);
        }
        lock(&self.plugins).insert(plugin.hash().to_string(), plugin.clone());
        let to = Version {
            generation,
            hash: plugin.hash().to_string(),
            source: plugin.path().display().to_string(),
            loaded_at_ms: now_ms(),
        };
        let report = SwapReport {
            operator: name.to_string(),
            from: from.clone(),
            to: to.clone(),
            barrier_line: 0,
            compile_ms: compile.as_secs_f64() * 1e3,
            prepare_ms: started.elapsed().as_secs_f64() * 1e3,
            migrates: plugin.migrates(),
        };
        if self.stopped.load(Ordering::Acquire) {
            return Err(refused("the pipeline is stopping".into()));
        }
        asker.stands().map_err(refused)?;
        let (tx, rx) = bounded(1);
        let claim = Arc::new(Claim::default());
        self.to_coordinator
            .send(Command::Swap(Prepared {
                stage,
                generation,
                version: to,
                instances,
                report,
                reply: tx,
                claim: claim.clone(),
            }))
            .map_err(|_| refused("the pipeline is stopping".into()))?;
        // Until the coordinator switches, the asker may still give up (and
        // then nothing changes); once switched, the answer comes when the
        // swap is durable.
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => return r.map_err(Refused),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Err(why) = asker.stands() {
                        if claim.abandon() {
                            return Err(refused(why));
                        }
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(refused(
                        "the pipeline stopped before the swap was made durable".into(),
                    ))
                }
            }
        }
    }

    /// The pipeline as `eddy status` shows it.
    pub fn status(&self) -> Status {
        let workers: Vec<_> = self.live.iter().map(|w| lock(w).clone()).collect();
        let versions = self.versions().clone();
        let operators = self
            .ops
            .iter()
            .zip(versions)
            .enumerate()
            .map(|(i, (op, v))| {
                let per: Vec<OpStats> = workers
                    .iter()
                    .map(|w| w.ops.get(i).copied().unwrap_or_default())
                    .collect();
                OperatorStatus {
                    name: op.name.to_string(),
                    version: v.current().clone(),
                    handled: per.iter().map(|s| s.handled).sum(),
                    failed: per.iter().map(|s| s.failed).sum(),
                    emitted: per.iter().map(|s| s.emitted).sum(),
                    versions: v.all,
                    workers: per,
                }
            })
            .collect();
        Status {
            pid: std::process::id(),
            state_dir: self.store.dir().display().to_string(),
            input: self.input.clone(),
            lines_read: self.lines_read.load(Ordering::Relaxed),
            operators,
            workers: workers
                .into_iter()
                .enumerate()
                .map(|(id, w)| WorkerStatus {
                    id,
                    line: w.line,
                    pauses: w.pauses,
                })
                .collect(),
        }
    }

    /// Watches each operator's component file (`eddy run --watch`) and
    /// swaps to it when it changes, until the pipeline stops. Each file is
    /// polled every `every`; a change is acted on once the file has stayed
    /// the same for one more poll (a build may still be writing it).
    pub fn watch(
        self: &Arc<Self>,
        paths: Vec<(String, PathBuf)>,
        every: Duration,
    ) -> Option<std::thread::JoinHandle<()>> {
        let files = paths
            .into_iter()
            .map(|(op, path)| {
                let seen = fingerprint(&path);
                (op, path, seen, seen)
            })
            .collect::<Vec<_>>();
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("eddy-watch".into())
            .spawn(move || {
                let mut files = files;
                let step = Duration::from_millis(25).min(every);
                let mut waited = Duration::ZERO;
                while !this.stopped.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    for (op, path, acted, last) in &mut files {
                        let now = fingerprint(path);
                        let stable = now == *last;
                        *last = now;
                        if !stable || now == *acted || now.is_none() {
                            continue;
                        }
                        *acted = now;
                        match this.swap(op, path, &Asker::patient(WATCH_WAIT)) {
                            Ok(r) => eprintln!(
                                "eddy: watch: `{op}` now runs {} from {} (was {}), from line {}",
                                r.to.hash,
                                path.display(),
                                r.from.hash,
                                r.barrier_line + 1
                            ),
                            Err(e) => eprintln!("eddy: watch: {e}"),
                        }
                    }
                }
            });
        match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("cannot start the --watch thread: {e}");
                None
            }
        }
    }
}

/// How long a `--watch` swap may wait for another swap to finish.
const WATCH_WAIT: Duration = Duration::from_secs(600);

/// What identifies a version of a file cheaply: length and modification
/// time; `None` when it cannot be read.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(generation: u32, hash: &str) -> Version {
        Version {
            generation,
            hash: hash.into(),
            source: "x.wasm".into(),
            loaded_at_ms: 0,
        }
    }

    #[test]
    fn versions_named_by_an_earlier_eddy_are_renamed_to_their_sha256() {
        let bytes = b"the component";
        let legacy = crate::store::legacy_component_hash(bytes);
        let mut v = Versions {
            active: 2,
            base: legacy.clone(),
            all: vec![
                version(0, &legacy),
                version(1, "0123456789abcdef"),
                version(2, &legacy),
            ],
        };
        assert!(adopt_legacy_names(&mut v, bytes, "feedfacecafebeef"));
        assert_eq!(v.base, "feedfacecafebeef");
        let hashes: Vec<&str> = v.all.iter().map(|v| v.hash.as_str()).collect();
        assert_eq!(
            hashes,
            ["feedfacecafebeef", "0123456789abcdef", "feedfacecafebeef"]
        );
        // Nothing to rename the second time.
        assert!(!adopt_legacy_names(&mut v, bytes, "feedfacecafebeef"));
    }
}
