//! The pipeline description: a TOML file, command-line flags, or both
//! (flags override the file).
//!
//! ```toml
//! workers = 2                      # default: number of cores
//!
//! control = true                   # serve the owner-only control socket STATE/control.sock
//!                                  # (or a [control] table, which also serves it:)
//! # [control]
//! # http = "127.0.0.1:9100"        # also serve the control plane over TCP (bearer token)
//! # http_public = false            # true: allow an address that is not loopback
//! # http_token_file = "token"      # the token; default: generated into STATE/control.token
//! watch = false                    # swap an operator when its component file changes
//!
//! [source]
//! path = "events.jsonl"            # "-" for stdin
//! follow = false                   # keep reading the file as it grows (tail -f)
//! key = "key"                      # field holding the routing key
//! time = "ts"                      # optional field holding the event time
//!
//! [source.watermark]               # event time (with `time`): the watermark
//! max_out_of_order = 0             # is the largest time read minus this
//! step = 1                         # and advances in multiples of this
//! allowed_lateness = 0             # an event below watermark - this is late:
//! late = "dead-letter"             # dead-lettered, "drop" (counted) or
//!                                  # "deliver" (handled, flagged late)
//! # idle_timeout_ms = 60000        # live inputs: after this long without
//!                                  # an event, the watermark follows the
//!                                  # clock (event times in milliseconds)
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
//! cpu_limit = true                 # false: max_call_ms is not enforced, for
//!                                  # trusted code (15-20% faster; a call that
//!                                  # never returns stalls its worker)
//! max_memory_bytes = 268435456     # the instance's memory; also what the host
//!                                  # holds for one event (emits, replaced state)
//! max_name_bytes = 4096            # one state name or map field
//! max_emit_key_bytes = 4096        # one emitted key
//! max_emit_bytes_per_event = 16777216  # all keys and payloads one event emits
//! max_key_state_bytes = 67108864   # all state of one key, as stored
//! max_reason_bytes = 16384         # longer error reasons are truncated, with
//!                                  # a note of how many bytes were cut
//! max_timers_per_key = 1024        # pending timers of one key
//! # State time to live, in event time (needs `[source] time`): an entry
//! # expires once the watermark is past its last write plus `after`.
//! ttl.history = { after = 86400000, refresh = "write" }  # or "read"
//! # A window operator (its component exports the window aggregate, world
//! # `window-operator`; needs `[source] time`); sizes in time-field units:
//! # window = { kind = "tumbling", size = 60000 }
//! # window = { kind = "hopping", size = 3600000, slide = 600000 }  # slide divides size
//! # window = { kind = "session", gap = 1800000 }
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
//! cache_bytes = "256MiB"           # memory for cached state (keys, values,
//!                                  # redb's page cache); cold keys are
//!                                  # evicted past it; "unlimited" keeps all
//! compact = "auto"                 # give free space in state.redb back at a
//!                                  # quiet moment (half the file free, at most
//!                                  # every 10 minutes); "off"; or
//!                                  # { min_free = 0.5, every_ms = 600000 }
//! ```
//!
//! Relative paths in a pipeline file are relative to the file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

mod files;
mod kafka;
mod limits;
#[cfg(test)]
mod tests;

pub use kafka::{Delivery, KafkaInput, KafkaOutput};
pub use limits::Limits;

/// File of the state directory that is the control socket of the pipeline
/// running on it (see [`crate::control`]).
pub const SOCKET_FILE: &str = "control.sock";

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input.
    Stdin,
    /// A file (or a FIFO, a device).
    File(PathBuf),
    /// Kafka topics, in a consumer group.
    Kafka(Box<KafkaInput>),
}

/// Where emitted events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// A file (or a FIFO, a device).
    File(PathBuf),
    /// A Kafka topic.
    Kafka(Box<KafkaOutput>),
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
    /// State names given a time to live (`ttl.NAME = { after, refresh }`).
    pub ttl: Vec<TtlSpec>,
    /// The window the host keeps for this operator (`window = { .. }`):
    /// its component is then a window aggregate.
    pub window: Option<WindowSpec>,
}

/// A window operator's windows (`window = { kind, size, slide, gap }` of
/// an `[[operator]]` table), in time-field units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `kind = "tumbling"`: `[k * size, (k + 1) * size)`.
    Tumbling {
        /// `size`, at least 1.
        size: u64,
    },
    /// `kind = "hopping"`: windows of `size` starting every `slide`.
    Hopping {
        /// `size`, at least 1.
        size: u64,
        /// `slide`, at least 1, at most `size`, and dividing it.
        slide: u64,
    },
    /// `kind = "session"`: a key's events less than `gap` apart.
    Session {
        /// `gap`, at least 1.
        gap: u64,
    },
}

/// A window declared on an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Its kind and sizes.
    pub kind: WindowKind,
    /// The pipeline file of the `window` setting, named in errors about it.
    pub file: PathBuf,
    /// Its line in that file.
    pub line: usize,
}

/// A state name's time to live, in event time (`ttl.NAME = { after,
/// refresh }` of an operator table): a key's entry under that name
/// expires once the watermark is past the event time of its last write
/// (or read, with `refresh = "read"`) plus `after`. Expired entries are
/// never returned and are deleted at that watermark advance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlSpec {
    /// The state name (a value, map or list of that name).
    pub name: Box<str>,
    /// The time to live, in time-field units.
    pub after: u64,
    /// What renews it.
    pub refresh: Refresh,
}

/// What renews an entry's time to live (`refresh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refresh {
    /// `"write"` (the default): each write of the entry.
    #[default]
    Write,
    /// `"read"`: each write or read of the entry (the operator's events
    /// then go through the per-event path, where the host sees reads).
    Read,
}

/// A complete pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Where events come from.
    pub input: Input,
    /// Field holding the routing key.
    pub key_field: String,
    /// Field holding the event time (an integer), if any.
    pub time_field: Option<String>,
    /// Longer lines are dead-lettered without being parsed.
    pub max_line_bytes: usize,
    /// The operator chain, in order.
    pub operators: Vec<OperatorSpec>,
    /// Where emitted events go.
    pub output: Output,
    /// Dead-letter file; default `<state dir>/dead-letter.jsonl`.
    pub dead_letter: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Number of worker threads.
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
    /// Also serve the control plane over TCP (`[control] http`, `--http`);
    /// only with `control`.
    pub http: Option<HttpListen>,
    /// Check every page of the state database when it opens (see
    /// [`crate::state::Store::open_verified`]).
    pub verify_state: bool,
    /// Memory budget of the state cache (`[state] cache_bytes`,
    /// `--cache-bytes`): the cached keys of every worker and redb's page
    /// cache. `None`: unlimited (every key touched stays cached).
    pub cache_bytes: Option<usize>,
    /// When a running pipeline compacts its state database (`[state]
    /// compact`); `None`: never (`eddy compact` on a stopped one still
    /// does).
    pub compact: Option<CompactPolicy>,
    /// How the watermark follows the event times read.
    pub watermark: WatermarkSpec,
}

/// When a running pipeline compacts `state.redb` (`[state] compact`): at
/// a quiet moment (no input waiting), when at least `min_free` of the file
/// is free, at most every `every`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactPolicy {
    /// The least fraction of the file that must be free (0.0 to 1.0).
    pub min_free: f64,
    /// The least time between two looks at the file's free space (each
    /// walks the live pages).
    pub every: Duration,
}

impl CompactPolicy {
    /// `compact = "auto"`, the default: half the file free, at most every
    /// 10 minutes.
    pub const AUTO: CompactPolicy = CompactPolicy {
        min_free: 0.5,
        every: Duration::from_secs(600),
    };

    /// Reads `[state] compact`: `"auto"`, `"off"` (`None`) or a table
    /// `{ min_free = F, every_ms = N }` (either may be left out: the
    /// default's). Errors say what is expected.
    fn parse(v: &toml::Value) -> Result<Option<CompactPolicy>, String> {
        const EXPECTED: &str = "expected \"auto\", \"off\" or a table { min_free = 0.0 to 1.0, every_ms = milliseconds }";
        match v {
            toml::Value::String(t) if t == "auto" => Ok(Some(Self::AUTO)),
            toml::Value::String(t) if t == "off" => Ok(None),
            toml::Value::Table(t) => {
                let mut p = Self::AUTO;
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("min_free", toml::Value::Float(f)) if (0.0..=1.0).contains(f) => {
                            p.min_free = *f
                        }
                        ("min_free", toml::Value::Integer(i @ (0 | 1))) => p.min_free = *i as f64,
                        ("min_free", v) => {
                            return Err(format!(
                                ".min_free = {v}: expected a fraction of the file from 0.0 to 1.0"
                            ))
                        }
                        ("every_ms", toml::Value::Integer(i)) if *i >= 0 => {
                            p.every = Duration::from_millis(*i as u64)
                        }
                        ("every_ms", v) => {
                            return Err(format!(
                                ".every_ms = {v}: expected a number of milliseconds (0 or more)"
                            ))
                        }
                        (k, _) => return Err(format!(".{k}: unknown field: {EXPECTED}")),
                    }
                }
                Ok(Some(p))
            }
            v => Err(format!(" = {v}: {EXPECTED}")),
        }
    }
}

/// How the watermark of the input follows its event times
/// (`[source.watermark]`): it is the largest event time read so far minus
/// `max_out_of_order`, rounded down to a multiple of `step`, and it only
/// advances. A timer set for time `t` fires once the watermark is past
/// `t`, so a larger `step` fires timers in fewer, larger rounds, later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// How far, in time-field units, an event may come after a later one
    /// and still be on time (`max_out_of_order`, default 0).
    pub max_out_of_order: u64,
    /// The watermark's granularity, in time-field units (`step`, default 1,
    /// at least 1).
    pub step: u64,
    /// An event whose time is below the watermark minus this, when it is
    /// read, is late (`allowed_lateness`, default 0).
    pub allowed_lateness: u64,
    /// What happens to a late event (`late`, default dead-letter).
    pub late: LatePolicy,
    /// For live inputs: once no event has been read for this many
    /// milliseconds of the clock (`idle_timeout_ms`, default none; on a
    /// Kafka input, per partition), the watermark is the largest time read
    /// plus the milliseconds since, minus `max_out_of_order` (event times
    /// taken as milliseconds; the clock is [`crate::clock::Clock`]).
    /// Outputs then depend on when events arrive, not on the input alone.
    pub idle_timeout_ms: Option<u64>,
}

impl Default for WatermarkSpec {
    fn default() -> Self {
        WatermarkSpec {
            max_out_of_order: 0,
            step: 1,
            allowed_lateness: 0,
            late: LatePolicy::DeadLetter,
            idle_timeout_ms: None,
        }
    }
}

/// What happens to a late event (`[source.watermark] late`): it is never
/// silently lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    /// `"dead-letter"` (the default): to the dead-letter output, with a
    /// reason naming its time, the watermark and the allowed lateness.
    #[default]
    DeadLetter,
    /// `"drop"`: not handled, counted in the run summary.
    Drop,
    /// `"deliver"`: handled as any event, flagged late (the operator reads
    /// the flag with `timers.late`).
    Deliver,
}

/// The control plane's TCP listener (`[control] http`, `--http`): every
/// request must carry the bearer token (see [`crate::control`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListen {
    /// Where to listen; a loopback address unless `public`.
    pub addr: std::net::SocketAddr,
    /// The address may be one that is not loopback (`http_public`,
    /// `--http-public`).
    pub public: bool,
    /// A file holding the token; `None`: a token is generated at each
    /// start into `<state dir>/control.token` (0600).
    pub token_file: Option<PathBuf>,
}

/// The pipeline file's `control` setting: `true`, `false` or a `[control]`
/// table. An address (what older versions took) is refused with an
/// explanation.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ControlSetting {
    On(bool),
    Address(String),
    Table(ControlTable),
}

/// `[control]`: the socket is served, and the TCP listener if `http` is
/// set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlTable {
    http: Option<String>,
    http_public: Option<bool>,
    http_token_file: Option<String>,
}

/// A pipeline file that cannot be used.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("pipeline file {path}: {error}")]
    /// The file could not be read.
    Read {
        /// The file it names.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error("pipeline file {path}: {message}")]
    /// The file is not a valid pipeline file.
    Parse {
        /// The file it names.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    #[error("{0}")]
    /// A setting is invalid (the message says which).
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
        /// The file it names.
        path: PathBuf,
        /// `input` or `dead-letter`.
        other_what: &'static str,
        /// The other file.
        other: PathBuf,
        /// What would go wrong, and what to do.
        why: &'static str,
    },
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
    watermark: Option<WatermarkTable>,
    kafka: Option<kafka::SourceKafkaTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatermarkTable {
    max_out_of_order: Option<u64>,
    step: Option<u64>,
    allowed_lateness: Option<u64>,
    late: Option<LatePolicy>,
    idle_timeout_ms: Option<u64>,
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
    cpu_limit: Option<bool>,
    max_memory_bytes: Option<usize>,
    max_name_bytes: Option<usize>,
    max_emit_key_bytes: Option<usize>,
    max_emit_bytes_per_event: Option<usize>,
    max_key_state_bytes: Option<usize>,
    max_reason_bytes: Option<usize>,
    max_timers_per_key: Option<usize>,
    #[serde(default)]
    ttl: std::collections::BTreeMap<String, TtlTable>,
    window: Option<toml::Spanned<WindowTable>>,
}

/// `window = { kind, size, slide, gap }`, checked by [`window_spec`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowTable {
    kind: Option<String>,
    size: Option<i64>,
    slide: Option<i64>,
    gap: Option<i64>,
}

/// Checks operator `op`'s window table, at line `line` of pipeline file
/// `path`.
fn window_spec(
    op: &str,
    t: &WindowTable,
    path: &Path,
    line: usize,
) -> Result<WindowSpec, PipelineError> {
    let at = |msg: String| {
        PipelineError::Invalid(format!(
            "pipeline file {}, line {line}: operator `{op}`: {msg}",
            path.display()
        ))
    };
    let positive = |field: &str, v: Option<i64>, kind: &str| -> Result<u64, PipelineError> {
        match v {
            None => Err(at(format!(
                "window.{field} is missing: a {kind} window needs it (in time-field units)"
            ))),
            Some(n) if n <= 0 => Err(at(format!(
                "window.{field} = {n} must be at least 1 (in time-field units)"
            ))),
            Some(n) => Ok(n as u64),
        }
    };
    let absent = |field: &str, v: Option<i64>, kind: &str| -> Result<(), PipelineError> {
        match v {
            Some(_) => Err(at(format!(
                "window.{field} does not apply to a {kind} window"
            ))),
            None => Ok(()),
        }
    };
    let kind = match t.kind.as_deref() {
        None => {
            return Err(at(
                "window.kind is missing: write \"tumbling\", \"hopping\" or \"session\"".into(),
            ))
        }
        Some("tumbling") => {
            absent("slide", t.slide, "tumbling")?;
            absent("gap", t.gap, "tumbling")?;
            WindowKind::Tumbling {
                size: positive("size", t.size, "tumbling")?,
            }
        }
        Some("hopping") => {
            absent("gap", t.gap, "hopping")?;
            let size = positive("size", t.size, "hopping")?;
            let slide = positive("slide", t.slide, "hopping")?;
            if slide > size || size % slide != 0 {
                return Err(at(format!(
                    "window.slide = {slide} must divide window.size = {size} (each window is then made of whole panes of `slide`)"
                )));
            }
            WindowKind::Hopping { size, slide }
        }
        Some("session") => {
            absent("size", t.size, "session")?;
            absent("slide", t.slide, "session")?;
            WindowKind::Session {
                gap: positive("gap", t.gap, "session")?,
            }
        }
        Some(other) => {
            return Err(at(format!(
                "window.kind = {other:?} is not a window kind: write \"tumbling\", \"hopping\" or \"session\""
            )))
        }
    };
    Ok(WindowSpec {
        kind,
        file: path.to_path_buf(),
        line,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlTable {
    after: u64,
    #[serde(default)]
    refresh: Refresh,
}

impl OperatorTable {
    /// The table's TTL specs, in name order.
    fn ttl(&self) -> Vec<TtlSpec> {
        self.ttl
            .iter()
            .map(|(name, t)| TtlSpec {
                name: name.as_str().into(),
                after: t.after,
                refresh: t.refresh,
            })
            .collect()
    }

    /// The table's limits, defaults for those it does not set.
    fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            max_state_value: self.max_state_value_bytes.unwrap_or(d.max_state_value),
            max_emit: self.max_emit_bytes.unwrap_or(d.max_emit),
            max_call_ms: self.max_call_ms.unwrap_or(d.max_call_ms),
            cpu_limit: self.cpu_limit.unwrap_or(d.cpu_limit),
            max_memory: self.max_memory_bytes.unwrap_or(d.max_memory),
            max_name: self.max_name_bytes.unwrap_or(d.max_name),
            max_emit_key: self.max_emit_key_bytes.unwrap_or(d.max_emit_key),
            max_emit_per_event: self
                .max_emit_bytes_per_event
                .unwrap_or(d.max_emit_per_event),
            max_key_state: self.max_key_state_bytes.unwrap_or(d.max_key_state),
            max_reason: self.max_reason_bytes.unwrap_or(d.max_reason),
            max_timers_per_key: self.max_timers_per_key.unwrap_or(d.max_timers_per_key),
            spill: d.spill,
            owned_at_start: d.owned_at_start,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkTable {
    path: Option<String>,
    dead_letter: Option<String>,
    kafka: Option<kafka::SinkKafkaTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateTable {
    dir: Option<String>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_events: Option<u64>,
    verify_on_open: Option<bool>,
    cache_bytes: Option<ByteSize>,
    compact: Option<toml::Spanned<toml::Value>>,
}

/// A size in bytes as a pipeline file writes it: a number, or a string
/// with a unit ("256MiB") or "unlimited".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Number(u64),
    Text(String),
}

/// Everything that can be given on the command line; `None` keeps the
/// file's value (or the default).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--operator NAME=PATH`: replaces the file's operator chain.
    pub operators: Vec<(String, PathBuf)>,
    /// Where events come from.
    pub input: Option<String>,
    /// Where emitted events go.
    pub output: Option<String>,
    /// `--dead-letter`.
    pub dead_letter: Option<PathBuf>,
    /// The state directory.
    pub state_dir: Option<PathBuf>,
    /// Number of worker threads.
    pub workers: Option<usize>,
    /// `--key`.
    pub key_field: Option<String>,
    /// `--time`.
    pub time_field: Option<String>,
    /// `--checkpoint-interval-ms`.
    pub checkpoint_interval_ms: Option<u64>,
    /// `--checkpoint-events`.
    pub checkpoint_events: Option<u64>,
    /// `--follow`.
    pub follow: bool,
    /// `--watch`.
    pub watch: bool,
    /// `--no-control`.
    pub no_control: bool,
    /// `--http ADDR`: also serve the control plane there.
    pub http: Option<String>,
    /// `--http-public`: the `--http` address may be one that is not
    /// loopback.
    pub http_public: bool,
    /// `--http-token-file`.
    pub http_token_file: Option<PathBuf>,
    /// `--verify-state`.
    pub verify_state: bool,
    /// `--cache-bytes`.
    pub cache_bytes: Option<String>,
}

/// The state cache's budget when none is given: 256 MiB, small like the
/// caches Kafka Streams and RocksDB start with.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// The least budget per worker and operator: room for the keys of the
/// batches a worker holds at once (up to a few thousand keys), which
/// cannot be evicted while it handles them.
pub const MIN_CACHE_BYTES_PER_WORKER_OP: usize = 1 << 20;

/// Parses a size: a number of bytes, or a number with a unit (`KiB`,
/// `MiB`, `GiB`, `TiB`; `KB`, `MB`, `GB`, `TB` for powers of 1000; `B`),
/// or `unlimited` (`None`).
pub fn parse_bytes(text: &str) -> Result<Option<usize>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a size: write a number of bytes, a number with a unit (256MiB, 1GiB, 500MB) or \"unlimited\"")
    })?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .map(Some)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Default number of workers: the number of cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Pipeline {
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
            None => Self::build(File::default(), PathBuf::new(), o, (Path::new(""), "")),
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
            (path, text),
        )
    }

    /// Builds the pipeline from file `f` (whose `(path, text)` is `src`,
    /// for the lines named in errors) and the overrides.
    fn build(
        f: File,
        base: PathBuf,
        o: Overrides,
        src: (&Path, &str),
    ) -> Result<Pipeline, PipelineError> {
        let line_of = |span: std::ops::Range<usize>| {
            let start = span.start.min(src.1.len());
            src.1.as_bytes()[..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        };
        let window_of = |t: &OperatorTable| -> Result<Option<WindowSpec>, PipelineError> {
            let Some(w) = &t.window else { return Ok(None) };
            window_spec(&t.name, w.get_ref(), src.0, line_of(w.span())).map(Some)
        };
        let compact = match &f.state.compact {
            None => Some(CompactPolicy::AUTO),
            Some(c) => CompactPolicy::parse(c.get_ref()).map_err(|e| {
                PipelineError::Invalid(format!(
                    "pipeline file {}, line {}: [state] compact{e}",
                    src.0.display(),
                    line_of(c.span())
                ))
            })?,
        };
        let rel = |s: &str| -> PathBuf {
            let p = PathBuf::from(s);
            if p.is_absolute() || s == "-" {
                p
            } else {
                base.join(p)
            }
        };

        let mut operators = Vec::new();
        if o.operators.is_empty() {
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
                    ttl: t.ttl(),
                    window: window_of(t)?,
                });
            }
        } else {
            // `--operator` replaces the file's chain; a same-named operator of
            // the file keeps its config and limits.
            for (name, path) in &o.operators {
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
                    ttl: from_file.map(OperatorTable::ttl).unwrap_or_default(),
                    window: match from_file {
                        Some(t) => window_of(t)?,
                        None => None,
                    },
                });
            }
        }
        if operators.is_empty() {
            return Err(PipelineError::Invalid(
                "no operator: give --operator NAME=PATH.wasm or [[operator]] tables in a pipeline file".into(),
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

        let file_kafka_in = match &f.source.kafka {
            Some(_) if f.source.path.is_some() => {
                return Err(PipelineError::Invalid(
                    "[source]: give `path` or a [source.kafka] table, not both".into(),
                ));
            }
            Some(t) => Some(t.build()?),
            None => None,
        };
        let mut input = match (&o.input, &f.source.path, &file_kafka_in) {
            (Some(s), _, k) if s.starts_with("kafka://") => {
                Input::Kafka(Box::new(kafka::input_url(s, k.as_ref())?))
            }
            (Some(s), _, _) => Input::parse(s),
            (None, Some(s), _) => Input::parse(rel(s).to_str().unwrap_or(s)),
            (None, None, Some(k)) => Input::Kafka(Box::new(k.clone())),
            (None, None, None) => Input::Stdin,
        };
        if let Input::Kafka(k) = &mut input {
            // A key field given routes by it; otherwise the message key.
            k.key_field = o.key_field.clone().or(f.source.key.clone());
        }
        let kafka_in = match &input {
            Input::Kafka(k) => Some(&**k),
            _ => None,
        };
        let file_kafka_out = match &f.sink.kafka {
            Some(_) if f.sink.path.is_some() => {
                return Err(PipelineError::Invalid(
                    "[sink]: give `path` or a [sink.kafka] table, not both".into(),
                ));
            }
            // Built against the source it will be used with.
            Some(t) => Some(t.build(kafka_in)?),
            None => None,
        };
        let output = match (&o.output, &f.sink.path, &file_kafka_out) {
            (Some(s), _, k) if s.starts_with("kafka://") => {
                Output::Kafka(Box::new(kafka::output_url(s, k.as_ref(), kafka_in)?))
            }
            (Some(s), _, _) => Output::parse(s),
            (None, Some(s), _) => Output::parse(rel(s).to_str().unwrap_or(s)),
            (None, None, Some(k)) => Output::Kafka(Box::new(k.clone())),
            (None, None, None) => Output::Stdout,
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
        if follow && matches!(input, Input::Kafka(_)) {
            return Err(PipelineError::Invalid(
                "follow is for a file input: a Kafka input is read until the pipeline is stopped (or, with until_end, to the end of its partitions)".into(),
            ));
        }
        let mut table = None;
        let control = match f.control {
            _ if o.no_control => false,
            None => true,
            Some(ControlSetting::On(on)) => on,
            Some(ControlSetting::Table(t)) => {
                table = Some(t);
                true
            }
            Some(ControlSetting::Address(addr)) => {
                return Err(PipelineError::Invalid(format!(
                    "control = \"{addr}\": the control endpoint is no longer a network address (any local user could reach it); it is the Unix socket STATE/{} that only the pipeline's owner may use. Write `control = true` (the default) or `control = false`, or serve it over TCP too with a token: `[control] http = \"{addr}\"`",
                    SOCKET_FILE
                )))
            }
        };
        let table = table.unwrap_or(ControlTable {
            http: None,
            http_public: None,
            http_token_file: None,
        });
        let http = match o.http.or(table.http) {
            Some(addr) if control => Some(http_listen(
                &addr,
                o.http_public || table.http_public.unwrap_or(false),
                o.http_token_file
                    .or(table.http_token_file.map(|f| base.join(f))),
            )?),
            _ => None,
        };
        let mut watermark = WatermarkSpec::default();
        if let Some(t) = &f.source.watermark {
            watermark.max_out_of_order = t.max_out_of_order.unwrap_or(0);
            watermark.step = t.step.unwrap_or(1);
            watermark.allowed_lateness = t.allowed_lateness.unwrap_or(0);
            watermark.late = t.late.unwrap_or_default();
            watermark.idle_timeout_ms = t.idle_timeout_ms;
            if watermark.step == 0 {
                return Err(PipelineError::Invalid(
                    "[source.watermark] step must be at least 1".into(),
                ));
            }
            if t.idle_timeout_ms == Some(0) {
                return Err(PipelineError::Invalid(
                    "[source.watermark] idle_timeout_ms must be at least 1 (leave it out for no idle timeout)".into(),
                ));
            }
        }
        if let Some((op, w)) = operators
            .iter()
            .skip(1)
            .find_map(|op| Some((op, op.window.as_ref()?)))
        {
            return Err(PipelineError::Invalid(format!(
                "pipeline file {}, line {}: operator `{}`: window: a window operator must be the first operator of a chain for now (windows fire on timers, which only the first operator has)",
                src.0.display(),
                w.line,
                op.name
            )));
        }
        if let Some(op) = operators.iter().skip(1).find(|op| !op.ttl.is_empty()) {
            return Err(PipelineError::Invalid(format!(
                "operator `{}`: ttl.{}: state time to live is only supported on the first operator of a chain for now",
                op.name, op.ttl[0].name
            )));
        }
        let cache_bytes = match (&o.cache_bytes, &f.state.cache_bytes) {
            (Some(t), _) => {
                parse_bytes(t).map_err(|e| PipelineError::Invalid(format!("--cache-bytes {e}")))?
            }
            (None, Some(ByteSize::Number(n))) => Some(usize::try_from(*n).unwrap_or(usize::MAX)),
            (None, Some(ByteSize::Text(t))) => parse_bytes(t)
                .map_err(|e| PipelineError::Invalid(format!("[state] cache_bytes = {e}")))?,
            (None, None) => Some(DEFAULT_CACHE_BYTES),
        };
        if let Some(b) = cache_bytes {
            // The workers get 7/8 of it (see `pipeline::start`).
            let min =
                (workers * operators.len().max(1) * MIN_CACHE_BYTES_PER_WORKER_OP * 8).div_ceil(7);
            if b < min {
                return Err(PipelineError::Invalid(format!(
                    "[state] cache_bytes = {b} is too small for {workers} worker(s) and {} operator(s): it must be at least {min} bytes ({} MiB per worker and operator for the keys of the batches in hand, plus redb's share)",
                    operators.len(),
                    MIN_CACHE_BYTES_PER_WORKER_OP >> 20
                )));
            }
        }
        let time_field = o.time_field.or(f.source.time);
        let timestamp_time = matches!(&input, Input::Kafka(k) if k.timestamp_time);
        if time_field.is_none() && !timestamp_time && watermark.idle_timeout_ms.is_some() {
            return Err(PipelineError::Invalid(
                "[source.watermark] idle_timeout_ms moves the event-time watermark: it needs a time field ([source] time, --time, or time = \"timestamp\" for Kafka)".into(),
            ));
        }
        if time_field.is_none() {
            if let Some((op, w)) = operators
                .iter()
                .find_map(|op| Some((op, op.window.as_ref()?)))
            {
                return Err(PipelineError::Invalid(format!(
                    "pipeline file {}, line {}: operator `{}`: window: a window is in event time: it needs a time field ([source] time, or --time)",
                    src.0.display(),
                    w.line,
                    op.name
                )));
            }
            if let Some(op) = operators.iter().find(|op| !op.ttl.is_empty()) {
                return Err(PipelineError::Invalid(format!(
                    "operator `{}`: ttl.{} is in event time: it needs a time field ([source] time)",
                    op.name, op.ttl[0].name
                )));
            }
        }
        Ok(Pipeline {
            watermark,
            follow,
            watch: o.watch || f.watch.unwrap_or(false),
            control,
            http,
            verify_state: o.verify_state || f.state.verify_on_open.unwrap_or(false),
            cache_bytes,
            compact,
            input,
            key_field: o.key_field.or(f.source.key).unwrap_or_else(|| "key".into()),
            time_field,
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

/// The TCP listener at `addr`, checked: an address, loopback unless
/// `public`.
fn http_listen(
    addr: &str,
    public: bool,
    token_file: Option<PathBuf>,
) -> Result<HttpListen, PipelineError> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|e| {
        PipelineError::Invalid(format!(
            "control http = {addr:?}: not an address ({e}); write IP:PORT, such as 127.0.0.1:9100"
        ))
    })?;
    if !parsed.ip().is_loopback() && !public {
        return Err(PipelineError::Invalid(format!(
            "control http = {addr:?} is not a loopback address: other machines could reach the control plane (each request still needs the token). Serve it on 127.0.0.1, or opt in with `http_public = true` in [control] (--http-public)"
        )));
    }
    Ok(HttpListen {
        addr: parsed,
        public,
        token_file,
    })
}
