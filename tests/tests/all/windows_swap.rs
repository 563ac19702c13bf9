//! Hot swap of a window operator's aggregate: the new version finishes the
//! windows the old one filled (their accumulators are kept), a rollback
//! returns to the old one, a restart runs the version in service, and a
//! version that cannot read the stored accumulators, or that is not a
//! window aggregate, is refused while the running one goes on.

use std::path::Path;

use eddy_runtime::control::{Request, Response};
use eddy_runtime::{Overrides, Pipeline};
use eddy_tests::{COUNTER, WINDOW_FAULTY, WINDOW_SUM};
use serde_json::{json, Value};

use crate::swap::{feed, Running};
use crate::util::*;

/// A following pipeline (control socket on) running `component` as
/// tumbling windows of 10 under operator `win`, watermark = the largest
/// time read (no disorder allowed), two workers.
fn pipeline(dir: &Path, component: &str) -> Pipeline {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            r#"workers = 2
control = true

[source]
path = "in.jsonl"
time = "ts"

[source.watermark]
max_out_of_order = 0

[[operator]]
name = "win"
component = "{component}"
window = {{ kind = "tumbling", size = 10 }}

[sink]
path = "out.jsonl"
dead_letter = "dead-letter.jsonl"

[state]
dir = "state"
"#
        ),
    )
    .unwrap();
    if !dir.join("in.jsonl").exists() {
        std::fs::write(dir.join("in.jsonl"), "").unwrap();
    }
    Pipeline::load(Some(&file), Overrides::default()).unwrap()
}

fn lines(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn e(key: &str, ts: i64, amount: Value) -> Value {
    json!({"key": key, "ts": ts, "amount": amount})
}

/// The outputs, as (key, value), in the order they were written.
fn outputs(dir: &Path) -> Vec<(String, Value)> {
    read_jsonl(&dir.join("out.jsonl"))
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["value"].clone()))
        .collect()
}

fn refusal(run: &Running, component: &str) -> String {
    match run.ask(Request::Swap {
        operator: "win".into(),
        component: component.into(),
    }) {
        Response::Error { message } => message,
        other => panic!("the swap to {component} was not refused: {other:?}"),
    }
}

#[test]
fn a_window_aggregate_swaps_and_rolls_back_keeping_its_windows() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let p = pipeline(dir.path(), WINDOW_FAULTY);
    let run = Running::start(p.clone());
    // Version 1 (window-faulty: integer sums, `{"count", "sum"}`): window
    // [0, 10) fires at the watermark 12; a's pane [10, 20) stays pending.
    feed(
        &input,
        &lines(&[
            e("a", 1, json!(1)),
            e("a", 2, json!(2)),
            e("b", 3, json!(10)),
            e("a", 12, json!(5)),
        ]),
        1,
    );
    run.wait_handled(0, 4);
    let swap = run.swap("win", WINDOW_SUM);
    assert_eq!(swap.to.generation, 1);
    assert_ne!(swap.from.hash, swap.to.hash);
    let status = run.status();
    assert_eq!(status.operators[0].version.hash, swap.to.hash, "shown");
    // Version 2 (window-sum, `{"start", "end", "count", "sum"}`) finishes
    // the pane version 1 filled: the event at 30 (whose amount it fails:
    // dead-lettered, no pane written) moves the watermark past 20.
    feed(&input, &lines(&[e("z", 30, json!("not a number"))]), 1);
    run.wait_handled(0, 5);
    // Back to version 1 (generation 2): what it fills and fires from here
    // is its own again.
    let back = run.rollback("win");
    assert_eq!(back.to.hash, swap.from.hash, "back to version 1");
    assert_eq!(back.to.generation, 2);
    feed(
        &input,
        &lines(&[
            e("a", 35, json!(7)),
            e("b", 36, json!(2)),
            e("y", 50, json!(1)),
        ]),
        1,
    );
    run.wait_handled(0, 8);
    let summary = run.stop();
    assert_eq!(summary.operators[0].timers_failed, 0);
    let mut got: Vec<(String, Value)> = outputs(dir.path());
    got.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.to_string().cmp(&y.1.to_string())));
    let mut want = vec![
        ("a".to_string(), json!({"count": 2, "sum": 3})),
        ("b".to_string(), json!({"count": 1, "sum": 10})),
        (
            "a".to_string(),
            json!({"start": 10, "end": 20, "count": 1, "sum": 5.0}),
        ),
        ("a".to_string(), json!({"count": 1, "sum": 7})),
        ("b".to_string(), json!({"count": 1, "sum": 2})),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.to_string().cmp(&y.1.to_string())));
    assert_eq!(
        got, want,
        "each window fired once, by the version in service"
    );
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["key"], "z");
    assert_eq!(dead[0]["version"], swap.to.hash.as_str(), "{dead:?}");

    // A restart runs the version in service (generation 2), with y's
    // window still pending: it fires when the watermark passes 60.
    let run = Running::start(p.clone());
    let status = run.status();
    assert_eq!(status.operators[0].version.generation, 2);
    assert_eq!(status.operators[0].version.hash, swap.from.hash);
    assert_eq!(status.operators[0].versions.len(), 3);
    feed(&input, &lines(&[e("x", 70, json!(1))]), 1);
    run.wait_handled(0, 1);
    run.stop();
    let last = outputs(dir.path()).pop().unwrap();
    assert_eq!(last, ("y".to_string(), json!({"count": 1, "sum": 1})));
}

#[test]
fn a_swap_the_windows_cannot_take_is_refused_and_the_running_version_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let p = pipeline(dir.path(), WINDOW_SUM);
    let run = Running::start(p.clone());
    // window-sum keeps a float sum, which window-faulty cannot read.
    feed(&input, &lines(&[e("a", 1, json!(1.5))]), 1);
    run.wait_handled(0, 1);
    // Stopped while following: the window stays pending, committed.
    run.stop();

    let run = Running::start(p.clone());
    let running = run.status().operators[0].version.hash.clone();
    let err = refusal(&run, WINDOW_FAULTY);
    assert!(
        err.contains("its `finish` failed on the windows of committed key `a`")
            && err.contains("a window accumulator does not decode")
            && err.contains(&format!("version {running} keeps running")),
        "{err}"
    );
    let err = refusal(&run, COUNTER);
    assert!(
        err.contains("does not export the window aggregate") && err.contains("keeps running"),
        "{err}"
    );
    let status = run.status();
    assert_eq!(status.operators[0].version.hash, running);
    assert_eq!(status.operators[0].versions.len(), 1, "nothing recorded");
    // The running version finishes its window.
    feed(&input, &lines(&[e("b", 20, json!(1))]), 1);
    run.wait_handled(0, 1);
    run.stop();
    assert_eq!(
        outputs(dir.path()),
        vec![(
            "a".to_string(),
            json!({"start": 0, "end": 10, "count": 1, "sum": 1.5})
        )]
    );
}
