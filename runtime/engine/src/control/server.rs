//! The endpoint a running pipeline serves: an accept loop on its own
//! thread, one thread per connection (at most [`MAX_CONNECTIONS`]), other
//! users refused.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::protocol::{
    parse_request, socket_path, with_short_path, ControlError, Envelope, Request, Response,
    DEFAULT_WAIT, MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT,
};
use super::status::status;
use crate::swap::{Asker, Controller};

/// A listening control endpoint; serves until the controller is stopped.
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket file, to remove it only if it is
    /// still ours.
    id: (u64, u64),
    /// The accept loop; joined on drop (it ends once the controller is
    /// stopped, after joining every connection thread it started), so the
    /// state directory is released when the pipeline's handle returns.
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

/// Time a refused connection of another user is given to send its request
/// and read the refusal.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections of other users being refused at once; more are closed
/// without an answer.
const MAX_REFUSING: usize = 4;

/// The accept loop: until the controller is stopped, then joins the
/// connection threads it started (a connection waiting for a swap gets its
/// answer first: the pipeline answers every pending swap as it stops).
fn serve(listener: UnixListener, controller: Arc<Controller>) {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !controller.stopped.load(Ordering::Acquire) {
        // Finished connections are joined as they end.
        threads.retain(|t| !t.is_finished());
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
                        let spawned = std::thread::Builder::new()
                            .name("eddy-control-no".into())
                            .spawn(move || {
                                let _slot = slot;
                                let _ = conn.set_write_timeout(Some(REFUSE_TIMEOUT));
                                let _ = read_request(&conn, Instant::now() + REFUSE_TIMEOUT);
                                let _ = answer(&conn, &Response::Error { message });
                            });
                        threads.extend(spawned.ok());
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
                threads.extend(spawned.ok());
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
    for t in threads {
        let _ = t.join();
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
                Request::Status => Response::Status(Box::new(status(controller))),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
