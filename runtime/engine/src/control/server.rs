//! The endpoint a running pipeline serves: HTTP/1.1 on the owner-only Unix
//! socket and, if asked, on a TCP address with a bearer token. One thread,
//! `eddy-control`, runs a current-thread tokio runtime with every
//! connection on it; swaps, rollbacks and state reads, which block, run on
//! its blocking pool (`eddy-control-io`, at most [`MAX_CONNECTIONS`]
//! threads).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use super::protocol::{
    socket_path, with_short_path, ControlError, ErrorBody, MAX_CONNECTIONS, REQUEST_TIMEOUT,
};
use super::routes;
use crate::config::HttpListen;
use crate::swap::Controller;

/// File of the state directory that holds the TCP listener's generated
/// token (0600), when the pipeline file names no token file.
pub const TOKEN_FILE: &str = "control.token";

/// A listening control endpoint; serves until it is dropped.
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket file, to remove it only if it is
    /// still ours.
    id: (u64, u64),
    /// The TCP address served, if any.
    http: Option<SocketAddr>,
    /// Tells the runtime thread to stop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The runtime's thread; joined on drop (it ends once every connection
    /// is answered, a pending swap's included: the coordinator answers
    /// them before it drops the server), so the state directory is
    /// released when the pipeline's handle returns.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Longest time the endpoint waits, when the pipeline stops, for its
/// connections to be answered.
const DRAIN: Duration = Duration::from_secs(10);

/// Time a refused connection is given to send its request and read the
/// refusal.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections of other users being refused at once; more are closed
/// without an answer.
const MAX_REFUSING: usize = 4;

impl Server {
    /// Serves `controller` on the socket [`SOCKET_FILE`](super::SOCKET_FILE)
    /// of `state_dir` (owner only) and, with `http`, on that TCP address
    /// (token required), on a thread.
    pub fn start(
        state_dir: &Path,
        controller: Arc<Controller>,
        http: Option<&HttpListen>,
    ) -> Result<Server, ControlError> {
        // The TCP listener first: if it cannot be served, no socket file
        // is left behind.
        let tcp = match http {
            None => None,
            Some(h) => {
                let token = token(state_dir, h)?;
                let listener =
                    std::net::TcpListener::bind(h.addr).map_err(|error| ControlError::Http {
                        addr: h.addr.to_string(),
                        reason: format!("cannot listen there: {error}"),
                    })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|error| ControlError::Http {
                        addr: h.addr.to_string(),
                        reason: error.to_string(),
                    })?;
                Some((listener, Arc::<str>::from(token)))
            }
        };
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
        let unix = with_short_path(&path, |p| std::os::unix::net::UnixListener::bind(p))
            .map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(&path).map_err(bind_err)?;
        let id = (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        unix.set_nonblocking(true).map_err(bind_err)?;
        let bound = match &tcp {
            Some((l, _)) => Some(l.local_addr().map_err(bind_err)?),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(MAX_CONNECTIONS)
            .thread_name("eddy-control-io")
            .build()
            .map_err(bind_err)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("eddy-control".into())
            .spawn(move || {
                runtime.block_on(serve(unix, tcp, controller, stop_rx));
                // A swap still preparing (compiling) when the drain ran
                // out is left to finish on its own.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(bind_err)?;
        Ok(Server {
            path,
            id,
            http: bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The socket it listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The TCP address it listens on, if any (with port 0 asked, the port
    /// the system gave).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

/// The TCP listener's token: read from its file, or made and written to
/// [`TOKEN_FILE`] (0600) in the state directory.
fn token(state_dir: &Path, h: &HttpListen) -> Result<String, ControlError> {
    let err = |reason: String| ControlError::Http {
        addr: h.addr.to_string(),
        reason,
    };
    match &h.token_file {
        Some(file) => {
            let bytes = crate::state::read_regular_file(file, 4096, false)
                .map_err(|e| err(format!("token file {}: {e}", file.display())))?;
            let meta = std::fs::metadata(file)
                .map_err(|e| err(format!("token file {}: {e}", file.display())))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(format!(
                    "token file {} may be read by others (mode {:o}); make it 0600",
                    file.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
            let token = String::from_utf8(bytes)
                .map_err(|_| err(format!("token file {}: not UTF-8", file.display())))?
                .trim()
                .to_string();
            if token.len() < 16 || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(err(format!(
                    "token file {}: the token must be at least 16 printable ASCII characters without spaces",
                    file.display()
                )));
            }
            Ok(token)
        }
        None => {
            use std::io::{Read, Write};
            use std::os::unix::fs::OpenOptionsExt;
            let mut raw = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(|e| err(format!("making a token: {e}")))?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let path = state_dir.join(TOKEN_FILE);
            let _ = std::fs::remove_file(&path);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
                .map_err(|e| err(format!("writing the token to {}: {e}", path.display())))?;
            Ok(token)
        }
    }
}

/// What a request's handler knows of its connection.
#[derive(Clone)]
pub(super) struct Conn {
    /// The connection's socket (a duplicate), to see whether the client
    /// still waits.
    fd: Option<Arc<OwnedFd>>,
}

impl Conn {
    /// Whether the client still waits for its answer: it has not closed the
    /// connection (a client that only shut down its sending side, as `nc
    /// -N` does, still waits).
    pub(super) fn still_waiting(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let Some(fd) = &self.fd else { return true };
        let mut fds = [PollFd::new(&**fd, PollFlags::empty())];
        match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(_) => !fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
    }
}

/// The accept loops, until `stop`; then waits (at most [`DRAIN`]) for the
/// connections to be answered.
async fn serve(
    unix: std::os::unix::net::UnixListener,
    tcp: Option<(std::net::TcpListener, Arc<str>)>,
    controller: Arc<Controller>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let unix = match tokio::net::UnixListener::from_std(unix) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket: {e}");
            return;
        }
    };
    let tcp = tcp.and_then(|(l, token)| match tokio::net::TcpListener::from_std(l) {
        Ok(l) => Some((l, token)),
        Err(e) => {
            tracing::error!("control plane over TCP: {e}");
            None
        }
    });
    let router = routes::router(controller);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let tcp_accept = async {
            match &tcp {
                Some((l, _)) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            accepted = unix.accept() => match accepted {
                Ok((conn, _)) => {
                    // Another user is refused at once: it never holds one
                    // of the connections the owner may use.
                    if let Err(message) = check_peer(&conn) {
                        tracing::warn!("control socket: {message}");
                        refuse(conn, StatusCode::FORBIDDEN, message, &refusing);
                        continue;
                    }
                    let fd = rustix::io::dup(&conn).ok().map(Arc::new);
                    accept(conn, Conn { fd }, None, &router, &graceful, &active);
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            accepted = tcp_accept => match accepted {
                Ok((conn, _)) => {
                    let _ = conn.set_nodelay(true);
                    let fd = rustix::io::dup(&conn).ok().map(Arc::new);
                    let token = tcp.as_ref().map(|(_, t)| t.clone());
                    accept(conn, Conn { fd }, token, &router, &graceful, &active);
                }
                Err(e) => {
                    tracing::warn!("control plane over TCP: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(unix);
    drop(tcp);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "control plane: connections still open {} s after the pipeline stopped; closed",
            DRAIN.as_secs()
        );
    }
}

/// One of the connections being served; freed on drop.
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

/// Serves the owner's connection `io`, or answers it `503` at once when
/// [`MAX_CONNECTIONS`] are already served. With `token` (TCP), each
/// request must carry it.
fn accept<S>(
    io: S,
    conn: Conn,
    token: Option<Arc<str>>,
    router: &axum::Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    active: &Arc<AtomicUsize>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
        busy(io);
        return;
    }
    let slot = Slot::take(active);
    let router = router.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let router = router.clone();
        let conn = conn.clone();
        let token = token.clone();
        async move {
            if let Some(token) = &token {
                if let Err(message) = authorized(&req, token) {
                    tracing::warn!(
                        "control plane over TCP: {} {} refused: {message}",
                        req.method(),
                        req.uri().path()
                    );
                    return Ok(error(StatusCode::FORBIDDEN, message));
                }
            }
            req.extensions_mut().insert(conn);
            router.oneshot(req.map(Body::new)).await
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        // A client that shuts down its sending side after the request (as
        // `nc -N` does) still gets its answer; one that closes the
        // connection is seen gone by `Conn::still_waiting`.
        .half_close(true)
        .serve_connection(TokioIo::new(io), service);
    let served = graceful.watch(served);
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = served.await {
            tracing::debug!("control connection: {e}");
        }
    });
}

/// Answers `io` `503` at once, without waiting for its request: what was
/// sent so far is read first (so that closing does not reset the
/// connection before the client reads the answer), without blocking.
fn busy<S>(mut io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;
    let body = serde_json::to_string(&ErrorBody {
        error: format!(
            "the pipeline is already serving {MAX_CONNECTIONS} control connections; try again"
        ),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        let mut buf = ReadBuf::new(&mut sink);
        match std::pin::Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
            _ => break,
        }
    }
    // A socket just accepted has room for this much.
    let _ = std::pin::Pin::new(&mut io).poll_write(&mut cx, answer.as_bytes());
    let _ = std::pin::Pin::new(&mut io).poll_shutdown(&mut cx);
}

/// Answers every request of `io` with `status` and `message`, briefly, or
/// closes it at once when [`MAX_REFUSING`] are being refused.
fn refuse<S>(io: S, status: StatusCode, message: String, refusing: &Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if refusing.load(Ordering::Acquire) >= MAX_REFUSING {
        return;
    }
    let slot = Slot::take(refusing);
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let answer = error(status, message.clone());
        async move { Ok::<_, std::convert::Infallible>(answer) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSE_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    tokio::spawn(async move {
        let _slot = slot;
        let _ = tokio::time::timeout(REFUSE_TIMEOUT * 2, served).await;
    });
}

/// A JSON error answer: `{"error": message}`.
pub(super) fn error(status: StatusCode, message: String) -> HttpResponse {
    let mut r = (status, axum::Json(ErrorBody { error: message })).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether `req` carries the bearer `token` (compared in constant time).
fn authorized<B>(req: &Request<B>, token: &str) -> Result<(), String> {
    // The page itself holds no data (its script asks the other endpoints,
    // with the token): a browser may load it without one.
    if req.method() == axum::http::Method::GET && req.uri().path() == "/" {
        return Ok(());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or("no token: send the header `Authorization: Bearer TOKEN` (the token is in the state directory's control.token, or the pipeline's http_token_file)")?
        .as_bytes();
    let given = given
        .strip_prefix(b"Bearer ")
        .ok_or("the Authorization header is not `Bearer TOKEN`")?;
    let want = token.as_bytes();
    let diff = given.len() ^ want.len()
        | given
            .iter()
            .zip(want.iter().cycle())
            .fold(0usize, |d, (a, b)| d | usize::from(a ^ b));
    match diff {
        0 => Ok(()),
        _ => Err("wrong token".into()),
    }
}

/// Whether the peer of `conn` may control this pipeline: it runs as the
/// same user as this process, or as root.
fn check_peer(conn: &tokio::net::UnixStream) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_client_is_seen_as_gone_a_half_closed_one_still_waits() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = Conn {
            fd: Some(Arc::new(OwnedFd::from(b))),
        };
        assert!(conn.still_waiting());
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(conn.still_waiting());
        drop(a);
        assert!(!conn.still_waiting());
    }

    #[test]
    fn only_the_right_bearer_token_is_let_through() {
        let req = |auth: Option<&str>, path: &str| {
            let mut b = Request::builder().uri(path);
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(()).unwrap()
        };
        let token = "0123456789abcdef0123";
        assert!(authorized(&req(Some("Bearer 0123456789abcdef0123"), "/status"), token).is_ok());
        assert!(authorized(&req(None, "/"), token).is_ok());
        for (auth, why) in [
            (None, "no token"),
            (Some("Basic abc"), "not `Bearer TOKEN`"),
            (Some("Bearer 0123456789abcdef012"), "wrong token"),
            (Some("Bearer 0123456789abcdef01234"), "wrong token"),
            (Some("Bearer 0123456789abcdef0124"), "wrong token"),
            (Some("Bearer "), "wrong token"),
        ] {
            let e = authorized(&req(auth, "/status"), token).unwrap_err();
            assert!(e.contains(why), "{auth:?}: {e}");
        }
    }
}
