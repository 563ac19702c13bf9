//! `eddy snapshot`: a consistent copy of a running pipeline's state
//! directory (one checkpoint: state and input position together), from
//! which a pipeline starts; destinations that cannot take one are refused
//! with the reason. Real `eddy` processes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_runtime::control;
use eddy_runtime::SnapshotReport;
use serde_json::{json, Value};

use crate::util::*;

/// `eddy run --follow` of the counter over `d/in.jsonl` with its state in
/// `d/st`, once its control socket is there.
fn start_following(d: &Path) -> Child {
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let child = Command::new(eddy_bin())
        .args(["run", "-q", "--follow", "--operator", &operator])
        .args([
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            "st",
        ])
        .args(["--workers", "2", "--checkpoint-interval-ms", "20"])
        .current_dir(d)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.join("st/control.sock").exists() {
        assert!(Instant::now() < deadline, "the pipeline did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Stops a pipeline with Ctrl-C (a final checkpoint); it must exit 0.
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// Waits until the pipeline on `d/st` has handled `n` events.
fn wait_handled(d: &Path, n: u64) {
    let socket = control::socket_path(&d.join("st"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = control::get_json(&socket, "/status").unwrap().unwrap();
        if status["operators"][0]["handled"].as_u64() == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "not handled: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `POST path` with `body` on the control socket: status and JSON answer.
fn post(socket: &Path, path: &str, body: &str) -> (u16, Value) {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: eddy\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn a_snapshot_of_a_running_pipeline_is_one_checkpoint_and_a_pipeline_resumes_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (events, text) = counter_events(30_000, 200, 17);
    let lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
    std::fs::write(d.join("in.jsonl"), lines[..3000].concat()).unwrap();
    let child = start_following(d);

    // The rest arrives while the snapshot is taken.
    let fed = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (path, rest, fed) = (d.join("in.jsonl"), lines[3000..].to_vec(), fed.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            for chunk in rest.chunks(100) {
                f.write_all(chunk.concat().as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
            fed.store(true, Ordering::Release);
        })
    };
    // After a first checkpoint.
    let socket = control::socket_path(&d.join("st"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while control::get_json(&socket, "/state/counter?limit=1")
        .unwrap()
        .is_err()
    {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = eddy_in(&["snapshot", "snap", "--state", "st", "--json"], d);
    let fed_before = fed.load(Ordering::Acquire);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: SnapshotReport = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report.dest, d.join("snap"));
    let [source] = &report.sources[..] else {
        panic!("one input: {report:?}")
    };
    assert_eq!(source.input, d.join("in.jsonl").display().to_string());
    let at = source.lines as usize;
    println!(
        "snapshot at line {at} of {} ({} keys)",
        events.len(),
        report.keys
    );
    assert!(at >= 1);
    if !fed_before {
        // Taken while lines were still arriving: not at the end.
        assert!(at < events.len());
    }
    assert_eq!(source.offset, lines[..at].concat().len() as u64);
    // The state is exactly that of the events up to the position recorded
    // with it.
    let committed = reference(&events[..at]);
    assert_eq!(report.keys, committed.len() as u64);
    assert_eq!(report.components, 1);
    assert_counter_state(&d.join("snap"), &committed);

    feeder.join().unwrap();
    wait_handled(d, events.len() as u64);
    stop(child);
    assert_counter_state(&d.join("st"), &reference(&events));

    // A pipeline started from the snapshot handles the rest: exact state,
    // and an output of the events after the snapshot's position.
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let o = eddy_in(
        &[
            "run",
            "-q",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--output",
            "out-snap.jsonl",
            "--state",
            "snap",
            "--workers",
            "2",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_counter_state(&d.join("snap"), &reference(&events));
    assert_eq!(
        read_jsonl(&d.join("out-snap.jsonl")).len(),
        events.len() - at
    );

    // No pipeline runs on `st` now: the directory is copied directly.
    let o = eddy_in(&["snapshot", "snap2", "--state", "st"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "snapshot of st in {}: 200 keys, 0 timers, 1 components, {} bytes; input {} at line {} (byte {})\n",
            d.join("snap2").display(),
            std::fs::metadata(d.join("snap2/state.redb")).unwrap().len(),
            d.join("in.jsonl").display(),
            events.len(),
            text.len()
        )
    );
    assert_counter_state(&d.join("snap2"), &reference(&events));
}

#[test]
fn a_snapshot_into_a_destination_in_use_or_a_malformed_request_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, text) = counter_events(500, 20, 5);
    std::fs::write(d.join("in.jsonl"), &text).unwrap();
    std::fs::create_dir(d.join("full")).unwrap();
    std::fs::write(d.join("full/keep"), b"mine").unwrap();
    std::fs::write(d.join("file"), b"mine").unwrap();
    let full = format!(
        "error: snapshot destination {}: it is not empty (1 entry); a snapshot goes into a new or empty directory, so nothing is overwritten\n",
        d.join("full").display()
    );
    let file = format!(
        "error: snapshot destination {}: a file is in the way; a snapshot goes into a new or empty directory\n",
        d.join("file").display()
    );

    let child = start_following(d);
    wait_handled(d, 500);
    // Through the running pipeline.
    for (dest, error) in [("full", &full), ("file", &file)] {
        let o = eddy_in(&["snapshot", dest, "--state", "st"], d);
        assert_eq!(o.status.code(), Some(1), "{dest}");
        assert_eq!(stderr(&o), *error, "{dest}");
    }
    let socket = control::socket_path(&d.join("st"));
    for (body, status, error) in [
        (
            r#"{"dest": "relative/dir"}"#,
            400,
            "malformed request: dest \"relative/dir\" is not an absolute path (the pipeline's working directory is not yours)".to_string(),
        ),
        (
            r#"{"dest": 5}"#,
            400,
            "malformed request: invalid type: integer `5`, expected path string at line 1 column 10 (expected {\"dest\": \"/absolute/path\"})".to_string(),
        ),
        (
            r#"{"to": "/x"}"#,
            400,
            "malformed request: unknown field `to`, expected `dest` at line 1 column 5 (expected {\"dest\": \"/absolute/path\"})".to_string(),
        ),
        (
            &format!(r#"{{"dest": "{}"}}"#, d.join("full").display()),
            409,
            full["error: ".len()..].trim_end().to_string(),
        ),
    ] {
        assert_eq!(
            post(&socket, "/snapshot", body),
            (status, json!({ "error": error })),
            "{body}"
        );
    }
    stop(child);

    // From the stopped directory: the same refusals.
    for (dest, error) in [("full", &full), ("file", &file)] {
        let o = eddy_in(&["snapshot", dest, "--state", "st"], d);
        assert_eq!(o.status.code(), Some(1), "{dest}");
        assert_eq!(stderr(&o), *error, "{dest}");
    }
    let o = eddy_in(&["snapshot", "snap", "--state", "nowhere"], d);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: nowhere: no state there (no state.redb)\n"
    );
    assert!(!d.join("nowhere").exists() && !d.join("snap").exists());
    // Left as they were.
    assert_eq!(std::fs::read(d.join("full/keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read(d.join("file")).unwrap(), b"mine");
}
