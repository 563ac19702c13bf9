//! Hot swap under a running stream: the barrier splits the events exactly,
//! state carries over (and migrates), rejected swaps change nothing,
//! rollback, and a swap survives a crash.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy_runtime::control::Status;
use eddy_runtime::control::{self, Request, Response};
use eddy_runtime::{engine, load_operators, run_notify, Pipeline, Shutdown, Summary, SwapReport};
use eddy_tests::*;

use crate::util::*;

/// A pipeline running in this process, following its input file.
pub(crate) struct Running {
    socket: PathBuf,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<Summary>,
}

impl Running {
    pub(crate) fn start(mut p: Pipeline) -> Running {
        p.follow = true;
        let shutdown = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let engine = engine().unwrap();
            let ops = load_operators(&engine, &p).unwrap();
            run_notify(&p, ops, &s, |started| {
                tx.send(started.control.clone().unwrap()).unwrap();
            })
            .unwrap()
        });
        let socket = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("pipeline started");
        Running {
            socket,
            shutdown,
            thread,
        }
    }

    pub(crate) fn ask(&self, r: Request) -> Response {
        control::request(&self.socket, &r, control::DEFAULT_WAIT).unwrap()
    }

    pub(crate) fn status(&self) -> Status {
        match self.ask(Request::Status) {
            Response::Status(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn swap(&self, operator: &str, component: &str) -> SwapReport {
        match self.ask(Request::Swap {
            operator: operator.into(),
            component: component.into(),
        }) {
            Response::Swapped(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn rollback(&self, operator: &str) -> SwapReport {
        match self.ask(Request::Rollback {
            operator: operator.into(),
        }) {
            Response::Swapped(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    /// Waits until operator `stage` has handled `n` events in all.
    pub(crate) fn wait_handled(&self, stage: usize, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let s = self.status();
            let op = &s.operators[stage];
            if op.handled + op.failed >= n {
                assert_eq!(op.handled + op.failed, n, "more events than were fed");
                return;
            }
            assert!(Instant::now() < deadline, "stuck at {}", op.handled);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(self) -> Summary {
        self.shutdown.trigger();
        self.thread.join().unwrap()
    }
}

/// Appends `text` to `path` in pieces of `piece` lines, as a stream.
pub(crate) fn feed(path: &Path, text: &str, piece: usize) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for chunk in lines.chunks(piece) {
        f.write_all(chunk.concat().as_bytes()).unwrap();
        f.flush().unwrap();
        // A stream, not one block: the pipeline reads while this writes.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Per key, the input line of its 1st, 2nd, ... event.
fn lines_by_key(events: &[(String, u64)]) -> HashMap<&str, Vec<u64>> {
    let mut m: HashMap<&str, Vec<u64>> = HashMap::new();
    for (i, (k, _)) in events.iter().enumerate() {
        m.entry(k).or_default().push(i as u64 + 1);
    }
    m
}

/// Checks every output of a counter pipeline: one per event, per key in
/// order with counts 1, 2, 3..., each from the version whose range of input
/// lines holds its event. `versions` lists `(first line, version tag)` in
/// order; the tag is the output's `version` field (`None` for version 1).
pub(crate) fn assert_split(out: &Path, events: &[(String, u64)], versions: &[(u64, Option<u64>)]) {
    let out = read_jsonl(out);
    assert_eq!(
        out.len(),
        events.len(),
        "exactly one output per input event"
    );
    let lines = lines_by_key(events);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_version = vec![0usize; versions.len()];
    for o in &out {
        let key = o["key"].as_str().unwrap();
        let c = seen.entry(key.to_string()).or_insert(0);
        *c += 1;
        let v = &o["value"];
        let count = v["count"].as_u64().or(v["n"].as_u64()).unwrap();
        assert_eq!(count, *c as u64, "per-key count continues: {o}");
        let line = lines[key][*c - 1];
        let expect = versions
            .iter()
            .rposition(|(from, _)| line >= *from)
            .unwrap();
        assert_eq!(
            v["version"].as_u64(),
            versions[expect].1,
            "event of line {line} must be handled by version {expect}: {o}"
        );
        per_version[expect] += 1;
    }
    for (i, n) in per_version.iter().enumerate() {
        assert!(*n > 0, "version {i} handled no event: {per_version:?}");
    }
}

#[test]
fn swap_under_a_continuous_stream_splits_events_exactly_at_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(1_000_000, 20_000, 11);
    let p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    feed(&input, &lines[..300_000].concat(), 20_000);
    run.wait_handled(0, 300_000);
    // Swap while more lines are being written and read; the last ones are
    // written once the swap is done, so the barrier falls before them.
    let writer = {
        let input = input.clone();
        let middle = lines[300_000..700_000].concat();
        std::thread::spawn(move || feed(&input, &middle, 2_000))
    };
    let report = run.swap("counter", COUNTER_V2);
    writer.join().unwrap();
    feed(&input, &lines[700_000..].concat(), 20_000);
    run.wait_handled(0, events.len() as u64);
    let status = run.status();
    run.stop();

    assert_eq!(report.from.generation, 0);
    assert_eq!(report.to.generation, 1);
    assert!(
        (300_000..=700_000).contains(&report.barrier_line),
        "the swap happened mid-stream: barrier after line {}",
        report.barrier_line
    );
    assert_eq!(status.operators[0].version.hash, report.to.hash);
    assert_eq!(status.operators[0].failed, 0);
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (report.barrier_line + 1, Some(2))],
    );
    assert_counter_state(&p.state_dir, &reference(&events));
    // Every worker measured its pause.
    assert!(status.workers.iter().all(|w| w.pauses.len() == 1));
}

#[test]
fn a_chain_swaps_its_second_operator_with_three_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(200_000, 5_000, 12);
    // The second counter counts the first one's outputs (same key).
    let p = pipeline(
        dir.path(),
        &input,
        &[("first", COUNTER), ("second", COUNTER)],
        3,
    );
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    feed(&input, &lines[..80_000].concat(), 10_000);
    run.wait_handled(1, 80_000);
    let writer = {
        let input = input.clone();
        let middle = lines[80_000..140_000].concat();
        std::thread::spawn(move || feed(&input, &middle, 1_000))
    };
    let report = run.swap("second", COUNTER_V2);
    writer.join().unwrap();
    assert!((80_000..=140_000).contains(&report.barrier_line));
    feed(&input, &lines[140_000..].concat(), 10_000);
    run.wait_handled(1, events.len() as u64);
    run.stop();
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (report.barrier_line + 1, Some(2))],
    );
}

#[test]
fn a_new_state_format_is_migrated_on_first_touch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(100_000, 2_000, 13);
    let p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let (first, rest) = lines.split_at(40_000);
    feed(&input, &first.concat(), 10_000);
    run.wait_handled(0, 40_000);
    let report = run.swap("counter", COUNTER_V3);
    assert!(report.migrates);
    assert_eq!(report.barrier_line, 40_000);
    feed(&input, &rest.concat(), 5_000);
    run.wait_handled(0, events.len() as u64);
    run.stop();

    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (40_001, Some(3))],
    );
    // State: v3's format, holding v1's totals carried on by v3.
    let expected = reference(&events);
    let got = state_values(&p.state_dir, "counter", &["n", "total", "totals"]);
    assert_eq!(got.len(), expected.len());
    let after: std::collections::HashSet<&str> =
        rest.iter().map(|l| &l[8..l.find("\",").unwrap()]).collect();
    for (k, (count, sum)) in &expected {
        let v = &got[k];
        if after.contains(k.as_str()) {
            assert_eq!(v[0].as_u64(), Some(*count), "n of {k}");
            assert_eq!(v[1].as_f64(), Some(*sum as f64), "total of {k}");
            assert!(v[2].is_null(), "old format removed for {k}");
        } else {
            // Not touched since the swap: v1's format, as v1 left it.
            assert_eq!(v[2]["count"].as_u64(), Some(*count), "{k} keeps v1 state");
        }
    }
}

#[test]
fn rollback_restores_the_previous_version_with_all_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(60_000, 1_000, 14);
    let p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    feed(&input, &lines[..20_000].concat(), 5_000);
    run.wait_handled(0, 20_000);
    let swap = run.swap("counter", COUNTER_V2);
    feed(&input, &lines[20_000..40_000].concat(), 5_000);
    run.wait_handled(0, 40_000);
    let back = run.rollback("counter");
    assert_eq!(back.to.hash, swap.from.hash, "back to v1");
    assert_eq!(back.to.generation, 2);
    feed(&input, &lines[40_000..].concat(), 5_000);
    run.wait_handled(0, events.len() as u64);
    // A second rollback goes back to v2 (the version before the current).
    let again = run.rollback("counter");
    assert_eq!(again.to.hash, swap.to.hash);
    run.stop();
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (20_001, Some(2)), (40_001, None)],
    );
    assert_counter_state(&p.state_dir, &reference(&events));
}

#[test]
fn watch_swaps_when_the_component_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let component = dir.path().join("op.wasm");
    std::fs::copy(COUNTER, &component).unwrap();
    let (events, text) = counter_events(20_000, 500, 15);
    let mut p = pipeline(
        dir.path(),
        &input,
        &[("counter", component.to_str().unwrap())],
        2,
    );
    p.watch = true;
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    feed(&input, &lines[..10_000].concat(), 2_000);
    run.wait_handled(0, 10_000);
    // A build writes the new version in place.
    std::fs::write(&component, std::fs::read(COUNTER_V2).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.status().operators[0].version.generation != 1 {
        assert!(Instant::now() < deadline, "--watch did not swap");
        std::thread::sleep(Duration::from_millis(50));
    }
    feed(&input, &lines[10_000..].concat(), 2_000);
    run.wait_handled(0, events.len() as u64);
    run.stop();
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (10_001, Some(2))],
    );
}

/// `eddy run --follow` in a child process.
fn spawn_eddy(dir: &Path, input: &Path, component: &str, follow: bool) -> std::process::Child {
    let mut cmd = Command::new(eddy_bin());
    cmd.args(["run", "--quiet", "--workers", "2"])
        .arg("--operator")
        .arg(format!("counter={component}"))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--checkpoint-interval-ms", "100"]);
    if follow {
        cmd.arg("--follow");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

pub(crate) fn eddy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(eddy_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the child's state directory holds a control address, and
/// until its counter handled `n` events.
fn wait_cli_handled(state: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, out, _) = eddy(&["status", "--json", "--state", state]);
        if code == 0 {
            let s: serde_json::Value = serde_json::from_str(&out).unwrap();
            if s["operators"][0]["handled"].as_u64() == Some(n) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "eddy did not handle {n} events");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rejected_swaps_leave_the_running_version_and_its_state_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (events, text) = counter_events(4_000, 50, 16);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(&input, lines[..2_000].concat()).unwrap();
    let mut child = spawn_eddy(dir.path(), &input, COUNTER, true);
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    wait_cli_handled(state, 2_000);
    // The migration is tried on committed keys: wait for a checkpoint
    // (asked of the running pipeline, as `eddy state` does).
    let deadline = Instant::now() + Duration::from_secs(60);
    while eddy(&["state", "scan", "counter", "--limit", "1", "--state", state]).0 != 0 {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }

    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    // The smallest core module: magic and version 1.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let missing = dir.path().join("missing.wasm");
    let cases: [(&str, &Path, &str); 7] = [
        ("counter", &text_file, "not a WebAssembly file"),
        (
            "counter",
            &core,
            "a core WebAssembly module, not a component",
        ),
        ("counter", Path::new(HELLO_CLI), "not an eddy operator"),
        (
            "counter",
            Path::new(REFUSE),
            "this version refuses to start",
        ),
        (
            "counter",
            Path::new(MIGRATE_FAILS),
            "its migration failed on committed key",
        ),
        ("counter", &missing, "cannot read the file"),
        ("nope", Path::new(COUNTER_V2), "no operator named `nope`"),
    ];
    for (op, file, reason) in cases {
        let (code, _, err) = eddy(&["swap", op, file.to_str().unwrap(), "--state", state]);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(reason), "{file:?}: {err}");
        if op == "counter" {
            assert!(
                err.contains(file.file_name().unwrap().to_str().unwrap()),
                "names the file: {err}"
            );
            assert!(err.contains("keeps running"), "{err}");
        }
    }
    // Nothing changed: v1 runs on, and its counts continue.
    let (code, out, _) = eddy(&["status", "--state", state]);
    assert_eq!(code, 0);
    assert!(out.contains("generation 0"), "{out}");
    assert!(!out.contains("generation 1"), "{out}");
    feed(&input, &lines[2_000..].concat(), 500);
    wait_cli_handled(state, 4_000);
    child.kill().unwrap();
    child.wait().unwrap();
    // The pipeline checkpoints every 100 ms; a restart finishes anything
    // handled after the last checkpoint (the input is complete now).
    let mut rest = spawn_eddy(dir.path(), &input, COUNTER, false);
    assert!(rest.wait().unwrap().success());
    assert_split(&dir.path().join("out.jsonl"), &events, &[(1, None)]);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
}

#[test]
fn a_swap_survives_a_crash_and_the_restart_runs_the_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (events, text) = counter_events(30_000, 300, 17);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(&input, lines[..10_000].concat()).unwrap();
    let mut child = spawn_eddy(dir.path(), &input, COUNTER, true);
    let state_dir = dir.path().join("state");
    let state = state_dir.to_str().unwrap();
    wait_cli_handled(state, 10_000);
    let (code, out, err) = eddy(&["swap", "counter", COUNTER_V2, "--state", state]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("swapped `counter`") && out.contains("durable"),
        "{out}"
    );
    feed(&input, &lines[10_000..20_000].concat(), 1_000);
    wait_cli_handled(state, 20_000);
    // kill -9: no final checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    feed(&input, &lines[20_000..].concat(), 1_000);
    // The pipeline still names v1; the state directory says v2 runs.
    let mut again = spawn_eddy(dir.path(), &input, COUNTER, false);
    let status = again.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(again.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("swapped in from"), "{err}");
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (10_001, Some(2))],
    );
    assert_counter_state(&state_dir, &reference(&events));
}

#[test]
fn cli_without_a_running_pipeline_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("nothing-here");
    let (code, _, err) = eddy(&["status", "--state", state.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no running eddy found for state directory") && err.contains("control.sock"),
        "{err}"
    );
    let missing = dir.path().join("gone.sock");
    let (code, _, err) = eddy(&[
        "swap",
        "counter",
        COUNTER_V2,
        "--socket",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot reach eddy at") && err.contains("gone.sock"),
        "{err}"
    );
}

/// A state directory an older eddy left, whose versions are named by the
/// first 16 hex digits of their SHA-256 (and kept as
/// `components/<16 digits>.wasm`), still runs: the version it recorded as
/// running is loaded from its short-named file, every version is adopted
/// under its full id (status, swap reports, `migrate`'s `previous`), and it
/// swaps and rolls back as any other.
#[test]
fn a_state_directory_with_short_version_ids_still_runs_swaps_and_rolls_back() {
    use eddy_runtime::{component_hash, Checkpoint, Store, Versions};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (events, text) = counter_events(30_000, 500, 18);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    std::fs::write(&input, lines[..10_000].concat()).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    run(&p);

    // Rewrite what this run recorded as an older eddy would have: v1 ran
    // first (generation 0), then v2 was swapped in and runs now.
    let v1 = std::fs::read(COUNTER).unwrap();
    let v2 = std::fs::read(COUNTER_V2).unwrap();
    let (v1_id, v2_id) = (component_hash(&v1), component_hash(&v2));
    assert_eq!((v1_id.len(), v2_id.len()), (64, 64));
    let (v1_short, v2_short) = (&v1_id[..16], &v2_id[..16]);
    let components = p.state_dir.join("components");
    {
        let store = Store::open(&p.state_dir).unwrap();
        for f in std::fs::read_dir(&components).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        store.keep_component(v1_short, &v1).unwrap();
        store.keep_component(v2_short, &v2).unwrap();
        let old = Versions {
            active: 1,
            base: v1_short.into(),
            all: vec![
                version(0, v1_short, COUNTER),
                version(1, v2_short, COUNTER_V2),
            ],
        };
        store
            .commit(&Checkpoint {
                meta: vec![(
                    Versions::meta_name("counter"),
                    serde_json::to_vec(&old).unwrap(),
                )],
                ..Default::default()
            })
            .unwrap();
    }

    // The pipeline still names v1; the state directory says v2 runs.
    let run = Running::start(p.clone());
    let status = run.status();
    let op = &status.operators[0];
    assert_eq!(
        (op.version.hash.as_str(), op.version.generation),
        (v2_id.as_str(), 1)
    );
    let ids: Vec<&str> = op.versions.iter().map(|v| v.hash.as_str()).collect();
    assert_eq!(ids, [&v1_id, &v2_id]);
    let shown = control_status(&run);
    assert!(
        shown.contains(&format!(
            "operator counter: version {v2_id} (generation 1, from {COUNTER_V2}"
        )),
        "{shown}"
    );
    // Every key was last written by v1 (generation 0): a migration is
    // handed v1's full id.
    match run.ask(Request::Swap {
        operator: "counter".into(),
        component: MIGRATE_FAILS.into(),
    }) {
        Response::Error { message } => assert!(
            message.contains(&format!(
                "from version {v1_id} failed: cannot read the old `totals` format"
            )),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }

    feed(&input, &lines[10_000..20_000].concat(), 2_000);
    run.wait_handled(0, 10_000);
    let back = run.rollback("counter");
    assert_eq!(
        (
            back.from.hash.as_str(),
            back.to.hash.as_str(),
            back.to.generation
        ),
        (v2_id.as_str(), v1_id.as_str(), 2)
    );
    feed(&input, &lines[20_000..25_000].concat(), 1_000);
    run.wait_handled(0, 15_000);
    let again = run.swap("counter", COUNTER_V2);
    assert_eq!(
        (
            again.from.hash.as_str(),
            again.to.hash.as_str(),
            again.to.generation
        ),
        (v1_id.as_str(), v2_id.as_str(), 3)
    );
    feed(&input, &lines[25_000..].concat(), 1_000);
    run.wait_handled(0, 20_000);
    run.stop();

    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[
            (1, None),
            (10_001, Some(2)),
            (20_001, None),
            (25_001, Some(2)),
        ],
    );
    assert_counter_state(&p.state_dir, &reference(&events));
    // Recorded under the full ids now; the short-named files stay.
    let store = Store::open(&p.state_dir).unwrap();
    let v: Versions = store
        .meta_json(&Versions::meta_name("counter"))
        .unwrap()
        .unwrap();
    assert_eq!(v.base, v1_id);
    let ids: Vec<&str> = v.all.iter().map(|v| v.hash.as_str()).collect();
    assert_eq!(ids, [&v1_id, &v2_id, &v1_id, &v2_id]);
    let mut files: Vec<String> = std::fs::read_dir(&components)
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = [v1_short, v2_short, &v1_id, &v2_id]
        .iter()
        .map(|h| format!("{h}.wasm"))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
}

/// `eddy status` of the pipeline `run`, as the command prints it.
fn control_status(run: &Running) -> String {
    let (code, out, err) = eddy(&["status", "--socket", run.socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    out
}
