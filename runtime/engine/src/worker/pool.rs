//! [`Workers`]: the worker threads, started together (each instantiates
//! every operator, then reports ready) and stopped together, with the
//! reaper thread that drops the instances swaps retire; and [`InFlight`],
//! the batches sent and not yet handled, which the coordinator waits on
//! without spinning.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::{Batch, Msg, Worker, WorkerError};
use crate::operator::{Loaded, Operator, StartError};
use crate::route::route;
use crate::sink::format::Formats;
use crate::sink::SinkMsg;
use crate::state::Store;
use crate::stats::{Live, OpStats};

/// Batches sent to workers and not yet fully handled, and which workers
/// ended: the coordinator waits on it (a condition variable: no spinning).
#[derive(Debug, Default)]
pub struct InFlight {
    state: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Counts {
    batches: usize,
    /// Ids of the workers whose thread ended, in order.
    ended: Vec<usize>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more batch sent.
    pub fn add(&self) {
        self.lock().batches += 1;
    }

    /// One batch handled.
    pub fn done(&self) {
        let mut c = self.lock();
        c.batches = c.batches.saturating_sub(1);
        drop(c);
        self.changed.notify_all();
    }

    /// Worker `id`'s thread ends (however it ends).
    pub fn ended(&self, id: usize) {
        self.lock().ended.push(id);
        self.changed.notify_all();
    }

    /// Waits until the count of batches in flight satisfies `ok`; `Err`
    /// with the id of a worker that ended (a worker that stopped never
    /// finishes its batches).
    pub fn wait_until(&self, ok: impl Fn(usize) -> bool) -> Result<(), usize> {
        let mut c = self.lock();
        loop {
            if let Some(&id) = c.ended.first() {
                return Err(id);
            }
            if ok(c.batches) {
                return Ok(());
            }
            c = self.changed.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits up to `timeout` for a worker to end: its id.
    pub fn wait_ended(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut c = self.lock();
        loop {
            if let Some(&id) = c.ended.first() {
                return Some(id);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            c = self
                .changed
                .wait_timeout(c, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Tells [`InFlight`] that a worker's thread ends, on every path out of it
/// (a panic included).
struct EndGuard(Arc<InFlight>, usize);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.ended(self.1);
    }
}

/// What a worker thread returns: its counters, or why it stopped.
pub type WorkerResult = Result<Vec<OpStats>, WorkerError>;

/// The worker threads and their inboxes; stopped and joined by
/// [`Workers::stop`] (or when dropped).
pub struct Workers {
    /// Each worker's inbox, by id.
    pub inboxes: Vec<Sender<Msg>>,
    /// Each worker's thread, by id (`None` once joined).
    threads: Vec<Option<JoinHandle<WorkerResult>>>,
    /// Batches in flight, shared with the workers.
    pub inflight: Arc<InFlight>,
    /// Set by a worker whose state cache needs a checkpoint to get back
    /// within its budget; the coordinator clears it and checkpoints.
    pub pressure: Arc<AtomicBool>,
    /// The reaper (`eddy-reaper`): drops the instances swaps retire, so
    /// that unmapping their memory costs no worker any time. It ends once
    /// every worker has (`None` once joined).
    reaper: Option<JoinHandle<()>>,
}

/// Lowers the calling thread's priority to the lowest (nice 19) so that,
/// woken by a worker, it does not take that worker's CPU: a sleeper woken
/// at normal priority often preempts its waker, which would then wait for
/// the drop it just handed off. (On Linux the nice value is the calling
/// thread's own; elsewhere it would be the whole process's, so nothing is
/// changed there.)
fn yield_to_workers() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!("the reaper thread keeps its priority: {e}");
    }
}

/// Where workers send the instances swaps retire.
type Retire = Sender<Box<dyn Operator>>;

/// Starts the reaper thread: it drops what it is sent until every sender
/// is gone.
fn reaper() -> std::io::Result<(Retire, JoinHandle<()>)> {
    let (tx, rx) = unbounded::<Box<dyn Operator>>();
    let thread = std::thread::Builder::new()
        .name("eddy-reaper".into())
        .spawn(move || {
            yield_to_workers();
            for retired in rx {
                drop(retired);
            }
        })?;
    Ok((tx, thread))
}

impl Workers {
    /// Starts `n` workers, each with its instance of every operator of
    /// `operators`; returns once all are ready, or with the first one's
    /// error (the others are stopped and joined).
    pub fn start(
        n: usize,
        operators: &[Loaded],
        store: &Store,
        sink: &Sender<SinkMsg>,
        live: &Arc<Live>,
        formats: &Formats,
        cache_bytes: Option<usize>,
    ) -> Result<Workers, StartFailed> {
        let budget = cache_bytes.map_or(usize::MAX, |b| b / n.max(1));
        let pressure = Arc::new(AtomicBool::new(false));
        let inflight = Arc::new(InFlight::default());
        let (inboxes, receivers): (Vec<Sender<Msg>>, Vec<Receiver<Msg>>) =
            (0..n).map(|_| unbounded()).unzip();
        let (ready_tx, ready_rx) = unbounded::<Result<(), StartError>>();
        let (retire, reaper) = reaper().map_err(StartFailed::Spawn)?;
        let mut workers = Workers {
            inboxes,
            threads: Vec::with_capacity(n),
            inflight,
            pressure: pressure.clone(),
            reaper: Some(reaper),
        };
        for (id, inbox) in receivers.into_iter().enumerate() {
            let ops = operators.to_vec();
            let peers = workers.inboxes.clone();
            let sink = sink.clone();
            let inflight = workers.inflight.clone();
            let store = store.clone();
            let ready = ready_tx.clone();
            let live = live.clone();
            let reaper = retire.clone();
            let formats = formats.clone();
            let pressure = pressure.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("eddy-worker-{id}"))
                .spawn(move || {
                    let _end = EndGuard(inflight.clone(), id);
                    let workers = peers.len();
                    let built: Result<Vec<Box<dyn Operator>>, StartError> = ops
                        .iter()
                        .map(|op| {
                            let mut inst = op.instantiate(Some(store.reader()?))?;
                            // This worker's keys' pending timers, as the
                            // checkpoint left them (any worker count);
                            // none in Kafka group mode, where they load
                            // with their partitions.
                            let timers = match op.limits.owned_at_start {
                                true => store.timers(&op.name)?,
                                false => Vec::new(),
                            };
                            for (key, name, at) in timers {
                                if route(&key, workers) == id {
                                    inst.ctx().restore_timer(&key, &name, at)?;
                                }
                            }
                            Ok(inst)
                        })
                        .collect();
                    let ops = match built {
                        Ok(ops) => {
                            let _ = ready.send(Ok(()));
                            ops
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return Ok(Vec::new());
                        }
                    };
                    let k = ops.len();
                    let mut w = Worker {
                        id,
                        ops,
                        outbox: (0..peers.len()).map(|_| Batch::default()).collect(),
                        regroup: Vec::new(),
                        peers,
                        sink,
                        inflight,
                        store,
                        stats: vec![OpStats::default(); k],
                        out: Vec::new(),
                        dead: Vec::new(),
                        live,
                        last_end: vec![None; k],
                        swapped_at: vec![None; k],
                        first_run: vec![None; k],
                        avail: Instant::now(),
                        line: 0,
                        reaper,
                        formats,
                        budget,
                        pressure,
                        futile: None,
                        taken: 0,
                        readers_dropped: false,
                    };
                    for stage in 0..k {
                        w.allow_timers(stage);
                    }
                    w.run(inbox)
                });
            match spawned {
                Ok(t) => workers.threads.push(Some(t)),
                Err(e) => {
                    // The reaper must see its channel close when the
                    // started workers are stopped (as `workers` drops).
                    drop(retire);
                    return Err(StartFailed::Spawn(e));
                }
            }
        }
        drop(ready_tx);
        // Only the workers hold the reaper's channel: it ends after them.
        drop(retire);
        let mut error = None;
        for _ in 0..n {
            if let Ok(Err(e)) = ready_rx.recv() {
                error.get_or_insert(e);
            }
        }
        match error {
            Some(e) => Err(StartFailed::Operator(e)),
            None => Ok(workers),
        }
    }

    /// Sends `msg` to worker `w`; `Err` when it stopped.
    pub fn send(&self, w: usize, msg: Msg) -> Result<(), ()> {
        self.inboxes[w].send(msg).map_err(|_| ())
    }

    /// Number of workers.
    pub fn count(&self) -> usize {
        self.inboxes.len()
    }

    /// Why a worker stopped: waits (briefly) for one to end and joins it.
    pub fn failure(&mut self) -> WorkerFailure {
        // A worker whose inbox is closed may still be finishing its return.
        let Some(id) = self.inflight.wait_ended(Duration::from_secs(1)) else {
            return WorkerFailure::Unexpected;
        };
        match self.threads[id].take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => WorkerFailure::Failed(e),
            Some(Ok(Ok(_))) | None => WorkerFailure::Unexpected,
            Some(Err(_)) => WorkerFailure::Panicked,
        }
    }

    /// Stops every worker after what was sent to it, and joins them (and
    /// then the reaper): their results, by id (`None` for one already
    /// joined).
    pub fn stop(&mut self) -> Vec<Option<std::thread::Result<WorkerResult>>> {
        for tx in &self.inboxes {
            let _ = tx.send(Msg::Stop);
        }
        let joined = self
            .threads
            .iter_mut()
            .map(|t| t.take().map(JoinHandle::join))
            .collect();
        if let Some(reaper) = self.reaper.take() {
            // A panic there (in an instance's drop) loses nothing.
            let _ = reaper.join();
        }
        joined
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartFailed {
    /// A thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    /// An operator could not be instantiated.
    #[error(transparent)]
    Operator(StartError),
}

/// Why a worker is gone.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFailure {
    /// It stopped with this error.
    #[error(transparent)]
    Failed(WorkerError),
    /// It ended without an error, or none could be found.
    #[error("a worker stopped unexpectedly")]
    Unexpected,
    /// It panicked.
    #[error("a worker thread panicked")]
    Panicked,
}
