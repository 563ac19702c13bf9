//! `eddy bench-langs`: the same operator built from several languages,
//! side by side in one process: component size, start-up time without and
//! with the compile cache, and throughput on the operator path as a ratio
//! against the first component given (the baseline, normally Rust's).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::counter::{decode, generate, operator_path, rate};
use eddy_runtime::{Cache, Compiled, Limits, OpCtx, WasmComponent};

/// Compare components of one operator written in different languages.
#[derive(Args, Debug)]
pub struct BenchLangsArgs {
    /// A component to measure, as LABEL=PATH (repeatable). The first is the
    /// baseline of the throughput ratios.
    #[arg(long = "component", value_name = "LABEL=PATH", required = true)]
    pub components: Vec<String>,
    /// Events for the throughput run (`{"key":..,"amount":..}` lines).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Operator config (JSON) given to every component's `init`.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Start-ups timed per component (the median is reported); 0 skips
    /// the start-up timing (for profiling the throughput run alone).
    #[arg(long, default_value_t = 3)]
    pub starts: usize,
    /// Keep the compile cache in this directory across invocations (by
    /// default a temporary one per invocation). A component found there is
    /// not compiled again, so its cold start is only measured when
    /// `--starts` is not 0.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Run every component without the per-call CPU limit (epoch
    /// interruption checks), as an operator with `cpu_limit = false` runs:
    /// for measuring what the limit costs each language.
    #[arg(long)]
    pub no_cpu_limit: bool,
}

struct Row {
    label: String,
    bytes: usize,
    cold: Option<Duration>,
    cached: Option<Duration>,
    rate: f64,
}

/// Runs the comparison and prints a table.
pub fn run(a: BenchLangsArgs) -> Result<()> {
    let mut specs = Vec::new();
    for c in &a.components {
        let Some((label, path)) = c.split_once('=') else {
            bail!("--component {c:?}: expected LABEL=PATH, such as rust=counter.wasm");
        };
        specs.push((label.to_string(), PathBuf::from(path)));
    }
    let engine = eddy_runtime::engine_with(!a.no_cpu_limit)?;
    let tmp = tempfile::tempdir()?;
    let cache_dir = a.cache_dir.as_deref().unwrap_or(tmp.path());
    let ev = generate(a.events, a.keys);
    let events = decode(&ev);
    let ctx = || OpCtx::new("counter".into(), None, Limits::default());
    let mut rows = Vec::new();
    for (label, path) in specs {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let cache = Cache::new(cache_dir.join(&label));
        // Start-up: compile (or load from the cache), instantiate, init.
        let start = |cache: Option<&Cache>, want: Compiled| -> Result<Duration> {
            let t = Instant::now();
            let component = Arc::new(WasmComponent::from_bytes_cached(
                &engine, &path, &bytes, cache,
            )?);
            component.instantiate(ctx(), &a.config)?;
            let d = t.elapsed();
            if cache.is_some() {
                anyhow::ensure!(
                    component.compiled() == want,
                    "{label}: expected {want:?}, got {:?}",
                    component.compiled()
                );
            }
            Ok(d)
        };
        let mut cold = Vec::new();
        for _ in 0..a.starts {
            cold.push(start(None, Compiled::Fresh)?);
        }
        let mut cached = Vec::new();
        if a.starts > 0 {
            // Fill the cache once (unless a kept one has it), then time
            // loads from it.
            if a.cache_dir.is_none() {
                start(Some(&cache), Compiled::Fresh)?;
            }
            for _ in 0..a.starts {
                cached.push(start(Some(&cache), Compiled::Cached)?);
            }
        }
        let component = Arc::new(WasmComponent::from_bytes_cached(
            &engine,
            &path,
            &bytes,
            Some(&cache),
        )?);
        let mut op = component.instantiate(ctx(), &a.config)?;
        let d = operator_path(&mut op, &events)?;
        rows.push(Row {
            label,
            bytes: bytes.len(),
            cold: median(cold),
            cached: median(cached),
            rate: rate(a.events, d),
        });
    }
    println!(
        "eddy bench-langs: {} events over {} keys, one worker, operator path{}; start-up = load + instantiate + init (median of {})",
        a.events,
        a.keys,
        if a.no_cpu_limit { ", no CPU limit" } else { "" },
        a.starts
    );
    println!(
        "{:<10} {:>10} {:>12} {:>12} {:>14} {:>8}",
        "component", "size", "cold start", "cached start", "events/s", "ratio"
    );
    let base = rows[0].rate;
    for r in &rows {
        let ms = |d: Option<Duration>| match d {
            Some(d) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
            None => "-".to_string(),
        };
        println!(
            "{:<10} {:>8.1}MB {:>12} {:>12} {:>14.0} {:>8.3}",
            r.label,
            r.bytes as f64 / 1e6,
            ms(r.cold),
            ms(r.cached),
            r.rate,
            r.rate / base
        );
    }
    Ok(())
}

/// The median, or `None` when nothing was timed.
fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}
