//! [`Controller`]: a swap or rollback prepared off the hot path (read,
//! compile, type-check, trial `init` and migration, one instance per
//! worker), then handed to the coordinator for the switch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};

use super::versions::now_ms;
use super::{Claim, Command, Prepared, SwapReport, Version, Versions};
use crate::operator::{Loaded, OperatorKind};
use crate::state::{Store, StoreError};
use crate::stats::Live;

/// Committed keys on which a new version's migration is tried before a swap.
const TRIAL_KEYS: usize = 64;

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
    /// Compiled components by operator (stage) and content hash, for
    /// instant rollback.
    components: Mutex<HashMap<(usize, String), OperatorKind>>,
    /// One swap at a time.
    swapping: Gate,
    to_coordinator: Sender<Command>,
    /// Counters and positions shown by `eddy status`.
    live: Arc<Live>,
    /// The input, as `eddy status` names it.
    input: String,
    /// Raised when the pipeline stops: pending swaps fail, threads end.
    pub stopped: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// A controller for `ops` (as resolved by `resolve`).
    pub fn new(
        store: Store,
        workers: usize,
        ops: Vec<Loaded>,
        versions: Vec<Versions>,
        to_coordinator: Sender<Command>,
        live: Arc<Live>,
        input: String,
    ) -> Controller {
        let mut components = HashMap::new();
        for (stage, op) in ops.iter().enumerate() {
            if let Some(c) = op.kind.component() {
                components.insert((stage, c.hash.to_string()), op.kind.clone());
            }
        }
        Controller {
            store,
            workers,
            ops,
            versions: Mutex::new(versions),
            components: Mutex::new(components),
            swapping: Gate::default(),
            to_coordinator,
            live,
            input,
            stopped: AtomicBool::new(false),
        }
    }

    /// The versions of every operator.
    pub fn versions(&self) -> MutexGuard<'_, Vec<Versions>> {
        lock(&self.versions)
    }

    /// Counters and positions of the running pipeline.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The input, as `eddy status` names it.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The state directory's store: its read transactions see the last
    /// checkpoint (`GET /state/...`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The operators' names, in chain order.
    pub fn operator_names(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|o| &*o.name)
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
        let refused = |e: String| {
            Refused(format!(
                "swap of `{operator}` refused: {e}; version {running} keeps running"
            ))
        };
        let bytes = crate::state::read_regular_file(path, crate::state::MAX_COMPONENT_BYTES, false)
            .map_err(|error| {
                refused(
                    crate::operator::ComponentError::Read {
                        path: path.to_path_buf(),
                        error,
                    }
                    .to_string(),
                )
            })?;
        let component = self.ops[stage]
            .kind
            .with_component(&engine, path, &bytes, operator)
            .map_err(|e| refused(e.to_string()))?;
        let compile = started.elapsed();
        let done = self.activate(stage, component, compile, asker)?;
        if let Some(n) = self.live.ops.get(stage) {
            n.swaps.fetch_add(1, Ordering::Relaxed);
        }
        Ok(done)
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
        let cached = lock(&self.components)
            .get(&(stage, previous.hash.clone()))
            .cloned();
        let component = match cached {
            Some(p) => p,
            None => {
                let engine = self.engine(stage)?;
                let path = self.store.component_path(&previous.hash);
                // Checked against its content hash before it runs.
                let loaded = match self.store.load_component(&previous.hash) {
                    Ok(b) => self.ops[stage]
                        .kind
                        .with_component(&engine, &path, &b, operator)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                loaded.map_err(|e| {
                    Refused(format!(
                        "rollback of `{operator}` to version {} refused: {e}; version {} keeps running",
                        previous.hash, running.hash
                    ))
                })?
            }
        };
        let done = self.activate(stage, component, started.elapsed(), asker)?;
        if let Some(n) = self.live.ops.get(stage) {
            n.rollbacks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(done)
    }

    fn engine(&self, stage: usize) -> Result<wasmtime::Engine, Refused> {
        match self.ops[stage].kind.component() {
            Some(c) => Ok(c.engine.clone()),
            None => Err(Refused(format!(
                "operator `{}` is native code, not a component: it cannot be swapped",
                self.ops[stage].name
            ))),
        }
    }

    /// Checks `kind` (a new version of operator `stage`: its component
    /// in the same kind of operator), makes its instances and has the
    /// coordinator switch to them; returns once the switch is durable.
    fn activate(
        &self,
        stage: usize,
        kind: OperatorKind,
        compile: Duration,
        asker: &Asker,
    ) -> Result<SwapReport, Refused> {
        let started = Instant::now();
        let op = &self.ops[stage];
        let name = &op.name;
        let component = kind.component().ok_or_else(|| {
            Refused(format!(
                "operator `{name}` is native code: it cannot be swapped"
            ))
        })?;
        let (generation, history, from) = {
            let v = &self.versions()[stage];
            if v.current().hash == component.hash {
                return Err(Refused(format!(
                    "`{name}` already runs version {} ({}): nothing to swap",
                    component.hash,
                    component.path.display()
                )));
            }
            let mut history: Vec<String> = v.all.iter().map(|v| v.hash.clone()).collect();
            history.push(component.hash.to_string());
            (v.all.len() as u32, Arc::new(history), v.current().clone())
        };
        let refused = |what: String| {
            Refused(format!(
                "swap of `{name}` to {} ({}) refused: {what}; version {} keeps running",
                component.hash,
                component.path.display(),
                from.hash
            ))
        };
        let store_err = |e: StoreError| refused(e.to_string());
        // The new version as the pipeline would run it.
        let next = Loaded {
            kind: kind.clone(),
            generation,
            history: history.clone(),
            ..op.clone()
        };
        // Try it: init, and on committed keys the migration (or, for a
        // window aggregate, `finish` on the windows they hold).
        let mut trial = next
            .instantiate(Some(self.store.reader().map_err(store_err)?))
            .map_err(|e| refused(e.to_string()))?;
        let window = matches!(kind, OperatorKind::Window(..));
        if kind.migrates() || window {
            for key in self
                .store
                .sample_keys(name, TRIAL_KEYS)
                .map_err(store_err)?
            {
                if let Err(e) = trial.rehearse(&key).map_err(store_err)? {
                    return Err(refused(match window {
                        true => format!(
                            "its `finish` failed on the windows of committed key `{key}`: {e} (the new aggregate must read the accumulators the running one wrote)"
                        ),
                        false => format!("its migration failed on committed key `{key}`: {e}"),
                    }));
                }
            }
        }
        drop(trial);
        // Pending timers need a handler in the new version (checked, like
        // the migration, on what is committed).
        if !kind.handles_timers() {
            if let Some((key, timer, at)) =
                self.store.first_operator_timer(name).map_err(store_err)?
            {
                return Err(refused(format!(
                    "it does not export `on-timer`, and timers the running version set are pending (the first: `{timer}` of key `{key}`, at {at}); they would have no handler. Export `on-timer` in the new version (it may just clear them), or swap once they have fired"
                )));
            }
        }
        self.store
            .keep_component(component.hash, component.bytes)
            .map_err(store_err)?;
        let mut instances = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            // Each takes over the running instance's context (its state
            // cache and timers) at the switch.
            instances.push(next.instantiate(None).map_err(|e| refused(e.to_string()))?);
        }
        lock(&self.components).insert((stage, component.hash.to_string()), kind.clone());
        let to = Version {
            generation,
            hash: component.hash.to_string(),
            source: component.path.display().to_string(),
            loaded_at_ms: now_ms(),
        };
        let report = SwapReport {
            operator: name.to_string(),
            from: from.clone(),
            to: to.clone(),
            barrier_line: 0,
            compile_ms: compile.as_secs_f64() * 1e3,
            prepare_ms: started.elapsed().as_secs_f64() * 1e3,
            migrates: kind.migrates(),
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
                Ok(r) => return r.map_err(|e| Refused(e.to_string())),
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Limits;
    use crate::operator::{NativeCounter, Operator};

    /// A controller of two native operators `a` and `b` over 2 workers.
    fn controller(dir: &Path) -> (Controller, crossbeam_channel::Receiver<Command>) {
        let store = Store::open(&dir.join("state")).unwrap();
        let mut ops: Vec<Loaded> = ["a", "b"]
            .into_iter()
            .map(|name| Loaded {
                name: name.into(),
                kind: OperatorKind::Native(Arc::new(|ctx| {
                    Box::new(NativeCounter::new(ctx, "amount")) as Box<dyn Operator>
                })),
                config: "{}".into(),
                limits: Limits::default(),
                generation: 0,
                history: Arc::default(),
                ttl: Vec::new(),
            })
            .collect();
        let versions = ops
            .iter_mut()
            .map(|op| crate::swap::resolve(&store, op).unwrap().0)
            .collect();
        let (tx, rx) = crossbeam_channel::unbounded();
        let live = Arc::new(Live::new(2, 2));
        let c = Controller::new(store, 2, ops, versions, tx, live, "in.jsonl".into());
        (c, rx)
    }

    fn refusal(r: Result<SwapReport, Refused>) -> String {
        r.unwrap_err().0
    }

    #[test]
    fn unknown_and_native_operators_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (c, rx) = controller(dir.path());
        let wait = Asker::patient(Duration::from_secs(5));
        let component = PathBuf::from("/nowhere/x.wasm");
        assert_eq!(
            refusal(c.swap("c", &component, &wait)),
            "no operator named `c` in this pipeline (it runs: a, b)"
        );
        assert_eq!(
            refusal(c.swap("b", &component, &wait)),
            "operator `b` is native code, not a component: it cannot be swapped"
        );
        assert_eq!(
            refusal(c.rollback("a", &wait)),
            "rollback of `a` refused: version native is its first version; there is nothing to roll back to"
        );
        // Nothing reached the coordinator, nothing changed.
        assert!(rx.try_recv().is_err());
        let versions = c.versions();
        assert!(versions.iter().all(|v| v.active == 0 && v.all.len() == 1));
        assert_eq!(c.operator_names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.input(), "in.jsonl");
    }

    #[test]
    fn one_swap_at_a_time_and_a_waiter_gives_up_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _rx) = controller(dir.path());
        let held = c
            .one_at_a_time("swap of `a`", &Asker::patient(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let soon = Asker::patient(Duration::from_millis(50));
        assert_eq!(
            refusal(c.rollback("a", &soon)),
            "rollback of `a` refused: another swap or rollback of this pipeline was still in progress when the request's waiting time ran out; nothing changed, try again"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Freed when the holder is done: the next request gets in (and is
        // refused for its own reason).
        drop(held);
        assert!(refusal(c.rollback("a", &soon)).contains("is its first version"));
    }

    #[test]
    fn an_asker_stands_while_it_waits_and_before_its_deadline() {
        assert_eq!(Asker::patient(Duration::from_secs(5)).stands(), Ok(()));
        let gone = || false;
        let asker = Asker {
            deadline: Instant::now() + Duration::from_secs(5),
            waiting: &gone,
        };
        assert_eq!(
            asker.stands(),
            Err("the client went away before the switch".to_string())
        );
        let late = Asker {
            deadline: Instant::now() - Duration::from_millis(1),
            waiting: &|| true,
        };
        assert_eq!(
            late.stands(),
            Err("the request's waiting time ran out before the switch".to_string())
        );
    }
}
