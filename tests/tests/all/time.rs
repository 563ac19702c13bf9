//! Event time: the watermark follows the input's times, timers fire in
//! (time, key, name) order once it passes them, the end of a file input
//! fires the rest, a failing or trapping timer handler is dead-lettered and
//! its timer consumed, and 1 or 4 workers give each key the same outputs.
//!
//! The `timers` test operator (`tests/fixtures/timers`) sets and clears
//! timers as each payload says and emits what it saw (see its README).

use std::collections::BTreeMap;
use std::path::Path;

use eddy_runtime::{LatePolicy, Pipeline, WatermarkSpec};
use serde_json::{json, Value};

use crate::util::*;

const MIN: i64 = i64::MIN;
const MAX: i64 = i64::MAX;

/// A one-operator pipeline of the `timers` operator on `lines`, with time
/// field `ts`.
fn timers_pipeline(dir: &Path, lines: &[Value], workers: usize, wm: WatermarkSpec) -> Pipeline {
    let input = dir.join("in.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir, &input, &[("timers", eddy_tests::TIMERS)], workers);
    p.time_field = Some("ts".into());
    p.watermark = wm;
    p
}

/// The output lines as (key, value).
fn outputs(p: &Pipeline) -> Vec<(String, Value)> {
    read_jsonl(&p.dead_letter.with_file_name("out.jsonl"))
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["value"].clone()))
        .collect()
}

/// Each key's outputs, in order.
fn by_key(out: Vec<(String, Value)>) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in out {
        m.entry(k).or_default().push(v);
    }
    m
}

fn seen(ts: i64, wm: i64, timers: Value, cleared: Value) -> Value {
    json!({"ts": ts, "wm": wm, "timers": timers, "cleared": cleared})
}

/// `seen` of an event delivered late.
fn late(mut seen: Value) -> Value {
    seen["late"] = json!(true);
    seen
}

fn fired(name: &str, at: i64, wm: i64, n: u64) -> Value {
    json!({"fired": name, "at": at, "wm": wm, "n": n})
}

/// Timers fire once the watermark (here the largest time read: no
/// out-of-orderness allowed) is past them, in (time, key, name) order,
/// between the events of the input; a timer set in the past fires at the
/// next advance; a failed event's timers never exist; at the end of the
/// input every timer fires, those set by firing handlers too.
#[test]
fn timers_fire_in_order_when_the_watermark_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"key": "a", "ts": 10, "set": [["t1", 15], ["t2", 12]]}),
        json!({"key": "b", "ts": 11, "set": [["x", 11]]}),
        json!({"key": "a", "ts": 13, "clear": ["t1"]}),
        json!({"key": "b", "ts": 5, "set": [["late", 3]]}),
        json!({"key": "a", "ts": 14, "set": [["same", 20], ["fail1", 20]], "fail": true}),
        json!({"key": "a", "ts": 20, "set": [["again2", 25], ["b", 21], ["a", 21]]}),
    ];
    // Line 4 is late (5 is below the watermark 13): delivered, flagged.
    let wm = WatermarkSpec {
        late: LatePolicy::Deliver,
        ..WatermarkSpec::default()
    };
    let p = timers_pipeline(dir.path(), &lines, 1, wm);
    let summary = run(&p);
    let s = |k: &str, v: Value| (k.to_string(), v);
    let expected = vec![
        s(
            "a",
            seen(10, MIN, json!([["t1", 15], ["t2", 12]]), json!([])),
        ),
        s("b", seen(11, 10, json!([["x", 11]]), json!([]))),
        s("a", seen(13, 11, json!([["t2", 12]]), json!([true]))),
        // The watermark is 13 after that event: x (11) and t2 (12) fire.
        s("b", fired("x", 11, 13, 1)),
        s("a", fired("t2", 12, 13, 1)),
        // Out of order: the watermark stays; its timer in the past fires
        // at the next advance, not now.
        s("b", late(seen(5, 13, json!([["late", 3]]), json!([])))),
        // (line 5 fails: its timers are never set)
        s("b", fired("late", 3, 14, 2)),
        s(
            "a",
            seen(
                20,
                14,
                json!([["a", 21], ["again2", 25], ["b", 21]]),
                json!([]),
            ),
        ),
        // The end of the input: the watermark goes to +infinity.
        s("a", fired("a", 21, MAX, 2)),
        s("a", fired("b", 21, MAX, 3)),
        s("a", fired("again2", 25, MAX, 4)),
        s("a", fired("again1", 26, MAX, 5)),
        s("a", fired("again0", 27, MAX, 6)),
    ];
    assert_eq!(outputs(&p), expected);
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], 5);
    assert_eq!(
        dead[0]["error"],
        "operator returned an error: failing on request"
    );
    assert_eq!(summary.operators[0].timers_fired, 8);
    assert_eq!(summary.operators[0].timers_failed, 0);
    assert_eq!(summary.operators[0].failed, 1);
    let state = state_values(&p.state_dir, "timers", &["fired"]);
    assert_eq!(state["a"], vec![json!(6)]);
    assert_eq!(state["b"], vec![json!(2)]);
}

/// Events that read nothing of time ride the batched path across
/// watermark advances (a worker need not end a batch at each); an event
/// that reads the watermark or sets a timer in the middle of such a run
/// still sees the watermark of its own place in the input, and its timer
/// fires at the advance it is due at, with 1, 2 or 4 workers.
#[test]
fn a_batch_across_advances_stops_where_an_event_reads_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let loud = [(1234, "a"), (2345, "b"), (2999, "c")];
    let lines: Vec<Value> = (0..3000i64)
        .map(|i| match loud.iter().find(|(j, _)| *j == i) {
            Some((_, key)) => json!({"key": key, "ts": i * 10, "set": [["t", i * 10 + 5]]}),
            None => json!({"key": format!("q{}", i % 50), "ts": i * 10, "quiet": true}),
        })
        .collect();
    let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, key) in loud {
        let ts = i * 10;
        let wm_fired = if i == 2999 { MAX } else { ts + 10 };
        expected.insert(
            key.to_string(),
            vec![
                seen(ts, ts - 10, json!([["t", ts + 5]]), json!([])),
                fired("t", ts + 5, wm_fired, 1),
            ],
        );
    }
    for workers in [1, 2, 4] {
        let sub = dir.path().join(format!("w{workers}"));
        std::fs::create_dir(&sub).unwrap();
        let p = timers_pipeline(&sub, &lines, workers, WatermarkSpec::default());
        let summary = run(&p);
        assert_eq!(summary.lines, 3000);
        assert_eq!(summary.operators[0].handled, 3000, "{workers} workers");
        assert_eq!(summary.operators[0].timers_fired, 3, "{workers} workers");
        assert_eq!(by_key(outputs(&p)), expected, "{workers} workers");
    }
}

/// An operator that reads the watermark inside its `handle-batch` (as no
/// SDK does: `tests/fixtures/malformed`, on raw bindings) while its batch
/// goes on across advances: the host refuses the read, hands the events
/// over again split at the advances, and the read gives the watermark of
/// the event's own place; every event is handled exactly once.
#[test]
fn a_watermark_read_in_a_batch_across_advances_gets_its_own_place() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = (0..2000i64)
        .map(|i| match i {
            1500 => json!({"key": "w", "ts": i * 10, "watermark": true}),
            _ => json!({"key": format!("q{}", i % 20), "ts": i * 10}),
        })
        .collect();
    for workers in [1, 2] {
        let sub = dir.path().join(format!("w{workers}"));
        std::fs::create_dir(&sub).unwrap();
        let input = sub.join("in.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&input, text).unwrap();
        let mut p = pipeline(&sub, &input, &[("m", eddy_tests::MALFORMED)], workers);
        p.time_field = Some("ts".into());
        let summary = run(&p);
        assert_eq!(summary.operators[0].handled, 2000, "{workers} workers");
        assert_eq!(summary.operators[0].failed, 0, "{workers} workers");
        let out = by_key(outputs(&p));
        assert_eq!(
            out["w"],
            vec![json!({"n": 1, "path": "batch", "wm": 14990})],
            "{workers} workers"
        );
        for k in 0..20 {
            let ns: Vec<u64> = out[&format!("q{k}")]
                .iter()
                .map(|v| v["n"].as_u64().unwrap())
                .collect();
            // (q0 gave line 1500 to `w`)
            let n = if k == 0 { 99 } else { 100 };
            assert_eq!(ns, (1..=n).collect::<Vec<u64>>(), "q{k}, {workers} workers");
        }
    }
}

/// A timer handler that traps or returns an error is dead-lettered with
/// its timer, none of its writes or emits take effect, and its timer is
/// consumed; the operator goes on (a fresh instance after the trap).
#[test]
fn a_failing_timer_handler_is_dead_lettered_and_its_timer_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"key": "a", "ts": 1, "set": [["trap", 1], ["ok", 1]]}),
        json!({"key": "a", "ts": 5, "set": [["fail", 6]]}),
        json!({"key": "a", "ts": 7}),
        json!({"key": "a", "ts": 8, "set": [["after", 8]]}),
    ];
    let p = timers_pipeline(dir.path(), &lines, 1, WatermarkSpec::default());
    let summary = run(&p);
    let s = |v: Value| ("a".to_string(), v);
    assert_eq!(
        outputs(&p),
        vec![
            s(seen(1, MIN, json!([["ok", 1], ["trap", 1]]), json!([]))),
            // The event that moves the watermark to 5 comes first.
            s(seen(
                5,
                1,
                json!([["fail", 6], ["ok", 1], ["trap", 1]]),
                json!([])
            )),
            s(fired("ok", 1, 5, 1)),
            // (trap: dead-lettered)
            s(seen(7, 5, json!([["fail", 6]]), json!([]))),
            // (fail: dead-lettered, its count undone)
            s(seen(8, 7, json!([["after", 8]]), json!([]))),
            s(fired("after", 8, MAX, 2)),
        ]
    );
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["key"], "a");
    assert_eq!(dead[0]["line"], 2, "the line of the advance that fired it");
    assert_eq!(dead[0]["timer"], json!({"name": "trap", "at": 1}));
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("operator trapped: ") && error.contains("trapping on timer trap"),
        "{error}"
    );
    assert_eq!(dead[1]["line"], 3);
    assert_eq!(dead[1]["timer"], json!({"name": "fail", "at": 6}));
    assert_eq!(
        dead[1]["error"],
        "operator returned an error: timer fail fails on request"
    );
    assert_eq!(summary.operators[0].timers_fired, 4);
    assert_eq!(summary.operators[0].timers_failed, 2);
    assert_eq!(summary.operators[0].failed, 0, "no event failed");
    let state = state_values(&p.state_dir, "timers", &["fired"]);
    assert_eq!(state["a"], vec![json!(2)]);
}

/// A key holds at most `max_timers_per_key` timers: the event that would
/// set one more is dead-lettered naming the field, with none of its
/// timers; setting a pending name again replaces it and is not one more.
#[test]
fn the_per_key_timer_limit_dead_letters_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"key": "a", "ts": 1, "set": [["1", 5], ["2", 5]]}),
        json!({"key": "a", "ts": 2, "set": [["1", 6], ["1", 7], ["2", 8]]}),
        json!({"key": "a", "ts": 3, "set": [["3", 9]]}),
    ];
    let mut p = timers_pipeline(dir.path(), &lines, 1, WatermarkSpec::default());
    p.operators[0].limits.max_timers_per_key = 2;
    run(&p);
    let s = |v: Value| ("a".to_string(), v);
    assert_eq!(
        outputs(&p),
        vec![
            s(seen(1, MIN, json!([["1", 5], ["2", 5]]), json!([]))),
            s(seen(2, 1, json!([["1", 7], ["2", 8]]), json!([]))),
            s(fired("1", 7, MAX, 1)),
            s(fired("2", 8, MAX, 2)),
        ]
    );
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], 3);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains("max_timers_per_key = 2"), "{error}");
}

/// `max_out_of_order` holds the watermark back and `step` rounds it down:
/// a timer fires only once the largest time read, minus the bound, rounded
/// down to the step, is past it.
#[test]
fn the_bound_and_the_step_hold_the_watermark_back() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        json!({"key": "a", "ts": 100, "set": [["t", 104]]}),
        json!({"key": "a", "ts": 112}),
        json!({"key": "a", "ts": 115}),
        json!({"key": "a", "ts": 120}),
    ];
    let wm = WatermarkSpec {
        max_out_of_order: 5,
        step: 5,
        ..WatermarkSpec::default()
    };
    let p = timers_pipeline(dir.path(), &lines, 1, wm);
    run(&p);
    let s = |v: Value| ("a".to_string(), v);
    assert_eq!(
        outputs(&p),
        vec![
            s(seen(100, MIN, json!([["t", 104]]), json!([]))),
            // 100 - 5 = 95; 112 - 5 = 107, rounded down to 105, is past
            // 104 (the event that moves it is handled first).
            s(seen(112, 95, json!([["t", 104]]), json!([]))),
            s(fired("t", 104, 105, 1)),
            s(seen(115, 105, json!([]), json!([]))),
            s(seen(120, 110, json!([]), json!([]))),
        ]
    );
}

/// A time to live for the `fired` count, so that the restart tests also
/// check that TTL deadlines come back from checkpoints: a count expires
/// 300 after its last firing, and its next firing counts from 1 again.
fn fired_ttl() -> Vec<eddy_runtime::TtlSpec> {
    vec![eddy_runtime::TtlSpec {
        name: "fired".into(),
        after: 300,
        refresh: eddy_runtime::Refresh::Write,
    }]
}

/// The pending user timers of the `timers` operator (not TTL deadlines).
fn user_timers(store: &eddy_runtime::Store) -> Vec<(String, String, i64)> {
    let mut t = store.timers("timers").unwrap();
    t.retain(|(_, name, _)| !name.starts_with(eddy_runtime::TTL_PREFIX));
    t
}

/// `n` lines over `keys` keys, their times mostly increasing with disorder
/// up to 30; a quarter set a timer a little later, a quarter clear one, a
/// quarter set an `again` timer (which sets more as it fires).
fn disordered(n: i64, keys: u64) -> Vec<Value> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut lines = Vec::new();
    for i in 0..n {
        let key = format!("k{}", next(keys));
        let ts = i * 3 - next(30) as i64;
        let mut line = json!({"key": key, "ts": ts});
        match next(4) {
            0 => line["set"] = json!([[format!("t{}", next(3)), ts + next(60) as i64]]),
            1 => line["clear"] = json!([format!("t{}", next(3))]),
            2 => line["set"] = json!([[format!("again{}", next(3)), ts + next(20) as i64]]),
            _ => {}
        }
        lines.push(line);
    }
    lines
}

/// The same input with 1 and with 4 workers gives every key the same
/// outputs in the same order: events and firings interleave by the input
/// alone (two runs with 4 workers agree too).
#[test]
fn one_and_four_workers_give_each_key_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let lines = disordered(3000, 40);
    // Disorder up to 29 against a bound of 20: some events are late,
    // delivered and flagged, the same with any number of workers.
    let wm = WatermarkSpec {
        max_out_of_order: 20,
        step: 7,
        late: LatePolicy::Deliver,
        ..WatermarkSpec::default()
    };
    let mut runs = Vec::new();
    for (name, workers) in [("one", 1), ("four", 4), ("four-again", 4)] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let p = timers_pipeline(&sub, &lines, workers, wm);
        let summary = run(&p);
        assert_eq!(summary.lines, 3000, "{name}");
        assert!(
            summary.operators[0].timers_fired > 500,
            "{name}: {summary:?}"
        );
        let out = outputs(&p);
        assert_eq!(out.len() as u64, 3000 + summary.operators[0].timers_fired);
        let late = out.iter().filter(|(_, v)| v["late"] == true).count();
        assert!(late > 20, "{name}: only {late} late events");
        runs.push((
            by_key(out),
            state_values(&p.state_dir, "timers", &["fired"]),
        ));
    }
    assert_eq!(runs[0], runs[1], "1 and 4 workers");
    assert_eq!(runs[1], runs[2], "two runs with 4 workers");
}

/// Stop a run at arbitrary moments (each stop makes a checkpoint), restart
/// until the input is done, with another number of workers each time:
/// pending timers and the watermark come back from the checkpoint, so each
/// key gets exactly the outputs and state of one uninterrupted run, and no
/// timer is left in the state directory.
#[test]
fn stopping_anywhere_and_restarting_gives_each_key_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let lines = disordered(20_000, 300);
    let wm = WatermarkSpec {
        max_out_of_order: 20,
        step: 3,
        late: LatePolicy::Deliver,
        ..WatermarkSpec::default()
    };
    let once = dir.path().join("once");
    std::fs::create_dir(&once).unwrap();
    let mut p = timers_pipeline(&once, &lines, 2, wm);
    p.operators[0].ttl = fired_ttl();
    run(&p);
    let reference = (
        by_key(outputs(&p)),
        state_values(&p.state_dir, "timers", &["fired"]),
    );

    let stops = dir.path().join("stops");
    std::fs::create_dir(&stops).unwrap();
    let mut p = timers_pipeline(&stops, &lines, 2, wm);
    p.operators[0].ttl = fired_ttl();
    p.checkpoint_events = Some(1_500);
    let mut total = 0;
    let mut pending_seen = false;
    for (delay_ms, workers) in [(0u64, 1), (5, 3), (20, 2), (60, 4), (150, 1)] {
        p.workers = workers;
        let shutdown = eddy_runtime::Shutdown::new();
        let s = shutdown.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            s.trigger();
        });
        total += run_with(&p, &shutdown).lines;
        stopper.join().unwrap();
        let store = eddy_runtime::Store::open(&p.state_dir).unwrap();
        pending_seen |= !user_timers(&store).is_empty();
    }
    p.workers = 2;
    total += run(&p).lines;
    assert_eq!(total, 20_000, "every line read exactly once over all runs");
    assert!(
        pending_seen,
        "some stop left pending timers in a checkpoint"
    );
    let store = eddy_runtime::Store::open(&p.state_dir).unwrap();
    assert_eq!(user_timers(&store), vec![], "every timer fired");
    drop(store);
    let got = (
        by_key(outputs(&p)),
        state_values(&p.state_dir, "timers", &["fired"]),
    );
    assert_eq!(got, reference);
}

/// Kill -9 the `eddy` process at pseudo-random moments, restarting it on
/// the same input each time, then let it finish: timers set before a kill
/// fire exactly once, where an uninterrupted run fires them (the output
/// file is cut back to the checkpoint, the timers and the watermark come
/// back from it), so each key's outputs equal one uninterrupted run's.
#[test]
fn sigkill_at_random_moments_then_restart_fires_each_timer_once() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let lines = disordered(500_000, 2_000);
    let wm = WatermarkSpec {
        max_out_of_order: 20,
        step: 3,
        late: LatePolicy::Deliver,
        ..WatermarkSpec::default()
    };
    let once = dir.path().join("once");
    std::fs::create_dir(&once).unwrap();
    let mut p = timers_pipeline(&once, &lines, 2, wm);
    p.operators[0].ttl = fired_ttl();
    run(&p);
    let reference = by_key(outputs(&p));

    let crash = dir.path().join("crash");
    std::fs::create_dir(&crash).unwrap();
    std::fs::copy(once.join("in.jsonl"), crash.join("in.jsonl")).unwrap();
    let toml = format!(
        "workers = 2\ncontrol = false\n\
         [source]\npath = \"in.jsonl\"\ntime = \"ts\"\n\
         [source.watermark]\nmax_out_of_order = 20\nstep = 3\nlate = \"deliver\"\n\
         [[operator]]\nname = \"timers\"\ncomponent = {:?}\nttl.fired = {{ after = 300 }}\n\
         [sink]\npath = \"out.jsonl\"\ndead_letter = \"dead.jsonl\"\n\
         [state]\ndir = \"st\"\ncheckpoint_interval_ms = 40\n",
        eddy_tests::TIMERS
    );
    std::fs::write(crash.join("p.toml"), toml).unwrap();
    let args = ["run", "p.toml", "--quiet"];
    let mut rng = Rng(77);
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
        // Once it writes past where the last run got (so it started and
        // makes checkpoints every 40 ms), at a pseudo-random moment.
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
        let store = eddy_runtime::Store::open(&crash.join("st")).unwrap();
        pending_seen |= !user_timers(&store).is_empty();
    }
    eprintln!("killed {killed} of 12 runs");
    // Each run resumes where the last checkpoint left it, so the later
    // ones may reach the end before the kill.
    assert!(
        killed >= 3,
        "only {killed} runs were killed mid-stream: make the input larger"
    );
    assert!(pending_seen, "a kill left pending timers in a checkpoint");
    let o = Command::new(eddy_bin())
        .args(args)
        .current_dir(&crash)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = eddy_runtime::Store::open(&crash.join("st")).unwrap();
    assert_eq!(user_timers(&store), vec![], "every timer fired");
    drop(store);
    let got: Vec<(String, Value)> = read_jsonl(&crash.join("out.jsonl"))
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["value"].clone()))
        .collect();
    assert_eq!(by_key(got), reference);
}

/// A hot swap of the first operator keeps its pending timers: they fire on
/// the new version (a firing that fails is dead-lettered with the new
/// version's id), with the state the old version left.
#[test]
fn pending_timers_fire_on_the_new_version_after_a_hot_swap() {
    use crate::swap::{feed, Running};
    let dir = tempfile::tempdir().unwrap();
    let mut p = timers_pipeline(dir.path(), &[], 2, WatermarkSpec::default());
    p.checkpoint_interval = std::time::Duration::from_millis(50);
    let input = dir.path().join("in.jsonl");
    // The same operator under another id: a custom section appended.
    let mut v2 = std::fs::read(eddy_tests::TIMERS).unwrap();
    v2.extend_from_slice(&[0x00, 0x04, 0x01, b'x', b'v', b'2']);
    let v2_path = dir.path().join("timers-v2.wasm");
    std::fs::write(&v2_path, &v2).unwrap();
    let v2_id = eddy_runtime::component_hash(&v2);

    let running = Running::start(p.clone());
    feed(
        &input,
        "{\"key\":\"a\",\"ts\":1,\"set\":[[\"fail-x\",100]]}\n\
         {\"key\":\"b\",\"ts\":2,\"set\":[[\"ok\",50]]}\n",
        1,
    );
    running.wait_handled(0, 2);
    running.swap("timers", v2_path.to_str().unwrap());
    feed(&input, "{\"key\":\"c\",\"ts\":200}\n", 1);
    running.wait_handled(0, 3);
    let summary = running.stop();
    assert_eq!(summary.operators[0].timers_fired, 2);
    assert_eq!(summary.operators[0].timers_failed, 1);
    let out = by_key(outputs(&p));
    assert_eq!(
        out["b"],
        vec![
            seen(2, 1, json!([["ok", 50]]), json!([])),
            fired("ok", 50, 200, 1)
        ]
    );
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["key"], "a");
    assert_eq!(dead[0]["timer"], json!({"name": "fail-x", "at": 100}));
    assert_eq!(dead[0]["version"], v2_id.as_str());
}

/// `eddy swap` to a version without `on-timer` is refused while timers
/// the running version set are pending (committed), naming the first; a
/// version with it is taken.
#[test]
fn a_swap_to_a_version_without_a_timer_handler_is_refused_while_timers_are_pending() {
    use crate::swap::{eddy, feed, Running};
    use eddy_runtime::control::{Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let mut p = timers_pipeline(dir.path(), &[], 1, WatermarkSpec::default());
    p.checkpoint_interval = std::time::Duration::from_millis(50);
    let input = dir.path().join("in.jsonl");
    let running = Running::start(p.clone());
    feed(
        &input,
        "{\"key\":\"a\",\"ts\":1,\"put\":1,\"set\":[[\"later\",1000000]]}\n",
        1,
    );
    running.wait_handled(0, 1);
    // The check reads what is committed: wait for the checkpoint holding
    // the event (its state and its timer).
    let state = p.state_dir.to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !eddy(&["state", "get", "timers", "a", "--state", &state])
        .1
        .contains('1')
    {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // `malformed` is built for the `batched-operator` world: no
    // `on-timer`.
    match running.ask(Request::Swap {
        operator: "timers".into(),
        component: eddy_tests::MALFORMED.into(),
    }) {
        Response::Error { message } => assert!(
            message.contains("does not export `on-timer`")
                && message.contains("`later` of key `a`, at 1000000"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    // A version with a timer handler is taken.
    let mut v2 = std::fs::read(eddy_tests::TIMERS).unwrap();
    v2.extend_from_slice(&[0x00, 0x04, 0x01, b'x', b'v', b'2']);
    let v2_path = dir.path().join("timers-v2.wasm");
    std::fs::write(&v2_path, &v2).unwrap();
    let report = running.swap("timers", v2_path.to_str().unwrap());
    assert_eq!(report.to.hash, eddy_runtime::component_hash(&v2));
    running.stop();
}

/// Lines around the late boundary, with `max_out_of_order` 2 and
/// `allowed_lateness` 3: an event is late when its time is below the
/// watermark minus 3 when it is read (lines 3, 6 and 8).
fn late_lines() -> Vec<Value> {
    vec![
        json!({"key": "a", "ts": 10}),                   // watermark 8 after it
        json!({"key": "b", "ts": 6}),                    // 8 - 3 = 5: on time
        json!({"key": "a", "ts": 4}),                    // late
        json!({"key": "b", "ts": 5}),                    // at 8 - 3: on time
        json!({"key": "a", "ts": 20}),                   // watermark 18 after it
        json!({"key": "b", "ts": 14}),                   // late
        json!({"key": "a", "ts": 15}),                   // at 18 - 3: on time
        json!({"key": "c", "ts": 1, "set": [["t", 2]]}), // late
    ]
}

fn late_spec(late: LatePolicy) -> WatermarkSpec {
    WatermarkSpec {
        max_out_of_order: 2,
        step: 1,
        allowed_lateness: 3,
        late,
        ..WatermarkSpec::default()
    }
}

/// The on-time events' outputs of `late_lines`, and the late ones' when
/// delivered.
fn late_outputs(delivered: bool) -> Vec<(String, Value)> {
    let s = |k: &str, v: Value| (k.to_string(), v);
    let mut out = vec![
        s("a", seen(10, MIN, json!([]), json!([]))),
        s("b", seen(6, 8, json!([]), json!([]))),
    ];
    if delivered {
        out.push(s("a", late(seen(4, 8, json!([]), json!([])))));
    }
    out.push(s("b", seen(5, 8, json!([]), json!([]))));
    out.push(s("a", seen(20, 8, json!([]), json!([]))));
    if delivered {
        out.push(s("b", late(seen(14, 18, json!([]), json!([])))));
    }
    out.push(s("a", seen(15, 18, json!([]), json!([]))));
    if delivered {
        out.push(s("c", late(seen(1, 18, json!([["t", 2]]), json!([])))));
        // Its timer, set in the past, fires at the next advance: the end.
        out.push(s("c", fired("t", 2, MAX, 1)));
    }
    out
}

/// By default a late event is dead-lettered before any operator sees it,
/// the reason naming its time, the watermark and the allowed lateness.
#[test]
fn late_events_are_dead_lettered_with_the_reason_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let p = timers_pipeline(
        dir.path(),
        &late_lines(),
        2,
        late_spec(LatePolicy::DeadLetter),
    );
    let summary = run(&p);
    assert_eq!(by_key(outputs(&p)), by_key(late_outputs(false)));
    let dead = std::fs::read_to_string(&p.dead_letter).unwrap();
    assert_eq!(
        dead,
        "{\"error\":\"late event: time 4 is below the watermark 8 minus allowed_lateness 3\",\"key\":\"a\",\"line\":3,\"time\":4,\"payload\":{\"key\":\"a\",\"ts\":4}}\n\
         {\"error\":\"late event: time 14 is below the watermark 18 minus allowed_lateness 3\",\"key\":\"b\",\"line\":6,\"time\":14,\"payload\":{\"key\":\"b\",\"ts\":14}}\n\
         {\"error\":\"late event: time 1 is below the watermark 18 minus allowed_lateness 3\",\"key\":\"c\",\"line\":8,\"time\":1,\"payload\":{\"key\":\"c\",\"set\":[[\"t\",2]],\"ts\":1}}\n"
    );
    assert_eq!(summary.late_dead_lettered, 3);
    assert_eq!(summary.late_dropped, 0);
    assert_eq!(summary.bad_lines, 0);
    assert_eq!(summary.operators[0].handled, 5);
    assert_eq!(summary.operators[0].timers_fired, 0, "c's timer never set");
}

/// `late = "drop"`: late events are not handled and not dead-lettered,
/// but counted in the run summary (and its line on the command line).
#[test]
fn late_events_dropped_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = timers_pipeline(dir.path(), &late_lines(), 2, late_spec(LatePolicy::Drop));
    let summary = run(&p);
    assert_eq!(by_key(outputs(&p)), by_key(late_outputs(false)));
    assert_eq!(read_jsonl(&p.dead_letter), Vec::<Value>::new());
    assert_eq!(summary.late_dropped, 3);
    assert_eq!(summary.late_dead_lettered, 0);
    assert_eq!(summary.operators[0].handled, 5);

    // The same from the command line: the summary says how many.
    let toml = format!(
        "workers = 1\ncontrol = false\n\
         [source]\npath = \"in.jsonl\"\ntime = \"ts\"\n\
         [source.watermark]\nmax_out_of_order = 2\nallowed_lateness = 3\nlate = \"drop\"\n\
         [[operator]]\nname = \"timers\"\ncomponent = {:?}\n\
         [sink]\npath = \"cli-out.jsonl\"\ndead_letter = \"cli-dead.jsonl\"\n\
         [state]\ndir = \"cli-state\"\n",
        eddy_tests::TIMERS
    );
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let o = std::process::Command::new(eddy_bin())
        .args(["run", "p.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("8 lines in"), "{stderr}");
    assert!(stderr.contains(", 3 late dropped;"), "{stderr}");
    assert!(!stderr.contains("dead letters in"), "{stderr}");
}

/// `late = "deliver"`: late events are handled as any event, and the
/// operator sees them flagged (`timers.late`), on the per-event path; a
/// timer a late event sets in the past fires at the next advance.
#[test]
fn late_events_delivered_are_flagged_for_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let p = timers_pipeline(dir.path(), &late_lines(), 2, late_spec(LatePolicy::Deliver));
    let summary = run(&p);
    assert_eq!(by_key(outputs(&p)), by_key(late_outputs(true)));
    assert_eq!(read_jsonl(&p.dead_letter), Vec::<Value>::new());
    assert_eq!(summary.late_dropped + summary.late_dead_lettered, 0);
    assert_eq!(summary.operators[0].handled, 8);
}

/// Lateness is decided where the input is read, against a watermark that
/// follows the input alone: under each policy, 1 and 4 workers give each
/// key the same outputs and the same dead letters.
#[test]
fn late_policies_give_the_same_results_with_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let lines = disordered(4000, 50);
    for late in [
        LatePolicy::DeadLetter,
        LatePolicy::Drop,
        LatePolicy::Deliver,
    ] {
        let wm = WatermarkSpec {
            max_out_of_order: 10,
            step: 4,
            allowed_lateness: 5,
            late,
            ..WatermarkSpec::default()
        };
        let mut runs = Vec::new();
        for workers in [1, 4] {
            let sub = dir.path().join(format!("{late:?}-{workers}"));
            std::fs::create_dir(&sub).unwrap();
            let p = timers_pipeline(&sub, &lines, workers, wm);
            let summary = run(&p);
            let late_n = summary.late_dead_lettered + summary.late_dropped;
            let mut dead = std::fs::read_to_string(&p.dead_letter).unwrap_or_default();
            let mut dead_lines: Vec<&str> = dead.lines().collect();
            dead_lines.sort_unstable();
            dead = dead_lines.join("\n");
            let out = outputs(&p);
            let flagged = out.iter().filter(|(_, v)| v["late"] == true).count() as u64;
            runs.push((by_key(out), dead, late_n, flagged));
        }
        let (_, dead, n, flagged) = &runs[0];
        match late {
            LatePolicy::DeadLetter => {
                assert!(*n > 100, "{late:?}: {n}");
                assert_eq!(dead.lines().count() as u64, *n);
            }
            LatePolicy::Drop => assert!(*n > 100 && dead.is_empty(), "{late:?}: {n}"),
            LatePolicy::Deliver => assert!(*n == 0 && *flagged > 100, "{flagged}"),
        }
        assert_eq!(runs[0], runs[1], "{late:?}: 1 and 4 workers");
    }
}
