//! `eddy state get|scan`: a key's committed state, as of the last
//! checkpoint: asked of the pipeline running on the state directory (its
//! control plane's `GET /state/..`), or read from the directory when no
//! pipeline runs there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use eddy_runtime::control::{self, encode_component, ControlError, Scan};
use eddy_runtime::{Overrides, Pipeline, Store};
use serde_json::Value;

/// Read operators' committed state (as of the last checkpoint), values
/// shown as JSON: from the pipeline running on the state directory, or
/// from the directory itself when none runs.
#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Subcommand)]
enum StateCommand {
    Get(GetArgs),
    Scan(ScanArgs),
}

/// Where the state is.
#[derive(Args)]
pub(crate) struct Dir {
    /// The state directory [default: ./eddy-data].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The pipeline file: its state directory is used.
    #[arg(long, value_name = "FILE", conflicts_with = "state")]
    pipeline: Option<PathBuf>,
}

/// Print one key's state: `{"values": .., "maps": .., "lists": ..}`, or
/// with NAME that one value, map or list.
#[derive(Args)]
struct GetArgs {
    /// The operator (its name in the pipeline).
    operator: String,
    /// The key.
    key: String,
    /// One value, map or list of the key's state.
    name: Option<String>,
    #[command(flatten)]
    dir: Dir,
}

/// Print the state of the keys of an operator, in key order, one JSON line
/// per key: `{"key": .., "state": {..}}`.
#[derive(Args)]
struct ScanArgs {
    /// The operator (its name in the pipeline).
    operator: String,
    /// Only keys that start with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// At most this many keys (a last line says when more follow).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    dir: Dir,
}

impl Dir {
    /// The state directory.
    pub(crate) fn dir(&self) -> Result<PathBuf> {
        Ok(match &self.pipeline {
            Some(file) => Pipeline::load(Some(file), Overrides::default())?.state_dir,
            None => self
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from("eddy-data")),
        })
    }
}

/// Opens the state of a stopped pipeline in `dir`.
fn open(dir: &Path) -> Result<Store> {
    // Opening a directory without state would create it: a reader must
    // not.
    if !dir.join("state.redb").is_file() {
        bail!("{}: no state there (no state.redb)", dir.display());
    }
    Store::open(dir).map_err(|e| {
        anyhow::anyhow!(
            "reading the state in {}: {e} (a pipeline that runs there with --no-control keeps it to itself: stop it first)",
            dir.display()
        )
    })
}

/// Asks the pipeline running on `dir`, if one does: `None` when none
/// answers on its control socket (no socket, or one a stopped run left).
fn ask_running(dir: &Path, path: &str) -> Result<Option<Value>> {
    let Ok(socket) = control::find(dir) else {
        return Ok(None);
    };
    match control::get_json(&socket, path) {
        Ok(Ok(v)) => Ok(Some(v)),
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

/// Runs `eddy state`.
pub fn run(a: StateArgs) -> Result<()> {
    match a.command {
        StateCommand::Get(g) => {
            let dir = g.dir.dir()?;
            let mut path = format!(
                "/state/{}/{}",
                encode_component(&g.operator),
                encode_component(&g.key)
            );
            if let Some(name) = &g.name {
                path += &format!("/{}", encode_component(name));
            }
            let out = match ask_running(&dir, &path)? {
                Some(v) => v,
                None => control::state_get(&open(&dir)?, &g.operator, &g.key, g.name.as_deref())?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        StateCommand::Scan(s) => {
            let dir = s.dir.dir()?;
            let path = format!(
                "/state/{}?prefix={}&limit={}",
                encode_component(&s.operator),
                encode_component(&s.prefix),
                s.limit
            );
            let scan: Scan = match ask_running(&dir, &path)? {
                Some(v) => serde_json::from_value(v)?,
                None => control::state_scan(&open(&dir)?, &s.operator, &s.prefix, s.limit)?,
            };
            for k in &scan.keys {
                println!("{}", serde_json::to_string(k)?);
            }
            if scan.more {
                eprintln!("eddy: more keys follow (raise --limit, or narrow --prefix)");
            }
        }
    }
    Ok(())
}
