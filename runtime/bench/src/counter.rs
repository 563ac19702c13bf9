//! `eddy bench`: the keyed counter as Wasm components (written the way the
//! README teaches, and the same tuned by hand) against the same counter written
//! natively, on the operator path alone and end to end, and end to end
//! against the simplest program a user could write instead; in one process
//! so the ratios are fair on a noisy machine.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use eddy_runtime::{
    EventRef, Input, Limits, Loaded, NativeCounter, OpCtx, Operator, OperatorKind, Output,
    Pipeline, Shutdown, WasmComponent,
};

/// Benchmark the keyed counter: Wasm component vs native Rust, operator path
/// and end to end (JSON Lines file in, state committed to redb).
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The counter component, written the way the README teaches
    /// (plugins/counter built for wasm32-wasip2): what a user's operator
    /// gets, and the headline numbers.
    // `--plugin` is the name older versions took.
    #[arg(
        long,
        alias = "plugin",
        default_value = "plugins/target/wasm32-wasip2/release/counter.wasm"
    )]
    pub component: PathBuf,
    /// The same counter tuned by hand (plugins/counter-tuned built for
    /// wasm32-wasip2): a reference for what hand tuning still buys.
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/counter_tuned.wasm"
    )]
    pub tuned: PathBuf,
    /// Number of events.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Workers for the end-to-end runs [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Skip the end-to-end runs.
    #[arg(long)]
    pub no_e2e: bool,
    /// Skip the operator-path runs.
    #[arg(long)]
    pub no_operator: bool,
    /// Operator path: run only the Wasm component given as `--component`
    /// (the counter unless told otherwise), with the CPU limit (for
    /// profiling one component alone).
    #[arg(long)]
    pub wasm_only: bool,
    /// With `--wasm-only`: run that component without the CPU limit (an
    /// engine without epoch checks), to measure what the limit costs.
    #[arg(long, requires = "wasm_only")]
    pub no_cpu_limit: bool,
    /// Runs of each configuration, interleaved; the report gives each
    /// run, the median and the best (the machine may be shared and noisy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Instead of the throughput runs: build a state directory of this many
    /// MiB (1 KiB per key) and time a restart on it up to the first event
    /// handled and checkpointed.
    #[arg(long, value_name = "MIB")]
    pub recovery_mib: Option<u64>,
}

/// Pre-generated events: `{"key":"k000042","amount":17}` lines.
pub(crate) struct Events {
    data: Vec<u8>,
    /// `(key start, key end, line start, line end)` in `data`.
    index: Vec<(u32, u32, u32, u32)>,
}

pub(crate) fn generate(n: usize, keys: usize) -> Events {
    let mut data = Vec::with_capacity(n * 36);
    let mut index = Vec::with_capacity(n);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % keys as u64) as usize;
        let amount = (x >> 32) % 1000;
        let start = data.len();
        write!(data, "{{\"key\":\"k{k:06}\",\"amount\":{amount}}}").unwrap();
        let end = data.len();
        index.push((
            (start + 8) as u32,
            (start + 15) as u32,
            start as u32,
            end as u32,
        ));
        data.push(b'\n');
    }
    Events { data, index }
}

pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The generated events, decoded (the operator path starts there).
pub(crate) fn decode(ev: &Events) -> Vec<EventRef<'_>> {
    ev.index
        .iter()
        .zip(1..)
        .map(|(&(k0, k1, l0, l1), line)| EventRef {
            key: std::str::from_utf8(&ev.data[k0 as usize..k1 as usize])
                .expect("generated keys are ASCII"),
            value: &ev.data[l0 as usize..l1 as usize],
            time: None,
            line,
        })
        .collect()
}

/// Runs `events` through `op` in batches of 1024, as the source hands them
/// to a worker; the time taken.
pub(crate) fn operator_path(op: &mut dyn Operator, events: &[EventRef<'_>]) -> Result<Duration> {
    let mut failed = 0usize;
    let t = Instant::now();
    for chunk in events.chunks(1024) {
        op.handle_many(chunk, &mut |_, r, emitted| {
            failed += r.is_err() as usize;
            emitted.clear();
        })?;
    }
    let d = t.elapsed();
    anyhow::ensure!(failed == 0, "{failed} events failed");
    Ok(d)
}

/// Prints one configuration's median and best rate; returns the median.
fn report(label: &str, rates: &[f64]) -> f64 {
    let mut r = rates.to_vec();
    r.sort_by(f64::total_cmp);
    let (median, best) = (r[r.len() / 2], r[r.len() - 1]);
    println!("  {label:<28} median {median:>10.0}  best {best:>10.0} events/s");
    median
}

fn native_kind() -> OperatorKind {
    OperatorKind::Native(Arc::new(|ctx| {
        Box::new(NativeCounter::new(ctx, "amount")) as Box<dyn Operator>
    }))
}

/// Runs the benchmark and prints a report.
pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(mib) = a.recovery_mib {
        return recovery(&a, mib);
    }
    let engine = eddy_runtime::engine()?;
    let t = Instant::now();
    let component = Arc::new(
        WasmComponent::load(&engine, &a.component)
            .context("run `cargo build --release --target wasm32-wasip2` in plugins/ first")?,
    );
    println!(
        "compiled {} in {:.2}s",
        a.component.display(),
        t.elapsed().as_secs_f64()
    );
    // Not loaded when only `--component` runs.
    let tuned = match a.wasm_only && a.no_e2e {
        true => None,
        false => {
            let t = Instant::now();
            let tuned = Arc::new(WasmComponent::load(&engine, &a.tuned).context(
                "run `cargo build --release --target wasm32-wasip2` in plugins/ first, or give --tuned",
            )?);
            println!(
                "compiled {} in {:.2}s",
                a.tuned.display(),
                t.elapsed().as_secs_f64()
            );
            Some(tuned)
        }
    };
    let t = Instant::now();
    let ev = generate(a.events, a.keys);
    println!(
        "generated {} events over {} keys in {:.2}s",
        a.events,
        a.keys,
        t.elapsed().as_secs_f64()
    );

    if !a.no_operator {
        println!(
            "\noperator path (one worker, events pre-decoded, state in the host cache), {} runs:",
            a.repeat
        );
        let events = decode(&ev);
        let fresh = || OpCtx::new("counter".into(), None, Limits::default());
        // The cost of the per-call CPU limit (epoch deadlines): the same
        // component on an engine without it.
        let free_engine = eddy_runtime::engine_with(false)?;
        let unlimited = Arc::new(WasmComponent::load(&free_engine, &a.component)?);
        let (mut native, mut limited, mut free) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tuned_rates, mut tuned_free) = (Vec::new(), Vec::new());
        let tuned_unlimited = match &tuned {
            Some(_) => Some(Arc::new(WasmComponent::load(&free_engine, &a.tuned)?)),
            None => None,
        };
        for run in 1..=a.repeat {
            if a.wasm_only {
                let c = if a.no_cpu_limit {
                    &unlimited
                } else {
                    &component
                };
                let d = operator_path(&mut c.instantiate(fresh(), "{}")?, &events)?;
                limited.push(rate(a.events, d));
                println!("  run {run}: wasm {:.0}", limited[limited.len() - 1]);
                continue;
            }
            let d = operator_path(&mut component.instantiate(fresh(), "{}")?, &events)?;
            limited.push(rate(a.events, d));
            let d = operator_path(&mut NativeCounter::new(fresh(), "amount"), &events)?;
            native.push(rate(a.events, d));
            let d = operator_path(&mut unlimited.instantiate(fresh(), "{}")?, &events)?;
            free.push(rate(a.events, d));
            let tuned = tuned.as_ref().context("the tuned counter is loaded")?;
            let d = operator_path(&mut tuned.instantiate(fresh(), "{}")?, &events)?;
            tuned_rates.push(rate(a.events, d));
            let unlimited = tuned_unlimited
                .as_ref()
                .context("the tuned counter is loaded")?;
            let d = operator_path(&mut unlimited.instantiate(fresh(), "{}")?, &events)?;
            tuned_free.push(rate(a.events, d));
            println!(
                "  run {run}: native {:.0}, wasm {:.0} (without the CPU limit {:.0}), wasm tuned {:.0} (without the CPU limit {:.0}) events/s",
                native[native.len() - 1],
                limited[limited.len() - 1],
                free[free.len() - 1],
                tuned_rates[tuned_rates.len() - 1],
                tuned_free[tuned_free.len() - 1],
            );
        }
        if a.wasm_only {
            report("wasm", &limited);
        } else {
            let n = report("native", &native);
            let w = report("wasm", &limited);
            let t = report("wasm tuned", &tuned_rates);
            let u = report("wasm without the CPU limit", &free);
            let tu = report("tuned without the CPU limit", &tuned_free);
            println!("  wasm/native ratio (medians) {:.3}", w / n);
            println!("  tuned/native ratio (medians) {:.3}", t / n);
            println!("  wasm/tuned ratio (medians) {:.3}", w / t);
            println!(
                "  with/without CPU limit ratio, wasm (medians) {:.3}",
                w / u
            );
            println!(
                "  with/without CPU limit ratio, tuned (medians) {:.3}",
                t / tu
            );
        }
    }

    if !a.no_e2e {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("events.jsonl");
        std::fs::write(&input, &ev.data)?;
        drop(ev);
        let workers = a.workers.unwrap_or_else(eddy_runtime::default_workers);
        println!("\nend to end ({workers} workers, JSON Lines file in and out, state committed to redb):");
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut plain_rates = Vec::new();
        for run in 1..=a.repeat {
            let out = dir.path().join("out-plain.jsonl");
            let t = Instant::now();
            let lines = plain(&input, &out)?;
            let r = rate(lines, t.elapsed());
            println!(
                "  run {run}: plain   {r:>10.0} events/s  ({lines} events, one thread: serde_json, a HashMap, one output line per event)"
            );
            plain_rates.push(r);
            let _ = std::fs::remove_file(out);
            for (which, (label, kind)) in [
                ("native", native_kind()),
                ("wasm", OperatorKind::Wasm(component.clone())),
                (
                    "tuned",
                    OperatorKind::Wasm(tuned.clone().context("the tuned counter is loaded")?),
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let state = dir.path().join(format!("state-{label}"));
                let out = dir.path().join(format!("out-{label}.jsonl"));
                let p = Pipeline {
                    input: Input::File(input.clone()),
                    key_field: "key".into(),
                    time_field: None,
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
                    watermark: Default::default(),
                };
                let ops = vec![Loaded {
                    name: "counter".into(),
                    kind,
                    config: "{}".into(),
                    limits: Limits::default(),
                    generation: 0,
                    history: Default::default(),
                    ttl: Vec::new(),
                }];
                let s = eddy_runtime::run(&p, ops, &Shutdown::new())?;
                let r = rate(s.lines as usize, s.elapsed);
                println!(
                    "  run {run}: {label:<7} {:>10.0} events/s  ({} events, {} checkpoints, {:.2}s)",
                    r,
                    s.lines,
                    s.checkpoints,
                    s.elapsed.as_secs_f64()
                );
                rates[which].push(r);
                let _ = std::fs::remove_file(out);
                let _ = std::fs::remove_dir_all(state);
            }
        }
        let p = report("plain program", &plain_rates);
        let n = report("native", &rates[0]);
        let w = report("wasm", &rates[1]);
        let t = report("wasm tuned", &rates[2]);
        println!("  wasm/native ratio (medians) {:.3}", w / n);
        println!("  tuned/native ratio (medians) {:.3}", t / n);
        println!("  wasm/tuned ratio (medians) {:.3}", w / t);
        println!("  wasm/plain program ratio (medians) {:.3}", w / p);
    }
    Ok(())
}

/// The simplest program a user could write instead of a pipeline: one
/// thread reads each line of `input`, parses it with serde_json, updates a
/// `HashMap` of per-key totals and writes one output line per event to
/// `output` (the same lines as the counter's). No state is kept on disk.
/// Returns the number of events.
fn plain(input: &std::path::Path, output: &std::path::Path) -> Result<usize> {
    use std::collections::HashMap;
    use std::io::BufRead;

    #[derive(serde::Deserialize)]
    struct Purchase {
        key: String,
        #[serde(default)]
        amount: f64,
    }
    #[derive(serde::Serialize, Default)]
    struct Totals {
        count: u64,
        sum: f64,
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        key: &'a str,
        value: &'a Totals,
    }
    let reader = std::io::BufReader::new(std::fs::File::open(input)?);
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let mut totals: HashMap<String, Totals> = HashMap::new();
    let mut n = 0;
    for line in reader.lines() {
        let p: Purchase = serde_json::from_str(&line?)?;
        let t = totals.entry(p.key.clone()).or_default();
        t.count += 1;
        t.sum += p.amount;
        serde_json::to_writer(
            &mut out,
            &Line {
                key: &p.key,
                value: t,
            },
        )?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Builds a state directory of `mib` MiB for the counter (1 KiB per key:
/// its `totals` plus padding), then restarts a pipeline on it and times it
/// up to the first event handled and checkpointed.
fn recovery(a: &BenchArgs, mib: u64) -> Result<()> {
    use eddy_runtime::{Checkpoint, Entity, StateWrite, Store};
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    let keys = mib * 1024;
    let t = Instant::now();
    {
        let store = Store::open(&state_dir)?;
        let names: Vec<Box<str>> = vec!["totals".into(), "pad".into()];
        let pad = vec![b'x'; 1000];
        let mut undo = Vec::new();
        for chunk in (0..keys).collect::<Vec<_>>().chunks(100_000) {
            let mut cp = Checkpoint::default();
            for k in chunk {
                let mut e = Entity::default();
                e.set(
                    0,
                    format!("{{\"count\":{k},\"sum\":0.0}}").as_bytes(),
                    &mut undo,
                );
                e.set(1, &pad, &mut undo);
                undo.clear();
                let mut rec = Vec::new();
                e.encode(&names, &mut rec);
                cp.writes.push(StateWrite {
                    operator: "counter".into(),
                    key: format!("k{k:08}").into(),
                    record: Some(rec),
                    lists: Vec::new(),
                    maps: Vec::new(),
                });
            }
            store.commit(&cp)?;
        }
    }
    let size = std::fs::metadata(state_dir.join("state.redb"))?.len();
    println!(
        "built {keys} keys, {:.0} MiB of state in {:.1}s",
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let input = dir.path().join("one.jsonl");
    std::fs::write(
        &input,
        format!("{{\"key\":\"k{:08}\",\"amount\":1}}\n", keys / 2),
    )?;
    let p = Pipeline {
        input: Input::File(input),
        key_field: "key".into(),
        time_field: None,
        max_line_bytes: 1 << 20,
        operators: Vec::new(),
        output: Output::File(dir.path().join("out.jsonl")),
        dead_letter: dir.path().join("dead.jsonl"),
        state_dir,
        workers: a.workers.unwrap_or_else(eddy_runtime::default_workers),
        checkpoint_interval: Duration::from_secs(1),
        checkpoint_events: None,
        follow: false,
        watch: false,
        control: false,
        http: None,
        verify_state: false,
        cache_bytes: None,
        compact: None,
        watermark: Default::default(),
    };
    let t = Instant::now();
    let engine = eddy_runtime::engine()?;
    let component = Arc::new(WasmComponent::load(&engine, &a.component)?);
    let ops = vec![Loaded {
        name: "counter".into(),
        kind: OperatorKind::Wasm(component),
        config: "{}".into(),
        limits: Limits::default(),
        generation: 0,
        history: Default::default(),
        ttl: Vec::new(),
    }];
    let s = eddy_runtime::run(&p, ops, &Shutdown::new())?;
    let d = t.elapsed();
    let out = std::fs::read_to_string(dir.path().join("out.jsonl"))?;
    anyhow::ensure!(
        s.operators[0].handled == 1 && out.contains(&format!("\"count\":{}", keys / 2 + 1)),
        "unexpected output {out}"
    );
    println!(
        "restart on it (open, compile, first event handled, checkpoint): {:.3}s",
        d.as_secs_f64()
    );
    Ok(())
}
