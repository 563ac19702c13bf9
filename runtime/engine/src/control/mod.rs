//! The control plane of a running pipeline: HTTP/1.1 served on the
//! owner-only Unix socket [`SOCKET_FILE`] in the state directory and, if
//! the pipeline asks for it (`[control] http`, `--http`), on a TCP
//! address with a bearer token. `eddy status`, `eddy swap`, `eddy
//! rollback` and `eddy state` talk to it; so can `curl --unix-socket` and
//! Prometheus. Endpoints, errors and consistency: `docs/control.md`.
//!
//! Only the pipeline's owner may use it:
//!
//! - the state directory is the owner's and not writable by others (the
//!   store checks it), and the socket file is made 0600, so another local
//!   user cannot even connect;
//! - every socket connection's peer credentials (`SO_PEERCRED`) are
//!   checked: a process of another user than the one running `eddy` (root
//!   excepted) is answered `403` and nothing else;
//! - the TCP listener is on a loopback address unless the pipeline opts in
//!   (`http_public`), and every request on it must carry the token
//!   (`Authorization: Bearer ..`), generated at each start into
//!   [`TOKEN_FILE`] (0600) or read from the pipeline's token file.
//!
//! The endpoint is built to survive abuse: a request must arrive whole
//! within [`REQUEST_TIMEOUT`] and its body be at most [`MAX_REQUEST`]
//! bytes; at most [`MAX_CONNECTIONS`] connections are served at once (more
//! are answered `503` at once); and a swap or rollback whose client went
//! away or whose waiting time ran out before the switch changes nothing.
//!
//! # Layout
//!
//! - `protocol`: the requests and answers of status, swap and rollback,
//!   limits and defaults.
//! - `server`: the endpoint a running pipeline serves (`Server`): its
//!   thread and runtime, listeners, who may connect.
//! - `routes`: the endpoints.
//! - `status`: the [`Status`] answer, built from the swap controller and
//!   the workers' counters.
//! - `metrics`: `GET /metrics`, the Prometheus text.
//! - `query`: a key's committed state as JSON ([`state_get`],
//!   [`state_scan`]), for `GET /state/..` and `eddy state`.
//! - `client`: [`find`] a pipeline's socket and send it a [`request`] or a
//!   [`get_json`] or a [`post_json`].

mod client;
mod metrics;
mod protocol;
mod query;
mod routes;
mod server;
mod status;

pub use client::{encode_component, find, get_json, post_json, request};
pub use protocol::{
    parse_request, socket_path, ControlError, Envelope, ErrorBody, OperatorStatus, Request,
    Response, Status, WorkerStatus, DEFAULT_WAIT, MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT,
    SOCKET_FILE,
};
pub use query::{state_get, state_scan, KeyState, QueryError, Scan, DEFAULT_SCAN, MAX_SCAN};
pub(crate) use server::Server;
pub use server::TOKEN_FILE;
