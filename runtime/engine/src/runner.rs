//! Running a pipeline: [`run`] wires the reader, the workers, the sink and
//! the committer, and drives checkpoints.
//!
//! The calling thread is the coordinator: it decodes lines, routes them to
//! workers in batches, and at each checkpoint waits until every event read
//! so far is handled, collects the workers' changed state, flushes the sink
//! and hands all of it, with the input position and output lengths, to the
//! committer thread, which writes one redb transaction while the workers
//! go on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::control;
use crate::decode::decode;
use crate::host::{Limits, OpCtx};
use crate::io::{
    open_input, open_output_file, push_string_field, read_lines, run_sink, Chunk, End, SinkError,
    SinkMsg,
};
use crate::operator::Operator;
use crate::pipeline::{Input, Output, Pipeline};
use crate::store::{Checkpoint, SourcePos, Store};
use crate::swap::{self, Command, Controller, SwapReport};
use crate::wasm::Plugin;
use crate::worker::{route, BarrierReply, Batch, Live, Msg, OpStats, Worker, WorkerLive};

/// Events per batch sent to a worker.
const BATCH: usize = 1024;
/// Batches in flight per worker before the coordinator waits.
const MAX_INFLIGHT_PER_WORKER: usize = 16;

/// A flag that asks a running pipeline to stop after a final checkpoint.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A flag not yet raised.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the pipeline to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release)
    }
    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Builds a native operator for a worker.
pub type NativeFactory = Arc<dyn Fn(OpCtx) -> Box<dyn Operator> + Send + Sync>;

/// How to make an operator's instances.
#[derive(Clone)]
pub enum OperatorKind {
    Wasm(Arc<Plugin>),
    Native(NativeFactory),
}

/// An operator ready to be instantiated on each worker.
#[derive(Clone)]
pub struct Loaded {
    pub name: Arc<str>,
    pub kind: OperatorKind,
    /// Config JSON text for `init`.
    pub config: String,
    pub limits: Limits,
    /// Generation of the version that runs (set by the runner from the
    /// state directory; see [`swap::resolve`]).
    pub generation: u32,
    /// Content hash of each generation, for `migrate`.
    pub history: Arc<Vec<String>>,
}

/// Compiles every operator of the pipeline (once, shared by all workers).
pub fn load_operators(engine: &wasmtime::Engine, p: &Pipeline) -> Result<Vec<Loaded>> {
    p.operators
        .iter()
        .map(|spec| {
            let t = std::time::Instant::now();
            let plugin = Plugin::load(engine, &spec.component)?;
            let took = t.elapsed();
            let (how, slow) = match plugin.compiled() {
                crate::cache::Compiled::Cached => ("loaded from the compile cache", false),
                crate::cache::Compiled::Fresh => ("compiled", took.as_secs() >= 1),
            };
            let msg = format!(
                "operator `{}`: {} ({} bytes) {how} in {:.0} ms",
                spec.name,
                spec.component.display(),
                plugin.bytes().len(),
                took.as_secs_f64() * 1e3
            );
            // A slow compile is worth a line (the next start uses the cache).
            if slow {
                tracing::info!("{msg}; later starts load it from the compile cache");
            } else {
                tracing::debug!("{msg}");
            }
            Ok(Loaded {
                name: spec.name.as_str().into(),
                kind: OperatorKind::Wasm(Arc::new(plugin)),
                config: spec.config.to_string(),
                limits: spec.limits,
                generation: 0,
                history: Arc::default(),
            })
        })
        .collect()
}

/// Per-operator totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorSummary {
    pub name: String,
    pub handled: u64,
    pub failed: u64,
    pub emitted: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Input lines read in this run.
    pub lines: u64,
    /// Lines rejected before reaching an operator.
    pub bad_lines: u64,
    /// Line number this run resumed after (0 for a fresh start).
    pub resumed_after_line: u64,
    /// Line number of an incomplete last line (no `\n` yet, not complete
    /// JSON) left unread for a later run, if any.
    pub incomplete_line: Option<u64>,
    pub operators: Vec<OperatorSummary>,
    pub checkpoints: u64,
    pub elapsed: Duration,
}

/// Identity of a file in the checkpoint metadata: its absolute path.
fn file_id(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// What a pipeline that has started tells its caller.
#[derive(Debug, Clone)]
pub struct Started {
    /// The control socket, if it serves one.
    pub control: Option<std::path::PathBuf>,
    /// Line number the run resumes after (0 for a fresh start).
    pub resumed_after_line: u64,
}

/// Runs `pipeline` with `operators` until the input ends or `shutdown` is
/// triggered, then makes a final checkpoint.
pub fn run(p: &Pipeline, operators: Vec<Loaded>, shutdown: &Shutdown) -> Result<Summary> {
    run_notify(p, operators, shutdown, |_| {})
}

/// Like [`run`], calling `started` once the pipeline runs (its workers are
/// ready and its control endpoint listens).
pub fn run_notify(
    p: &Pipeline,
    mut operators: Vec<Loaded>,
    shutdown: &Shutdown,
    started_cb: impl FnOnce(&Started),
) -> Result<Summary> {
    let started = Instant::now();
    // Before anything is opened for writing.
    p.check_files()?;
    let store = if p.verify_state {
        Store::open_verified(&p.state_dir)?
    } else {
        Store::open(&p.state_dir)?
    };
    // Which version of each operator runs: a swap made before a restart
    // stays in force.
    let mut versions = Vec::with_capacity(operators.len());
    let mut versions_dirty = false;
    for op in &mut operators {
        let (v, changed) = swap::resolve(&store, op)?;
        versions_dirty |= changed;
        versions.push(v);
    }

    // Resume position and output lengths from the last checkpoint.
    let input_id = match &p.input {
        Input::File(path) => Some(file_id(path)),
        Input::Stdin => None,
    };
    let pos = match &input_id {
        Some(id) => store.source_pos(id)?.unwrap_or_default(),
        None => SourcePos::default(),
    };
    if let Input::File(path) = &p.input {
        let len = std::fs::metadata(path)
            .with_context(|| format!("input {}", path.display()))?
            .len();
        if len < pos.offset {
            bail!(
                "input {} has {len} bytes but the state directory {} checkpointed it at byte {}: the file was replaced or truncated; use a fresh --state directory to start over",
                path.display(),
                p.state_dir.display(),
                pos.offset
            );
        }
    }
    // A complete last line handled without its `\n`: the `\n` written
    // after it ends that line, it does not start one.
    let resumed_mid_line = match &p.input {
        Input::File(path) if pos.offset > 0 => {
            use std::os::unix::fs::FileExt;
            let mut b = [0u8];
            std::fs::File::open(path)
                .and_then(|f| f.read_exact_at(&mut b, pos.offset - 1))
                .with_context(|| format!("input {}", path.display()))?;
            b[0] != b'\n'
        }
        _ => false,
    };
    let out_file = match &p.output {
        Output::File(path) => {
            let committed = store.sink_len(&file_id(path))?;
            Some(
                open_output_file(path, committed)
                    .with_context(|| format!("output {}", path.display()))?,
            )
        }
        Output::Stdout => None,
    };
    let dead_id = file_id(&p.dead_letter);
    let dead_file = open_output_file(&p.dead_letter, store.sink_len(&dead_id)?)
        .with_context(|| format!("dead-letter file {}", p.dead_letter.display()))?;

    // Sink.
    let (sink_tx, sink_rx) = bounded::<SinkMsg>(256);
    let sink = std::thread::Builder::new()
        .name("eddy-sink".into())
        .spawn(move || run_sink(out_file, dead_file, sink_rx))?;

    // Workers: each instantiates every operator, then reports ready.
    let n = p.workers;
    let k = operators.len();
    let live: Live = Arc::new(
        (0..n)
            .map(|_| {
                Mutex::new(WorkerLive {
                    ops: vec![OpStats::default(); k],
                    ..WorkerLive::default()
                })
            })
            .collect(),
    );
    let inflight = Arc::new(AtomicUsize::new(0));
    let (inbox_tx, inbox_rx): (Vec<Sender<Msg>>, Vec<Receiver<Msg>>) =
        (0..n).map(|_| unbounded()).unzip();
    let (ready_tx, ready_rx) = unbounded::<Result<(), String>>();
    let mut workers = Vec::new();
    for (id, inbox) in inbox_rx.into_iter().enumerate() {
        let ops = operators.clone();
        let peers = inbox_tx.clone();
        let sink = sink_tx.clone();
        let inflight = inflight.clone();
        let store = store.clone();
        let ready = ready_tx.clone();
        let live = live.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("eddy-worker-{id}"))
                .spawn(move || {
                    let built = build_operators(&ops, &store);
                    let ops = match built {
                        Ok(ops) => {
                            let _ = ready.send(Ok(()));
                            ops
                        }
                        Err(e) => {
                            let _ = ready.send(Err(format!("{e:#}")));
                            return Err(format!("{e:#}"));
                        }
                    };
                    let k = ops.len();
                    let w = Worker {
                        id,
                        ops,
                        outbox: (0..peers.len()).map(|_| Batch::default()).collect(),
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
                        line: 0,
                        retired: Vec::new(),
                    };
                    w.run(inbox)
                })?,
        );
    }
    drop(ready_tx);
    let mut start_error = None;
    for _ in 0..n {
        if let Ok(Err(e)) = ready_rx.recv() {
            start_error.get_or_insert(e);
        }
    }
    if let Some(e) = start_error {
        for tx in &inbox_tx {
            let _ = tx.send(Msg::Stop);
        }
        for w in workers {
            let _ = w.join();
        }
        drop(sink_tx);
        let _ = sink.join();
        return Err(anyhow!(e));
    }

    // Committer.
    let (commit_tx, commit_rx) = bounded::<Checkpoint>(0);
    let (done_tx, done_rx) = bounded::<Result<()>>(1);
    let committer = {
        let store = store.clone();
        std::thread::Builder::new()
            .name("eddy-commit".into())
            .spawn(move || {
                for cp in commit_rx {
                    let r = store.commit(&cp).map_err(anyhow::Error::from);
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            })?
    };

    // Control endpoint and --watch.
    let (ctl_tx, ctl_rx) = unbounded::<Command>();
    let controller = Arc::new(Controller::new(
        store.clone(),
        n,
        operators.clone(),
        versions,
        ctl_tx,
        live.clone(),
        match &p.input {
            Input::File(path) => path.display().to_string(),
            Input::Stdin => "-".into(),
        },
    ));
    let server = p
        .control
        .then(|| control::Server::start(&p.state_dir, controller.clone()));
    let server = match server.transpose().map_err(anyhow::Error::from) {
        Ok(s) => s,
        Err(e) => {
            controller.stopped.store(true, Ordering::Release);
            for tx in &inbox_tx {
                let _ = tx.send(Msg::Stop);
            }
            for w in workers {
                let _ = w.join();
            }
            drop(sink_tx);
            let _ = sink.join();
            return Err(e);
        }
    };
    let mut watcher = None;
    if p.watch {
        let files = operators
            .iter()
            .zip(&p.operators)
            .filter(|(op, _)| matches!(op.kind, OperatorKind::Wasm(_)))
            .map(|(op, spec)| (op.name.to_string(), spec.component.clone()))
            .collect();
        watcher = controller.watch(files, Duration::from_millis(250));
    }

    // Reader.
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader_input = open_input(&p.input, pos.offset).with_context(|| match &p.input {
        Input::File(path) => format!("input {}", path.display()),
        Input::Stdin => "stdin".to_string(),
    })?;
    let (chunk_tx, chunk_rx) = bounded::<Chunk>(8);
    let max_line = p.max_line_bytes;
    let start_offset = pos.offset;
    let end = match (&p.input, p.follow) {
        (Input::File(path), true) => End::Follow(crate::io::Follow {
            path: path.clone(),
            stop: reader_stop.clone(),
        }),
        // A FIFO or device ends for good, like stdin: it cannot be read
        // again by a later run.
        (Input::File(path), false) if std::fs::metadata(path).is_ok_and(|m| m.is_file()) => {
            End::File
        }
        (Input::File(_), false) | (Input::Stdin, _) => End::Final,
    };
    std::thread::Builder::new()
        .name("eddy-reader".into())
        .spawn(move || read_lines(reader_input, start_offset, max_line, chunk_tx, end))?;
    started_cb(&Started {
        control: server.as_ref().map(|s| s.path().to_path_buf()),
        resumed_after_line: pos.line,
    });

    let mut co = Coordinator {
        p,
        inboxes: inbox_tx,
        inflight,
        sink: sink_tx,
        sink_thread: Some(sink),
        commit: commit_tx,
        commit_done: done_rx,
        commit_pending: false,
        pending: (0..n).map(|_| Batch::with_capacity(BATCH)).collect(),
        pos,
        resumed_mid_line,
        input_id,
        out_id: match &p.output {
            Output::File(path) => Some(file_id(path)),
            Output::Stdout => None,
        },
        dead_id,
        stats: vec![vec![OpStats::default(); operators.len()]; n],
        summary: Summary {
            resumed_after_line: pos.line,
            ..Summary::default()
        },
        since_checkpoint: 0,
        workers_alive: workers,
        ctl: ctl_rx,
        controller: controller.clone(),
        versions_dirty,
        swaps_unchecked: Vec::new(),
        swaps_uncommitted: Vec::new(),
        next_checkpoint: Instant::now() + p.checkpoint_interval,
        op_names: operators.iter().map(|o| o.name.clone()).collect(),
    };
    let result = co.drive(&chunk_rx, shutdown);
    let result = result
        .and_then(|()| co.checkpoint())
        .and_then(|()| co.wait_commit());
    reader_stop.store(true, Ordering::Release);
    controller.stopped.store(true, Ordering::Release);
    // Swaps not yet made durable fail; their callers are told.
    let err = match &result {
        Ok(()) => "the pipeline stopped before the swap was made durable".to_string(),
        Err(e) => format!("the pipeline failed before the swap was made durable: {e:#}"),
    };
    for (reply, _) in co
        .swaps_unchecked
        .drain(..)
        .chain(co.swaps_uncommitted.drain(..))
    {
        let _ = reply.send(Err(err.clone()));
    }
    while let Ok(Command::Swap(prepared)) = co.ctl.try_recv() {
        let _ = prepared.reply.send(Err(err.clone()));
    }
    drop(server);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    // Stop everything, even after an error.
    for tx in &co.inboxes {
        let _ = tx.send(Msg::Stop);
    }
    let mut worker_error = None;
    for w in std::mem::take(&mut co.workers_alive) {
        match w.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                worker_error.get_or_insert(e);
            }
            Err(_) => {
                worker_error.get_or_insert("a worker thread panicked".into());
            }
        }
    }
    let Coordinator {
        sink: sink_tx,
        sink_thread,
        commit: commit_tx,
        stats,
        mut summary,
        controller: co_controller,
        ..
    } = co;
    drop(co_controller);
    // A control connection still answering holds the controller (and the
    // state directory) for a moment: release it before returning.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&controller) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(sink_tx);
    drop(commit_tx);
    // `None`: the coordinator already took the sink's error into `result`.
    let sink_result = sink_thread
        .map(|h| h.join().map_err(|_| anyhow!("the sink thread panicked")))
        .transpose()?;
    let _ = committer.join();
    result?;
    if let Some(e) = worker_error {
        bail!(e);
    }
    sink_result.transpose()?;
    summary.operators = operators
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let mut s = OperatorSummary {
                name: op.name.to_string(),
                ..Default::default()
            };
            for w in &stats {
                s.handled += w[i].handled;
                s.failed += w[i].failed;
                s.emitted += w[i].emitted;
            }
            s
        })
        .collect();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn build_operators(ops: &[Loaded], store: &Store) -> Result<Vec<Box<dyn Operator>>> {
    ops.iter()
        .map(|op| {
            let mut ctx = OpCtx::new(op.name.clone(), Some(store.reader()?), op.limits);
            ctx.set_generation(op.generation);
            Ok(match &op.kind {
                OperatorKind::Wasm(plugin) => {
                    let mut inst = plugin.instantiate(ctx, &op.config)?;
                    inst.set_history(op.history.clone());
                    Box::new(inst) as Box<dyn Operator>
                }
                OperatorKind::Native(f) => f(ctx),
            })
        })
        .collect()
}

struct Coordinator<'a> {
    p: &'a Pipeline,
    inboxes: Vec<Sender<Msg>>,
    inflight: Arc<AtomicUsize>,
    sink: Sender<SinkMsg>,
    /// The sink thread, joined for its error when it stops early (a write
    /// failed); `None` once joined.
    sink_thread: Option<std::thread::JoinHandle<Result<(), SinkError>>>,
    commit: Sender<Checkpoint>,
    commit_done: Receiver<Result<()>>,
    /// A checkpoint was handed to the committer and not yet acknowledged.
    commit_pending: bool,
    /// Per-worker batch being filled.
    pending: Vec<Batch>,
    /// Position after the last line routed.
    pos: SourcePos,
    /// The run resumed right after a last line that had no `\n`: a `\n`
    /// alone at the start ends that line and is not counted as one.
    resumed_mid_line: bool,
    input_id: Option<String>,
    out_id: Option<String>,
    dead_id: String,
    /// Latest counters reported by each worker.
    stats: Vec<Vec<OpStats>>,
    summary: Summary,
    since_checkpoint: u64,
    workers_alive: Vec<std::thread::JoinHandle<std::result::Result<Vec<OpStats>, String>>>,
    /// Prepared swaps from the controller.
    ctl: Receiver<Command>,
    controller: Arc<Controller>,
    /// Operator versions changed since the last checkpoint.
    versions_dirty: bool,
    /// Swaps made since the last checkpoint: reported once the checkpoint
    /// that records them is durable.
    swaps_unchecked: Vec<(Sender<Result<SwapReport, String>>, SwapReport)>,
    /// Swaps recorded by the checkpoint being committed.
    swaps_uncommitted: Vec<(Sender<Result<SwapReport, String>>, SwapReport)>,
    /// When the next checkpoint by time is due.
    next_checkpoint: Instant,
    /// Operator names, in chain order.
    op_names: Vec<Arc<str>>,
}

impl Coordinator<'_> {
    fn drive(&mut self, chunks: &Receiver<Chunk>, shutdown: &Shutdown) -> Result<()> {
        let ctl = self.ctl.clone();
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            self.poll_commit()?;
            let due = self
                .next_checkpoint
                .saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(ctl) -> cmd => {
                    if let Ok(cmd) = cmd {
                        self.command(cmd)?;
                    }
                }
                recv(chunks) -> chunk => match chunk {
                    Ok(chunk) => {
                        if self.chunk(chunk, chunks)? {
                            return Ok(());
                        }
                    }
                    Err(_) => bail!("the input reader stopped unexpectedly"),
                },
                default(due.min(Duration::from_millis(100))) => {
                    self.flush_batches()?;
                    if Instant::now() >= self.next_checkpoint {
                        self.checkpoint()?;
                    }
                }
            }
        }
    }

    /// Handles one chunk from the reader; `true` at the end of the input.
    fn chunk(&mut self, chunk: Chunk, chunks: &Receiver<Chunk>) -> Result<bool> {
        match chunk {
            Chunk::Eof => return Ok(true),
            Chunk::Error(e) => bail!("reading the input: {e}"),
            Chunk::Incomplete { len, .. } => {
                // Left unread: the checkpointed offset stays before it (at
                // its offset, or before a byte-order mark skipped at 0).
                let line = self.pos.line + 1;
                self.summary.incomplete_line = Some(line);
                let name = match &self.p.input {
                    Input::File(path) => path.display().to_string(),
                    Input::Stdin => "stdin".into(),
                };
                tracing::warn!(
                    "{name} line {line}: incomplete last line (no newline yet, {len} bytes) left for a later run"
                );
            }
            Chunk::Oversized { offset, len } => {
                self.resumed_mid_line = false;
                self.summary.lines += 1;
                self.pos.line += 1;
                self.dead_line(
                    self.pos.line,
                    &format!(
                        "line is {len} bytes, longer than max_line_bytes = {}",
                        self.p.max_line_bytes
                    ),
                    b"",
                );
                self.pos.offset = offset + len;
            }
            Chunk::Lines { data, offset } => {
                let mut start = 0usize;
                while start < data.len() {
                    let end =
                        memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i + 1);
                    self.line(&data[start..end])?;
                    self.pos.offset = offset + end as u64;
                    start = end;
                    if let Some(n) = self.p.checkpoint_events {
                        if self.since_checkpoint >= n {
                            self.checkpoint()?;
                        }
                    }
                }
                if chunks.is_empty() {
                    self.flush_batches()?;
                }
                if Instant::now() >= self.next_checkpoint {
                    self.checkpoint()?;
                }
            }
        }
        self.controller
            .lines_read
            .store(self.pos.line, Ordering::Relaxed);
        Ok(false)
    }

    /// Carries out a prepared swap: the barrier. Events routed so far go to
    /// the old version, later ones to the new.
    fn command(&mut self, cmd: Command) -> Result<()> {
        let Command::Swap(prepared) = cmd;
        let swap::Prepared {
            stage,
            generation,
            version,
            instances,
            mut report,
            reply,
            claim,
        } = prepared;
        // Every event before the barrier is in a worker's inbox.
        self.flush_batches()?;
        if stage > 0 {
            // A later operator also gets events from other workers: wait
            // until all in flight are handled.
            self.wait_inflight(|n| n == 0)?;
        }
        // The barrier: unless its asker gave up meanwhile, the swap happens.
        if !claim.switch() {
            let _ = reply.send(Err(
                "the request was given up before the switch; nothing changed".into(),
            ));
            return Ok(());
        }
        for (w, op) in instances.into_iter().enumerate() {
            self.inboxes[w]
                .send(Msg::Swap {
                    stage,
                    op,
                    generation,
                })
                .map_err(|_| anyhow!("worker {w} stopped"))?;
        }
        {
            let mut versions = self.controller.versions();
            let v = &mut versions[stage];
            v.all.push(version);
            v.active = generation;
        }
        self.versions_dirty = true;
        report.barrier_line = self.pos.line;
        self.swaps_unchecked.push((reply, report));
        // Make it durable soon.
        let soon = Instant::now() + Duration::from_millis(50).min(self.p.checkpoint_interval);
        self.next_checkpoint = self.next_checkpoint.min(soon);
        Ok(())
    }

    /// Takes note of a finished commit, if any, without waiting.
    fn poll_commit(&mut self) -> Result<()> {
        if self.commit_pending {
            match self.commit_done.try_recv() {
                Ok(r) => {
                    self.commit_pending = false;
                    self.committed(r)?;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(_) => bail!("the committer stopped"),
            }
        }
        Ok(())
    }

    /// A commit finished: report the swaps it made durable.
    fn committed(&mut self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => {
                for (reply, report) in self.swaps_uncommitted.drain(..) {
                    let _ = reply.send(Ok(report));
                }
                Ok(())
            }
            Err(e) => {
                for (reply, _) in self.swaps_uncommitted.drain(..) {
                    let _ = reply.send(Err(format!(
                        "the checkpoint recording the swap failed: {e:#}"
                    )));
                }
                Err(e)
            }
        }
    }

    /// Decodes and routes one line (with its `\n`, if any).
    fn line(&mut self, raw: &[u8]) -> Result<()> {
        if std::mem::take(&mut self.resumed_mid_line) && (raw == b"\n" || raw == b"\r\n") {
            return Ok(());
        }
        self.summary.lines += 1;
        self.pos.line += 1;
        let mut line = raw.strip_suffix(b"\n").unwrap_or(raw);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if line.len() > self.p.max_line_bytes {
            let reason = format!(
                "line is {} bytes, longer than max_line_bytes = {}",
                line.len(),
                self.p.max_line_bytes
            );
            self.dead_line(self.pos.line, &reason, b"");
            return Ok(());
        }
        match decode(line, &self.p.key_field, self.p.time_field.as_deref()) {
            Ok(d) => {
                let w = route(&d.key, self.inboxes.len());
                self.pending[w].push(0, &d.key, line, d.time, self.pos.line);
                self.since_checkpoint += 1;
                if self.pending[w].len() >= BATCH {
                    self.send_batch(w)?;
                }
            }
            Err(e) => self.dead_line(self.pos.line, &e.to_string(), line),
        }
        Ok(())
    }

    /// Dead-letters input line `line`: `payload` as a JSON string, or as
    /// `payload_base64` when it is not UTF-8 (never altered).
    fn dead_line(&mut self, line: u64, reason: &str, payload: &[u8]) {
        self.summary.bad_lines += 1;
        let rec = serde_json::json!({
            "line": line,
            "error": reason,
        });
        let mut b = serde_json::to_vec(&rec).expect("json");
        b.pop();
        b.push(b',');
        push_string_field(&mut b, "payload", payload);
        b.extend_from_slice(b"}\n");
        // A stopped sink is reported at the next checkpoint.
        let _ = self.sink.send(SinkMsg::Dead(b));
    }

    fn send_batch(&mut self, w: usize) -> Result<()> {
        let cap = MAX_INFLIGHT_PER_WORKER * self.inboxes.len();
        self.wait_inflight(|n| n < cap)?;
        let b = std::mem::replace(&mut self.pending[w], Batch::with_capacity(BATCH));
        self.inflight.fetch_add(1, Ordering::AcqRel);
        if self.inboxes[w].send(Msg::Batch(b)).is_err() {
            // The worker ended with an error (a corrupt state record, say):
            // report it, not just that it stopped.
            return Err(self.worker_failure());
        }
        Ok(())
    }

    fn flush_batches(&mut self) -> Result<()> {
        for w in 0..self.pending.len() {
            if !self.pending[w].is_empty() {
                self.send_batch(w)?;
            }
        }
        Ok(())
    }

    /// Waits until the in-flight batch count satisfies `ok`, failing if a
    /// worker died.
    fn wait_inflight(&mut self, ok: impl Fn(usize) -> bool) -> Result<()> {
        let mut spins = 0u32;
        while !ok(self.inflight.load(Ordering::Acquire)) {
            if self.workers_alive.iter().any(|w| w.is_finished()) {
                return Err(self.worker_failure());
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    fn worker_failure(&mut self) -> anyhow::Error {
        // A worker whose inbox is closed may still be finishing its return.
        for _ in 0..200 {
            if self.workers_alive.iter().any(|w| w.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(i) = self.workers_alive.iter().position(|w| w.is_finished()) {
            let w = self.workers_alive.remove(i);
            return match w.join() {
                Ok(Err(e)) => anyhow!(e),
                Ok(Ok(_)) => anyhow!("a worker stopped unexpectedly"),
                Err(_) => anyhow!("a worker thread panicked"),
            };
        }
        anyhow!("a worker stopped unexpectedly")
    }

    /// The sink thread stopped: its error (which names the output and the
    /// OS error).
    fn sink_failure(&mut self) -> anyhow::Error {
        match self.sink_thread.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e.into(),
            Some(Ok(Ok(()))) | None => anyhow!("the output writer stopped"),
            Some(Err(_)) => anyhow!("the sink thread panicked"),
        }
    }

    fn wait_commit(&mut self) -> Result<()> {
        if self.commit_pending {
            self.commit_pending = false;
            let r = self
                .commit_done
                .recv()
                .map_err(|_| anyhow!("the committer stopped"))?;
            self.committed(r)?;
        }
        Ok(())
    }

    /// Makes a checkpoint: a consistent cut of state, input position and
    /// output lengths, committed by the committer thread.
    fn checkpoint(&mut self) -> Result<()> {
        self.flush_batches()?;
        self.wait_inflight(|n| n == 0)?;
        let mut cp = Checkpoint::default();
        for (w, tx) in self.inboxes.iter().enumerate() {
            let (rtx, rrx) = bounded(1);
            if tx.send(Msg::Barrier(rtx)).is_err() {
                return Err(self.worker_failure());
            }
            let reply: BarrierReply = match rrx.recv() {
                Ok(r) => r?,
                Err(_) => return Err(self.worker_failure()),
            };
            cp.writes.extend(reply.writes);
            self.stats[w] = reply.stats;
        }
        let (ftx, frx) = bounded(1);
        if self.sink.send(SinkMsg::Flush(ftx)).is_err() {
            return Err(self.sink_failure());
        }
        let lens = match frx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(self.sink_failure()),
        };
        // Outputs that are not regular files have no length to keep.
        if let (Some(id), Some(len)) = (&self.out_id, lens.out) {
            cp.sinks.push((id.clone(), len));
        }
        if let Some(len) = lens.dead {
            cp.sinks.push((self.dead_id.clone(), len));
        }
        cp.source = self.input_id.clone().map(|id| (id, self.pos));
        // One commit at a time: the previous must be durable first.
        self.wait_commit()?;
        if self.versions_dirty {
            self.versions_dirty = false;
            for (op, v) in self.controller.versions().iter().enumerate() {
                let name = swap::Versions::meta_name(&self.op_names[op]);
                cp.meta.push((name, serde_json::to_vec(v).expect("json")));
            }
            self.swaps_uncommitted.append(&mut self.swaps_unchecked);
        }
        self.commit
            .send(cp)
            .map_err(|_| anyhow!("the committer stopped"))?;
        self.commit_pending = true;
        self.summary.checkpoints += 1;
        self.since_checkpoint = 0;
        self.next_checkpoint = Instant::now() + self.p.checkpoint_interval;
        Ok(())
    }
}
