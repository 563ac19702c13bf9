//! The control endpoint of a running pipeline: `eddy status`, `eddy swap`
//! and `eddy rollback` talk to it.
//!
//! It is a Unix socket in the state directory, [`SOCKET_FILE`], and only
//! the pipeline's owner may use it:
//!
//! - the state directory is the owner's and not writable by others (the
//!   store checks it), and the socket file is made 0600, so another local
//!   user cannot even connect;
//! - every connection's peer credentials (`SO_PEERCRED`) are checked: a
//!   process of another user than the one running `eddy` (root excepted)
//!   is answered with a refusal and nothing else.
//!
//! The protocol is one JSON request line in ([`Envelope`]: a [`Request`]
//! and how long the client waits), one JSON [`Response`] line out, per
//! connection. The endpoint is built to survive abuse: a request must
//! arrive whole within [`REQUEST_TIMEOUT`] and be at most [`MAX_REQUEST`]
//! bytes; at most [`MAX_CONNECTIONS`] connections are served at once (more
//! are refused at once); and a swap or rollback whose client went away or
//! whose waiting time ran out before the switch changes nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::swap::{Asker, Controller, Status, SwapReport};

/// File of the state directory that is the control socket.
pub const SOCKET_FILE: &str = "control.sock";

/// Longest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Time a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more are refused at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long `eddy swap` and `eddy rollback` wait by default for the new
/// version to be checked and switched to (compiling a Python or JavaScript
/// component takes tens of seconds).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// Time allowed, after the switch, for the checkpoint that makes a swap
/// durable.
const COMMIT_GRACE: Duration = Duration::from_secs(30);

/// A request to a running pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// What runs: versions, counters, positions.
    Status,
    /// Replace `operator` by the component at `component` (an absolute path
    /// on the pipeline's machine).
    Swap {
        operator: String,
        component: PathBuf,
    },
    /// Return `operator` to the version before the current one.
    Rollback { operator: String },
}

/// What goes over the wire: a [`Request`] and how long its client waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub request: Request,
    /// Milliseconds the client waits for a swap or rollback to be switched
    /// to; past it the pipeline gives the request up, changing nothing.
    /// Absent: [`DEFAULT_WAIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Swapped(Box<SwapReport>),
    /// The request was refused; nothing changed.
    Error {
        message: String,
    },
}

/// Why the control endpoint could not be used.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot serve the control socket {socket}: {error}")]
    Bind {
        socket: PathBuf,
        error: std::io::Error,
    },
    #[error("no running eddy found for state directory {dir}: {socket} {reason}; start `eddy run` with this state directory, or pass --socket PATH")]
    NoSocket {
        dir: PathBuf,
        socket: PathBuf,
        reason: String,
    },
    #[error("cannot reach eddy at {socket}: {error}{hint}")]
    Connect {
        socket: PathBuf,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("talking to eddy at {socket}: {reason}")]
    Protocol { socket: PathBuf, reason: String },
}

/// Where the control socket of the pipeline on `state_dir` is.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Parses one request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<Envelope, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))
}

/// A listening control endpoint; serves until the controller is stopped.
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket file, to remove it only if it is
    /// still ours.
    id: (u64, u64),
    /// The accept loop; joined on drop (it ends once the controller is
    /// stopped), so the state directory is released when `run` returns.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `controller` on the socket [`SOCKET_FILE`] of `state_dir`
    /// (owner only), on a thread.
    pub fn start(state_dir: &Path, controller: Arc<Controller>) -> Result<Server, ControlError> {
        let path = socket_path(state_dir);
        let bind_err = |error| ControlError::Bind {
            socket: path.clone(),
            error,
        };
        // The state directory is locked by this process (the store holds
        // its database open), so a socket file left there is a crashed
        // run's: replace it. Anything else is not ours to delete.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(&path).map_err(bind_err)?
            }
            Ok(_) => {
                return Err(bind_err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way; remove it",
                )))
            }
            Err(_) => {}
        }
        let listener = with_short_path(&path, |p| UnixListener::bind(p)).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(bind_err)?;
        let id = (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        listener.set_nonblocking(true).map_err(bind_err)?;
        let thread = std::thread::Builder::new()
            .name("eddy-control".into())
            .spawn(move || serve(listener, controller))
            .map_err(bind_err)?;
        Ok(Server {
            path,
            id,
            thread: Some(thread),
        })
    }

    /// The socket it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            use std::os::unix::fs::MetadataExt;
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Runs `f` on `path`, or, when `path` is too long for a socket address
/// (108 bytes on Linux), on the same file reached through the directory's
/// descriptor (`/proc/self/fd/N/NAME`).
fn with_short_path<T>(path: &Path, f: impl Fn(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
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

/// Time a refused connection of another user is given to send its request
/// and read the refusal.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections of other users being refused at once; more are closed
/// without an answer.
const MAX_REFUSING: usize = 4;

fn serve(listener: UnixListener, controller: Arc<Controller>) {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    while !controller.stopped.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, _)) => {
                // Another user is refused at once: it never holds one of
                // the connections the owner may use. Its request is read
                // first (briefly), so that closing does not reset the
                // connection before it reads the refusal.
                if let Err(message) = check_peer(&conn) {
                    tracing::warn!("control socket: {message}");
                    if refusing.load(Ordering::Acquire) < MAX_REFUSING {
                        let slot = Slot::take(&refusing);
                        let _ = std::thread::Builder::new()
                            .name("eddy-control-no".into())
                            .spawn(move || {
                                let _slot = slot;
                                let _ = conn.set_write_timeout(Some(REFUSE_TIMEOUT));
                                let _ = read_request(&conn, Instant::now() + REFUSE_TIMEOUT);
                                let _ = answer(&conn, &Response::Error { message });
                            });
                    }
                    continue;
                }
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    refuse(
                        conn,
                        format!(
                            "the pipeline is already serving {MAX_CONNECTIONS} control connections; try again"
                        ),
                    );
                    continue;
                }
                let slot = Slot::take(&active);
                let c = controller.clone();
                let spawned = std::thread::Builder::new()
                    .name("eddy-control-conn".into())
                    .spawn(move || {
                        // Freed however the handler ends (a panic included).
                        let _slot = slot;
                        if let Err(e) = handle(conn, &c) {
                            tracing::debug!("control connection: {e}");
                        }
                    });
                drop(spawned);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("control endpoint: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] connections being served; freed on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Slot {
        active.fetch_add(1, Ordering::AcqRel);
        Slot(active.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection with a refusal, without blocking.
fn refuse(conn: UnixStream, message: String) {
    let _ = conn.set_nonblocking(true);
    // Take what the client sent so far, so closing does not reset the
    // connection before it reads the refusal.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!((&conn).read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = answer(&conn, &Response::Error { message });
}

fn answer(conn: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&*conn).write_all(&out)
}

/// Whether the peer of `conn` may control this pipeline: it runs as the
/// same user as this process, or as root.
fn check_peer(conn: &UnixStream) -> Result<(), String> {
    let peer = rustix::net::sockopt::socket_peercred(conn)
        .map_err(|e| format!("cannot tell who is connecting: {e}"))?;
    let me = rustix::process::geteuid();
    if peer.uid == me || peer.uid.is_root() {
        Ok(())
    } else {
        Err(format!(
            "refused: this pipeline is controlled only by its owner (uid {}), not by uid {}",
            me.as_raw(),
            peer.uid.as_raw()
        ))
    }
}

/// Reads one request line, which must arrive whole by `deadline` (a client
/// that sends a byte now and then does not hold the connection longer).
fn read_request(conn: &UnixStream, deadline: Instant) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the request did not arrive whole within {} s",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        conn.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match (&*conn).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memchr(b'\n', &buf) {
            buf.truncate(i);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST {
            return Err(format!("the request is longer than {MAX_REQUEST} bytes"));
        }
    }
}

/// Whether the client on `conn` still waits for its answer: it has not
/// closed the connection (a client that only shut down its sending side,
/// as `nc -N` does, still waits).
fn still_waiting(conn: &UnixStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(conn, PollFlags::empty())];
    match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(_) => !fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR),
        Err(_) => true,
    }
}

fn handle(conn: UnixStream, controller: &Controller) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let received = Instant::now();
    let envelope =
        read_request(&conn, received + REQUEST_TIMEOUT).and_then(|line| parse_request(&line));
    let response = match envelope {
        Err(message) => Response::Error { message },
        Ok(Envelope { request, wait_ms }) => {
            let wait = wait_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
            let waiting = || still_waiting(&conn);
            let asker = Asker {
                deadline: received + wait,
                waiting: &waiting,
            };
            match request {
                Request::Status => Response::Status(Box::new(controller.status())),
                Request::Swap {
                    operator,
                    component,
                } => match controller.swap(&operator, &component, &asker) {
                    Ok(r) => Response::Swapped(Box::new(r)),
                    Err(e) => Response::Error { message: e.0 },
                },
                Request::Rollback { operator } => match controller.rollback(&operator, &asker) {
                    Ok(r) => Response::Swapped(Box::new(r)),
                    Err(e) => Response::Error { message: e.0 },
                },
            }
        }
    };
    answer(&conn, &response)
}

/// The control socket of the pipeline running on `state_dir`, when there is
/// one.
pub fn find(state_dir: &Path) -> Result<PathBuf, ControlError> {
    let socket = socket_path(state_dir);
    match std::fs::symlink_metadata(&socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => Ok(socket),
        Ok(_) => Err(ControlError::NoSocket {
            dir: state_dir.to_path_buf(),
            socket,
            reason: "is not a socket".into(),
        }),
        Err(e) => Err(ControlError::NoSocket {
            dir: state_dir.to_path_buf(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                std::io::ErrorKind::PermissionDenied => format!(
                    "cannot be reached ({e}): only the user who runs the pipeline may control it"
                ),
                _ => format!("cannot be reached: {e}"),
            },
            socket,
        }),
    }
}

/// Sends `request` to the pipeline listening on `socket` and waits for the
/// answer. A swap or rollback answers once it is durable; the pipeline
/// gives it up, changing nothing, if it cannot switch within `wait`.
pub fn request(socket: &Path, request: &Request, wait: Duration) -> Result<Response, ControlError> {
    let conn = with_short_path(socket, |p| UnixStream::connect(p)).map_err(|error| {
        let hint = match error.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; only the user who runs the pipeline may control it"
            }
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                "; is `eddy run` still running?"
            }
            _ => "",
        };
        ControlError::Connect {
            socket: socket.to_path_buf(),
            error,
            hint,
        }
    })?;
    let proto = |reason: String| ControlError::Protocol {
        socket: socket.to_path_buf(),
        reason,
    };
    let envelope = Envelope {
        request: request.clone(),
        wait_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
    };
    let mut line = serde_json::to_vec(&envelope).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| (&conn).write_all(&line))
        .map_err(|e| proto(format!("sending the request: {e}")))?;
    conn.set_read_timeout(Some(wait.saturating_add(COMMIT_GRACE)))
        .map_err(|e| proto(e.to_string()))?;
    let mut answer = Vec::new();
    (&conn)
        .take(64 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => proto(format!(
                "no answer within {} s; a swap or rollback may still have taken effect: see `eddy status`",
                wait.saturating_add(COMMIT_GRACE).as_secs()
            )),
            _ => proto(format!("reading the answer: {e}")),
        })?;
    if answer.is_empty() {
        return Err(proto(
            "the pipeline closed the connection without answering (it stopped?)".into(),
        ));
    }
    serde_json::from_slice(&answer).map_err(|e| proto(format!("malformed answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_and_without_a_wait() {
        let e = parse_request(
            br#"{"request":"swap","operator":"c","component":"/x.wasm","wait_ms":5}"#,
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
        let e = parse_request(br#"{"request":"status"}"#).unwrap();
        assert_eq!(e.request, Request::Status);
        assert_eq!(e.wait_ms, None);
        for bad in [
            &b""[..],
            b"{",
            b"{\"request\":\"reboot\"}",
            b"{\"request\":\"swap\"}",
            b"\xff\xfe",
            b"{\"request\":\"status\",\"wait_ms\":-1}",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert!(err.starts_with("malformed request: "), "{err}");
        }
    }

    #[test]
    fn a_request_must_arrive_whole_in_time_and_within_the_size_cap() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"{\"request\":\"status\"}\nrest").unwrap();
        let line = read_request(&b, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(line, b"{\"request\":\"status\"}");

        // One byte now and then does not keep the connection past the
        // deadline.
        let (a, b) = UnixStream::pair().unwrap();
        let slow = std::thread::spawn(move || {
            for _ in 0..6 {
                if (&a).write_all(b"{").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Instant::now();
        let err = read_request(&b, Instant::now() + Duration::from_millis(250)).unwrap_err();
        assert!(err.contains("did not arrive whole"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(b);
        slow.join().unwrap();

        let (a, b) = UnixStream::pair().unwrap();
        let big = std::thread::spawn(move || {
            let _ = (&a).write_all(&vec![b' '; MAX_REQUEST + 10_000]);
        });
        let err = read_request(&b, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        drop(b);
        big.join().unwrap();
    }

    #[test]
    fn a_closed_client_is_seen_as_gone_a_half_closed_one_still_waits() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(still_waiting(&b));
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(still_waiting(&b));
        drop(a);
        assert!(!still_waiting(&b));
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
