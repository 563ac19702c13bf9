//! The client side: find a pipeline's socket, send it a request over HTTP
//! (blocking; a current-thread runtime per call).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::protocol::{
    socket_path, with_short_path, ControlError, Envelope, ErrorBody, Request, Response,
    REQUEST_TIMEOUT,
};

/// Time allowed, after the switch, for the checkpoint that makes a swap
/// durable.
const COMMIT_GRACE: Duration = Duration::from_secs(30);

/// Longest answer read.
const MAX_ANSWER: usize = 64 << 20;

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
    let envelope = Envelope {
        request: request.clone(),
        wait_ms: match request {
            Request::Status => None,
            _ => Some(wait.as_millis().min(u64::MAX as u128) as u64),
        },
    };
    let (method, path, body) = envelope.http();
    let patience = match request {
        Request::Status => REQUEST_TIMEOUT.saturating_add(COMMIT_GRACE),
        _ => wait.saturating_add(COMMIT_GRACE),
    };
    let (status, answer) = exchange(socket, method, path, body, patience)?;
    let proto = |reason: String| ControlError::Protocol {
        socket: socket.to_path_buf(),
        reason,
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&answer)
            .map(|e| e.error)
            .map_err(|e| proto(format!("malformed answer ({status}): {e}")))?;
        return Ok(Response::Error { message });
    }
    match request {
        Request::Status => serde_json::from_slice(&answer)
            .map(|s| Response::Status(Box::new(s)))
            .map_err(|e| proto(format!("malformed answer: {e}"))),
        _ => serde_json::from_slice(&answer)
            .map(|r| Response::Swapped(Box::new(r)))
            .map_err(|e| proto(format!("malformed answer: {e}"))),
    }
}

/// `GET path_and_query` on the pipeline listening on `socket`: the JSON
/// answer, or the pipeline's error message (`Err`) when it answered with
/// an error status.
pub fn get_json(
    socket: &Path,
    path_and_query: &str,
) -> Result<Result<serde_json::Value, String>, ControlError> {
    let (status, answer) = exchange(
        socket,
        "GET",
        path_and_query,
        Vec::new(),
        REQUEST_TIMEOUT.saturating_add(COMMIT_GRACE),
    )?;
    answer_json(socket, status, &answer)
}

/// `POST path` with the JSON `body` to the pipeline listening on
/// `socket`, waiting up to `patience` for the answer: its JSON, or the
/// pipeline's error message (`Err`) when it answered with an error status.
pub fn post_json(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
    patience: Duration,
) -> Result<Result<serde_json::Value, String>, ControlError> {
    let body = serde_json::to_vec(body).expect("JSON values serialize");
    let (status, answer) = exchange(socket, "POST", path, body, patience)?;
    answer_json(socket, status, &answer)
}

/// The JSON of an answer, or its error message when `status` says it
/// failed.
fn answer_json(
    socket: &Path,
    status: hyper::StatusCode,
    answer: &[u8],
) -> Result<Result<serde_json::Value, String>, ControlError> {
    let proto = |reason: String| ControlError::Protocol {
        socket: socket.to_path_buf(),
        reason,
    };
    if !status.is_success() {
        return serde_json::from_slice::<ErrorBody>(answer)
            .map(|e| Err(e.error))
            .map_err(|e| proto(format!("malformed answer ({status}): {e}")));
    }
    serde_json::from_slice(answer)
        .map(Ok)
        .map_err(|e| proto(format!("malformed answer: {e}")))
}

/// `text` with every byte but the unreserved ones percent-encoded: one
/// path segment or query value.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One HTTP request on a new connection to `socket`: the status and body
/// of the answer.
fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
    patience: Duration,
) -> Result<(hyper::StatusCode, Bytes), ControlError> {
    let conn = with_short_path(socket, |p| std::os::unix::net::UnixStream::connect(p)).map_err(
        |error| {
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
        },
    )?;
    let proto = |reason: String| ControlError::Protocol {
        socket: socket.to_path_buf(),
        reason,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| proto(e.to_string()))?;
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "eddy")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| proto(format!("the request: {e}")))?;
    runtime.block_on(async move {
        conn.set_nonblocking(true)
            .map_err(|e| proto(e.to_string()))?;
        let stream = tokio::net::UnixStream::from_std(conn).map_err(|e| proto(e.to_string()))?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| proto(format!("sending the request: {e}")))?;
            tokio::spawn(connection);
            let answer = sender.send_request(request).await.map_err(|e| {
                proto(match e.is_incomplete_message() || e.is_canceled() {
                    true => {
                        "the pipeline closed the connection without answering (it stopped?)".into()
                    }
                    false => format!("reading the answer: {e}"),
                })
            })?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| proto(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(patience, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(proto(format!(
                    "no answer within {} s; a swap or rollback may still have taken effect: see `eddy status`",
                    patience.as_secs()
                )))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_component("user-1_a.b~"), "user-1_a.b~");
        assert_eq!(encode_component("a/b c?d#é%"), "a%2Fb%20c%3Fd%23%C3%A9%25");
    }
}
