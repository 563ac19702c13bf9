//! `eddy bench-state`: what reading state through the control plane
//! costs a pipeline running at full speed.
//!
//! The counter pipeline reads a generated file to its end as fast as it
//! can, once undisturbed and once while a reader asks it for a key's state
//! (`GET /state/counter/KEY` on the control socket, one keep-alive
//! connection) at a fixed rate, and once with a thread that only wakes up
//! at that rate (a thread waking every millisecond changes how fast a
//! 2-core machine hands work between the pipeline's threads, so the reads'
//! own cost is the difference to that run); rounds alternate the three so
//! drift in the machine hits all alike. It prints each run's events/s, the
//! median of each kind, the slowdowns, the reads/s achieved and their
//! latency.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::swap::{component, percentile, V1};
use eddy_runtime::{Input, OperatorSpec, Output, Pipeline, Shutdown};

/// Measure how much state reads through the control plane slow a pipeline
/// running at full speed.
#[derive(Args, Debug)]
pub struct BenchStateArgs {
    /// The counter component [default: plugins/target/wasm32-wasip2/
    /// release/counter.wasm, else the one `cargo build --release
    /// --workspace` built for the tests]
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// Events in the input.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// State reads per second during the disturbed runs.
    #[arg(long, default_value_t = 1000)]
    pub reads_per_sec: u64,
    /// Rounds (each: one run without reads, one with).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// What the reader did during one run.
#[derive(Default)]
struct Reads {
    /// Answers by kind: 200 (a key with committed state), 404 (none yet).
    found: u64,
    missing: u64,
    /// Latency of each read, in microseconds.
    latency_us: Vec<f64>,
    /// Time the reader ran.
    elapsed: Duration,
}

/// One `GET path` on the keep-alive connection `conn`: the status.
fn get(conn: &mut BufReader<UnixStream>, path: &str) -> Result<u16> {
    write!(conn.get_mut(), "GET {path} HTTP/1.1\r\nHost: eddy\r\n\r\n")?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line
            .to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_string())
        {
            length = v.parse()?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(status)
}

/// Reads keys at `rate` per second on `socket` until `done`; with `read`
/// false, only wakes up at that rate (the control for the wake-ups
/// themselves).
fn reader(socket: &Path, keys: u64, rate: u64, read: bool, done: &AtomicBool) -> Result<Reads> {
    let mut conn = BufReader::new(UnixStream::connect(socket)?);
    let mut reads = Reads::default();
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut n: u64 = 0;
    while !done.load(Ordering::Acquire) {
        let due = started + every.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = (n.wrapping_mul(2_654_435_761)) % keys;
        let t = Instant::now();
        if !read {
            n += 1;
            continue;
        }
        match get(&mut conn, &format!("/state/counter/user-{key}")) {
            Ok(200) => reads.found += 1,
            Ok(404) => reads.missing += 1,
            Ok(other) => bail!("state read answered {other}"),
            Err(e) => {
                // The pipeline closes its control plane as it ends, a
                // moment before its run returns: wait for that.
                let until = Instant::now() + Duration::from_secs(5);
                while !done.load(Ordering::Acquire) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if done.load(Ordering::Acquire) {
                    break;
                }
                return Err(e.context("a state read while the pipeline runs"));
            }
        }
        reads.latency_us.push(t.elapsed().as_secs_f64() * 1e6);
        n += 1;
    }
    reads.elapsed = started.elapsed();
    Ok(reads)
}

/// Runs the pipeline `p` to the end of its input, with a reader at `rate`
/// reads/s if given (that only wakes up at that rate unless `read`):
/// events/s, and what the reader did.
fn run_once(
    p: &Pipeline,
    keys: u64,
    rate: Option<u64>,
    read: bool,
) -> Result<(f64, Option<Reads>)> {
    let _ = std::fs::remove_dir_all(&p.state_dir);
    let _ = std::fs::remove_file(&p.dead_letter);
    let engine = eddy_runtime::engine()?;
    let ops = eddy_runtime::load_operators(&engine, p)?;
    let done = Arc::new(AtomicBool::new(false));
    let mut reader_thread = None;
    let summary = eddy_runtime::run_notify(p, ops, &Shutdown::new(), |started| {
        if let (Some(rate), Some(socket)) = (rate, started.control.clone()) {
            let done = done.clone();
            reader_thread = Some(std::thread::spawn(move || {
                reader(&socket, keys, rate, read, &done)
            }));
        }
    })?;
    done.store(true, Ordering::Release);
    let reads = match reader_thread {
        Some(t) => Some(
            t.join()
                .map_err(|_| anyhow::anyhow!("the reader panicked"))??,
        ),
        None => None,
    };
    Ok((summary.lines as f64 / summary.elapsed.as_secs_f64(), reads))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 0.5)
}

/// Runs the benchmark and prints its figures.
pub fn run(a: BenchStateArgs) -> Result<()> {
    let component = component(a.component, &V1)?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let input = dir.path().join("in.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input)?);
        let mut x: u64 = 88172645463325252;
        for _ in 0..a.events {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            writeln!(
                f,
                "{{\"key\":\"user-{}\",\"amount\":{}}}",
                x % a.keys,
                x % 100
            )?;
        }
        f.flush()?;
    }
    let p = Pipeline {
        input: Input::File(input),
        key_field: "key".into(),
        time_field: None,
        max_line_bytes: 1 << 20,
        operators: vec![OperatorSpec {
            name: "counter".into(),
            component,
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
        follow: false,
        watch: false,
        control: true,
        http: None,
        verify_state: false,
        cache_bytes: None,
        compact: None,
        watermark: Default::default(),
    };
    println!(
        "eddy bench-state: counter, {} events over {} keys, {} workers; reads of GET /state/counter/KEY at {}/s on the control socket (one keep-alive connection)",
        a.events, a.keys, a.workers, a.reads_per_sec
    );
    // A first run warms the compile cache and the page cache.
    run_once(&p, a.keys, None, false)?;
    let (mut quiet, mut ticks, mut busy) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_reads = Reads::default();
    for round in 1..=a.rounds {
        let (q, _) = run_once(&p, a.keys, None, false)?;
        let (t, _) = run_once(&p, a.keys, Some(a.reads_per_sec), false)?;
        let (b, reads) = run_once(&p, a.keys, Some(a.reads_per_sec), true)?;
        let reads = reads.unwrap_or_default();
        let n = reads.found + reads.missing;
        println!(
            "  round {round}: {q:>10.0} events/s alone, {t:>10.0} with a thread waking {}/s, {b:>10.0} with {n} reads ({:.0}/s, {} found, {} before the key's first checkpoint)",
            a.reads_per_sec,
            n as f64 / reads.elapsed.as_secs_f64().max(1e-9),
            reads.found,
            reads.missing
        );
        quiet.push(q);
        ticks.push(t);
        busy.push(b);
        all_reads.found += reads.found;
        all_reads.missing += reads.missing;
        all_reads.latency_us.extend(reads.latency_us);
        all_reads.elapsed += reads.elapsed;
    }
    let (q, t, b) = (median(quiet), median(ticks), median(busy));
    let n = all_reads.found + all_reads.missing;
    println!(
        "  median: {q:.0} events/s alone, {t:.0} with the wake-ups alone, {b:.0} with reads; slowdown {:.1}% against the wake-ups alone, {:.1}% against alone",
        (1.0 - b / t) * 100.0,
        (1.0 - b / q) * 100.0
    );
    let mut lat = all_reads.latency_us;
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  reads: {n} at {:.0}/s; latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        n as f64 / all_reads.elapsed.as_secs_f64().max(1e-9),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
