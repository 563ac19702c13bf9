//! The control socket serves only the pipeline's owner and survives abuse:
//! another local user can neither read the status nor swap; swaps to
//! /dev/zero or a FIFO are refused without hanging later swaps; a request
//! whose client gave up changes nothing; slow and numerous clients do not
//! pile up threads.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use eddy_runtime::control::{self, Request, Response, MAX_CONNECTIONS};
use eddy_runtime::{Overrides, Pipeline};
use eddy_tests::*;

use crate::swap::{feed, Running};
use crate::util::*;

/// A counter pipeline following `dir/in.jsonl`, with `n` events handled.
fn running(dir: &Path, n: usize) -> Running {
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let p = pipeline(dir, &input, &[("counter", COUNTER)], 2);
    let r = Running::start(p);
    let (_, text) = counter_events(n, 20, 3);
    feed(&input, &text, 100);
    r.wait_handled(0, n as u64);
    r
}

fn generations(r: &Running) -> usize {
    r.status().operators[0].versions.len()
}

/// Sends raw bytes on the control socket and returns the answer text
/// (status line, headers and body).
fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (413) and close before it read everything.
    let _ = c.write_all(bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

/// One HTTP/1.1 request, as bytes: `method path` with `body`.
fn http(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: eddy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Control-plane threads of this process that handle requests (of every
/// test's pipeline): the blocking pool of each pipeline's control runtime.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("eddy-control"))
        .count()
}

#[test]
fn another_local_user_can_neither_see_nor_swap_a_pipeline() {
    if !can_act_as_other_user("another_local_user_can_neither_see_nor_swap_a_pipeline") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = running(dir.path(), 200);
    let state = dir.path().join("state");
    // The other user may traverse to the state directory...
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_as_other = |args: &[&str]| {
        let out = as_other_user(eddy_bin()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // ...but the socket is the owner's alone (0600), behind a 0700 directory
    // or not.
    let (code, err) = run_as_other(&["status", "--state", state.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("only the user who runs the pipeline may control it"),
        "{err}"
    );
    // Even with the socket file opened up to everyone, the peer credentials
    // are checked: the answer is a refusal and nothing changes.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = control::socket_path(&state);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = run_as_other(&["status", "--state", state.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("controlled only by its owner (uid 0), not by uid 65534"),
        "{err}"
    );
    let (code, err) = run_as_other(&[
        "swap",
        "counter",
        COUNTER_V2,
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("controlled only by its owner"), "{err}");
    let (code, err) = run_as_other(&["rollback", "counter", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(generations(&r), 1, "the other user's swap changed nothing");
    // The owner still can.
    let report = r.swap("counter", COUNTER_V2);
    assert_eq!(report.to.generation, 1);
    r.stop();
}

#[test]
fn swaps_to_dev_zero_or_a_fifo_are_refused_and_later_swaps_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = running(dir.path(), 100);
    let socket = control::socket_path(&dir.path().join("state"));
    let fifo = dir.path().join("pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (file, reason) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
    ] {
        // Each refusal must come back promptly (no read of an endless file,
        // no open that waits for a FIFO's writer).
        let (tx, rx) = std::sync::mpsc::channel();
        let socket = socket.clone();
        let component = file.to_path_buf();
        std::thread::spawn(move || {
            let answer = control::request(
                &socket,
                &Request::Swap {
                    operator: "counter".into(),
                    component,
                },
                control::DEFAULT_WAIT,
            );
            let _ = tx.send(answer);
        });
        let answer = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("a swap to {} hung", file.display()));
        match answer.unwrap() {
            Response::Error { message } => {
                assert!(message.contains(reason), "{message}");
                assert!(message.contains("keeps running"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The swap lock was not left held: a real swap and a rollback go through.
    assert_eq!(r.swap("counter", COUNTER_V2).to.generation, 1);
    assert_eq!(r.rollback("counter").to.generation, 2);
    r.stop();
}

#[test]
fn a_swap_whose_client_gave_up_is_not_carried_out() {
    let dir = tempfile::tempdir().unwrap();
    let r = running(dir.path(), 100);
    let socket = control::socket_path(&dir.path().join("state"));
    // The client's waiting time runs out before the switch.
    let answer = control::request(
        &socket,
        &Request::Swap {
            operator: "counter".into(),
            component: COUNTER_V2.into(),
        },
        Duration::ZERO,
    )
    .unwrap();
    match answer {
        Response::Error { message } => {
            assert!(message.contains("waiting time ran out"), "{message}");
            assert!(message.contains("keeps running"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A client that sends a swap and hangs up at once.
    let mut c = UnixStream::connect(&socket).unwrap();
    let body = format!(
        "{{\"operator\":\"counter\",\"component\":{:?}}}",
        COUNTER_V2
    );
    c.write_all(&http("POST", "/swap", body.as_bytes()))
        .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(generations(&r), 1, "an abandoned swap was carried out");
    // The endpoint still works and a patient swap goes through.
    assert_eq!(r.swap("counter", COUNTER_V2).to.generation, 1);
    r.stop();
}

#[test]
fn slow_and_numerous_clients_neither_pile_up_threads_nor_lock_out_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let r = running(dir.path(), 100);
    let socket = control::socket_path(&dir.path().join("state"));
    // 60 clients that each send a header byte every 300 ms and never
    // finish their request.
    let mut slow: Vec<UnixStream> = (0..60)
        .map(|_| {
            let mut c = UnixStream::connect(&socket).unwrap();
            // Past the 16th, the server answers 503 and closes at once: the
            // write may then meet a closed socket.
            let _ = c.write_all(b"GET /status HTTP/1.1\r\nX-Slow: ");
            c
        })
        .collect();
    // They hold every connection the pipeline serves at once: the owner is
    // told so at once, not kept waiting.
    std::thread::sleep(Duration::from_millis(300));
    match control::request(&socket, &Request::Status, control::DEFAULT_WAIT).unwrap() {
        Response::Error { message } => {
            assert!(
                message.contains("already serving 16 control connections"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let started = Instant::now();
    let mut peak = 0;
    let mut open = slow.len();
    while open > 0 && started.elapsed() < Duration::from_secs(20) {
        open = 0;
        for c in &mut slow {
            if c.write_all(b"a").is_ok() {
                open += 1;
            }
        }
        peak = peak.max(threads());
        std::thread::sleep(Duration::from_millis(300));
    }
    // The control plane's threads of this test's pipeline, a few more of
    // other tests' pipelines: slow clients add none.
    assert!(
        peak <= MAX_CONNECTIONS + 8,
        "{peak} control threads for 60 clients"
    );
    // Every slow client was cut off (its request never arrived whole
    // within the time allowed) or refused; none was served.
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "slow clients were not cut off"
    );
    // The owner is served again.
    assert_eq!(r.status().operators[0].handled, 100);
    r.stop();
}

#[test]
fn malformed_requests_get_an_answer_and_never_panic_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let r = running(dir.path(), 10);
    let socket = control::socket_path(&dir.path().join("state"));
    for (request, status, reason) in [
        (http("POST", "/swap", b""), "400", "malformed request: "),
        (http("POST", "/swap", b"{"), "400", "malformed request: "),
        (
            http("POST", "/swap", b"{\"operator\":1}"),
            "400",
            "malformed request: invalid type",
        ),
        (
            http("POST", "/rollback", b"\xff\xfe"),
            "400",
            "malformed request: ",
        ),
        (
            http("POST", "/reboot", b"{}"),
            "404",
            "no endpoint POST /reboot (the control plane serves: GET /, GET /status",
        ),
        (
            http("DELETE", "/status", b""),
            "405",
            "/status does not take DELETE",
        ),
        (
            http("POST", "/swap", &vec![b'x'; control::MAX_REQUEST + 1]),
            "413",
            "the request is longer than 65536 bytes",
        ),
        (
            http("GET", "/state/nobody/k", b""),
            "404",
            "no operator named `nobody` in this pipeline (it runs: counter)",
        ),
        (
            http("GET", "/state/counter?limit=abc", b""),
            "400",
            "malformed query",
        ),
    ] {
        let answer = raw(&socket, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {status}: {answer}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        );
        assert!(answer.contains("{\"error\":\""), "{answer}");
        assert!(answer.contains(reason), "{reason}: {answer}");
    }
    // Not HTTP at all: the server answers 400 and stays up.
    let answer = raw(&socket, b"\xff\xfe not http\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The always-on cousin of the `control` fuzz target.
    let mut rng = Rng(7);
    let seeds: [(&str, &str, &[u8]); 3] = [
        (
            "POST",
            "/swap",
            br#"{"operator":"counter","component":"/x.wasm","wait_ms":5}"#,
        ),
        ("POST", "/rollback", br#"{"operator":"c"}"#),
        ("GET", "/status", b""),
    ];
    for round in 0..20_000 {
        let (method, path, body) = seeds[round % seeds.len()];
        let input = mutated(&mut rng, body);
        if let Ok(e) = control::parse_request(method, path, &input) {
            let (m, p, b) = e.http();
            assert_eq!(control::parse_request(m, p, &b), Ok(e));
        }
    }
    assert_eq!(r.status().operators[0].handled, 10);
    r.stop();
}

#[test]
fn a_pipeline_file_naming_a_network_control_address_is_refused_with_the_reason() {
    let e = Pipeline::from_toml(
        "control = \"127.0.0.1:7077\"\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\n",
        Path::new("p.toml"),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no longer a network address") && e.contains("control.sock"),
        "{e}"
    );
    let p = Pipeline::from_toml(
        "control = false\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\n",
        Path::new("p.toml"),
        Overrides::default(),
    )
    .unwrap();
    assert!(!p.control);
}
