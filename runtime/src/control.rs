//! The control endpoint of a running pipeline: `eddy status`, `eddy swap`
//! and `eddy rollback` talk to it.
//!
//! It listens on a loopback TCP address only (default: a free port on
//! 127.0.0.1), written into the state directory as `control.addr` so the
//! CLI finds it from the state directory alone. The protocol is one JSON
//! [`Request`] line in, one JSON [`Response`] line out, per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::swap::{Controller, Status, SwapReport};

/// File of the state directory holding the control address.
pub const ADDR_FILE: &str = "control.addr";

/// Longest request accepted, in bytes.
const MAX_REQUEST: u64 = 64 * 1024;

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
    #[error("control address {addr} is not a loopback address: the control endpoint only listens on this machine (use 127.0.0.1:PORT or [::1]:PORT)")]
    NotLoopback { addr: SocketAddr },
    #[error("control address `{addr}`: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("cannot listen on control address {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no running eddy found for state directory {dir}: {file} {reason}; start `eddy run` with this state directory, or pass --control ADDR")]
    NoAddrFile {
        dir: PathBuf,
        file: PathBuf,
        reason: String,
    },
    #[error("cannot reach eddy at {addr}{from}: {error}; is `eddy run` still running?")]
    Connect {
        addr: SocketAddr,
        from: String,
        error: std::io::Error,
    },
    #[error("talking to eddy at {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

/// Parses a control address and checks it is loopback.
pub fn parse_addr(s: &str) -> Result<SocketAddr, ControlError> {
    let addr: SocketAddr = s.parse().map_err(|e| ControlError::BadAddress {
        addr: s.to_string(),
        reason: format!("{e} (expected IP:PORT, like 127.0.0.1:7077)"),
    })?;
    if !addr.ip().is_loopback() {
        return Err(ControlError::NotLoopback { addr });
    }
    Ok(addr)
}

/// A listening control endpoint; serves until the controller is stopped.
pub struct Server {
    addr: SocketAddr,
    addr_file: PathBuf,
    /// The accept loop; joined on drop (it ends once the controller is
    /// stopped), so the state directory is released when `run` returns.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` and serves `controller` on a thread; writes the
    /// address into `state_dir`.
    pub fn start(
        addr: SocketAddr,
        state_dir: &Path,
        controller: Arc<Controller>,
    ) -> anyhow::Result<Server> {
        if !addr.ip().is_loopback() {
            return Err(ControlError::NotLoopback { addr }.into());
        }
        let listener =
            TcpListener::bind(addr).map_err(|error| ControlError::Bind { addr, error })?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let addr_file = state_dir.join(ADDR_FILE);
        std::fs::write(&addr_file, format!("{addr}\n")).map_err(|e| {
            anyhow::anyhow!(
                "writing the control address to {}: {e}",
                addr_file.display()
            )
        })?;
        let thread = std::thread::Builder::new()
            .name("eddy-control".into())
            .spawn(move || serve(listener, controller))?;
        Ok(Server {
            addr,
            addr_file,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only remove the file if it is still ours.
        if let Ok(text) = std::fs::read_to_string(&self.addr_file) {
            if text.trim() == self.addr.to_string() {
                let _ = std::fs::remove_file(&self.addr_file);
            }
        }
    }
}

fn serve(listener: TcpListener, controller: Arc<Controller>) {
    while !controller.stopped.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((conn, _)) => {
                let c = controller.clone();
                let _ = std::thread::Builder::new()
                    .name("eddy-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle(conn, &c) {
                            tracing::debug!("control connection: {e}");
                        }
                    });
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

fn handle(conn: TcpStream, controller: &Controller) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error {
            message: format!("malformed request: {e}"),
        },
        Ok(Request::Status) => Response::Status(Box::new(controller.status())),
        Ok(Request::Swap {
            operator,
            component,
        }) => match controller.swap(&operator, &component) {
            Ok(r) => Response::Swapped(Box::new(r)),
            Err(e) => Response::Error { message: e.0 },
        },
        Ok(Request::Rollback { operator }) => match controller.rollback(&operator) {
            Ok(r) => Response::Swapped(Box::new(r)),
            Err(e) => Response::Error { message: e.0 },
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}

/// The control address of the pipeline running on `state_dir`.
pub fn find(state_dir: &Path) -> Result<SocketAddr, ControlError> {
    let file = state_dir.join(ADDR_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| ControlError::NoAddrFile {
        dir: state_dir.to_path_buf(),
        file: file.clone(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_string()
        } else {
            format!("cannot be read: {e}")
        },
    })?;
    parse_addr(text.trim()).map_err(|e| ControlError::NoAddrFile {
        dir: state_dir.to_path_buf(),
        file,
        reason: format!("is not usable: {e}"),
    })
}

/// Sends `request` to the pipeline at `addr` and waits for the answer (a
/// swap answers once it is durable). `from` says where the address came
/// from, for error messages.
pub fn request(addr: SocketAddr, from: &str, request: &Request) -> Result<Response, ControlError> {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|error| {
        ControlError::Connect {
            addr,
            from: from.to_string(),
            error,
        }
    })?;
    let proto = |reason: String| ControlError::Protocol { addr, reason };
    let mut line = serde_json::to_vec(request).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    (&conn)
        .write_all(&line)
        .map_err(|e| proto(format!("sending the request: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(|e| proto(format!("reading the answer: {e}")))?;
    if answer.is_empty() {
        return Err(proto(
            "the pipeline closed the connection without answering (it stopped?)".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| proto(format!("malformed answer: {e}")))
}
