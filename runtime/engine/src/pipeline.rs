//! The pipeline description: a TOML file, command-line flags, or both
//! (flags override the file).
//!
//! ```toml
//! workers = 2                      # default: number of cores
//!
//! control = true                   # serve the owner-only control socket STATE/control.sock
//! watch = false                    # swap an operator when its component file changes
//!
//! [source]
//! path = "events.jsonl"            # "-" for stdin
//! follow = false                   # keep reading the file as it grows (tail -f)
//! key = "key"                      # field holding the routing key
//! time = "ts"                      # optional field holding the event time
//!
//! [[operator]]                     # one table per operator, in chain order
//! name = "counter"
//! component = "counter.wasm"
//! config = { field = "amount" }    # handed to the operator's init as JSON
//! # Limits (defaults shown); an event that breaks one is dead-lettered with
//! # an error naming the field, and none of its writes or emits take effect.
//! max_state_value_bytes = 1048576  # one state value, map value or list item
//! max_emit_bytes = 1048576         # one emitted payload
//! max_call_ms = 1000               # CPU time of one call into the operator
//! max_memory_bytes = 268435456     # the instance's memory; also what the host
//!                                  # holds for one event (emits, replaced state)
//! max_name_bytes = 4096            # one state name or map field
//! max_emit_key_bytes = 4096        # one emitted key
//! max_emit_bytes_per_event = 16777216  # all keys and payloads one event emits
//! max_key_state_bytes = 67108864   # all state of one key, as stored
//! max_reason_bytes = 16384         # longer error reasons are truncated, with
//!                                  # a note of how many bytes were cut
//!
//! [sink]
//! path = "-"                       # "-" for stdout
//! dead_letter = "dead-letter.jsonl"
//!
//! [state]
//! dir = "eddy-data"
//! checkpoint_interval_ms = 1000
//! checkpoint_events = 0            # 0: by time only
//! verify_on_open = false           # check every page of state.redb at start
//! ```
//!
//! Relative paths in a pipeline file are relative to the file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::host::Limits;

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

/// Where emitted events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Input {
    /// `-` is stdin, anything else a file path.
    pub fn parse(s: &str) -> Input {
        if s == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(s))
        }
    }
}

impl Output {
    /// `-` is stdout, anything else a file path.
    pub fn parse(s: &str) -> Output {
        if s == "-" {
            Output::Stdout
        } else {
            Output::File(PathBuf::from(s))
        }
    }
}

/// One operator of the chain.
#[derive(Debug, Clone)]
pub struct OperatorSpec {
    /// Unique name: the operator's state name space.
    pub name: String,
    /// Path of the component.
    pub component: PathBuf,
    /// Config handed to `init`, as JSON.
    pub config: serde_json::Value,
    /// Host-enforced limits.
    pub limits: Limits,
}

/// A complete pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub input: Input,
    /// Field holding the routing key.
    pub key_field: String,
    /// Field holding the event time (an integer), if any.
    pub time_field: Option<String>,
    /// Longer lines are dead-lettered without being parsed.
    pub max_line_bytes: usize,
    pub operators: Vec<OperatorSpec>,
    pub output: Output,
    /// Dead-letter file; default `<state dir>/dead-letter.jsonl`.
    pub dead_letter: PathBuf,
    pub state_dir: PathBuf,
    pub workers: usize,
    /// Checkpoint at least this often.
    pub checkpoint_interval: Duration,
    /// Also checkpoint after this many input events (`None`: by time only).
    pub checkpoint_events: Option<u64>,
    /// Keep reading a file input as it grows, until stopped.
    pub follow: bool,
    /// Swap an operator when its component file changes.
    pub watch: bool,
    /// Serve the control socket (`<state dir>/control.sock`, see
    /// [`crate::control`]).
    pub control: bool,
    /// Check every page of the state database when it opens (see
    /// [`crate::store::Store::open_verified`]).
    pub verify_state: bool,
}

/// The pipeline file's `control` setting: `true` or `false`. An address
/// (what older versions took) is refused with an explanation.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ControlSetting {
    On(bool),
    Address(String),
}

/// A pipeline file that cannot be used.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("pipeline file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pipeline file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// Two of input, output and dead-letter file are one file.
    #[error(
        "the {what} file {} is the {other_what} file (same file as {}): {why}",
        .path.display(),
        .other.display()
    )]
    SameFile {
        /// `output` or `dead-letter`.
        what: &'static str,
        path: PathBuf,
        /// `input` or `dead-letter`.
        other_what: &'static str,
        other: PathBuf,
        /// What would go wrong, and what to do.
        why: &'static str,
    },
}

/// What a path names, to tell whether two paths are one file.
#[derive(Debug, PartialEq, Eq)]
enum FileIdentity {
    /// An existing file (symbolic links followed): device and inode.
    Inode(u64, u64),
    /// A file that does not exist yet: its absolute path (see
    /// [`resolve`]).
    Path(PathBuf),
    /// An existing file that is not a regular file (a device, a FIFO,
    /// a directory): sharing it cannot destroy anything.
    Special,
}

/// The identity of this process's file descriptor `fd` (0: standard
/// input, 1: standard output): a regular file it was redirected to, or
/// [`FileIdentity::Special`] for a terminal, a pipe or a closed descriptor.
fn std_identity(fd: u32) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(format!("/proc/self/fd/{fd}")) {
        Ok(m) if m.file_type().is_file() => FileIdentity::Inode(m.dev(), m.ino()),
        _ => FileIdentity::Special,
    }
}

/// Symbolic links followed at most (like the kernel's limit).
const MAX_LINKS: usize = 40;

/// What `path` names. A path that cannot be looked at (a parent that is
/// not a directory, no permission) counts by its path: opening it fails
/// later with a message of its own.
fn identity(path: &Path) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    let mut path = resolve(path);
    for _ in 0..MAX_LINKS {
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_file() => return FileIdentity::Inode(m.dev(), m.ino()),
            Ok(_) => return FileIdentity::Special,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => break,
        }
        // A dangling symbolic link: opening it for writing creates its
        // target, so the target is what counts.
        match std::fs::read_link(&path) {
            Ok(target) => {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                path = resolve(&parent.join(target));
            }
            Err(_) => break,
        }
    }
    FileIdentity::Path(path)
}

/// The absolute form of `path` as opening it for writing (after creating
/// its missing directories) would see it: its longest existing prefix
/// canonicalized (links resolved), the rest resolved by name (components
/// that do not exist cannot be links, so `x/..` is the directory holding
/// `x`).
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let Ok(path) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    let parts: Vec<Component> = path.components().collect();
    for n in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..n].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for c in &parts[n..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
    }
    path
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    workers: Option<usize>,
    control: Option<ControlSetting>,
    watch: Option<bool>,
    #[serde(default)]
    source: SourceTable,
    #[serde(default, rename = "operator")]
    operators: Vec<OperatorTable>,
    #[serde(default)]
    sink: SinkTable,
    #[serde(default)]
    state: StateTable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTable {
    path: Option<String>,
    follow: Option<bool>,
    key: Option<String>,
    time: Option<String>,
    max_line_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorTable {
    name: String,
    component: String,
    #[serde(default)]
    config: Option<toml::Table>,
    max_state_value_bytes: Option<usize>,
    max_emit_bytes: Option<usize>,
    max_call_ms: Option<u64>,
    max_memory_bytes: Option<usize>,
    max_name_bytes: Option<usize>,
    max_emit_key_bytes: Option<usize>,
    max_emit_bytes_per_event: Option<usize>,
    max_key_state_bytes: Option<usize>,
    max_reason_bytes: Option<usize>,
}

impl OperatorTable {
    /// The table's limits, defaults for those it does not set.
    fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_state_value: self.max_state_value_bytes.unwrap_or(d.max_state_value),
            max_emit: self.max_emit_bytes.unwrap_or(d.max_emit),
            max_call_ms: self.max_call_ms.unwrap_or(d.max_call_ms),
            max_memory: self.max_memory_bytes.unwrap_or(d.max_memory),
            max_name: self.max_name_bytes.unwrap_or(d.max_name),
            max_emit_key: self.max_emit_key_bytes.unwrap_or(d.max_emit_key),
            max_emit_per_event: self
                .max_emit_bytes_per_event
                .unwrap_or(d.max_emit_per_event),
            max_key_state: self.max_key_state_bytes.unwrap_or(d.max_key_state),
            max_reason: self.max_reason_bytes.unwrap_or(d.max_reason),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkTable {
    path: Option<String>,
    dead_letter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateTable {
    dir: Option<String>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_events: Option<u64>,
    verify_on_open: Option<bool>,
}

/// Everything that can be given on the command line; `None` keeps the
/// file's value (or the default).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub plugins: Vec<(String, PathBuf)>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub dead_letter: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub workers: Option<usize>,
    pub key_field: Option<String>,
    pub time_field: Option<String>,
    pub checkpoint_interval_ms: Option<u64>,
    pub checkpoint_events: Option<u64>,
    /// `--follow`.
    pub follow: bool,
    /// `--watch`.
    pub watch: bool,
    /// `--no-control`.
    pub no_control: bool,
    /// `--verify-state`.
    pub verify_state: bool,
}

/// Default number of workers: the number of cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Pipeline {
    /// Refuses a pipeline where two of input, output and dead-letter file
    /// are the same file: writing the output would truncate the input, or
    /// outputs and dead letters would be mixed. Existing files are compared
    /// by device and inode (symbolic and hard links see through), paths
    /// that do not exist yet by their absolute form (so `out.jsonl` and
    /// `./x/../out.jsonl` are one file). Devices and FIFOs (such as
    /// `/dev/null`) may be shared. Call it before opening anything for
    /// writing ([`crate::runner::run`] does).
    pub fn check_files(&self) -> Result<(), PipelineError> {
        // Standard input and output count too when they are redirected
        // files (`--output x < x` would otherwise truncate the input).
        let stdin = PathBuf::from("standard input");
        let stdout = PathBuf::from("standard output");
        let input = match &self.input {
            Input::File(path) => Some((path, identity(path))),
            Input::Stdin => Some((&stdin, std_identity(0))),
        };
        let output = match &self.output {
            Output::File(path) => Some((path, identity(path))),
            Output::Stdout => Some((&stdout, std_identity(1))),
        };
        let dead = (&self.dead_letter, identity(&self.dead_letter));
        let same = |a: &FileIdentity, b: &FileIdentity| a == b && *a != FileIdentity::Special;
        if let (Some((out, out_id)), Some((inp, in_id))) = (&output, &input) {
            if same(out_id, in_id) {
                return Err(PipelineError::SameFile {
                    what: "output",
                    path: out.to_path_buf(),
                    other_what: "input",
                    other: inp.to_path_buf(),
                    why: "writing it would destroy the input; choose another --output",
                });
            }
        }
        if let Some((inp, in_id)) = &input {
            if same(&dead.1, in_id) {
                return Err(PipelineError::SameFile {
                    what: "dead-letter",
                    path: dead.0.clone(),
                    other_what: "input",
                    other: inp.to_path_buf(),
                    why: "writing it would destroy the input; choose another --dead-letter",
                });
            }
        }
        if let Some((out, out_id)) = &output {
            if same(out_id, &dead.1) {
                return Err(PipelineError::SameFile {
                    what: "output",
                    path: out.to_path_buf(),
                    other_what: "dead-letter",
                    other: dead.0.clone(),
                    why: "outputs and dead letters would be mixed in one file; choose another --output or --dead-letter",
                });
            }
        }
        Ok(())
    }

    /// Builds a pipeline from an optional file and command-line overrides.
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Pipeline, PipelineError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| PipelineError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                Self::from_toml(&text, path, o)
            }
            None => Self::build(File::default(), PathBuf::new(), o),
        }
    }

    /// Parses pipeline-file `text`, named `path` in errors; relative paths
    /// in it resolve against `path`'s directory.
    pub fn from_toml(text: &str, path: &Path, o: Overrides) -> Result<Pipeline, PipelineError> {
        let f: File = toml::from_str(text).map_err(|e| PipelineError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::build(
            f,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            o,
        )
    }

    fn build(f: File, base: PathBuf, o: Overrides) -> Result<Pipeline, PipelineError> {
        let rel = |s: &str| -> PathBuf {
            let p = PathBuf::from(s);
            if p.is_absolute() || s == "-" {
                p
            } else {
                base.join(p)
            }
        };

        let mut operators = Vec::new();
        if o.plugins.is_empty() {
            for t in &f.operators {
                let config = match &t.config {
                    Some(table) => serde_json::to_value(table).map_err(|e| {
                        PipelineError::Invalid(format!("operator `{}`: config: {e}", t.name))
                    })?,
                    None => serde_json::json!({}),
                };
                operators.push(OperatorSpec {
                    name: t.name.clone(),
                    component: rel(&t.component),
                    config,
                    limits: t.limits(),
                });
            }
        } else {
            // `--plugin` replaces the file's chain; a same-named operator of
            // the file keeps its config and limits.
            for (name, path) in &o.plugins {
                let from_file = f.operators.iter().find(|t| &t.name == name);
                let config = match from_file.and_then(|t| t.config.as_ref()) {
                    Some(table) => serde_json::to_value(table).map_err(|e| {
                        PipelineError::Invalid(format!("operator `{name}`: config: {e}"))
                    })?,
                    None => serde_json::json!({}),
                };
                operators.push(OperatorSpec {
                    name: name.clone(),
                    component: path.clone(),
                    config,
                    limits: from_file.map(OperatorTable::limits).unwrap_or_default(),
                });
            }
        }
        if operators.is_empty() {
            return Err(PipelineError::Invalid(
                "no operator: give --plugin NAME=PATH.wasm or [[operator]] tables in a pipeline file".into(),
            ));
        }
        for (i, op) in operators.iter().enumerate() {
            if op.name.is_empty()
                || !op
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(PipelineError::Invalid(format!(
                    "operator name `{}` must be non-empty letters, digits, `-` or `_`",
                    op.name
                )));
            }
            if operators[..i].iter().any(|p| p.name == op.name) {
                return Err(PipelineError::Invalid(format!(
                    "operator name `{}` is used twice",
                    op.name
                )));
            }
        }

        let input = match (&o.input, &f.source.path) {
            (Some(s), _) => Input::parse(s),
            (None, Some(s)) => Input::parse(rel(s).to_str().unwrap_or(s)),
            (None, None) => Input::Stdin,
        };
        let output = match (&o.output, &f.sink.path) {
            (Some(s), _) => Output::parse(s),
            (None, Some(s)) => Output::parse(rel(s).to_str().unwrap_or(s)),
            (None, None) => Output::Stdout,
        };
        let state_dir = o
            .state_dir
            .clone()
            .or_else(|| f.state.dir.as_deref().map(rel))
            .unwrap_or_else(|| PathBuf::from("eddy-data"));
        let dead_letter = o
            .dead_letter
            .clone()
            .or_else(|| f.sink.dead_letter.as_deref().map(rel))
            .unwrap_or_else(|| state_dir.join("dead-letter.jsonl"));
        let workers = o.workers.or(f.workers).unwrap_or_else(default_workers);
        if workers == 0 || workers > 1024 {
            return Err(PipelineError::Invalid(format!(
                "workers must be between 1 and 1024, not {workers}"
            )));
        }
        let interval = o
            .checkpoint_interval_ms
            .or(f.state.checkpoint_interval_ms)
            .unwrap_or(1000);
        if interval == 0 {
            return Err(PipelineError::Invalid(
                "checkpoint_interval_ms must be at least 1".into(),
            ));
        }
        let events = o
            .checkpoint_events
            .or(f.state.checkpoint_events)
            .filter(|&n| n > 0);
        let follow = o.follow || f.source.follow.unwrap_or(false);
        if follow && input == Input::Stdin {
            return Err(PipelineError::Invalid(
                "follow needs a file input: stdin is read until it ends anyway".into(),
            ));
        }
        let control = match f.control {
            _ if o.no_control => false,
            None => true,
            Some(ControlSetting::On(on)) => on,
            Some(ControlSetting::Address(addr)) => {
                return Err(PipelineError::Invalid(format!(
                    "control = \"{addr}\": the control endpoint is no longer a network address (any local user could reach it); it is the Unix socket STATE/{} that only the pipeline's owner may use. Write `control = true` (the default) or `control = false`",
                    crate::control::SOCKET_FILE
                )))
            }
        };
        Ok(Pipeline {
            follow,
            watch: o.watch || f.watch.unwrap_or(false),
            control,
            verify_state: o.verify_state || f.state.verify_on_open.unwrap_or(false),
            input,
            key_field: o.key_field.or(f.source.key).unwrap_or_else(|| "key".into()),
            time_field: o.time_field.or(f.source.time),
            max_line_bytes: f.source.max_line_bytes.unwrap_or(1 << 20),
            operators,
            output,
            dead_letter,
            state_dir,
            workers,
            checkpoint_interval: Duration::from_millis(interval),
            checkpoint_events: events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, text).unwrap();
        Pipeline::load(Some(&p), Overrides::default())
    }

    #[test]
    fn file_paths_are_relative_to_the_file_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "[source]\npath = \"in.jsonl\"\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\nconfig = { field = \"x\" }\n").unwrap();
        let pl = Pipeline::load(Some(&p), Overrides::default()).unwrap();
        assert_eq!(pl.input, Input::File(dir.path().join("in.jsonl")));
        assert_eq!(pl.operators[0].component, dir.path().join("c.wasm"));
        assert_eq!(pl.operators[0].config, serde_json::json!({"field": "x"}));
        assert_eq!(pl.output, Output::Stdout);
        assert_eq!(pl.key_field, "key");
        assert_eq!(pl.state_dir, PathBuf::from("eddy-data"));
    }

    #[test]
    fn bad_files_name_the_field_and_line() {
        let e = parse("[source]\npath = \"x\"\nkye = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("unknown field `kye`"),
            "{e}"
        );
        let e = parse("workers = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("workers"), "{e}");
        let e = parse("[source]\n").unwrap_err().to_string();
        assert!(e.contains("no operator"), "{e}");
        let e = parse("[[operator]]\nname=\"a\"\ncomponent=\"x\"\n[[operator]]\nname=\"a\"\ncomponent=\"y\"\n").unwrap_err();
        assert_eq!(e.to_string(), "operator name `a` is used twice");
    }

    #[test]
    fn the_same_file_twice_is_refused_devices_may_be_shared() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("in.jsonl"), "x\n").unwrap();
        std::os::unix::fs::symlink(d.join("in.jsonl"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(d.join("new.jsonl"), d.join("dangling")).unwrap();
        let check = |input: &str, output: &str, dead: &str| {
            let o = Overrides {
                plugins: vec![("c".into(), "c.wasm".into())],
                input: Some(d.join(input).to_str().unwrap().into()),
                output: Some(if output == "-" {
                    "-".into()
                } else {
                    d.join(output).to_str().unwrap().into()
                }),
                dead_letter: Some(d.join(dead)),
                no_control: true,
                ..Overrides::default()
            };
            Pipeline::load(None, o)
                .unwrap()
                .check_files()
                .map_err(|e| e.to_string())
        };
        assert!(check("in.jsonl", "out.jsonl", "dead.jsonl").is_ok());
        let e = check("in.jsonl", "link", "dead.jsonl").unwrap_err();
        assert!(
            e.contains("the output file") && e.contains("is the input file"),
            "{e}"
        );
        let e = check("in.jsonl", "x/../in.jsonl", "dead.jsonl").unwrap_err();
        assert!(e.contains("is the input file"), "{e}");
        let e = check("in.jsonl", "-", "./in.jsonl").unwrap_err();
        assert!(
            e.contains("the dead-letter file") && e.contains("--dead-letter"),
            "{e}"
        );
        // Files that do not exist yet, by path.
        let e = check("in.jsonl", "new.jsonl", "y/./../new.jsonl").unwrap_err();
        assert!(e.contains("is the dead-letter file"), "{e}");
        // A dangling link is its target.
        let e = check("in.jsonl", "dangling", "new.jsonl").unwrap_err();
        assert!(e.contains("is the dead-letter file"), "{e}");
        assert!(!d.join("new.jsonl").exists() && !d.join("x").exists());
        // A path that cannot be looked at is left to fail where it is
        // opened, with its own message.
        assert!(check("in.jsonl", "out.jsonl", "in.jsonl/dead.jsonl").is_ok());
        // Devices are not destroyed by sharing.
        assert!(check("in.jsonl", "/dev/null", "/dev/null").is_ok());
    }
}
