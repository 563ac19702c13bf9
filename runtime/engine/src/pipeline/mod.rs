//! The running pipeline. [`start`] opens the state directory, resumes the
//! input and the outputs where the last checkpoint left them, starts every
//! thread and returns a [`Running`] handle that owns them all; one
//! shutdown path ([`Running::wait`], or dropping the handle) stops and
//! joins every one of them.
//!
//! # Threads
//!
//! - `eddy-coordinator` ([`coordinator`]): decodes lines, routes them to
//!   workers in batches, carries out swaps at a barrier, and at each
//!   checkpoint waits until every event read so far is handled, collects
//!   the workers' changed state, flushes the sink and hands all of it, with
//!   the input position and output lengths, to the committer;
//! - `eddy-reader` ([`crate::source`]), `eddy-worker-N`
//!   ([`crate::worker`]), `eddy-sink` ([`crate::sink`]), `eddy-commit`
//!   ([`crate::checkpoint`]), `eddy-control` and its connections
//!   ([`crate::control`]), `eddy-watch` ([`crate::swap`]).
//!
//! The coordinator owns the others and stops them, in order, when it ends
//! (the input ended, [`Shutdown`] was triggered, or something failed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::config::Pipeline;
use crate::operator::Loaded;
use crate::stats::Live;

mod coordinator;
mod start;

pub use start::start;

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

/// Per-operator totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorSummary {
    /// The operator.
    pub name: String,
    /// Events it handled.
    pub handled: u64,
    /// Events that failed (dead-lettered).
    pub failed: u64,
    /// Events it emitted.
    pub emitted: u64,
    /// Its timers that fired.
    pub timers_fired: u64,
    /// Its timers whose handler failed (dead-lettered).
    pub timers_failed: u64,
    /// Its state cache's lookups of a cached key.
    pub cache_hits: u64,
    /// Its state cache's lookups of a key not cached (read from the
    /// state directory, or new).
    pub cache_misses: u64,
    /// Keys its state cache evicted to stay within `[state] cache_bytes`.
    pub cache_evictions: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Input lines read in this run.
    pub lines: u64,
    /// Lines rejected before reaching an operator.
    pub bad_lines: u64,
    /// Late events dead-lettered (`[source.watermark] late =
    /// "dead-letter"`, the default).
    pub late_dead_lettered: u64,
    /// Late events dropped (`late = "drop"`).
    pub late_dropped: u64,
    /// Line number this run resumed after (0 for a fresh start).
    pub resumed_after_line: u64,
    /// Line number of an incomplete last line (no `\n` yet, not complete
    /// JSON) left unread for a later run, if any.
    pub incomplete_line: Option<u64>,
    /// Totals per operator, in chain order.
    pub operators: Vec<OperatorSummary>,
    /// Checkpoints made.
    pub checkpoints: u64,
    /// Kafka input: records this run replayed at its start because Kafka
    /// already had their outputs (outputs suppressed; see `docs/kafka.md`).
    pub replayed: u64,
    /// Kafka group mode: keys whose state this run restored from the
    /// changelog topics, for the partitions the group gave it.
    pub restored_keys: u64,
    /// Time from the start to the last checkpoint.
    pub elapsed: Duration,
}

/// What a pipeline that has started tells its caller.
#[derive(Debug, Clone)]
pub struct Started {
    /// The control socket, if it serves one.
    pub control: Option<PathBuf>,
    /// The control plane's TCP address, if it serves one (`[control]
    /// http`; the port the system gave when 0 was asked).
    pub http: Option<std::net::SocketAddr>,
    /// Line number the run resumes after (0 for a fresh start).
    pub resumed_after_line: u64,
}

/// A running pipeline: owns every thread it started. [`Running::wait`]
/// returns when it has stopped (its input ended, or [`Running::stop`] or
/// its [`Shutdown`] asked it to) and every thread is joined; dropping the
/// handle stops the pipeline and waits for it the same way.
pub struct Running {
    started: Started,
    shutdown: Shutdown,
    /// The coordinator, which owns the other threads and joins them when
    /// it ends.
    coordinator: Option<JoinHandle<Result<Summary>>>,
    /// The counters [`Running::progress`] reads.
    live: Arc<Live>,
    /// The input file, if the input is one.
    input: Option<PathBuf>,
    /// When the pipeline started running.
    begun: Instant,
    /// The input line and byte offset it resumed after.
    resumed: (u64, u64),
}

/// How far a running pipeline has read its input: what a progress bar
/// shows ([`Running::progress`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Input lines read so far, counted from the start of the input (so a
    /// resumed run starts at the line it resumed after).
    pub lines: u64,
    /// Byte offset in the input after the last line read.
    pub offset: u64,
    /// Lines read in this run.
    pub lines_this_run: u64,
    /// Bytes read in this run.
    pub bytes_this_run: u64,
    /// The input file's current size, when the input is a regular file
    /// (with `--follow` it may still grow).
    pub size: Option<u64>,
    /// Time since the pipeline started running.
    pub elapsed: Duration,
    /// Whether the pipeline has stopped (its input ended or it was asked
    /// to stop); the summary comes from [`Running::wait`].
    pub finished: bool,
}

impl Running {
    /// What the pipeline told on starting.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Asks the pipeline to stop after a final checkpoint (see
    /// [`Running::wait`]).
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// How far the pipeline has read its input, now. Cheap: a few atomic
    /// loads and, for a file input, one `stat`.
    pub fn progress(&self) -> Progress {
        let lines = self.live.lines_read.load(Ordering::Relaxed);
        let offset = self.live.bytes_read.load(Ordering::Relaxed);
        Progress {
            lines,
            offset,
            lines_this_run: lines.saturating_sub(self.resumed.0),
            bytes_this_run: offset.saturating_sub(self.resumed.1),
            size: self
                .input
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len()),
            elapsed: self.begun.elapsed(),
            finished: self
                .coordinator
                .as_ref()
                .is_none_or(JoinHandle::is_finished),
        }
    }

    /// Waits until the pipeline stops and every thread it started is
    /// joined: what it did, or why it failed.
    pub fn wait(mut self) -> Result<Summary> {
        self.join()
    }

    fn join(&mut self) -> Result<Summary> {
        match self.coordinator.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("the coordinator thread panicked")),
            None => Err(anyhow!("the pipeline was already waited for")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.coordinator.is_some() {
            self.stop();
            let _ = self.join();
        }
    }
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
    operators: Vec<Loaded>,
    shutdown: &Shutdown,
    started: impl FnOnce(&Started),
) -> Result<Summary> {
    let running = start(p, operators, shutdown)?;
    started(running.started());
    running.wait()
}
