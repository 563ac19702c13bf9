//! The `eddy` command line (`eddy run`, `status`, `swap`, `rollback`,
//! `build`, `bench`): [`main`] parses the arguments, runs the command and
//! turns errors into an exit code.
//!
//! # Layout
//!
//! - this file: the arguments, `eddy run` on the engine (`eddy-runtime`),
//!   the control client (`status`, `swap`, `rollback`) and its output.
//! - `eddy build` is `eddy-build`; `eddy bench`, `bench-swap` and
//!   `bench-langs` are `eddy-bench`.
//! - `main.rs`: the `eddy` binary.

use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc rather than the C library's allocator, in every binary built on
// this crate (`eddy`, and the copy its tests run): the workers allocate
// what the committer thread frees (each checkpoint's records), and the C
// library's per-thread arenas kept about 70 MiB more resident for a
// pipeline over millions of keys (`docs/performance.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use eddy_bench::{
    cache as bench_cache, counter as bench, kafka as bench_kafka, langs as bench_langs,
    state as bench_state, swap as bench_swap, window as bench_window,
};
use eddy_build as build;
use eddy_runtime::control::{self, Request, Response, Status};
use eddy_runtime::{Overrides, Pipeline, Shutdown, SwapReport, Version};

mod inspect;
mod kafka;
mod new;
/// What the pipeline of an `eddy new` project writes for its sample input.
pub use new::EXPECTED as NEW_EXPECTED_OUTPUT;
mod progress;
mod snapshot;
mod state;

/// Eddy: a stateful stream runtime for WebAssembly operators.
///
/// Routes keyed JSON Lines events to operators compiled to WebAssembly
/// components, keeps their per-key state in redb, and writes what they emit
/// as JSON Lines.
#[derive(Parser)]
#[command(name = "eddy", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level or filter: error, warn, info, debug, trace, or a
    /// tracing filter such as `warn,eddy_runtime=debug` [default: $RUST_LOG,
    /// else $EDDY_LOG, else info].
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format on stderr: `text`, or `json` (one object per line,
    /// with the operator, version and key of operator log lines as fields).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log subscriber: `--log-level`, else `RUST_LOG`, else
/// `EDDY_LOG`, else `info`; an invalid filter is an error naming it.
fn init_logs(level: Option<&str>, format: LogFormat) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}"))?,
        None => ["RUST_LOG", "EDDY_LOG"]
            .iter()
            .find_map(|var| {
                let v = std::env::var(var).ok().filter(|v| !v.is_empty())?;
                Some(EnvFilter::try_new(&v).with_context(|| format!("{var}={v:?}")))
            })
            .unwrap_or_else(|| Ok(EnvFilter::new("info")))?,
    };
    // Colours only on a terminal (not in a log file), and not with NO_COLOR.
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Compact a stopped pipeline's state directory: give the space of
/// deleted and expired state back to the file system (`state.redb` grows
/// as state does and reuses freed space, but never shrinks by itself).
#[derive(Args)]
struct CompactArgs {
    /// The state directory (no pipeline may be running on it).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
}

/// Runs `eddy compact`.
fn compact(a: CompactArgs) -> Result<()> {
    if !a.state.join("state.redb").is_file() {
        anyhow::bail!("{}: no state there (no state.redb)", a.state.display());
    }
    let file = a.state.join("state.redb");
    let before = std::fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let store = eddy_runtime::Store::open(&a.state)?;
    let after = store.compact()?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "compacted {}: {:.1} MiB -> {:.1} MiB",
        file.display(),
        mib(before),
        mib(after)
    );
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Build(build::BuildArgs),
    Status(StatusArgs),
    Swap(SwapArgs),
    Rollback(RollbackArgs),
    Bench(bench::BenchArgs),
    BenchSwap(bench_swap::BenchSwapArgs),
    BenchState(bench_state::BenchStateArgs),
    BenchLangs(bench_langs::BenchLangsArgs),
    /// The keyed counter from a Kafka topic to a Kafka topic, exactly once,
    /// against the same events from a file, in one invocation.
    BenchKafka(bench_kafka::BenchKafkaArgs),
    /// The keyed counter with a bounded state cache against the unbounded
    /// one, in one invocation: peak RSS, events/s, hit rate, and what a
    /// checkpoint of 1 million dirty keys costs.
    BenchCache(bench_cache::BenchCacheArgs),
    /// Tumbling one-minute count and sum per key, end to end: a Wasm
    /// window aggregate against the same aggregate written natively and
    /// against the keyed counter, in one invocation.
    BenchWindow(bench_window::BenchWindowArgs),
    Inspect(inspect::InspectArgs),
    Kafka(kafka::KafkaArgs),
    New(new::NewArgs),
    State(state::StateArgs),
    Compact(CompactArgs),
    Snapshot(snapshot::SnapshotArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
}

/// Print a completion script for a shell, to install where the shell looks
/// for them, e.g. `eddy completions bash > ~/.local/share/bash-completion/completions/eddy`.
#[derive(Args)]
struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Print eddy's manual page (roff), e.g. `eddy man > eddy.1 && man -l
/// eddy.1`, or write it and one page per command (eddy-run.1, ...) to a
/// directory.
#[derive(Args)]
struct ManArgs {
    /// Write eddy.1 and a page per command into this directory (for
    /// `man -M` or a man1 directory) instead of printing eddy.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Where to find a running pipeline's control socket. Only the user who
/// runs the pipeline (or root) may use it.
#[derive(Args)]
struct Target {
    /// State directory of the running pipeline; its control socket is
    /// STATE/control.sock [default: ./eddy-data].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The pipeline file the pipeline runs: its state directory is used.
    #[arg(long, value_name = "FILE", conflicts_with = "state")]
    pipeline: Option<PathBuf>,
    /// The control socket itself, instead of finding it in the state
    /// directory.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["state", "pipeline"])]
    socket: Option<PathBuf>,
}

/// Show a running pipeline: each operator's version (content hash,
/// generation, where it was loaded from, when), events handled, failed and
/// emitted, and each worker's position and last swap pauses.
#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// Replace a running operator by a new version, keeping its state.
///
/// The component is compiled and checked first (a component of the operator
/// world, `init` accepts the operator's config, its `migrate` works on
/// committed state); if anything is wrong the command fails with the reason
/// and the old version keeps running. Then every event read before the
/// switch is handled by the old version and every later one by the new;
/// none is lost or handled twice. Returns once the swap is durable (a
/// restart comes back on the new version).
///
///   eddy swap counter target/wasm32-wasip2/release/counter_v2.wasm
#[derive(Args)]
#[command(verbatim_doc_comment)]
struct SwapArgs {
    /// Name of the operator to replace.
    operator: String,
    /// The new version's component (.wasm).
    component: PathBuf,
    #[command(flatten)]
    target: Target,
    /// Seconds to wait for the new version to be checked and switched to;
    /// past it the pipeline gives the swap up and nothing changes.
    #[arg(long, value_name = "SECS", default_value_t = control::DEFAULT_WAIT.as_secs())]
    timeout: u64,
}

/// Return a running operator to the version it ran before the current one,
/// the same way as a swap (state kept, no event lost or repeated). Rolling
/// back twice returns to where you started.
#[derive(Args)]
struct RollbackArgs {
    /// Name of the operator.
    operator: String,
    #[command(flatten)]
    target: Target,
    /// Seconds to wait for the rollback to be switched to; past it the
    /// pipeline gives it up and nothing changes.
    #[arg(long, value_name = "SECS", default_value_t = control::DEFAULT_WAIT.as_secs())]
    timeout: u64,
}

/// Run a pipeline: read events, hand them to the operators, write what they
/// emit. Resumes from the state directory's last checkpoint.
///
/// Give a pipeline file, or flags alone, or both (flags win):
///
///   eddy run examples/counter/pipeline.toml
///
///   eddy run --operator counter=counter.wasm --input events.jsonl --output -
#[derive(Args)]
#[command(verbatim_doc_comment)]
struct RunArgs {
    /// Pipeline file (TOML).
    pipeline: Option<PathBuf>,
    /// An operator: its name and its component, NAME=PATH.wasm; repeat for
    /// a chain, in order. Replaces the pipeline file's operators.
    // `--plugin` is the name older versions took.
    #[arg(
        long = "operator",
        alias = "plugin",
        value_name = "NAME=PATH",
        value_parser = parse_operator
    )]
    operators: Vec<(String, PathBuf)>,
    /// Input JSON Lines file, - for stdin, or Kafka topics:
    /// kafka://HOST:PORT/TOPIC[,TOPIC]?group=GROUP[&until_end=true][&time=timestamp]
    /// [default: -].
    #[arg(long, short, value_name = "FILE|-|kafka://...")]
    input: Option<String>,
    /// Output JSON Lines file, - for stdout, or a Kafka topic:
    /// kafka://HOST:PORT/TOPIC[?delivery=at-least-once][&dead_letter_topic=T]
    /// (exactly once by default) [default: -].
    #[arg(long, short, value_name = "FILE|-|kafka://...")]
    output: Option<String>,
    /// State directory [default: ./eddy-data].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Worker threads [default: number of cores].
    #[arg(long, short)]
    workers: Option<usize>,
    /// Field holding the routing key [default: key].
    #[arg(long, value_name = "FIELD")]
    key_field: Option<String>,
    /// Field holding the event time (an integer).
    #[arg(long, value_name = "FIELD")]
    time_field: Option<String>,
    /// Dead-letter file for rejected lines and failed events
    /// [default: STATE/dead-letter.jsonl].
    #[arg(long, value_name = "FILE")]
    dead_letter: Option<PathBuf>,
    /// Checkpoint at least every this many milliseconds [default: 1000].
    #[arg(long, value_name = "MS")]
    checkpoint_interval_ms: Option<u64>,
    /// Also checkpoint every this many input events.
    #[arg(long, value_name = "N")]
    checkpoint_events: Option<u64>,
    /// Keep reading the input file as it grows, like `tail -f`, until
    /// stopped (Ctrl-C); a restart resumes from the checkpointed position.
    #[arg(long)]
    follow: bool,
    /// Swap an operator for the new version whenever its component file
    /// changes (an edit-build-see loop).
    #[arg(long)]
    watch: bool,
    /// Serve no control socket (by default `eddy status`, `swap` and
    /// `rollback` reach the pipeline through STATE/control.sock, which only
    /// the user running it may use).
    #[arg(long)]
    no_control: bool,
    /// Also serve the control plane over HTTP on this TCP address
    /// (IP:PORT; port 0 picks one): every request needs the bearer token,
    /// written to STATE/control.token (0600) unless --http-token-file
    /// gives one. Loopback addresses only, unless --http-public.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Allow an --http address that is not loopback (other machines may
    /// then reach the control plane; the token is still required).
    #[arg(long, requires = "http")]
    http_public: bool,
    /// The file holding the token for --http (0600, at least 16
    /// characters), instead of a generated one.
    #[arg(long, value_name = "FILE", requires = "http")]
    http_token_file: Option<PathBuf>,
    /// Check the checksum of every page of the state database before
    /// starting (reads the whole file; without it, each record's checksum
    /// is checked when the record is read).
    #[arg(long)]
    verify_state: bool,
    /// Memory budget of the state cache: every worker's cached keys and
    /// redb's page cache (256MiB when not given; bytes, or a number with
    /// KiB/MiB/GiB/KB/MB/GB, or `unlimited`). Past it, cold keys are
    /// evicted and read back from the state directory on their next event.
    #[arg(long, value_name = "SIZE")]
    cache_bytes: Option<String>,
    /// Print no progress and no summary at the end.
    #[arg(long, short)]
    quiet: bool,
    /// When stderr is not a terminal (a log file, a pipe), print a plain
    /// progress line this often; on a terminal a progress bar shows it
    /// instead.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    progress_interval_ms: u64,
}

fn parse_operator(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("`{s}` is not NAME=PATH.wasm")),
    }
}

/// Runs the `eddy` command line with the process's arguments; prints an
/// error as `error: <cause chain>` and returns a failure exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logs(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Build(args) => build::run(args),
        Command::Status(args) => cmd_status(args),
        Command::Swap(args) => cmd_swap(args),
        Command::Rollback(args) => cmd_rollback(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchSwap(args) => bench_swap::run(args),
        Command::BenchState(args) => bench_state::run(args),
        Command::BenchLangs(args) => bench_langs::run(args),
        Command::BenchKafka(args) => bench_kafka::run(args),
        Command::BenchCache(args) => bench_cache::run(args),
        Command::BenchWindow(args) => bench_window::run(args),
        Command::Compact(args) => compact(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Kafka(args) => kafka::run(args),
        Command::New(args) => new::run(args),
        Command::State(args) => state::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Completions(a) => {
            use clap::CommandFactory as _;
            clap_complete::generate(a.shell, &mut Cli::command(), "eddy", &mut std::io::stdout());
            Ok(())
        }
        Command::Man(a) => man(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `eddy man`: the top page to stdout, or every page into a directory.
fn man(a: ManArgs) -> Result<()> {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let Some(dir) = a.dir else {
        return clap_mangen::Man::new(cli)
            .render(&mut std::io::stdout())
            .context("writing the manual page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cli.get_subcommands() {
        let name = format!("eddy-{}", sub.get_name());
        let cmd = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("eddy {}", sub.get_name()));
        write(&name, cmd)?;
    }
    write("eddy", cli)
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let overrides = Overrides {
        operators: a.operators,
        input: a.input,
        output: a.output,
        dead_letter: a.dead_letter,
        state_dir: a.state,
        workers: a.workers,
        key_field: a.key_field,
        time_field: a.time_field,
        checkpoint_interval_ms: a.checkpoint_interval_ms,
        checkpoint_events: a.checkpoint_events,
        follow: a.follow,
        watch: a.watch,
        no_control: a.no_control,
        http: a.http,
        http_public: a.http_public,
        http_token_file: a.http_token_file,
        verify_state: a.verify_state,
        cache_bytes: a.cache_bytes,
    };
    let pipeline = Pipeline::load(a.pipeline.as_deref(), overrides)?;
    let engine = eddy_runtime::engine().context("starting the WebAssembly engine")?;
    let operators = eddy_runtime::load_operators(&engine, &pipeline)?;

    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let mut asked = false;
    ctrlc::set_handler(move || {
        if asked {
            // A second Ctrl-C (or SIGTERM): leave now; the last
            // checkpoint stands.
            std::process::exit(130);
        }
        asked = true;
        eprintln!("eddy: stopping after a final checkpoint (Ctrl-C again to quit at once)");
        // SIGINT, SIGTERM and SIGHUP all come here.
        s.trigger();
    })
    .context("installing the Ctrl-C and SIGTERM handler")?;

    let running = eddy_runtime::start(&pipeline, operators, &shutdown)?;
    if let (Some(socket), false) = (&running.started().control, a.quiet) {
        eprintln!(
            "eddy: control socket {} (owner only): `eddy status`, `eddy swap`, `eddy rollback` --state {}",
            socket.display(),
            pipeline.state_dir.display()
        );
    }
    if let (Some(addr), false) = (&running.started().http, a.quiet) {
        let token = match pipeline.http.as_ref().and_then(|h| h.token_file.as_ref()) {
            Some(file) => file.display().to_string(),
            None => pipeline
                .state_dir
                .join(control::TOKEN_FILE)
                .display()
                .to_string(),
        };
        eprintln!(
            "eddy: control plane on http://{addr}/ (token in {token}; send `Authorization: Bearer TOKEN`)"
        );
    }
    let mode = progress::Mode::choose(
        a.quiet,
        std::time::Duration::from_millis(a.progress_interval_ms),
    );
    progress::show(&running, mode);
    let summary = running.wait()?;
    if !a.quiet {
        let secs = summary.elapsed.as_secs_f64();
        let unit = match pipeline.input {
            eddy_runtime::Input::Kafka(_) => "records",
            _ => "lines",
        };
        let mut msg = format!(
            "eddy: {} {unit} in {:.2}s ({:.0} {unit}/s)",
            summary.lines,
            secs,
            summary.lines as f64 / secs.max(1e-9)
        );
        if summary.resumed_after_line > 0 {
            msg += &format!(", resumed after line {}", summary.resumed_after_line);
        }
        if summary.replayed > 0 {
            msg += &format!(
                ", {} replayed with outputs suppressed (Kafka had them)",
                summary.replayed
            );
        }
        if summary.restored_keys > 0 {
            msg += &format!(
                ", {} keys restored from the changelog topics",
                summary.restored_keys
            );
        }
        if summary.bad_lines > 0 {
            msg += &format!(", {} rejected", summary.bad_lines);
        }
        if summary.late_dead_lettered > 0 {
            msg += &format!(", {} late (dead-lettered)", summary.late_dead_lettered);
        }
        if summary.late_dropped > 0 {
            msg += &format!(", {} late dropped", summary.late_dropped);
        }
        if let Some(line) = summary.incomplete_line {
            msg += &format!(", line {line} incomplete (no newline yet): left for a later run");
        }
        for op in &summary.operators {
            msg += &format!(
                "; {}: {} handled, {} failed, {} emitted",
                op.name, op.handled, op.failed, op.emitted
            );
            if op.cache_evictions > 0 {
                let lookups = (op.cache_hits + op.cache_misses).max(1);
                msg += &format!(
                    " (state cache: {:.1}% hits, {} keys evicted)",
                    op.cache_hits as f64 * 100.0 / lookups as f64,
                    op.cache_evictions
                );
            }
        }
        msg += &format!(
            "; {} checkpoint{} to {}",
            summary.checkpoints,
            if summary.checkpoints == 1 { "" } else { "s" },
            pipeline.state_dir.display()
        );
        if summary.bad_lines > 0
            || summary.late_dead_lettered > 0
            || summary.operators.iter().any(|o| o.failed > 0)
        {
            msg += &format!("; dead letters in {}", pipeline.dead_letter.display());
        }
        eprintln!("{msg}");
    }
    Ok(())
}

impl Target {
    /// The control socket.
    fn resolve(&self) -> Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let dir = match &self.pipeline {
            Some(file) => Pipeline::load(Some(file), Overrides::default())?.state_dir,
            None => self
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from("eddy-data")),
        };
        Ok(control::find(&dir)?)
    }

    /// Sends `request`; a swap or rollback may take up to `wait` to switch.
    fn ask(&self, request: &Request, wait: std::time::Duration) -> Result<Response> {
        Ok(control::request(&self.resolve()?, request, wait)?)
    }
}

fn cmd_status(a: StatusArgs) -> Result<()> {
    match a.target.ask(&Request::Status, control::DEFAULT_WAIT)? {
        Response::Status(s) if a.json => {
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        Response::Status(s) => {
            print!("{}", format_status(&s));
            Ok(())
        }
        Response::Error { message } => anyhow::bail!(message),
        Response::Swapped(_) => anyhow::bail!("unexpected answer to a status request"),
    }
}

fn cmd_swap(a: SwapArgs) -> Result<()> {
    // The pipeline may run in another directory: send an absolute path.
    let component = std::path::absolute(&a.component)
        .with_context(|| format!("component {}", a.component.display()))?;
    let r = a.target.ask(
        &Request::Swap {
            operator: a.operator,
            component,
        },
        std::time::Duration::from_secs(a.timeout),
    )?;
    report_swap(r, "swapped")
}

fn cmd_rollback(a: RollbackArgs) -> Result<()> {
    let r = a.target.ask(
        &Request::Rollback {
            operator: a.operator,
        },
        std::time::Duration::from_secs(a.timeout),
    )?;
    report_swap(r, "rolled back")
}

fn report_swap(r: Response, verb: &str) -> Result<()> {
    match r {
        Response::Swapped(r) => {
            println!("{}", format_swap(&r, verb));
            Ok(())
        }
        Response::Error { message } => anyhow::bail!(message),
        Response::Status(_) => anyhow::bail!("unexpected answer to a swap request"),
    }
}

fn format_swap(r: &SwapReport, verb: &str) -> String {
    format!(
        "{verb} `{}`: {} (generation {}) -> {} (generation {}, {}); lines up to {} went to the old version, later lines to the new{}; compiled in {:.0} ms, checked in {:.0} ms; durable",
        r.operator,
        r.from.hash,
        r.from.generation,
        r.to.hash,
        r.to.generation,
        r.to.source,
        r.barrier_line,
        if r.migrates {
            "; it exports `migrate`: keys last written by another version pass through it on first touch"
        } else {
            ""
        },
        r.compile_ms,
        r.prepare_ms
    )
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn version_line(v: &Version) -> String {
    format!(
        "{} (generation {}, from {}, loaded {})",
        v.hash,
        v.generation,
        v.source,
        ago(v.loaded_at_ms)
    )
}

/// The human form of `eddy status`.
pub fn format_status(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let watermark = match s.watermark {
        Some(i64::MAX) => ", watermark +infinity (the input ended)".to_string(),
        Some(w) => format!(", watermark {w}"),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "eddy (pid {}): input {}, {} lines read{watermark}; state {} ({:.1} MiB)",
        s.pid,
        s.input,
        s.lines_read,
        s.state_dir,
        mib(s.state_bytes)
    );
    let c = &s.compactions;
    if c.count > 0 || c.busy > 0 {
        let _ = writeln!(
            o,
            "state compactions: {} ({:.1} MiB given back, longest input stall {:.1} ms), {} put off by an open reader",
            c.count,
            mib(c.freed_bytes),
            c.max_stall_us as f64 / 1e3,
            c.busy
        );
    }
    for op in &s.operators {
        let _ = writeln!(
            o,
            "operator {}: version {}",
            op.name,
            version_line(&op.version)
        );
        let _ = writeln!(
            o,
            "  handled {}, failed {}, emitted {}",
            op.handled, op.failed, op.emitted
        );
        let sum = |f: fn(&eddy_runtime::OpStats) -> u64| op.workers.iter().map(f).sum::<u64>();
        let (hits, misses) = (sum(|w| w.cache_hits), sum(|w| w.cache_misses));
        let _ = writeln!(
            o,
            "  state cache: {} keys, {:.1} MiB, {:.1}% hits, {} evicted",
            sum(|w| w.cache_keys),
            mib(sum(|w| w.cache_bytes)),
            hits as f64 * 100.0 / (hits + misses).max(1) as f64,
            sum(|w| w.cache_evictions)
        );
        for v in op
            .versions
            .iter()
            .rev()
            .filter(|v| v.generation != op.version.generation)
        {
            let _ = writeln!(o, "  earlier: {}", version_line(v));
        }
    }
    for w in &s.workers {
        let _ = write!(o, "worker {}: at line {}", w.id, w.line);
        if let Some(p) = w.pauses.last() {
            let _ = write!(
                o,
                "; last swap paused it {:.0} us (operator {}, to generation {})",
                p.pause_us,
                s.operators.get(p.stage).map_or("?", |op| op.name.as_str()),
                p.generation
            );
        }
        let _ = writeln!(o);
    }
    for k in &s.kafka {
        let show = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
        let _ = writeln!(
            o,
            "kafka {}/{}: committed offset {}, end {}, lag {}",
            k.topic,
            k.partition,
            show(k.committed),
            show(k.end),
            show(k.lag)
        );
    }
    o
}
