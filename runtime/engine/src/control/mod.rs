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
//!
//! # Layout
//!
//! - `protocol`: the requests and answers, limits and defaults.
//! - `server`: the endpoint a running pipeline serves (`Server`).
//! - `client`: [`find`] a pipeline's socket and send it a [`request`].
//! - `status`: the [`Status`] answer, built from the swap controller and
//!   the workers' counters.

mod client;
mod protocol;
mod server;
mod status;

pub use client::{find, request};
pub use protocol::{
    parse_request, socket_path, ControlError, Envelope, OperatorStatus, Request, Response, Status,
    WorkerStatus, DEFAULT_WAIT, MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT, SOCKET_FILE,
};
pub(crate) use server::Server;
