//! `eddy bench-cache`: the keyed counter with a bounded state cache, side
//! by side with the unbounded cache, in one invocation.
//!
//! Each end-to-end case is a separate `eddy run` process (this binary),
//! so its peak RSS is its own (from `wait4`), and its rate is the one its
//! summary line reports. The checkpoint case runs in this process: a
//! worker's barrier over 1 million dirty keys (the input stall) and the
//! redb commit of what it hands over (which runs while input flows).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_runtime::{Checkpoint, Emits, Limits, OpCtx, Store};

/// Measure the state cache: memory and speed with a budget, against the
/// unbounded cache.
#[derive(clap::Args, Debug)]
pub struct BenchCacheArgs {
    /// The counter component.
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/counter.wasm"
    )]
    pub component: PathBuf,
    /// Events per case.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Distinct keys of the case where every key fits.
    #[arg(long, default_value_t = 100_000)]
    pub few_keys: u64,
    /// Distinct keys of the many-keys and Zipf cases.
    #[arg(long, default_value_t = 10_000_000)]
    pub many_keys: u64,
    /// The budget of the many-keys cases.
    #[arg(long, default_value = "256MiB")]
    pub budget: String,
    /// The budget of the Zipf case.
    #[arg(long, default_value = "64MiB")]
    pub zipf_budget: String,
    /// The Zipf exponent.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Dirty keys in the checkpoint case.
    #[arg(long, default_value_t = 1_000_000)]
    pub dirty_keys: u64,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also run the many-keys case with the unbounded cache (its RSS grows
    /// with the keys: several GiB for 10 million).
    #[arg(long)]
    pub unbounded_many: bool,
    /// Run only the checkpoint case.
    #[arg(long)]
    pub checkpoint_only: bool,
    /// Run only the key-count cases: every event a new key (each key
    /// once, so every lookup misses), `--many-keys` keys, then this many,
    /// both with `--budget`: the rate should depend on the hit rate, not
    /// on the number of keys. The inputs are written to files as they are
    /// generated (about 40 bytes an event) and deleted after.
    #[arg(long)]
    pub scale_keys: Option<u64>,
    /// The history component (`tests/fixtures/history`: each event pushes
    /// an item to its key's list and reads the list by range) for the
    /// big-list cases.
    #[arg(
        long,
        default_value = "tests/fixtures/target/wasm32-wasip2/release/history.wasm"
    )]
    pub history: PathBuf,
    /// Items of the big list (events of the big-list cases).
    #[arg(long, default_value_t = 1_000_000)]
    pub list_items: u64,
    /// The budget of the big-list cases.
    #[arg(long, default_value = "8MiB")]
    pub list_budget: String,
    /// Run only the big-list cases: one key whose list grows to
    /// `--list-items` items, against the same events over keys with lists
    /// of 100 items.
    #[arg(long)]
    pub lists_only: bool,
    /// The catalog component (`tests/fixtures/catalog`: each event sets a
    /// field of its key's map and reads it by field and by range) for the
    /// big-map cases.
    #[arg(
        long,
        default_value = "tests/fixtures/target/wasm32-wasip2/release/catalog.wasm"
    )]
    pub catalog: PathBuf,
    /// Fields of the big map (events of the big-map cases).
    #[arg(long, default_value_t = 500_000)]
    pub map_fields: u64,
    /// Run only the big-map cases: one key whose map grows to
    /// `--map-fields` fields, against the same events over keys with maps
    /// of 100 fields (the budget is `--list-budget`).
    #[arg(long)]
    pub maps_only: bool,
}

/// What one `eddy run` did.
struct Case {
    rate: f64,
    rss: u64,
    /// The summary's state cache remark, if any.
    cache: String,
}

/// Writes `n` counter events to `path`, their keys drawn by `key`.
fn write_events(path: &Path, n: u64, mut key: impl FnMut(u64) -> u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(f, "{{\"key\":\"user-{}\",\"amount\":{}}}", key(i), i % 100)?;
    }
    f.flush()?;
    Ok(())
}

/// xorshift64*: the events' random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over `0..n` by inverting its CDF (a table of `n` cumulative
/// weights, searched).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: u64, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += (k as f64).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1) as u64
    }
}

/// Runs `eddy run` on `input` with `cache` as the budget; its rate and
/// peak RSS.
fn run_case(
    a: &BenchCacheArgs,
    dir: &Path,
    input: &Path,
    cache: &str,
    workers: usize,
) -> Result<Case> {
    let state = dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let out = dir.join("out.jsonl");
    let exe = std::env::current_exe().context("this program's path")?;
    let operator = match input.file_name().and_then(|n| n.to_str()) {
        Some(n) if n.starts_with("list-") => format!("hist={}", a.history.display()),
        Some(n) if n.starts_with("map-") => format!("cat={}", a.catalog.display()),
        _ => format!("counter={}", a.component.display()),
    };
    let child = Command::new(exe)
        .args(["run", "--operator", &operator, "--input"])
        .arg(input)
        .arg("--output")
        .arg(&out)
        .arg("--state")
        .arg(&state)
        .args(["--workers", &workers.to_string(), "--cache-bytes", cache])
        .args(["--no-control", "--progress-interval-ms", "3600000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting eddy run")?;
    let pid = child.id() as libc::pid_t;
    // The child's stderr, read while it runs (it is small).
    let mut stderr = child.stderr.context("its stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; the pointers are to
    // live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("waiting for eddy run: {}", std::io::Error::last_os_error());
    }
    let text = reader.join().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("eddy run failed: {text}");
    }
    // "eddy: N lines in Xs (R lines/s); counter: ... (state cache: ...)"
    let summary = text
        .lines()
        .find(|l| l.contains(" lines in ") && l.contains("lines/s"))
        .with_context(|| format!("no summary line in: {text}"))?;
    let rate: f64 = summary
        .split(" (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no rate in {summary:?}"))?;
    let cache = summary
        .split("(state cache: ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or("nothing evicted")
        .to_string();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_dir_all(&state);
    Ok(Case {
        rate,
        rss: usage.ru_maxrss as u64 * 1024,
        cache,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Runs the benchmark and prints its report.
pub fn run(a: BenchCacheArgs) -> Result<()> {
    if !a.component.is_file() {
        bail!(
            "component {} not found: build it with `cd plugins && cargo build --release --target wasm32-wasip2`",
            a.component.display()
        );
    }
    let workers = a.workers.unwrap_or_else(eddy_runtime::default_workers);
    let dir = tempfile::tempdir()?;
    if a.checkpoint_only {
        return checkpoint_case(&a, dir.path());
    }
    if let Some(keys) = a.scale_keys {
        return scale_cases(&a, dir.path(), keys, workers);
    }
    if a.lists_only {
        return list_cases(&a, dir.path());
    }
    if a.maps_only {
        return map_cases(&a, dir.path());
    }
    println!(
        "bench-cache: keyed counter, {} events a case, {workers} workers, each case a separate `eddy run` (peak RSS of the whole process)",
        a.events
    );

    let few = dir.path().join("few.jsonl");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    write_events(&few, a.events, |_| rng.next() % a.few_keys)?;
    let base = run_case(&a, dir.path(), &few, "unlimited", workers)?;
    let bounded = run_case(&a, dir.path(), &few, &a.budget, workers)?;
    let _ = std::fs::remove_file(&few);
    println!(
        "  {} keys, unbounded cache (baseline):  {:>9.0} events/s, peak RSS {:>6.0} MiB",
        a.few_keys,
        base.rate,
        mib(base.rss)
    );
    println!(
        "  {} keys, budget {}:             {:>9.0} events/s ({:.3}x baseline), peak RSS {:>6.0} MiB; {}",
        a.few_keys,
        a.budget,
        bounded.rate,
        bounded.rate / base.rate,
        mib(bounded.rss),
        bounded.cache
    );

    // Every event a new key, in random order.
    let many = dir.path().join("many.jsonl");
    let n = a.many_keys.min(a.events).max(1);
    write_events(&many, a.events, |i| {
        // A bijection of 0..n (n odd multiplier modulo a power of two
        // would need n a power of two): i * p mod n, p prime to n.
        (i % n).wrapping_mul(2_654_435_761) % n
    })?;
    let m = run_case(&a, dir.path(), &many, &a.budget, workers)?;
    println!(
        "  {} keys, budget {}:         {:>9.0} events/s ({:.3}x baseline), peak RSS {:>6.0} MiB; {}",
        a.many_keys,
        a.budget,
        m.rate,
        m.rate / base.rate,
        mib(m.rss),
        m.cache
    );
    if a.unbounded_many {
        let u = run_case(&a, dir.path(), &many, "unlimited", workers)?;
        println!(
            "  {} keys, unbounded cache:          {:>9.0} events/s ({:.3}x baseline), peak RSS {:>6.0} MiB",
            a.many_keys,
            u.rate,
            u.rate / base.rate,
            mib(u.rss)
        );
    }
    let _ = std::fs::remove_file(&many);

    let zipf_in = dir.path().join("zipf.jsonl");
    let zipf = Zipf::new(a.many_keys, a.zipf_s);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    // A random rank -> key map, so hot keys are not neighbours.
    write_events(&zipf_in, a.events, |_| {
        zipf.sample(&mut rng).wrapping_mul(2_654_435_761) % a.many_keys
    })?;
    drop(zipf);
    let z = run_case(&a, dir.path(), &zipf_in, &a.zipf_budget, workers)?;
    let _ = std::fs::remove_file(&zipf_in);
    println!(
        "  Zipf s={} over {} keys, budget {}: {:>9.0} events/s ({:.3}x baseline), peak RSS {:>6.0} MiB; {}",
        a.zipf_s,
        a.many_keys,
        a.zipf_budget,
        z.rate,
        z.rate / base.rate,
        mib(z.rss),
        z.cache
    );

    checkpoint_case(&a, dir.path())?;
    if a.history.is_file() {
        list_cases(&a, dir.path())?;
    }
    if a.catalog.is_file() {
        map_cases(&a, dir.path())?;
    }
    Ok(())
}

/// The key-count cases: every event a new key, in random order (a
/// bijection of `0..n`), `many_keys` keys and then `keys` keys, with the
/// same budget.
fn scale_cases(a: &BenchCacheArgs, dir: &Path, keys: u64, workers: usize) -> Result<()> {
    println!(
        "bench-cache: keyed counter, every event a new key, {workers} workers, budget {}, each case a separate `eddy run` (peak RSS of the whole process)",
        a.budget
    );
    let mut first: Option<f64> = None;
    for n in [a.many_keys.max(1), keys.max(1)] {
        let input = dir.join(format!("scale-{n}.jsonl"));
        let begun = Instant::now();
        write_events(&input, n, |i| i.wrapping_mul(2_654_435_761) % n)?;
        let wrote = begun.elapsed();
        let c = run_case(a, dir, &input, &a.budget, workers)?;
        let _ = std::fs::remove_file(&input);
        let vs = first.map_or(String::new(), |f| {
            format!(" ({:.3}x the first)", c.rate / f)
        });
        first.get_or_insert(c.rate);
        println!(
            "  {n} keys, {n} events:  {:>9.0} events/s{vs}, peak RSS {:>6.0} MiB; {} (input written in {:.0} s)",
            c.rate,
            mib(c.rss),
            c.cache,
            wrote.as_secs_f64()
        );
    }
    Ok(())
}

/// The big-map cases (one worker): one key whose map grows to
/// `map_fields` fields, read by field and by range at every event,
/// against the same number of events over keys whose maps stay at 100
/// fields.
fn map_cases(a: &BenchCacheArgs, dir: &Path) -> Result<()> {
    if !a.catalog.is_file() {
        bail!(
            "component {} not found: build it with `cd tests/fixtures && cargo build --release --target wasm32-wasip2`",
            a.catalog.display()
        );
    }
    let n = a.map_fields;
    println!(
        "bench-cache: big maps, {n} events a case (set, len, get and a range of 3 from a field at random, every 10th a set over it), 1 worker, budget {}",
        a.list_budget
    );
    let write = |path: &Path, keys: u64| -> Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for i in 0..n {
            writeln!(f, "{{\"key\":\"k{}\",\"v\":{}}}", i % keys, i / keys)?;
        }
        Ok(f.flush()?)
    };
    let small = dir.join("map-small.jsonl");
    write(&small, (n / 100).max(1))?;
    let s = run_case(a, dir, &small, &a.list_budget, 1)?;
    let _ = std::fs::remove_file(&small);
    println!(
        "  {} keys, maps of 100 fields:  {:>9.0} events/s, peak RSS {:>6.0} MiB; {}",
        (n / 100).max(1),
        s.rate,
        mib(s.rss),
        s.cache
    );
    let big = dir.join("map-big.jsonl");
    write(&big, 1)?;
    let b = run_case(a, dir, &big, &a.list_budget, 1)?;
    let _ = std::fs::remove_file(&big);
    println!(
        "  1 key, a map of {n} fields:  {:>9.0} events/s ({:.3}x small maps), peak RSS {:>6.0} MiB",
        b.rate,
        b.rate / s.rate,
        mib(b.rss)
    );
    Ok(())
}

/// The big-list cases (one worker): one key whose list grows to
/// `list_items` items, read by range at every event, against the same
/// number of events over keys whose lists stay at 100 items.
fn list_cases(a: &BenchCacheArgs, dir: &Path) -> Result<()> {
    if !a.history.is_file() {
        bail!(
            "component {} not found: build it with `cd tests/fixtures && cargo build --release --target wasm32-wasip2`",
            a.history.display()
        );
    }
    let n = a.list_items;
    println!(
        "bench-cache: big lists, {n} events a case (push, len, the newest 3 items and one at random), 1 worker, budget {}",
        a.list_budget
    );
    let write = |path: &Path, keys: u64| -> Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for i in 0..n {
            writeln!(f, "{{\"key\":\"k{}\",\"v\":{}}}", i % keys, i / keys)?;
        }
        Ok(f.flush()?)
    };
    let small = dir.join("list-small.jsonl");
    write(&small, (n / 100).max(1))?;
    let s = run_case(a, dir, &small, &a.list_budget, 1)?;
    let _ = std::fs::remove_file(&small);
    println!(
        "  {} keys, lists of 100 items:  {:>9.0} events/s, peak RSS {:>6.0} MiB; {}",
        (n / 100).max(1),
        s.rate,
        mib(s.rss),
        s.cache
    );
    let big = dir.join("list-big.jsonl");
    write(&big, 1)?;
    let b = run_case(a, dir, &big, &a.list_budget, 1)?;
    let _ = std::fs::remove_file(&big);
    println!(
        "  1 key, a list of {n} items:  {:>9.0} events/s ({:.3}x small lists), peak RSS {:>6.0} MiB",
        b.rate,
        b.rate / s.rate,
        mib(b.rss)
    );
    Ok(())
}

/// One worker's barrier over `dirty_keys` changed keys, and the commit of
/// what it hands over: new keys, then the same keys changed again.
fn checkpoint_case(a: &BenchCacheArgs, dir: &Path) -> Result<()> {
    let store = Store::open(&dir.join("cp-state"))?;
    let mut ctx = OpCtx::new("counter".into(), Some(store.reader()?), Limits::default());
    let keys: Vec<String> = (0..a.dirty_keys).map(|i| format!("user-{i}")).collect();
    let mut emits = Emits::default();
    for (seq, what) in [(1u64, "new keys"), (2, "the same keys changed")] {
        for k in &keys {
            ctx.begin(k)?;
            let n = ctx
                .get("n")
                .ok()
                .flatten()
                .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
            ctx.set("n", &(n + 1).to_le_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ctx.finish(true, &mut emits);
        }
        let mut cp = Checkpoint {
            seq,
            ..Default::default()
        };
        let t = Instant::now();
        ctx.take_dirty(seq, cp.writes.part());
        let stall = t.elapsed();
        let bytes: usize = cp
            .writes
            .iter()
            .map(|w| w.key.len() + w.record.as_ref().map_or(0, Vec::len))
            .sum();
        let t = Instant::now();
        store.commit(&cp)?;
        let commit = t.elapsed();
        println!(
            "  checkpoint of {} dirty keys ({what}, {:.1} MiB): barrier (input stalled) {:.1} ms, commit (input flows) {:.0} ms",
            a.dirty_keys,
            mib(bytes as u64),
            ms(stall),
            ms(commit)
        );
        ctx.renew_reader(store.reader()?, store.durable_seq());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
