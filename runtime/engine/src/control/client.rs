//! The client side: find a pipeline's socket, send it a request.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{
    socket_path, with_short_path, ControlError, Envelope, Request, Response, REQUEST_TIMEOUT,
};

/// Time allowed, after the switch, for the checkpoint that makes a swap
/// durable.
const COMMIT_GRACE: Duration = Duration::from_secs(30);

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
