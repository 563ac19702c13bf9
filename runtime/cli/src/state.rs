//! `eddy state get|scan`: a key's committed state, as of the last
//! checkpoint, read from a state directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use eddy_runtime::{record_json, Overrides, Pipeline, Store};
use serde_json::{json, Value};

/// Read operators' committed state (as of the last checkpoint) from a
/// state directory, values shown as JSON.
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
struct Dir {
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
    fn open(&self) -> Result<Store> {
        let dir = match &self.pipeline {
            Some(file) => Pipeline::load(Some(file), Overrides::default())?.state_dir,
            None => self
                .state
                .clone()
                .unwrap_or_else(|| PathBuf::from("eddy-data")),
        };
        // Opening a directory without state would create it: a reader
        // must not.
        if !dir.join("state.redb").is_file() {
            bail!("{}: no state there (no state.redb)", dir.display());
        }
        Store::open(&dir).with_context(|| {
            format!(
                "reading the state in {} (a running pipeline keeps it open: stop it first)",
                dir.display()
            )
        })
    }
}

/// Runs `eddy state`.
pub fn run(a: StateArgs) -> Result<()> {
    match a.command {
        StateCommand::Get(g) => {
            let store = g.dir.open()?;
            let Some(record) = store.record(&g.operator, &g.key)? else {
                bail!(
                    "operator {:?} has no committed state for key {:?}",
                    g.operator,
                    g.key
                );
            };
            let state = record_json(&record)
                .with_context(|| format!("the record of key {:?} of {:?}", g.key, g.operator))?;
            let out = match &g.name {
                None => state,
                Some(name) => ["values", "maps", "lists"]
                    .iter()
                    .find_map(|kind| state[kind].get(name).cloned())
                    .with_context(|| {
                        format!(
                            "key {:?} of operator {:?} has no value, map or list named {name:?} (it has: {})",
                            g.key,
                            g.operator,
                            names(&state)
                        )
                    })?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        StateCommand::Scan(s) => {
            let store = s.dir.open()?;
            let (keys, more) = store.scan_prefix(&s.operator, &s.prefix, s.limit)?;
            if keys.is_empty() && s.prefix.is_empty() {
                bail!("operator {:?} has no committed state", s.operator);
            }
            for (key, record) in keys {
                let state = record_json(&record)
                    .with_context(|| format!("the record of key {key:?} of {:?}", s.operator))?;
                println!("{}", json!({ "key": key, "state": state }));
            }
            if more {
                eprintln!("eddy: more keys follow (raise --limit, or narrow --prefix)");
            }
        }
    }
    Ok(())
}

/// The names in a key's state view, for an error message.
fn names(state: &Value) -> String {
    let all: Vec<&str> = ["values", "maps", "lists"]
        .iter()
        .filter_map(|k| state[k].as_object())
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    match all.is_empty() {
        true => "nothing".into(),
        false => all.join(", "),
    }
}
