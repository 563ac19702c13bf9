//! The control plane's requests and answers: what `eddy status`, `eddy
//! swap` and `eddy rollback` send over HTTP ([`Envelope`]: `GET /status`,
//! `POST /swap`, `POST /rollback` with a JSON body) and what they get back
//! ([`Response`]), limits and defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::config::SOCKET_FILE;
use crate::stats::{OpStats, SwapPause};
use crate::swap::{SwapReport, Version};

/// Longest request body accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Time a client has to send its whole request (headers and body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once, over all listeners; more are answered
/// `503 Service Unavailable` at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long `eddy swap` and `eddy rollback` wait by default for the new
/// version to be checked and switched to (compiling a Python or JavaScript
/// component takes tens of seconds).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// A request to a running pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// What runs: versions, counters, positions.
    Status,
    /// Replace `operator` by the component at `component` (an absolute path
    /// on the pipeline's machine).
    Swap {
        /// The operator.
        operator: String,
        /// Path of the new component, on the pipeline's machine.
        component: PathBuf,
    },
    /// Return `operator` to the version before the current one.
    Rollback {
        /// The operator.
        operator: String,
    },
}

/// A [`Request`] and how long its client waits: what one HTTP request of
/// `eddy status|swap|rollback` carries ([`Envelope::http`],
/// [`parse_request`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    /// The request.
    pub request: Request,
    /// Milliseconds the client waits for a swap or rollback to be switched
    /// to; past it the pipeline gives the request up, changing nothing.
    /// Absent: [`DEFAULT_WAIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The answer to a [`Request`], as the client sees it: `200` with a
/// [`Status`] or a [`SwapReport`], or an error status with an
/// [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    /// What runs.
    Status(Box<Status>),
    /// The swap or rollback is done and durable.
    Swapped(Box<SwapReport>),
    /// The request was refused; nothing changed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Why the control endpoint could not be used.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot serve the control socket {socket}: {error}")]
    /// The socket could not be made.
    Bind {
        /// The control socket.
        socket: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error("cannot serve the control plane on {addr}: {reason}")]
    /// The TCP listener could not be served.
    Http {
        /// The address asked for.
        addr: String,
        /// Why.
        reason: String,
    },
    #[error("no running eddy found for state directory {dir}: {socket} {reason}; start `eddy run` with this state directory, or pass --socket PATH")]
    /// No control socket was found.
    NoSocket {
        /// The state directory.
        dir: PathBuf,
        /// The control socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    #[error("cannot reach eddy at {socket}: {error}{hint}")]
    /// The socket could not be reached.
    Connect {
        /// The control socket.
        socket: PathBuf,
        /// The underlying error.
        error: std::io::Error,
        /// What to try next (may be empty).
        hint: &'static str,
    },
    #[error("talking to eddy at {socket}: {reason}")]
    /// The exchange failed.
    Protocol {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the control socket of the pipeline on `state_dir` is.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// The body of every error answer of the control plane:
/// `{"error": "what went wrong"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// The body of `POST /swap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwapBody {
    operator: String,
    component: PathBuf,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// The body of `POST /rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    operator: String,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// Reads the request `method path` with `body` (`GET /status`, `POST
/// /swap` with `{"operator": .., "component": .., "wait_ms": ..}`, `POST
/// /rollback` with `{"operator": .., "wait_ms": ..}`; `wait_ms` is
/// optional). The error says what is wrong, starting with `malformed
/// request: `.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<Envelope, String> {
    let bad = |e: &dyn std::fmt::Display| format!("malformed request: {e}");
    match (method, path) {
        ("GET", "/status") => Ok(Envelope {
            request: Request::Status,
            wait_ms: None,
        }),
        ("POST", "/swap") => {
            let b: SwapBody = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            Ok(Envelope {
                request: Request::Swap {
                    operator: b.operator,
                    component: b.component,
                },
                wait_ms: b.wait_ms,
            })
        }
        ("POST", "/rollback") => {
            let b: RollbackBody = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            Ok(Envelope {
                request: Request::Rollback {
                    operator: b.operator,
                },
                wait_ms: b.wait_ms,
            })
        }
        _ => Err(bad(&format_args!(
            "no request {method} {path} (the requests are GET /status, POST /swap and POST /rollback)"
        ))),
    }
}

impl Envelope {
    /// The HTTP method, path and JSON body that carry this request (what
    /// [`parse_request`] reads back).
    pub fn http(&self) -> (&'static str, &'static str, Vec<u8>) {
        let wait = self.wait_ms;
        match &self.request {
            Request::Status => ("GET", "/status", Vec::new()),
            Request::Swap {
                operator,
                component,
            } => {
                // A path that is not UTF-8 cannot go in JSON: the
                // pipeline is told its lossy form and names it in its
                // refusal.
                let mut body = serde_json::json!({
                    "operator": operator,
                    "component": component.to_string_lossy(),
                });
                if let Some(w) = wait {
                    body["wait_ms"] = w.into();
                }
                ("POST", "/swap", body.to_string().into_bytes())
            }
            Request::Rollback { operator } => {
                let mut body = serde_json::json!({ "operator": operator });
                if let Some(w) = wait {
                    body["wait_ms"] = w.into();
                }
                ("POST", "/rollback", body.to_string().into_bytes())
            }
        }
    }
}

/// What `eddy status` shows of one operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorStatus {
    /// Its name.
    pub name: String,
    /// The version running now.
    pub version: Version,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// Totals over the workers.
    pub handled: u64,
    /// Events that failed (dead-lettered), over the workers.
    pub failed: u64,
    /// Events emitted, over the workers.
    pub emitted: u64,
    /// Counters per worker.
    pub workers: Vec<OpStats>,
}

/// What `eddy status` shows of one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The worker's id.
    pub id: usize,
    /// Input line of the last event it handled.
    pub line: u64,
    /// Its most recent swap pauses.
    pub pauses: Vec<SwapPause>,
}

/// A running pipeline, as `eddy status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The pipeline's process.
    pub pid: u32,
    /// The state directory.
    pub state_dir: String,
    /// Where events come from.
    pub input: String,
    /// Input lines read so far (the next line's number is one more).
    pub lines_read: u64,
    /// The input's watermark (with a time field, once it has one; the
    /// largest `i64` once the input ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<i64>,
    /// The operator chain, in order.
    pub operators: Vec<OperatorStatus>,
    /// Number of worker threads.
    pub workers: Vec<WorkerStatus>,
    /// A Kafka input: per partition, the committed offset, the end and
    /// the lag.
    #[serde(default)]
    pub kafka: Vec<crate::stats::KafkaPartition>,
    /// Bytes of the state directory's database and kept components.
    #[serde(default)]
    pub state_bytes: u64,
    /// Compactions of the state database in this run (`[state]
    /// compact`).
    #[serde(default)]
    pub compactions: crate::stats::CompactStatus,
}

/// Runs `f` on `path`, or, when `path` is too long for a socket address
/// (108 bytes on Linux), on the same file reached through the directory's
/// descriptor (`/proc/self/fd/N/NAME`).
pub(super) fn with_short_path<T>(
    path: &Path,
    f: impl Fn(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    const SUN_PATH: usize = 100;
    if path.as_os_str().len() < SUN_PATH {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
        .join(name);
    let r = f(&short);
    drop(dir);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn requests_parse_with_and_without_a_wait_and_round_trip() {
        let e = parse_request(
            "POST",
            "/swap",
            br#"{"operator":"c","component":"/x.wasm","wait_ms":5}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Envelope {
                request: Request::Swap {
                    operator: "c".into(),
                    component: "/x.wasm".into()
                },
                wait_ms: Some(5)
            }
        );
        let (m, p, b) = e.http();
        assert_eq!(parse_request(m, p, &b).unwrap(), e);
        let e = parse_request("GET", "/status", b"").unwrap();
        assert_eq!(e.request, Request::Status);
        assert_eq!(e.wait_ms, None);
        let e = parse_request("POST", "/rollback", br#"{"operator":"c"}"#).unwrap();
        assert_eq!(
            e.request,
            Request::Rollback {
                operator: "c".into()
            }
        );
        let (m, p, b) = e.http();
        assert_eq!(parse_request(m, p, &b).unwrap(), e);
        for (method, path, bad) in [
            ("POST", "/swap", &b""[..]),
            ("POST", "/swap", b"{"),
            ("POST", "/swap", b"{\"operator\":\"c\"}"),
            ("POST", "/swap", b"\xff\xfe"),
            ("POST", "/rollback", b"{\"operator\":\"c\",\"wait_ms\":-1}"),
            ("POST", "/rollback", b"{\"operator\":\"c\",\"extra\":1}"),
            ("POST", "/reboot", b"{}"),
            ("GET", "/swap", b""),
        ] {
            let err = parse_request(method, path, bad).unwrap_err();
            assert!(err.starts_with("malformed request: "), "{err}");
        }
        let err = parse_request("POST", "/reboot", b"").unwrap_err();
        assert_eq!(
            err,
            "malformed request: no request POST /reboot (the requests are GET /status, POST /swap and POST /rollback)"
        );
    }

    #[test]
    fn long_socket_paths_go_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join(SOCKET_FILE);
        assert!(path.as_os_str().len() > 108);
        let listener = with_short_path(&path, |p| UnixListener::bind(p)).unwrap();
        assert!(path.exists());
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                let c = with_short_path(&path, |p| UnixStream::connect(p)).unwrap();
                (&c).write_all(b"hi").unwrap();
            }
        });
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
        client.join().unwrap();
    }
}
