//! The `eddy` command line (`eddy run`, `eddy bench`): [`main`] parses the
//! arguments, runs the command and turns errors into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::pipeline::{Overrides, Pipeline};
use crate::runner::{self, Shutdown};
use crate::{bench, wasm};

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
}

#[derive(Subcommand)]
enum Command {
    Run(RunArgs),
    Bench(bench::BenchArgs),
}

/// Run a pipeline: read events, hand them to the operators, write what they
/// emit. Resumes from the state directory's last checkpoint.
///
/// Give a pipeline file, or flags alone, or both (flags win):
///
///   eddy run examples/counter/pipeline.toml
///
///   eddy run --plugin counter=counter.wasm --input events.jsonl --output -
#[derive(Args)]
#[command(verbatim_doc_comment)]
struct RunArgs {
    /// Pipeline file (TOML).
    pipeline: Option<PathBuf>,
    /// An operator, NAME=PATH.wasm; repeat for a chain, in order. Replaces
    /// the pipeline file's operators.
    #[arg(long = "plugin", value_name = "NAME=PATH", value_parser = parse_plugin)]
    plugins: Vec<(String, PathBuf)>,
    /// Input JSON Lines file, or - for stdin [default: -].
    #[arg(long, short, value_name = "FILE|-")]
    input: Option<String>,
    /// Output JSON Lines file, or - for stdout [default: -].
    #[arg(long, short, value_name = "FILE|-")]
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
    /// Print no summary at the end.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_plugin(s: &str) -> Result<(String, PathBuf), String> {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDDY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let overrides = Overrides {
        plugins: a.plugins,
        input: a.input,
        output: a.output,
        dead_letter: a.dead_letter,
        state_dir: a.state,
        workers: a.workers,
        key_field: a.key_field,
        time_field: a.time_field,
        checkpoint_interval_ms: a.checkpoint_interval_ms,
        checkpoint_events: a.checkpoint_events,
    };
    let pipeline = Pipeline::load(a.pipeline.as_deref(), overrides)?;
    let engine = wasm::engine().context("starting the WebAssembly engine")?;
    let operators = runner::load_operators(&engine, &pipeline)?;

    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let mut asked = false;
    ctrlc::set_handler(move || {
        if asked {
            // A second Ctrl-C: leave now; the last checkpoint stands.
            std::process::exit(130);
        }
        asked = true;
        eprintln!("eddy: stopping after a final checkpoint (Ctrl-C again to quit at once)");
        s.trigger();
    })
    .context("installing the Ctrl-C handler")?;

    let summary = runner::run(&pipeline, operators, &shutdown)?;
    if !a.quiet {
        let secs = summary.elapsed.as_secs_f64();
        let mut msg = format!(
            "eddy: {} lines in {:.2}s ({:.0} lines/s)",
            summary.lines,
            secs,
            summary.lines as f64 / secs.max(1e-9)
        );
        if summary.resumed_after_line > 0 {
            msg += &format!(", resumed after line {}", summary.resumed_after_line);
        }
        if summary.bad_lines > 0 {
            msg += &format!(", {} rejected", summary.bad_lines);
        }
        for op in &summary.operators {
            msg += &format!(
                "; {}: {} handled, {} failed, {} emitted",
                op.name, op.handled, op.failed, op.emitted
            );
        }
        msg += &format!(
            "; {} checkpoint{} to {}",
            summary.checkpoints,
            if summary.checkpoints == 1 { "" } else { "s" },
            pipeline.state_dir.display()
        );
        if summary.bad_lines > 0 || summary.operators.iter().any(|o| o.failed > 0) {
            msg += &format!("; dead letters in {}", pipeline.dead_letter.display());
        }
        eprintln!("{msg}");
    }
    Ok(())
}
