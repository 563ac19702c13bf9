//! `eddy bench-window`: tumbling one-minute count and sum per key, end to
//! end from a JSON Lines file in event-time order with bounded disorder,
//! through the window aggregate as a Wasm component (`plugins/window-sum`,
//! world `window-operator`), through the same aggregate written natively
//! against the same host (`WindowSum`), and through the keyed counter
//! (`plugins/counter`, which emits per event), in one process so the
//! ratios are fair on a noisy machine; and the keyed counter once more
//! without a time field, the baseline of what event time (the watermark,
//! timers allowed, none firing) adds to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use eddy_runtime::{
    window_operator, Input, Limits, Loaded, Operator, OperatorKind, Output, Pipeline, Shutdown,
    WasmComponent, WasmWindow, WatermarkSpec, WindowKind, WindowSum,
};

use crate::counter::rate;

/// Benchmark windows: a Wasm window aggregate against the same aggregate
/// written natively and against the keyed counter, end to end.
#[derive(Args, Debug)]
pub struct BenchWindowArgs {
    /// The window aggregate component (plugins/window-sum built for
    /// wasm32-wasip2).
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/window_sum.wasm"
    )]
    pub window: PathBuf,
    /// The keyed counter component (plugins/counter built for
    /// wasm32-wasip2).
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/counter.wasm"
    )]
    pub counter: PathBuf,
    /// Number of events.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Minutes of event time the events span (one window per key and
    /// minute).
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// How far (ms) an event may come after a later one: the disorder of
    /// the input and the watermark's `max_out_of_order`.
    #[arg(long, default_value_t = 2000)]
    pub disorder_ms: u64,
    /// The watermark's `step` (ms): it advances in multiples of this, so
    /// windows fire in rounds; between two advances a worker hands the
    /// operator its events in batches.
    #[arg(long, default_value_t = 1)]
    pub step_ms: u64,
    /// Workers [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Runs of each configuration, interleaved; the report gives the
    /// median and the best.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
}

/// Writes the events: `{"key":"k000042","ts":..,"amount":17}`, times
/// increasing over `minutes` minutes, each moved back by up to `disorder`
/// ms.
fn generate(a: &BenchWindowArgs, path: &Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let span = a.minutes * 60_000;
    let base: u64 = 1_700_000_000_000;
    for i in 0..a.events as u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % a.keys as u64;
        let amount = (x >> 32) % 1000;
        let back = (x >> 20) % (a.disorder_ms + 1);
        let ts = base + i * span / a.events.max(1) as u64;
        let ts = ts.saturating_sub(back).max(base);
        writeln!(
            out,
            "{{\"key\":\"k{k:06}\",\"ts\":{ts},\"amount\":{amount}}}"
        )?;
    }
    out.flush()?;
    Ok(())
}

fn report(label: &str, rates: &[f64]) -> f64 {
    let mut r = rates.to_vec();
    r.sort_by(f64::total_cmp);
    let (median, best) = (r[r.len() / 2], r[r.len() - 1]);
    println!("  {label:<16} median {median:>10.0}  best {best:>10.0} events/s");
    median
}

/// The output lines of `path`, sorted (workers interleave keys).
fn sorted_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort_unstable();
    Ok(lines)
}

/// Runs the benchmark and prints a report.
pub fn run(a: BenchWindowArgs) -> Result<()> {
    let engine = eddy_runtime::engine()?;
    let hint = "run `cargo build --release --target wasm32-wasip2` in plugins/ first";
    let window =
        Arc::new(WasmWindow::load(&engine, &a.window, "window", "--window").context(hint)?);
    let counter = Arc::new(WasmComponent::load(&engine, &a.counter).context(hint)?);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    let t = Instant::now();
    generate(&a, &input)?;
    println!(
        "generated {} events over {} keys and {} minutes of event time (disorder up to {} ms) in {:.2}s",
        a.events,
        a.keys,
        a.minutes,
        a.disorder_ms,
        t.elapsed().as_secs_f64()
    );
    let workers = a.workers.unwrap_or_else(eddy_runtime::default_workers);
    let kind = WindowKind::Tumbling { size: 60_000 };
    println!(
        "\nend to end ({workers} workers, tumbling one-minute count and sum per key, watermark step {} ms; JSON Lines file in and out, state committed to redb), {} runs:",
        a.step_ms,
        a.repeat
    );
    let mut rates: [Vec<f64>; 4] = Default::default();
    for run in 1..=a.repeat {
        let mut outputs = Vec::new();
        for (which, label) in [
            "wasm window",
            "native window",
            "keyed counter",
            "counter, no time",
        ]
        .into_iter()
        .enumerate()
        {
            let kind = match which {
                0 => OperatorKind::Window(window.clone(), kind),
                1 => OperatorKind::Native(Arc::new(move |ctx| -> Box<dyn Operator> {
                    window_operator(ctx, WindowSum::new("amount"), kind)
                })),
                _ => OperatorKind::Wasm(counter.clone()),
            };
            let state = dir.path().join(format!("state-{which}"));
            let out = dir.path().join(format!("out-{which}.jsonl"));
            let p = Pipeline {
                input: Input::File(input.clone()),
                key_field: "key".into(),
                // The last run: the counter without event time (no
                // watermark, no timer checks), the baseline of what event
                // time and timers add to it when none fires.
                time_field: (which < 3).then(|| "ts".into()),
                max_line_bytes: 1 << 20,
                operators: Vec::new(),
                output: Output::File(out.clone()),
                dead_letter: state.join("dead-letter.jsonl"),
                state_dir: state.clone(),
                workers,
                checkpoint_interval: Duration::from_secs(1),
                checkpoint_events: None,
                follow: false,
                watch: false,
                control: false,
                http: None,
                verify_state: false,
                cache_bytes: None,
                compact: None,
                watermark: WatermarkSpec {
                    max_out_of_order: a.disorder_ms,
                    step: a.step_ms.max(1),
                    ..WatermarkSpec::default()
                },
            };
            let ops = vec![Loaded {
                name: "window".into(),
                kind,
                config: "{}".into(),
                limits: Limits::default(),
                generation: 0,
                history: Default::default(),
                ttl: Vec::new(),
            }];
            let s = eddy_runtime::run(&p, ops, &Shutdown::new())?;
            let op = &s.operators[0];
            anyhow::ensure!(
                op.failed == 0 && op.timers_failed == 0 && s.late_dead_lettered == 0,
                "{label}: {} events and {} windows failed, {} late",
                op.failed,
                op.timers_failed,
                s.late_dead_lettered
            );
            let r = rate(s.lines as usize, s.elapsed);
            println!(
                "  run {run}: {label:<13} {r:>10.0} events/s  ({} events, {} outputs, {} checkpoints, {:.2}s)",
                s.lines,
                op.emitted,
                s.checkpoints,
                s.elapsed.as_secs_f64()
            );
            rates[which].push(r);
            if which < 2 {
                outputs.push(out);
            } else {
                let _ = std::fs::remove_file(out);
            }
            let _ = std::fs::remove_dir_all(state);
        }
        // The two windows give the same outputs.
        let (wasm, native) = (sorted_lines(&outputs[0])?, sorted_lines(&outputs[1])?);
        if let Some((w, n)) = wasm.iter().zip(&native).find(|(w, n)| w != n) {
            anyhow::bail!("the Wasm and native windows' outputs differ: {w} against {n}");
        }
        anyhow::ensure!(
            wasm.len() == native.len(),
            "the Wasm and native windows' outputs differ: {} and {} lines",
            wasm.len(),
            native.len()
        );
        for o in outputs {
            let _ = std::fs::remove_file(o);
        }
    }
    let w = report("wasm window", &rates[0]);
    let n = report("native window", &rates[1]);
    let c = report("keyed counter", &rates[2]);
    let untimed = report("counter, no time", &rates[3]);
    println!("  wasm window / native window (medians) {:.3}", w / n);
    println!("  wasm window / keyed counter (medians) {:.3}", w / c);
    println!(
        "  keyed counter with event time (watermark, timers on, none set) / without (medians) {:.3}",
        c / untimed
    );
    Ok(())
}
