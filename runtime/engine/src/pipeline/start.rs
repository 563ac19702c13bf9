//! [`start`]: everything a pipeline opens and starts, in order, each step
//! undone (its threads stopped and joined) when a later one fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::unbounded;

use super::coordinator::Coordinator;
use super::{Running, Shutdown, Started};
use crate::checkpoint::{Counted, Writer};
use crate::config::{Input, Output, Pipeline};
use crate::control::Server;
use crate::operator::{Loaded, OperatorKind};
use crate::sink::{open_output_file, SinkThread};
use crate::source::{file_id, ReaderThread, Resume};
use crate::state::Store;
use crate::stats::Live;
use crate::swap::{self, Command, Controller};
use crate::worker::Workers;

/// How often `--watch` looks at the component files.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Starts `p` with `operators`: checks its files, opens its state
/// directory (running the version of each operator a swap put in service),
/// resumes its input and outputs from the last checkpoint, starts the
/// sink, the workers (each instantiates every operator), the committer,
/// the control endpoint, `--watch` and the reader, then the coordinator.
/// Returns once the workers are ready and the control endpoint listens.
/// The pipeline stops when its input ends or `shutdown` is triggered,
/// after a final checkpoint.
pub fn start(p: &Pipeline, mut operators: Vec<Loaded>, shutdown: &Shutdown) -> Result<Running> {
    let begun = Instant::now();
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

    // Input position and output lengths from the last checkpoint.
    let resume = Resume::find(p, &store)?;
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
    let dead_file = open_output_file(&p.dead_letter, store.sink_len(&file_id(&p.dead_letter))?)
        .with_context(|| format!("dead-letter file {}", p.dead_letter.display()))?;

    // From here on, each value owns its threads: an early return stops
    // and joins them (in the reverse order of their start).
    let sink = SinkThread::start(out_file, dead_file)?;
    let live = Arc::new(Live::new(p.workers, operators.len()));
    live.lines_read
        .store(resume.pos.line, std::sync::atomic::Ordering::Relaxed);
    live.bytes_read
        .store(resume.pos.offset, std::sync::atomic::Ordering::Relaxed);
    let workers = Workers::start(p.workers, &operators, &store, &sink.sender(), &live)?;
    let writer = Writer::start(Counted {
        inner: store.clone(),
        live: live.clone(),
    })?;
    // Before the control endpoint and `--watch`, which end only once the
    // coordinator stops the controller.
    let reader = ReaderThread::start(p, resume.pos)?;

    let (ctl_tx, ctl_rx) = unbounded::<Command>();
    let controller = Arc::new(Controller::new(
        store.clone(),
        p.workers,
        operators.clone(),
        versions,
        ctl_tx,
        live.clone(),
        match &p.input {
            Input::File(path) => path.display().to_string(),
            Input::Stdin => "-".into(),
        },
    ));
    let server = match p.control {
        true => Some(Server::start(
            &p.state_dir,
            controller.clone(),
            p.http.as_ref(),
        )?),
        false => None,
    };
    let watcher = match p.watch {
        true => {
            let files = operators
                .iter()
                .zip(&p.operators)
                .filter(|(op, _)| matches!(op.kind, OperatorKind::Wasm(_)))
                .map(|(op, spec)| (op.name.to_string(), spec.component.clone()))
                .collect();
            controller.watch(files, WATCH_EVERY)
        }
        false => None,
    };

    let (resume_line, resume_offset) = (resume.pos.line, resume.pos.offset);
    let started = Started {
        control: server.as_ref().map(|s| s.path().to_path_buf()),
        http: server.as_ref().and_then(Server::http_addr),
        resumed_after_line: resume.pos.line,
    };
    let co = Coordinator::new(super::coordinator::Parts {
        p: p.clone(),
        begun,
        resume,
        operators: &operators,
        workers,
        sink,
        writer,
        controller,
        ctl: ctl_rx,
        server,
        watcher,
        reader,
        live: live.clone(),
        versions_dirty,
    });
    let shutdown = shutdown.clone();
    let coordinator = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("eddy-coordinator".into())
            .spawn(move || co.run(&shutdown))?
    };
    Ok(Running {
        started,
        shutdown,
        coordinator: Some(coordinator),
        live,
        input: match &p.input {
            Input::File(path) => Some(path.clone()),
            Input::Stdin => None,
        },
        begun: Instant::now(),
        resumed: (resume_line, resume_offset),
    })
}
