//! Tumbling, hopping and session windows kept and fired by the host (`WindowOperator`, here over
//! the native `WindowSum` aggregate): known answers on out-of-order input,
//! a late event dead-lettered, every window fired once (at the end of the
//! input the last ones) and its state dropped, the same results with 1 and
//! 4 workers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use eddy_runtime::{
    Limits, Loaded, Operator, OperatorKind, Pipeline, Shutdown, Store, Summary, WatermarkSpec,
    WindowOperator, WindowSum,
};
use serde_json::{json, Value};

use crate::util::*;

/// Runs windows of `size` every `slide` summing `amount` over `lines`
/// (time field `ts`).
fn run_windows(
    dir: &Path,
    lines: &[Value],
    (size, slide): (u64, u64),
    workers: usize,
) -> (Pipeline, Summary) {
    run_with_factory(dir, lines, workers, move |ctx| {
        Box::new(WindowOperator::hopping(
            ctx,
            WindowSum::new("amount"),
            size,
            slide,
        )) as Box<dyn Operator>
    })
}

/// Runs session windows with inactivity gap `gap`.
fn run_sessions(dir: &Path, lines: &[Value], gap: u64, workers: usize) -> (Pipeline, Summary) {
    run_with_factory(dir, lines, workers, move |ctx| {
        Box::new(WindowOperator::session(ctx, WindowSum::new("amount"), gap)) as Box<dyn Operator>
    })
}

fn run_with_factory(
    dir: &Path,
    lines: &[Value],
    workers: usize,
    factory: impl Fn(eddy_runtime::OpCtx) -> Box<dyn Operator> + Send + Sync + 'static,
) -> (Pipeline, Summary) {
    let input = dir.join("in.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir, &input, &[("win", "native")], workers);
    p.time_field = Some("ts".into());
    p.watermark = WatermarkSpec {
        max_out_of_order: 5,
        ..WatermarkSpec::default()
    };
    let ops = vec![Loaded {
        name: "win".into(),
        kind: OperatorKind::Native(Arc::new(factory)),
        config: "{}".into(),
        limits: Limits::default(),
        generation: 0,
        history: Default::default(),
        ttl: Vec::new(),
    }];
    let summary = eddy_runtime::run(&p, ops, &Shutdown::new()).unwrap();
    (p, summary)
}

fn out_lines(p: &Pipeline) -> Vec<(String, Value)> {
    read_jsonl(&p.dead_letter.with_file_name("out.jsonl"))
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["value"].clone()))
        .collect()
}

fn window(start: i64, count: u64, sum: f64) -> Value {
    sized(start, 10, count, sum)
}

fn sized(start: i64, size: i64, count: u64, sum: f64) -> Value {
    json!({"start": start, "end": start + size, "count": count, "sum": sum})
}

/// Hand-computed: windows of 10 with out-of-orderness 5; each fires once
/// the watermark reaches its end, in (end, key) order, and the end of the
/// input fires the rest; a late event is dead-lettered; nothing is left
/// in the state directory.
#[test]
fn tumbling_windows_give_the_known_answers() {
    let dir = tempfile::tempdir().unwrap();
    let e = |key: &str, ts: i64, amount: i64| json!({"key": key, "ts": ts, "amount": amount});
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
    let (p, summary) = run_windows(dir.path(), &lines, (10, 10), 1);
    let s = |k: &str, v: Value| (k.to_string(), v);
    assert_eq!(
        out_lines(&p),
        vec![
            s("a", window(0, 3, 11.0)),
            s("b", window(0, 1, 10.0)),
            s("a", window(10, 1, 4.0)),
            s("b", window(10, 1, 1.0)),
            s("a", window(20, 2, 11.0)),
        ]
    );
    assert_eq!(summary.late_dead_lettered, 1);
    assert_eq!(summary.operators[0].timers_fired, 5);
    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 6);
    let store = Store::open(&p.state_dir).unwrap();
    assert_eq!(store.timers("win").unwrap(), vec![]);
    assert_eq!(
        store.record("win", "a").unwrap(),
        None,
        "a's windows dropped"
    );
    assert_eq!(store.record("win", "b").unwrap(), None);
}

/// Many keys, times out of order within the bound, tumbling and hopping
/// windows (panes of gcd(size, slide)): every window's count and sum equal
/// a reference computed here by putting each event in each of its windows,
/// each fired once, no pane left behind, and 1 and 4 workers give each key
/// the same outputs in the same order.
#[test]
fn windows_match_a_reference_with_1_and_4_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let mut lines = Vec::new();
    for i in 0..5000i64 {
        let key = format!("k{}", rng.next() % 30);
        let ts = i - (rng.next() % 5) as i64 - 40;
        let amount = (rng.next() % 100) as i64;
        lines.push(json!({"key": key, "ts": ts, "amount": amount}));
    }
    for (size, slide) in [(10i64, 10i64), (10, 4), (12, 3), (7, 7)] {
        let mut want: BTreeMap<String, BTreeMap<i64, (u64, f64)>> = BTreeMap::new();
        for l in &lines {
            let ts = l["ts"].as_i64().unwrap();
            let mut s = ts - ts.rem_euclid(slide);
            while s + size > ts {
                let w = want
                    .entry(l["key"].as_str().unwrap().to_string())
                    .or_default()
                    .entry(s)
                    .or_default();
                w.0 += 1;
                w.1 += l["amount"].as_i64().unwrap() as f64;
                s -= slide;
            }
        }
        let want: BTreeMap<String, Vec<Value>> = want
            .into_iter()
            .map(|(k, ws)| {
                let v = ws
                    .into_iter()
                    .map(|(s, (c, sum))| sized(s, size, c, sum))
                    .collect();
                (k, v)
            })
            .collect();
        for workers in [1, 4] {
            let sub = dir.path().join(format!("{size}-{slide}-{workers}"));
            std::fs::create_dir(&sub).unwrap();
            let (p, summary) = run_windows(&sub, &lines, (size as u64, slide as u64), workers);
            assert_eq!(summary.late_dead_lettered, 0);
            let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (k, v) in out_lines(&p) {
                got.entry(k).or_default().push(v);
            }
            assert_eq!(got, want, "size {size} slide {slide}, {workers} workers");
            let store = Store::open(&p.state_dir).unwrap();
            assert_eq!(store.timers("win").unwrap(), vec![]);
            assert_eq!(store.record("win", "k1").unwrap(), None, "no pane left");
        }
    }
}

/// Sessions closed by an inactivity gap of 5 (out-of-orderness 5): an event
/// between two open sessions merges them into one; a session fires once the
/// watermark reaches its last event plus the gap.
#[test]
fn an_event_bridging_two_sessions_merges_them() {
    let dir = tempfile::tempdir().unwrap();
    let e = |key: &str, ts: i64, amount: i64| json!({"key": key, "ts": ts, "amount": amount});
    let lines = [
        e("a", 0, 1),
        e("a", 8, 2),   // watermark 3: sessions [0, 5) and [8, 13)
        e("a", 4, 4),   // spans [4, 9): one session [0, 13)
        e("b", 14, 8),  // watermark 9
        e("b", 30, 16), // watermark 25: a [0, 13) and b [14, 19) fire
        e("a", 26, 32),
    ];
    let (p, summary) = run_sessions(dir.path(), &lines, 5, 1);
    let s = |k: &str, start: i64, end: i64, count: u64, sum: f64| {
        (
            k.to_string(),
            json!({"start": start, "end": end, "count": count, "sum": sum}),
        )
    };
    assert_eq!(
        out_lines(&p),
        vec![
            s("a", 0, 13, 3, 7.0),
            s("b", 14, 19, 1, 8.0),
            s("a", 26, 31, 1, 32.0),
            s("b", 30, 35, 1, 16.0),
        ]
    );
    assert_eq!(
        summary.operators[0].timers_fired, 4,
        "the merged-away timer never fires"
    );
    let store = Store::open(&p.state_dir).unwrap();
    assert_eq!(store.timers("win").unwrap(), vec![]);
    assert_eq!(store.record("win", "a").unwrap(), None);
}

/// Sessions on many keys out of order within the bound: equal to a
/// reference that groups each key's sorted times closer than the gap, with
/// 1 and 4 workers.
#[test]
fn sessions_match_a_reference_with_1_and_4_workers() {
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
        lines.push(json!({"key": key, "ts": ts, "amount": amount}));
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
                .map(|(s, e, c, sum)| json!({"start": s, "end": e, "count": c, "sum": sum}))
                .collect(),
        );
    }
    assert!(
        want.values().map(Vec::len).sum::<usize>() > 200,
        "many sessions"
    );
    for workers in [1, 4] {
        let sub = dir.path().join(format!("s{workers}"));
        std::fs::create_dir(&sub).unwrap();
        let (p, summary) = run_sessions(&sub, &lines, gap as u64, workers);
        assert_eq!(summary.late_dead_lettered, 0);
        let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (k, v) in out_lines(&p) {
            got.entry(k).or_default().push(v);
        }
        assert_eq!(got, want, "{workers} workers");
    }
}
