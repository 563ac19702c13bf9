//! `eddy snapshot DEST`: a consistent copy of a state directory as of its
//! last checkpoint, made by the pipeline running on it (its control
//! plane's `POST /snapshot`), or from the directory itself when no
//! pipeline runs there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use eddy_runtime::control::{self, ControlError};
use eddy_runtime::{SnapshotReport, Store, StoreError};

use crate::state::Dir;

/// How long the pipeline is given to write a snapshot.
const PATIENCE: Duration = Duration::from_secs(3600);

/// Write a consistent copy of a pipeline's state directory (as of its last
/// checkpoint: state, timers, input position, output lengths, operator
/// versions and their components) into DEST, while it runs. A pipeline
/// started with `--state DEST` resumes from that checkpoint; give it its
/// own outputs.
///
///   eddy snapshot backup/2026-11-30 --state eddy-data
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct SnapshotArgs {
    /// The directory to write: a new one (made 0700) or an empty one.
    dest: PathBuf,
    #[command(flatten)]
    dir: Dir,
    /// Print what was copied as JSON.
    #[arg(long)]
    json: bool,
}

/// Asks the pipeline running on `dir` for the snapshot: `None` when none
/// answers on its control socket (no socket, or one a stopped run left).
fn ask_running(dir: &Path, dest: &Path) -> Result<Option<SnapshotReport>> {
    let Ok(socket) = control::find(dir) else {
        return Ok(None);
    };
    let body = serde_json::json!({ "dest": dest });
    match control::post_json(&socket, "/snapshot", &body, PATIENCE) {
        Ok(Ok(v)) => Ok(Some(serde_json::from_value(v).with_context(|| {
            format!("the answer of the pipeline on {}", socket.display())
        })?)),
        Ok(Err(message)) => bail!(message),
        Err(ControlError::Connect { error, .. })
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `eddy snapshot`.
pub fn run(a: SnapshotArgs) -> Result<()> {
    let dir = a.dir.dir()?;
    let dest = std::path::absolute(&a.dest)
        .with_context(|| format!("snapshot destination {}", a.dest.display()))?;
    let report = match ask_running(&dir, &dest)? {
        Some(r) => r,
        None => {
            // Opening a directory without state would create it.
            if !dir.join("state.redb").is_file() {
                bail!("{}: no state there (no state.redb)", dir.display());
            }
            let store = Store::open(&dir).map_err(|e| match e {
                StoreError::Locked { .. } => anyhow::anyhow!(
                    "{e} (a pipeline that runs there with --no-control keeps it to itself: stop it first)"
                ),
                e => anyhow::anyhow!("reading the state in {}: {e}", dir.display()),
            })?;
            store.snapshot(&dest)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let at = report
        .sources
        .iter()
        .map(|s| {
            format!(
                "; input {} at line {} (byte {})",
                s.input, s.lines, s.offset
            )
        })
        .collect::<String>();
    println!(
        "snapshot of {} in {}: {} keys, {} timers, {} components, {} bytes{at}",
        dir.display(),
        report.dest.display(),
        report.keys,
        report.timers,
        report.components,
        report.bytes
    );
    Ok(())
}
