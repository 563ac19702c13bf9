//! State time to live: an entry expires once the watermark is past its last
//! write (or read, with `refresh = "read"`) plus `after`; it is never
//! returned after that, and its storage is reclaimed at that advance (the
//! key's record rewritten or deleted at the next checkpoint), on the
//! batched path and the per-event path alike, and across a restart.

use std::collections::BTreeMap;
use std::path::Path;

use eddy_runtime::{Pipeline, Refresh, TtlSpec};
use serde_json::{json, Value};

use crate::util::*;

/// A one-operator pipeline of `component` on `lines` (time field `ts`),
/// state name `name` living `after`.
fn ttl_pipeline(
    dir: &Path,
    component: &str,
    lines: &[Value],
    name: &str,
    after: u64,
    refresh: Refresh,
) -> Pipeline {
    let input = dir.join("in.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir, &input, &[("op", component)], 2);
    p.time_field = Some("ts".into());
    p.operators[0].ttl = vec![TtlSpec {
        name: name.into(),
        after,
        refresh,
    }];
    p
}

/// Each key's output values, in order.
fn outputs_by_key(p: &Pipeline) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for l in read_jsonl(&p.dead_letter.with_file_name("out.jsonl")) {
        m.entry(l["key"].as_str().unwrap().to_string())
            .or_default()
            .push(l["value"].clone());
    }
    m
}

/// `eddy state get op KEY` on a stopped pipeline: (exit success, stdout,
/// stderr).
fn state_get(state: &Path, key: &str) -> (bool, String, String) {
    let o = std::process::Command::new(eddy_bin())
        .args(["state", "get", "op", key, "--state"])
        .arg(state)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn count(n: u64) -> Value {
    json!({"count": n, "sum": 0.0})
}

/// The keyed counter (batched path) with `totals` living 10: entries
/// written at 0 are read at watermark 9 (deadline - 1: kept), at 10 (the
/// deadline: kept) and at 11 (past it: gone, the count starts again). A key
/// never written again is deleted from the state directory, not only
/// hidden; the end of the input expires nothing.
#[test]
fn an_entry_expires_once_the_watermark_is_past_its_last_write_plus_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let e = |key: &str, ts: i64| json!({"key": key, "ts": ts});
    let lines = [
        e("a", 0),
        e("b", 0),
        e("c", 0),
        e("d", 0),
        e("z", 9),  // watermark 9
        e("a", 9),  // a's deadline is 10: kept (now 19)
        e("z", 10), // watermark 10
        e("b", 10), // b's deadline is 10: kept (now 20)
        e("z", 11), // watermark 11: c and d expire
        e("c", 11), // counts from 1 again
    ];
    let p = ttl_pipeline(
        dir.path(),
        eddy_tests::COUNTER,
        &lines,
        "totals",
        10,
        Refresh::Write,
    );
    let summary = run(&p);
    assert_eq!(summary.operators[0].handled, 10);
    let out = outputs_by_key(&p);
    assert_eq!(out["a"], vec![count(1), count(2)]);
    assert_eq!(out["b"], vec![count(1), count(2)]);
    assert_eq!(out["c"], vec![count(1), count(1)]);
    assert_eq!(out["d"], vec![count(1)]);
    assert_eq!(out["z"], vec![count(1), count(2), count(3)]);

    // d's storage is reclaimed; the others' deadlines are committed.
    let (ok, stdout, stderr) = state_get(&p.state_dir, "d");
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("operator \"op\" has no committed state for key \"d\""),
        "{stderr}"
    );
    let (ok, stdout, stderr) = state_get(&p.state_dir, "c");
    assert!(ok, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["values"]["totals"],
        count(1)
    );
    let store = eddy_runtime::Store::open(&p.state_dir).unwrap();
    let mut rows = store.timers("op").unwrap();
    rows.sort();
    let row = |k: &str, at: i64| (k.to_string(), "\0ttl:totals".to_string(), at);
    assert_eq!(
        rows,
        vec![row("a", 19), row("b", 20), row("c", 21), row("z", 21)]
    );
}

/// With `refresh = "read"` (the per-event path), a read renews the
/// deadline: an entry read at 8 outlives one written at the same time and
/// not read; a failed event's read renews nothing.
#[test]
fn a_read_renews_an_entry_with_refresh_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"key": "k", "ts": 0, "put": 1}),
        json!({"key": "j", "ts": 0, "put": 2}),
        json!({"key": "f", "ts": 0, "put": 3}),
        json!({"key": "k", "ts": 8, "get": true}),
        json!({"key": "f", "ts": 8, "get": true, "fail": true}),
        json!({"key": "z", "ts": 15}), // watermark 15: j and f expire
        json!({"key": "k", "ts": 15, "get": true}),
        json!({"key": "j", "ts": 15, "get": true}),
        json!({"key": "f", "ts": 15, "get": true}),
    ];
    let p = ttl_pipeline(
        dir.path(),
        eddy_tests::TIMERS,
        &lines,
        "v",
        10,
        Refresh::Read,
    );
    run(&p);
    let v = |out: &Vec<Value>| -> Vec<Value> { out.iter().map(|o| o["v"].clone()).collect() };
    let out = outputs_by_key(&p);
    assert_eq!(v(&out["k"]), vec![Value::Null, json!(1), json!(1)]);
    assert_eq!(v(&out["j"]), vec![Value::Null, Value::Null]);
    assert_eq!(v(&out["f"]), vec![Value::Null, Value::Null]);
    assert_eq!(read_jsonl(&p.dead_letter).len(), 1, "f's failed read");
}

/// Deadlines are committed with the state: stopped with entries pending,
/// restarted, the entries expire where an uninterrupted run expires them.
#[test]
fn deadlines_survive_a_restart() {
    use crate::swap::{feed, Running};
    let dir = tempfile::tempdir().unwrap();
    let mut p = ttl_pipeline(
        dir.path(),
        eddy_tests::COUNTER,
        &[],
        "totals",
        10,
        Refresh::Write,
    );
    let input = dir.path().join("in.jsonl");
    let running = Running::start(p.clone());
    feed(
        &input,
        "{\"key\":\"a\",\"ts\":0}\n{\"key\":\"b\",\"ts\":5}\n{\"key\":\"z\",\"ts\":6}\n",
        1,
    );
    running.wait_handled(0, 3);
    running.stop();
    let store = eddy_runtime::Store::open(&p.state_dir).unwrap();
    assert_eq!(store.timers("op").unwrap().len(), 3, "pending deadlines");
    drop(store);

    p.workers = 3;
    let running = Running::start(p.clone());
    feed(
        &input,
        "{\"key\":\"z\",\"ts\":11}\n{\"key\":\"a\",\"ts\":11}\n{\"key\":\"b\",\"ts\":11}\n",
        1,
    );
    running.wait_handled(0, 3);
    running.stop();
    let out = outputs_by_key(&p);
    assert_eq!(
        out["a"],
        vec![count(1), count(1)],
        "a (deadline 10) expired"
    );
    assert_eq!(out["b"], vec![count(1), count(2)], "b (deadline 15) kept");
    let store = eddy_runtime::Store::open(&p.state_dir).unwrap();
    let mut rows = store.timers("op").unwrap();
    rows.sort();
    let row = |k: &str, at: i64| (k.to_string(), "\0ttl:totals".to_string(), at);
    assert_eq!(rows, vec![row("a", 21), row("b", 21), row("z", 21)]);
}
