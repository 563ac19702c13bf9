//! Operators written in Python, JavaScript and C, built from source with
//! `eddy build` in this test run, give exactly the Rust operators' outputs
//! and final state bytes on the same input; a Rust counter hot-swapped for
//! the Python one mid-stream keeps its counts.
//!
//! Each SDK has the batched fast path (`handle-batch`, world
//! `batched-timer-operator`, what `eddy build` builds JavaScript and C
//! operators for) and the per-event path alone (world `timer-operator`,
//! Python's default): every twin is checked on its default and on the other
//! path in a world without the timer handler (`operator`,
//! `batched-operator`). Timers in each SDK are checked in `languages_time`. The `faulty` twins
//! (`tests/fixtures/{python,js,c}/faulty`, after the Rust
//! `tests/fixtures/faulty`) check the batched path's corner cases against
//! Rust byte for byte and assert that they ran batched: events that fail in
//! the middle of a batch, writes repeated or deleted within an event and
//! read by the key's later events of the batch, and an event that uses map
//! state, which moves the operator to the per-event path from that event
//! on.
//!
//! A language whose toolchain is missing is skipped with a message saying
//! how to install it, except under CI (`CI` set), where that fails the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use eddy_build::{self as build, Lang};
use eddy_runtime::{EventRef, Limits, OpCtx, Operator, Pipeline, Store, WasmComponent};
use eddy_tests::{COUNTER, FAULTY, FRAUD};

use crate::swap::{assert_split, feed, Running};
use crate::util::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sources of operator `op` in `lang`: the examples in `plugins/`, the
/// test operators (`faulty`, `delay`, `untimed`) in `tests/fixtures/`.
fn source_dir(lang: Lang, op: &str) -> PathBuf {
    let sub = match lang {
        Lang::Python => "python",
        Lang::Js => "js",
        Lang::C => "c",
        Lang::Rust => unreachable!("the Rust operators are built by build.rs"),
    };
    let root = match op {
        "faulty" | "delay" | "untimed" | "catalog" => repo().join("tests").join("fixtures"),
        _ => repo().join("plugins"),
    };
    root.join(sub).join(op)
}

/// The component of operator `op` in `lang`, built once per test run with
/// the `eddy build` command, for `world` (`None`: `eddy build`'s default
/// for the language); `None` (after saying why) when the language's
/// toolchain is missing and this is not CI.
pub(crate) fn built(lang: Lang, op: &str, world: Option<&str>) -> Option<String> {
    /// (language, operator, world) -> component path.
    type Built = HashMap<(String, String, String), String>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let src = source_dir(lang, op);
    // componentize-js is installed in plugins/js/node_modules (see
    // tests/run-tests.sh), above the example operators but not the test
    // ones: every JavaScript build looks there first.
    let js_tools = repo().join("plugins").join("js");
    let tools_for = if lang == Lang::Js { &js_tools } else { &src };
    if let Some(missing) = build::missing_toolchain(lang, tools_for) {
        if std::env::var_os("CI").is_some() {
            panic!("CI must test {lang:?} operators, but: {missing}");
        }
        skipped(&format!("{lang:?} operators not tested: {missing}"));
        return None;
    }
    let map = BUILT.get_or_init(Default::default);
    // One build at a time: the builders are heavy and share caches.
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let world_name = world.unwrap_or("default");
    let id = (format!("{lang:?}"), op.to_string(), world_name.to_string());
    if let Some(p) = map.get(&id) {
        return Some(p.clone());
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("lang-operators")
        .join(format!("{lang:?}-{op}-{world_name}.wasm").to_lowercase());
    let mut path = vec![js_tools.join("node_modules").join(".bin")];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = std::process::Command::new(eddy_bin());
    cmd.env("PATH", std::env::join_paths(path).unwrap())
        .arg("build")
        .arg(&src)
        .arg("-o")
        .arg(&out);
    if let Some(world) = world {
        cmd.args(["--world", world]);
    }
    let result = cmd.output().unwrap();
    assert!(
        result.status.success(),
        "eddy build {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    let path = out.display().to_string();
    map.insert(id, path.clone());
    Some(path)
}

/// Every committed record of `operator`: key -> record bytes.
fn state_bytes(state_dir: &Path, operator: &str) -> Vec<(String, Vec<u8>)> {
    Store::open(state_dir).unwrap().scan(operator).unwrap()
}

/// Input line numbers of the dead letters.
fn dead_lines(path: &Path) -> Vec<u64> {
    read_jsonl(path)
        .iter()
        .map(|d| d["line"].as_u64().unwrap())
        .collect()
}

/// Runs `component` as operator `name` over `input` on one worker (so the
/// output order is fixed) in a fresh directory; returns that directory.
fn run_one(
    name: &str,
    component: &str,
    input: &Path,
    setup: impl Fn(&mut Pipeline),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pipeline(dir.path(), input, &[(name, component)], 1);
    p.control = false;
    setup(&mut p);
    run(&p);
    dir
}

/// The path that `lang`'s SDK does not get by default (per event or
/// batched), in a world without `on-timer`: the SDKs implement every
/// world, and every language's twins are checked on the default (with the
/// timer handler) and this one.
fn other_world(lang: Lang) -> &'static str {
    match build::default_world(lang) {
        "timer-operator" => "batched-operator",
        _ => "operator",
    }
}

/// The `--world` that builds `lang`'s components with `handle-batch`
/// (`None`: the default does).
fn batched_world(lang: Lang) -> Option<&'static str> {
    match build::default_world(lang) {
        "batched-timer-operator" => None,
        _ => Some("batched-operator"),
    }
}

/// Runs the Rust and the `lang` version of an operator on the same input
/// and asserts identical output bytes, dead-letter lines and state bytes,
/// for `lang`'s component of either world (`handle-batch` and per event).
fn same_as_rust(
    lang: Lang,
    op: &str,
    rust: &str,
    input_text: &str,
    setup: impl Fn(&mut Pipeline) + Copy,
) {
    for world in [None, Some(other_world(lang))] {
        same_as_rust_in(lang, op, world, rust, input_text, setup);
    }
}

/// [`same_as_rust`] for `lang`'s component built for `world`.
fn same_as_rust_in(
    lang: Lang,
    op: &str,
    world: Option<&str>,
    rust: &str,
    input_text: &str,
    setup: impl Fn(&mut Pipeline) + Copy,
) {
    let Some(component) = built(lang, op, world) else {
        return;
    };
    let op_world = format!("{op} ({})", world.unwrap_or(build::default_world(lang)));
    let op_world = op_world.as_str();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, input_text).unwrap();
    let want = run_one(op, rust, &input, setup);
    let got = run_one(op, &component, &input, setup);

    let out = |d: &tempfile::TempDir| std::fs::read_to_string(d.path().join("out.jsonl")).unwrap();
    let (want_out, got_out) = (out(&want), out(&got));
    assert!(!want_out.is_empty(), "the Rust {op} emitted nothing");
    if want_out != got_out {
        let first = want_out
            .lines()
            .zip(got_out.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b);
        panic!(
            "{lang:?} {op_world}: output differs from Rust's ({} vs {} lines); first difference: {first:?}",
            got_out.lines().count(),
            want_out.lines().count()
        );
    }
    assert_eq!(
        dead_lines(&got.path().join("dead-letter.jsonl")),
        dead_lines(&want.path().join("dead-letter.jsonl")),
        "{lang:?} {op_world}: dead-lettered lines"
    );
    let (want_state, got_state) = (
        state_bytes(&want.path().join("state"), op),
        state_bytes(&got.path().join("state"), op),
    );
    assert!(!want_state.is_empty());
    assert_eq!(
        want_state.len(),
        got_state.len(),
        "{lang:?} {op_world}: keys with state"
    );
    for ((wk, wv), (gk, gv)) in want_state.iter().zip(&got_state) {
        assert_eq!(wk, gk);
        assert!(
            wv == gv,
            "{lang:?} {op_world}: state of key {wk} differs: Rust {:?}, {lang:?} {:?}",
            String::from_utf8_lossy(wv),
            String::from_utf8_lossy(gv)
        );
    }
}

/// Counter input: integers, fractions whose sums show float formatting,
/// values that are not numbers (dead-lettered), and a missing field.
fn counter_input() -> String {
    let mut rng = Rng(5);
    let mut text = String::new();
    for i in 0..3_000 {
        let key = format!("k{}", rng.next() % 40);
        let amount = match i % 9 {
            0 => "0.1".to_string(),
            1 => format!("{}.{:02}", rng.next() % 500, rng.next() % 100),
            2 => "\"12\"".to_string(),
            3 => "true".to_string(),
            4 => "null".to_string(),
            5 => "[1,2]".to_string(),
            6 => format!("-{}", rng.next() % 1000),
            7 => "1e17".to_string(),
            _ => format!("{}", rng.next() % 100),
        };
        if i % 50 == 0 {
            text += &format!("{{\"key\":\"{key}\",\"note\":{{\"amount\":3}}}}\n");
        } else {
            text += &format!("{{\"key\":\"{key}\",\"amount\":{amount},\"x\":[{{}}]}}\n");
        }
    }
    text
}

/// Fraud input: the example's transactions, then a generated stream over
/// 30 cards with bursts (velocity), big spends, cents, late events and
/// lines without an amount or a time (dead letters).
fn fraud_input() -> String {
    let mut text = std::fs::read_to_string(repo().join("examples/fraud/events.jsonl")).unwrap();
    let mut rng = Rng(9);
    let mut ts: i64 = 1_700_100_000_000;
    for i in 0..4_000 {
        ts += (rng.next() % 9_000) as i64;
        let card = format!("c{}", rng.next() % 30);
        let amount = format!("{}.{:02}", rng.next() % 400, rng.next() % 100);
        let t = if i % 97 == 0 { ts - 70_000 } else { ts };
        text += &match i % 500 {
            7 => format!("{{\"card\":\"{card}\",\"ts\":{t}}}\n"),
            8 => format!("{{\"card\":\"{card}\",\"amount\":{amount}}}\n"),
            _ => format!(
                "{{\"card\":\"{card}\",\"amount\":{amount},\"ts\":{t},\"merchant\":\"m{}\"}}\n",
                rng.next() % 7
            ),
        };
    }
    text
}

fn fraud_setup(p: &mut Pipeline) {
    p.key_field = "card".into();
    p.time_field = Some("ts".into());
    // Every 97th event is out of order on purpose (the operator handles
    // it): delivered, not dead-lettered as late.
    p.watermark.late = eddy_runtime::LatePolicy::Deliver;
    p.operators[0].config =
        serde_json::json!({"max_spend": 1000.0, "max_count": 5, "window_ms": 60000});
}

fn check_counter(lang: Lang) {
    same_as_rust(lang, "counter", COUNTER, &counter_input(), |_| {});
}

fn check_fraud(lang: Lang) {
    same_as_rust(lang, "fraud", FRAUD, &fraud_input(), fraud_setup);
}

/// Input of the `faulty` twins: events of 20 keys; every 37th fails after
/// counting and emitting, every 53rd deletes the count, every 71st writes
/// one value three times; event [`PER_EVENT_LINE`] reads map state.
fn faulty_input() -> String {
    let mut rng = Rng(3);
    let mut text = String::new();
    for line in 1..=3_000 {
        let key = format!("k{}", rng.next() % 20);
        text += &match line {
            PER_EVENT_LINE => format!("{{\"key\":\"{key}\",\"per_event\":true}}\n"),
            _ if line % 37 == 0 => format!("{{\"key\":\"{key}\",\"action\":\"error\"}}\n"),
            _ if line % 53 == 0 => format!("{{\"key\":\"{key}\",\"action\":\"forget\"}}\n"),
            _ if line % 71 == 0 => {
                format!("{{\"key\":\"{key}\",\"action\":\"rewrite\",\"size\":4,\"count\":3}}\n")
            }
            _ => format!("{{\"key\":\"{key}\"}}\n"),
        };
    }
    text
}

/// The line of the `faulty` input whose event uses map state.
const PER_EVENT_LINE: usize = 2_400;

fn check_faulty(lang: Lang) {
    same_as_rust(lang, "faulty", FAULTY, &faulty_input(), |_| {});
}

/// `op`'s component in `lang` built with `handle-batch` (by default for
/// JavaScript and C, with `--world batched-operator` for Python) exports
/// `handle-batch`. For the counter and the `faulty` twin, handling their
/// test input in-process (as a worker does) takes the batched path: for
/// every event of the counter's, and for every `faulty` event before the
/// one that uses map state (failed ones included), then the per-event path
/// from that event on.
fn check_batched(lang: Lang, op: &str) {
    let Some(component) = built(lang, op, batched_world(lang)) else {
        return;
    };
    let engine = eddy_runtime::engine().unwrap();
    let component = Arc::new(WasmComponent::load(&engine, Path::new(&component)).unwrap());
    assert!(
        component.batched(),
        "{lang:?} {op}: the component does not export handle-batch"
    );
    let (text, per_event_line) = match op {
        "counter" => (counter_input(), None),
        "faulty" => (faulty_input(), Some(PER_EVENT_LINE)),
        _ => return,
    };
    let keys: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["key"].as_str().unwrap().to_string()
        })
        .collect();
    let events: Vec<EventRef<'_>> = text
        .lines()
        .zip(&keys)
        .enumerate()
        .map(|(i, (l, key))| EventRef {
            key,
            value: l.as_bytes(),
            time: None,
            line: i as u64 + 1,
        })
        .collect();
    let ctx = OpCtx::new(op.into(), None, Limits::default());
    let mut wasm_op = component.instantiate(ctx, "{}").unwrap();
    let before = per_event_line.map_or(events.len(), |l| l - 1);
    let mut failed = Vec::new();
    wasm_op
        .handle_many(&events[..before], &mut |i, r, _| {
            if r.is_err() {
                failed.push(i + 1);
            }
        })
        .unwrap();
    let want: Vec<usize> = match op {
        "faulty" => (1..=before).filter(|l| l % 37 == 0).collect(),
        // The counter refuses an `amount` that is not a number.
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.get("amount").is_some_and(|a| !a.is_number())
            })
            .map(|(i, _)| i + 1)
            .collect(),
    };
    assert_eq!(failed, want, "{lang:?} {op}: failed events");
    assert_eq!(
        wasm_op.batched_events(),
        before as u64,
        "{lang:?} {op}: events handled through handle-batch"
    );
    assert!(wasm_op.batching(), "{lang:?} {op}: left the batched path");
    if per_event_line.is_some() {
        wasm_op
            .handle_many(&events[before..], &mut |_, _, _| {})
            .unwrap();
        assert!(
            !wasm_op.batching(),
            "{lang:?} {op}: still batched after an event used map state"
        );
        assert_eq!(wasm_op.batched_events(), before as u64);
    }
}

#[test]
fn python_counter_matches_rust() {
    check_counter(Lang::Python);
}

#[test]
fn python_fraud_matches_rust() {
    check_fraud(Lang::Python);
}

#[test]
fn javascript_counter_matches_rust() {
    check_counter(Lang::Js);
}

#[test]
fn javascript_fraud_matches_rust() {
    check_fraud(Lang::Js);
}

#[test]
fn c_counter_matches_rust() {
    check_counter(Lang::C);
}

#[test]
fn c_fraud_matches_rust() {
    check_fraud(Lang::C);
}

#[test]
fn python_faulty_matches_rust() {
    check_faulty(Lang::Python);
}

#[test]
fn javascript_faulty_matches_rust() {
    check_faulty(Lang::Js);
}

#[test]
fn c_faulty_matches_rust() {
    check_faulty(Lang::C);
}

/// `eddy build` builds Python operators without `handle-batch` unless
/// asked (their per-event path is faster, docs/performance.md).
#[test]
fn python_builds_per_event_by_default() {
    let Some(component) = built(Lang::Python, "counter", None) else {
        return;
    };
    let engine = eddy_runtime::engine().unwrap();
    let component = WasmComponent::load(&engine, Path::new(&component)).unwrap();
    assert!(
        !component.batched(),
        "the default Python build exports handle-batch"
    );
}

#[test]
fn python_operators_run_batched() {
    check_batched(Lang::Python, "counter");
    check_batched(Lang::Python, "fraud");
    check_batched(Lang::Python, "faulty");
}

#[test]
fn javascript_operators_run_batched() {
    check_batched(Lang::Js, "counter");
    check_batched(Lang::Js, "fraud");
    check_batched(Lang::Js, "faulty");
}

#[test]
fn c_operators_run_batched() {
    check_batched(Lang::C, "counter");
    check_batched(Lang::C, "fraud");
    check_batched(Lang::C, "faulty");
}

/// A Rust counter replaced by the Python one while events stream in: every
/// event counted once, the Python version continues the Rust counts.
#[test]
fn rust_counter_swapped_for_python_mid_stream_keeps_counts() {
    let Some(python) = built(Lang::Python, "counter", None) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let (events, text) = counter_events(60_000, 500, 3);
    let p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    let run = Running::start(p.clone());
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    feed(&input, &lines[..20_000].concat(), 2_000);
    run.wait_handled(0, 20_000);
    let writer = {
        let input = input.clone();
        let middle = lines[20_000..40_000].concat();
        std::thread::spawn(move || feed(&input, &middle, 200))
    };
    let report = run.swap("counter", &python);
    writer.join().unwrap();
    feed(&input, &lines[40_000..].concat(), 2_000);
    run.wait_handled(0, events.len() as u64);
    let status = run.status();
    run.stop();

    assert_eq!(status.operators[0].version.hash, report.to.hash);
    assert_eq!(status.operators[0].failed, 0);
    // Both versions print no version tag: check counts continue per key
    // across the barrier, each event counted once.
    assert_split(
        &dir.path().join("out.jsonl"),
        &events,
        &[(1, None), (report.barrier_line + 1, None)],
    );
    assert_counter_state(&p.state_dir, &reference(&events));
}

/// The Python SDK's decoder, run by the machine's CPython (the same code
/// the component runs): a dataclass field outside `__init__`
/// (`field(init=False)`) is set from the JSON when the JSON has it (as
/// `dumps` writes it, frozen classes too) and left to the class when not,
/// instead of a `TypeError` that dead-lettered the event.
#[test]
fn python_dataclass_fields_outside_init_decode() {
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let script = r#"
import sys
from dataclasses import dataclass, field
import eddy

@dataclass
class Totals:
    count: int = 0
    total: float = 0.0
    mean: float = field(init=False, default=0.0)
    def __post_init__(self):
        self.mean = self.total / self.count if self.count else 0.0

@dataclass(frozen=True)
class Tag:
    name: str
    seen: int = field(init=False, default=0)

print(eddy.dumps(eddy.decode(Totals, eddy.loads(b'{"count":2,"total":3.0}'))))
print(eddy.dumps(eddy.decode(Totals, eddy.loads(b'{"count":4,"total":2.0,"mean":9.0}'))))
print(eddy.decode(Tag, eddy.loads(b'{"name":"a","seen":5}')))
print(eddy.decode(Tag, eddy.loads(b'{"name":"b"}')))
try:
    eddy.decode(Tag, eddy.loads(b'{"seen":1}'))
except eddy.Error as e:
    print("error:", e)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", &sdk)
        .output()
        .expect("python3 runs (the suite's setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"count\":2,\"total\":3.0,\"mean\":1.5}\n\
         {\"count\":4,\"total\":2.0,\"mean\":9.0}\n\
         Tag(name='a', seen=5)\n\
         Tag(name='b', seen=0)\n\
         error: missing field `name`\n"
    );
}
