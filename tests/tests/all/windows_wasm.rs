//! Windows over a WebAssembly aggregate (world `window-operator`, the
//! `window_sum` plugin written with the Rust SDK), declared in a pipeline
//! file: known answers for tumbling, hopping and session windows on
//! out-of-order input, the same per-key outputs with 1 and 4 workers, an
//! event the aggregate fails dead-lettered and left out of its window,
//! and each bad `window` setting refused with its text.

use std::collections::BTreeMap;
use std::path::Path;

use eddy_runtime::{engine, load_operators, Overrides, Pipeline, Shutdown, Store, Summary};
use eddy_tests::{COUNTER, WINDOW_FAULTY, WINDOW_SUM};
use serde_json::{json, Value};

use crate::util::*;

/// A pipeline file running `window_sum` as operator `win` with `window`
/// (a TOML inline table) over `in.jsonl` (time field `ts`, out-of-order
/// bound 5).
fn pipeline_file(component: &str, window: &str, workers: usize) -> String {
    format!(
        r#"workers = {workers}
control = false

[source]
path = "in.jsonl"
time = "ts"

[source.watermark]
max_out_of_order = 5

[[operator]]
name = "win"
component = "{component}"
window = {window}

[sink]
path = "out.jsonl"
dead_letter = "dead-letter.jsonl"

[state]
dir = "state"
"#
    )
}

fn run_file(dir: &Path, lines: &[Value], window: &str, workers: usize) -> (Pipeline, Summary) {
    run_component(dir, lines, WINDOW_SUM, window, workers, "")
}

/// [`run_file`] with another component and `extra` lines after
/// `max_out_of_order`.
fn run_component(
    dir: &Path,
    lines: &[Value],
    component: &str,
    window: &str,
    workers: usize,
    extra: &str,
) -> (Pipeline, Summary) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("in.jsonl"), text).unwrap();
    let file = dir.join("pipeline.toml");
    let text = pipeline_file(component, window, workers).replace(
        "max_out_of_order = 5\n",
        &format!("max_out_of_order = 5\n{extra}"),
    );
    std::fs::write(&file, text).unwrap();
    let p = Pipeline::load(Some(&file), Overrides::default()).unwrap();
    let ops = load_operators(&engine().unwrap(), &p).unwrap();
    let summary = eddy_runtime::run(&p, ops, &Shutdown::new()).unwrap();
    (p, summary)
}

fn out_lines(p: &Pipeline) -> Vec<(String, Value)> {
    read_jsonl(&p.dead_letter.with_file_name("out.jsonl"))
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["value"].clone()))
        .collect()
}

fn by_key(p: &Pipeline) -> BTreeMap<String, Vec<Value>> {
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in out_lines(p) {
        got.entry(k).or_default().push(v);
    }
    got
}

fn w(start: i64, end: i64, count: u64, sum: f64) -> Value {
    json!({"start": start, "end": end, "count": count, "sum": sum})
}

fn e(key: &str, ts: i64, amount: i64) -> Value {
    json!({"key": key, "ts": ts, "amount": amount})
}

/// Hand-computed (the native test's input): windows of 10, out-of-order
/// bound 5; each fires once the watermark reaches its end, in (end, key)
/// order; a late event is dead-lettered; nothing is left behind.
#[test]
fn wasm_tumbling_windows_give_the_known_answers() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        e("a", 1, 1),
        e("a", 4, 2),
        e("b", 7, 10), // watermark 2
        e("a", 12, 4), // watermark 7
        e("a", 9, 8),  // out of order, on time: [0, 10)
        e("b", 3, 20), // below the watermark 7: late
        e("b", 15, 1), // watermark 10: [0, 10) fires
        e("a", 25, 5), // watermark 20: [10, 20) fires
        e("a", 21, 6),
    ];
    let (p, summary) = run_file(dir.path(), &lines, r#"{ kind = "tumbling", size = 10 }"#, 1);
    let s = |k: &str, v: Value| (k.to_string(), v);
    assert_eq!(
        out_lines(&p),
        vec![
            s("a", w(0, 10, 3, 11.0)),
            s("b", w(0, 10, 1, 10.0)),
            s("a", w(10, 20, 1, 4.0)),
            s("b", w(10, 20, 1, 1.0)),
            s("a", w(20, 30, 2, 11.0)),
        ]
    );
    assert_eq!(summary.late_dead_lettered, 1);
    assert_eq!(summary.operators[0].timers_fired, 5);
    let store = Store::open(&p.state_dir).unwrap();
    assert_eq!(store.timers("win").unwrap(), vec![]);
    assert_eq!(store.record("win", "a").unwrap(), None, "a's panes dropped");
}

/// An event whose `amount` is not a number fails in the aggregate: it is
/// dead-lettered with the aggregate's reason and left out of its window,
/// and the events around it (in the same `add` call) still count.
#[test]
fn an_event_the_aggregate_fails_is_dead_lettered_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        e("a", 1, 1),
        json!({"key": "a", "ts": 2, "amount": "lots"}),
        e("a", 3, 2),
        e("b", 4, 5),
    ];
    let (p, _) = run_file(dir.path(), &lines, r#"{ kind = "tumbling", size = 10 }"#, 1);
    let s = |k: &str, v: Value| (k.to_string(), v);
    assert_eq!(
        out_lines(&p),
        vec![s("a", w(0, 10, 2, 3.0)), s("b", w(0, 10, 1, 5.0))]
    );
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 2);
    assert_eq!(
        dead[0]["error"],
        "operator returned an error: cannot read the payload: field `amount` is \"lots\", not a number at line 1 column 16"
    );
}

/// One `add` call that traps (the events are in one batch: the watermark
/// steps by 100, so nothing fires before the input ends) costs only the
/// event that caused it: the batch is redone event by event on a fresh
/// instance. A `finish` that fails dead-letters that window's firing, with
/// the timer it came from.
#[test]
fn a_trap_in_add_costs_only_its_event_and_a_failed_finish_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        e("a", 1, 1),
        e("b", 2, 2),
        json!({"key": "a", "ts": 3, "trap": true}),
        e("a", 4, 4),
        e("b", 5, 11),
        e("c", 6, 6),
    ];
    let (p, summary) = run_component(
        dir.path(),
        &lines,
        WINDOW_FAULTY,
        r#"{ kind = "tumbling", size = 10 }"#,
        1,
        "step = 100\n",
    );
    let s = |k: &str, v: Value| (k.to_string(), v);
    assert_eq!(
        out_lines(&p),
        vec![
            s("a", json!({"count": 2, "sum": 5})),
            s("c", json!({"count": 1, "sum": 6})),
        ]
    );
    assert_eq!(summary.operators[0].failed, 1);
    assert_eq!(summary.operators[0].timers_failed, 1);
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert_eq!(dead[0]["line"], 3);
    let trap = dead[0]["error"].as_str().unwrap();
    assert!(trap.starts_with("operator trapped: "), "{trap}");
    assert!(trap.contains("asked to trap at time 3"), "{trap}");
    assert_eq!(dead[1]["key"], "b");
    assert_eq!(
        dead[1]["error"],
        "operator returned an error: unlucky window"
    );
    assert_eq!(dead[1]["timer"]["at"], 9);
    // The version named is the component's.
    let bytes = std::fs::read(WINDOW_FAULTY).unwrap();
    assert_eq!(dead[0]["version"], eddy_runtime::component_hash(&bytes));
}

/// Many keys, times out of order within the bound, tumbling and hopping
/// windows: every window's count and sum equal a reference that puts each
/// event in each of its windows, and 1 and 4 workers give each key the
/// same outputs in the same order.
#[test]
fn wasm_windows_match_a_reference_with_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let mut lines = Vec::new();
    for i in 0..5000i64 {
        let key = format!("k{}", rng.next() % 30);
        let ts = i - (rng.next() % 5) as i64 - 40;
        lines.push(e(&key, ts, (rng.next() % 100) as i64));
    }
    for (size, slide) in [(10i64, 10i64), (12, 3), (20, 5)] {
        let mut want: BTreeMap<String, BTreeMap<i64, (u64, f64)>> = BTreeMap::new();
        for l in &lines {
            let ts = l["ts"].as_i64().unwrap();
            let mut s = ts - ts.rem_euclid(slide);
            while s + size > ts {
                let acc = want
                    .entry(l["key"].as_str().unwrap().to_string())
                    .or_default()
                    .entry(s)
                    .or_default();
                acc.0 += 1;
                acc.1 += l["amount"].as_i64().unwrap() as f64;
                s -= slide;
            }
        }
        let want: BTreeMap<String, Vec<Value>> = want
            .into_iter()
            .map(|(k, ws)| {
                let v = ws
                    .into_iter()
                    .map(|(s, (c, sum))| w(s, s + size, c, sum))
                    .collect();
                (k, v)
            })
            .collect();
        let window = match size == slide {
            true => format!(r#"{{ kind = "tumbling", size = {size} }}"#),
            false => format!(r#"{{ kind = "hopping", size = {size}, slide = {slide} }}"#),
        };
        for workers in [1, 4] {
            let sub = dir.path().join(format!("{size}-{slide}-{workers}"));
            std::fs::create_dir(&sub).unwrap();
            let (p, summary) = run_file(&sub, &lines, &window, workers);
            assert_eq!(summary.late_dead_lettered, 0);
            assert_eq!(read_jsonl(&p.dead_letter), Vec::<Value>::new());
            assert_eq!(
                by_key(&p),
                want,
                "size {size} slide {slide}, {workers} workers"
            );
            let store = Store::open(&p.state_dir).unwrap();
            assert_eq!(store.timers("win").unwrap(), vec![]);
            assert_eq!(store.record("win", "k1").unwrap(), None, "no pane left");
        }
    }
}

/// Sessions closed by an inactivity gap of 5: an event between two open
/// sessions merges them (the aggregate's `merge`).
#[test]
fn wasm_sessions_merge_when_an_event_bridges_them() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        e("a", 0, 1),
        e("a", 8, 2),   // watermark 3: sessions [0, 5) and [8, 13)
        e("a", 4, 4),   // spans [4, 9): one session [0, 13)
        e("b", 14, 8),  // watermark 9
        e("b", 30, 16), // watermark 25: a [0, 13) and b [14, 19) fire
        e("a", 26, 32),
    ];
    let (p, _) = run_file(dir.path(), &lines, r#"{ kind = "session", gap = 5 }"#, 1);
    let s = |k: &str, v: Value| (k.to_string(), v);
    assert_eq!(
        out_lines(&p),
        vec![
            s("a", w(0, 13, 3, 7.0)),
            s("b", w(14, 19, 1, 8.0)),
            s("a", w(26, 31, 1, 32.0)),
            s("b", w(30, 35, 1, 16.0)),
        ]
    );
}

/// Sessions on many keys out of order within the bound: equal to a
/// reference that groups each key's sorted times closer than the gap, with
/// 1 and 4 workers.
#[test]
fn wasm_sessions_match_a_reference_with_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(11);
    let mut lines = Vec::new();
    let mut times: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    let mut t = 0i64;
    for _ in 0..4000 {
        t += (rng.next() % 3) as i64;
        let key = format!("k{}", rng.next() % 40);
        let ts = t - (rng.next() % 5) as i64;
        let amount = (rng.next() % 100) as i64;
        lines.push(e(&key, ts, amount));
        times.entry(key).or_default().push((ts, amount));
    }
    let gap = 12i64;
    let mut want: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, mut ts) in times {
        ts.sort();
        let mut out: Vec<(i64, i64, u64, f64)> = Vec::new();
        for (t, amount) in ts {
            match out.last_mut() {
                Some(last) if t < last.1 => {
                    last.1 = last.1.max(t + gap);
                    last.2 += 1;
                    last.3 += amount as f64;
                }
                _ => out.push((t, t + gap, 1, amount as f64)),
            }
        }
        want.insert(
            k,
            out.into_iter()
                .map(|(s, e, c, sum)| w(s, e, c, sum))
                .collect(),
        );
    }
    assert!(want.values().map(Vec::len).sum::<usize>() > 200);
    for workers in [1, 4] {
        let sub = dir.path().join(format!("s{workers}"));
        std::fs::create_dir(&sub).unwrap();
        let (p, _) = run_file(
            &sub,
            &lines,
            &format!(r#"{{ kind = "session", gap = {gap} }}"#),
            workers,
        );
        assert_eq!(by_key(&p), want, "{workers} workers");
    }
}

/// The error a pipeline file with `window` (and its component) gets.
fn config_error(component: &str, window: &str, time: bool) -> String {
    let mut text = pipeline_file(component, window, 1);
    if !time {
        text = text.replace("time = \"ts\"\n", "");
    }
    let p = match Pipeline::from_toml(&text, Path::new("pipeline.toml"), Overrides::default()) {
        Err(e) => return e.to_string(),
        Ok(p) => p,
    };
    match load_operators(&engine().unwrap(), &p) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{window} is accepted"),
    }
}

/// Each bad `window` setting is refused before any input is read, naming
/// the field and the pipeline file line (the `window` line is line 14;
/// 13 without the `time` line).
#[test]
fn bad_window_settings_name_the_field_and_the_line() {
    let at = "pipeline file pipeline.toml, line 14: operator `win`: ";
    let cases = [
        (
            r#"{ kind = "rolling", size = 10 }"#,
            r#"window.kind = "rolling" is not a window kind: write "tumbling", "hopping" or "session""#,
        ),
        (
            r#"{ size = 10 }"#,
            r#"window.kind is missing: write "tumbling", "hopping" or "session""#,
        ),
        (
            r#"{ kind = "tumbling" }"#,
            "window.size is missing: a tumbling window needs it (in time-field units)",
        ),
        (
            r#"{ kind = "tumbling", size = 0 }"#,
            "window.size = 0 must be at least 1 (in time-field units)",
        ),
        (
            r#"{ kind = "hopping", size = -60, slide = 10 }"#,
            "window.size = -60 must be at least 1 (in time-field units)",
        ),
        (
            r#"{ kind = "hopping", size = 60 }"#,
            "window.slide is missing: a hopping window needs it (in time-field units)",
        ),
        (
            r#"{ kind = "hopping", size = 60, slide = 25 }"#,
            "window.slide = 25 must divide window.size = 60 (each window is then made of whole panes of `slide`)",
        ),
        (
            r#"{ kind = "hopping", size = 60, slide = 120 }"#,
            "window.slide = 120 must divide window.size = 60 (each window is then made of whole panes of `slide`)",
        ),
        (
            r#"{ kind = "tumbling", size = 60, gap = 5 }"#,
            "window.gap does not apply to a tumbling window",
        ),
        (
            r#"{ kind = "session" }"#,
            "window.gap is missing: a session window needs it (in time-field units)",
        ),
        (
            r#"{ kind = "session", gap = 5, size = 10 }"#,
            "window.size does not apply to a session window",
        ),
    ];
    for (window, want) in cases {
        assert_eq!(
            config_error(WINDOW_SUM, window, true),
            format!("{at}{want}"),
            "{window}"
        );
    }
    assert_eq!(
        config_error(WINDOW_SUM, r#"{ kind = "tumbling", size = 10 }"#, false),
        "pipeline file pipeline.toml, line 13: operator `win`: window: a window is in event time: it needs a time field ([source] time, or --time)"
    );
    assert_eq!(
        config_error(COUNTER, r#"{ kind = "tumbling", size = 10 }"#, true),
        format!("pipeline file pipeline.toml, line 14: operator `win`: window: component {COUNTER} does not export the window aggregate (world `eddy:operator@0.3.0/window-operator`): it lacks `add`, `merge`, `finish`")
    );
    // A window after another operator.
    let text = pipeline_file(WINDOW_SUM, r#"{ kind = "tumbling", size = 10 }"#, 1).replace(
        "[[operator]]\nname = \"win\"",
        &format!("[[operator]]\nname = \"first\"\ncomponent = \"{COUNTER}\"\n\n[[operator]]\nname = \"win\""),
    );
    assert_eq!(
        Pipeline::from_toml(&text, Path::new("pipeline.toml"), Overrides::default())
            .err()
            .unwrap()
            .to_string(),
        "pipeline file pipeline.toml, line 18: operator `win`: window: a window operator must be the first operator of a chain for now (windows fire on timers, which only the first operator has)"
    );
    // A window aggregate run as a plain operator.
    let text = pipeline_file(WINDOW_SUM, "{}", 1).replace("window = {}\n", "");
    let p = Pipeline::from_toml(&text, Path::new("pipeline.toml"), Overrides::default()).unwrap();
    let err = load_operators(&engine().unwrap(), &p)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!("component {WINDOW_SUM}: not an eddy operator (world `eddy:operator@0.3.0/operator`): it is a window aggregate (world `eddy:operator@0.3.0/window-operator`): declare its operator a window in the pipeline file, e.g. `window = {{ kind = \"tumbling\", size = 60000 }}`")
    );
}

/// `eddy inspect` names the window world and says the component loads as
/// a window aggregate.
#[test]
fn inspect_names_the_window_world() {
    let dir = tempfile::tempdir().unwrap();
    let o = eddy_in(&["inspect", "--json", WINDOW_SUM], dir.path());
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{r:#}");
    assert_eq!(r["world"], "window-operator");
    assert_eq!(r["loads"], true);
    assert_eq!(
        r["verdict"],
        "loads as a window aggregate of eddy:operator@0.3.0 (declare its operator a window in the pipeline file: window = { kind = ... })"
    );
    let exports: Vec<&str> = r["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for e in ["init", "add", "merge", "finish"] {
        assert!(exports.contains(&e), "{e} not in {exports:?}");
    }
    assert!(!exports.contains(&"handle"), "{exports:?}");
}

/// Kill -9 a window pipeline (hopping windows over the Wasm aggregate,
/// late events delivered into windows that already fired) at
/// pseudo-random moments, restarting it on the same input each time, then
/// let it finish: every window fires exactly once with exactly its events
/// (panes and pending windows come back from the checkpoint, the output
/// file is cut back to it), so each key's outputs, and the whole output
/// sorted, equal an uninterrupted run's.
#[test]
fn sigkill_at_random_moments_then_restart_fires_each_window_once() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(31);
    let lines: Vec<Value> = (0..400_000i64)
        .map(|i| {
            let key = format!("k{}", rng.next() % 3000);
            e(
                &key,
                i / 4 - (rng.next() % 40) as i64,
                (rng.next() % 100) as i64,
            )
        })
        .collect();
    let window = r#"{ kind = "hopping", size = 100, slide = 50 }"#;
    let extra = "step = 3\nallowed_lateness = 20\nlate = \"deliver\"\n";
    let once = dir.path().join("once");
    std::fs::create_dir(&once).unwrap();
    let (p, summary) = run_component(&once, &lines, WINDOW_SUM, window, 2, extra);
    assert_eq!(summary.late_dead_lettered, 0);
    let reference = by_key(&p);
    // A late event into a window that fired fires it again.
    let refired = reference.values().any(|ws| {
        let starts: Vec<&Value> = ws.iter().map(|w| &w["start"]).collect();
        (1..starts.len()).any(|i| starts[..i].contains(&starts[i]))
    });
    assert!(refired, "late events fire windows again");
    let mut reference_sorted = out_lines(&p);
    reference_sorted.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));

    let crash = dir.path().join("crash");
    std::fs::create_dir(&crash).unwrap();
    std::fs::copy(once.join("in.jsonl"), crash.join("in.jsonl")).unwrap();
    let toml = pipeline_file(WINDOW_SUM, window, 2)
        .replace(
            "max_out_of_order = 5\n",
            &format!("max_out_of_order = 5\n{extra}"),
        )
        .replace(
            "dir = \"state\"\n",
            "dir = \"state\"\ncheckpoint_interval_ms = 40\n",
        );
    std::fs::write(crash.join("p.toml"), toml).unwrap();
    let args = ["run", "p.toml", "--quiet"];
    let mut killed = 0;
    let mut pending_seen = false;
    let out_len = || std::fs::metadata(crash.join("out.jsonl")).map_or(0, |m| m.len());
    for _ in 0..12 {
        let before = out_len();
        let mut child = Command::new(eddy_bin())
            .args(args)
            .current_dir(&crash)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Once it writes past where the last run got, at a pseudo-random
        // moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while out_len() <= before
            && child.try_wait().unwrap().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20 + rng.next() % 150));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("error"), "{stderr}");
        let store = Store::open(&crash.join("state")).unwrap();
        pending_seen |= !store.timers("win").unwrap().is_empty();
    }
    eprintln!("killed {killed} of 12 runs");
    assert!(
        killed >= 3,
        "only {killed} runs were killed mid-stream: make the input larger"
    );
    assert!(pending_seen, "a kill left pending windows in a checkpoint");
    let o = Command::new(eddy_bin())
        .args(args)
        .current_dir(&crash)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = Store::open(&crash.join("state")).unwrap();
    assert_eq!(store.timers("win").unwrap(), vec![], "every window fired");
    assert_eq!(store.record("win", "k1").unwrap(), None, "no pane left");
    drop(store);
    let crashed = Pipeline {
        dead_letter: crash.join("dead-letter.jsonl"),
        ..p.clone()
    };
    assert_eq!(by_key(&crashed), reference);
    let mut got = out_lines(&crashed);
    got.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
    assert_eq!(got, reference_sorted);
}
