//! `eddy bench-swap`: the pause a hot swap costs each worker under load.
//!
//! A counter pipeline follows a file that a writer thread keeps growing, so
//! the workers are busy the whole time. Swaps alternate between two
//! versions of the counter through the real control endpoint. Each worker
//! measures its pause: from the moment the new version could have started
//! (the old version's last event ended and the new one's first event had
//! reached the worker) to the start of that first event, plus what the new
//! instance's first run of events took beyond its usual pace (its first
//! call meets fresh memory); and the whole gap between the two versions'
//! events, which adds the time the worker had no event of after the
//! barrier yet (slower input, or a checkpoint holding the stream). Compile time (reading and compiling the component) and
//! preparation (init, trial migration, one instance per worker) happen
//! before the barrier and are reported separately, as is the time until
//! the swap was durable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use eddy_runtime::control::{self, Request, Response};
use eddy_runtime::{Input, OperatorSpec, Output, Pipeline, Shutdown};

/// Measure the hot-swap pause per worker under load.
#[derive(Args, Debug)]
pub struct BenchSwapArgs {
    /// Version 1 of the counter [default: plugins/target/wasm32-wasip2/
    /// release/counter.wasm, else the one `cargo build --release
    /// --workspace` built for the tests]
    #[arg(long)]
    pub v1: Option<PathBuf>,
    /// Version 2 of the counter [default: tests/fixtures/target/
    /// wasm32-wasip2/release/counter_v2.wasm, else the one `cargo build
    /// --release --workspace` built for the tests]
    #[arg(long)]
    pub v2: Option<PathBuf>,
    /// Number of swaps (alternating v2, v1, v2, ...).
    #[arg(long, default_value_t = 40)]
    pub swaps: usize,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Distinct keys in the generated events.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn print_dist(label: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {label:<28} n={:<4} p50 {:>9.1} {unit}  p99 {:>9.1} {unit}  max {:>9.1} {unit}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Where the build script of the tests crate (`tests/build.rs`) put
/// `file`, built in `<OUT_DIR>/<dir>-target`; `OUT_DIR` is under the
/// `build` folder beside this executable (the most recent build).
fn built_for_tests(dir: &str, file: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let build = exe.parent()?.join("build");
    std::fs::read_dir(build)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("eddy-tests-"))
        .map(|e| {
            e.path()
                .join("out")
                .join(format!("{dir}-target"))
                .join("wasm32-wasip2")
                .join("release")
                .join(file)
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
}

/// A default component of the benchmark.
pub(crate) struct DefaultComponent {
    /// Where building its workspace by hand puts it (relative to the
    /// repository root).
    path: &'static str,
    /// Its workspace (the folder of its `Cargo.toml`).
    workspace: &'static str,
    /// The folder under the tests crate's `OUT_DIR` it is built into.
    for_tests: &'static str,
    /// The option that names another one.
    flag: &'static str,
}

/// Version 1 of the counter.
pub(crate) const V1: DefaultComponent = DefaultComponent {
    path: "plugins/target/wasm32-wasip2/release/counter.wasm",
    workspace: "plugins",
    for_tests: "plugins",
    flag: "--v1",
};

/// Version 2 of the counter (a test operator).
const V2: DefaultComponent = DefaultComponent {
    path: "tests/fixtures/target/wasm32-wasip2/release/counter_v2.wasm",
    workspace: "tests/fixtures",
    for_tests: "fixtures",
    flag: "--v2",
};

/// The component to use: `given`, else the default one built by hand when
/// it exists (relative to the current directory), else the one built for
/// the tests.
pub(crate) fn component(given: Option<PathBuf>, default: &DefaultComponent) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.exists() {
            bail!("{} ({}) is missing", p.display(), default.flag);
        }
        return Ok(p);
    }
    if Path::new(default.path).exists() {
        return Ok(default.path.into());
    }
    let file = Path::new(default.path)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    built_for_tests(default.for_tests, file).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is missing, and no build of the tests has it: run `cargo build --release --workspace` in the repository (its tests crate builds the test components), or `cargo build --release --target wasm32-wasip2 --manifest-path {}/Cargo.toml` there, or name a component with {}",
            default.path,
            default.workspace,
            default.flag
        )
    })
}

/// Runs the benchmark and prints its figures.
pub fn run(a: BenchSwapArgs) -> Result<()> {
    let v1 = component(a.v1, &V1)?;
    let v2 = component(a.v2, &V2)?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "")?;
    let p = Pipeline {
        input: Input::File(input.clone()),
        key_field: "key".into(),
        time_field: None,
        max_line_bytes: 1 << 20,
        operators: vec![OperatorSpec {
            name: "counter".into(),
            component: v1.clone(),
            config: serde_json::json!({}),
            limits: Default::default(),
            ttl: Vec::new(),
            window: None,
        }],
        output: Output::File(dir.path().join("out.jsonl")),
        dead_letter: dir.path().join("dead-letter.jsonl"),
        state_dir: dir.path().join("state"),
        workers: a.workers,
        checkpoint_interval: Duration::from_secs(1),
        checkpoint_events: None,
        follow: true,
        watch: false,
        control: true,
        http: None,
        verify_state: false,
        cache_bytes: None,
        compact: None,
        watermark: Default::default(),
    };

    // The load: a writer appending events as fast as the pipeline reads
    // them (it stays at most ~600k lines ahead).
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let shutdown = Shutdown::new();
    let engine = eddy_runtime::engine()?;
    let ops = eddy_runtime::load_operators(&engine, &p)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pipeline = {
        let p = p.clone();
        let s = shutdown.clone();
        std::thread::spawn(move || {
            eddy_runtime::run_notify(&p, ops, &s, |started| {
                let _ = tx.send(started.control.clone());
            })
        })
    };
    let socket = match rx.recv() {
        Ok(Some(socket)) => socket,
        _ => bail!("the pipeline did not start: {:?}", pipeline.join()),
    };
    let status = || -> Result<eddy_runtime::control::Status> {
        match control::request(&socket, &Request::Status, control::DEFAULT_WAIT)? {
            Response::Status(s) => Ok(*s),
            other => bail!("unexpected answer {other:?}"),
        }
    };
    let writer = {
        let stop = stop.clone();
        let written = written.clone();
        let input = input.clone();
        let keys = a.keys;
        let socket = socket.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().append(true).open(&input)?;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut buf = Vec::with_capacity(1 << 20);
            let mut read = 0;
            while !stop.load(Ordering::Acquire) {
                // Stay at most ~600k lines ahead of the pipeline; ask where
                // it is only when near that (a status request costs CPU).
                if written.load(Ordering::Relaxed).saturating_sub(read) > 600_000 {
                    read = match control::request(&socket, &Request::Status, control::DEFAULT_WAIT)
                    {
                        Ok(Response::Status(s)) => s.lines_read,
                        _ => read,
                    };
                    if written.load(Ordering::Relaxed).saturating_sub(read) > 600_000 {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                buf.clear();
                for _ in 0..20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let _ = writeln!(
                        buf,
                        "{{\"key\":\"k{:06}\",\"amount\":{}}}",
                        x % keys,
                        (x >> 32) % 1000
                    );
                }
                f.write_all(&buf)?;
                written.fetch_add(20_000, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    println!(
        "eddy bench-swap: {} swaps of a counter under load, {} workers, {} keys\n  v1 {}\n  v2 {}",
        a.swaps,
        a.workers,
        a.keys,
        v1.display(),
        v2.display()
    );
    // Warm up: every key seen, so the swaps meet a full state cache.
    while status()?.lines_read < a.keys * 3 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let lines_before = status()?.lines_read;
    let (mut compile, mut prepare, mut durable) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.swaps {
        let target = if i % 2 == 0 { &v2 } else { &v1 };
        let t = Instant::now();
        let r = control::request(
            &socket,
            &Request::Swap {
                operator: "counter".into(),
                component: std::path::absolute(target)?,
            },
            control::DEFAULT_WAIT,
        )?;
        match r {
            Response::Swapped(r) => {
                durable.push(t.elapsed().as_secs_f64() * 1e3);
                compile.push(r.compile_ms);
                prepare.push(r.prepare_ms);
            }
            other => bail!("swap {i} failed: {other:?}"),
        }
        // Let the stream flow between swaps (the writer keeps it busy).
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let s = status()?;
    stop.store(true, Ordering::Release);
    let _ = writer.join();
    shutdown.trigger();
    let summary = pipeline
        .join()
        .map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
    let each = |f: fn(&eddy_runtime::SwapPause) -> f64| -> Vec<f64> {
        s.workers
            .iter()
            .flat_map(|w| w.pauses.iter().map(f))
            .collect()
    };
    let handled = s.lines_read - lines_before;
    println!(
        "  load: {:.0} events/s handled during the swaps ({} events in {:.2}s); {} events in all, {} failed",
        handled as f64 / elapsed.as_secs_f64(),
        handled,
        elapsed.as_secs_f64(),
        summary.lines,
        s.operators[0].failed
    );
    check_every_worker_paused(&s, a.swaps)?;
    print_dist(
        "pause per worker",
        "us",
        each(|p| p.pause_us + p.first_run_extra_us),
    );
    print_dist(
        "  of which before the switch",
        "us",
        each(|p| p.before_switch_us),
    );
    print_dist(
        "  of which 1st run's extra",
        "us",
        each(|p| p.first_run_extra_us),
    );
    print_dist(
        "gap v1 -> v2 events",
        "us",
        each(|p| p.idle_us + p.pause_us),
    );
    print_dist("  of which no event yet", "us", each(|p| p.idle_us));
    print_dist("compile (before barrier)", "ms", compile);
    print_dist("prepare (before barrier)", "ms", prepare);
    print_dist("request to durable", "ms", durable);
    Ok(())
}

/// Every worker saw every swap.
fn check_every_worker_paused(s: &eddy_runtime::control::Status, swaps: usize) -> Result<()> {
    for w in &s.workers {
        if w.pauses.len() != swaps {
            bail!(
                "worker {} measured {} pauses for {swaps} swaps (it saw no event after a swap?)",
                w.id,
                w.pauses.len()
            );
        }
    }
    Ok(())
}
