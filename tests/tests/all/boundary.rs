//! The `handle-batch` boundary against a component that returns results
//! the host must refuse (`tests/fixtures/malformed`).

use std::collections::BTreeMap;

use crate::util::{pipeline, read_jsonl, run, state_values};

/// A component whose `handle-batch` sometimes returns a malformed result
/// (an emitted key past its column's bytes, counts that do not add up, a
/// state name that is not UTF-8, more events handled than the batch has,
/// a `stop` with no event left, failures out of order): nothing of such a
/// result takes effect, the batch is replayed event by event with `handle`
/// on a fresh instance, and the batches after it take the batched path
/// again. Every event is handled exactly once, in order; nothing is
/// dead-lettered; the pipeline does not stop.
#[test]
fn a_malformed_batch_result_is_replayed_event_by_event() {
    let dir = tempfile::tempdir().unwrap();
    let damages = [
        (150u64, "end"),
        (700, "count"),
        (1300, "utf8"),
        (1900, "extra"),
        (2500, "stop"),
        (3100, "order"),
    ];
    let lines = 3600u64;
    let mut text = String::new();
    // Per line: its key and which event of that key it is (from 1).
    let mut nth: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for line in 1..=lines {
        let key = format!("k{}", line % 7);
        let n = per_key.entry(key.clone()).or_default();
        *n += 1;
        nth.insert(line, (key.clone(), *n));
        match damages.iter().find(|(l, _)| *l == line) {
            Some((_, how)) => text += &format!("{{\"key\":\"{key}\",\"corrupt\":\"{how}\"}}\n"),
            None => text += &format!("{{\"key\":\"{key}\"}}\n"),
        }
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(
        dir.path(),
        &input,
        &[("malformed", eddy_tests::MALFORMED)],
        1,
    );
    let s = run(&p);

    assert_eq!(s.operators[0].failed, 0);
    assert!(read_jsonl(&p.dead_letter).is_empty());
    // The state: each event counted once.
    let state = state_values(&p.state_dir, "malformed", &["n"]);
    for (key, n) in &per_key {
        let stored = state[key][0].clone();
        let stored: u64 = serde_json::from_value(stored).unwrap();
        assert_eq!(stored, *n as u64, "count of {key}");
    }
    // The outputs: per key, 1, 2, 3, ... once each, in order.
    let mut outs: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for o in read_jsonl(&dir.path().join("out.jsonl")) {
        let key = o["key"].as_str().unwrap().to_string();
        outs.entry(key).or_default().push(o["value"].clone());
    }
    for (key, n) in &per_key {
        let counts: Vec<u64> = outs[key].iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(
            counts,
            (1..=*n as u64).collect::<Vec<_>>(),
            "outputs of {key}"
        );
    }
    let path = |line: u64| {
        let (key, n) = &nth[&line];
        outs[key][n - 1]["path"].as_str().unwrap().to_string()
    };
    // Each damaged batch went event by event; the batches after it were
    // batched again (a batch holds at most 256 events).
    for (line, how) in damages {
        assert_eq!(path(line), "event", "line {line} ({how})");
    }
    for line in [425, 1000, 1600, 2200, 2800, 3400] {
        assert!(damages.iter().all(|(l, _)| l.abs_diff(line) > 256));
        assert_eq!(path(line), "batch", "line {line}");
    }
}

/// A component built for contract 0.1.0 (the counter with its imports
/// named as 0.1.0 names them; the interfaces did not change) still loads
/// and runs, on the per-event path, with exactly the counter's results.
#[test]
fn a_component_built_for_contract_0_1_0_runs_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = d.join("counter-0.1.0.wasm");
    std::fs::write(
        &old,
        crate::util::with_contract(eddy_tests::COUNTER, "0.1.0"),
    )
    .unwrap();
    let engine = eddy_runtime::engine().unwrap();
    let component = eddy_runtime::WasmComponent::load(&engine, &old).unwrap();
    assert!(
        !component.batched(),
        "an earlier contract's handle-batch is not used"
    );
    let (events, text) = crate::util::counter_events(3000, 50, 7);
    let input = d.join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut outputs = Vec::new();
    for (name, path) in [("old", old.to_str().unwrap()), ("new", eddy_tests::COUNTER)] {
        let sub = d.join(name);
        std::fs::create_dir(&sub).unwrap();
        let p = pipeline(&sub, &input, &[("counter", path)], 2);
        let summary = run(&p);
        assert_eq!(summary.lines, 3000, "{name}");
        crate::util::assert_counter_state(&sub.join("state"), &crate::util::reference(&events));
        let mut out = read_jsonl(&sub.join("out.jsonl"));
        out.sort_by_key(|v| v.to_string());
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// A component built for contract 0.2.0 (the counter with its imports
/// named as 0.2.0 names them: 0.3.0 only added timers) still loads and
/// keeps the batched path, with exactly the counter's results.
#[test]
fn a_component_built_for_contract_0_2_0_runs_batched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = d.join("counter-0.2.0.wasm");
    std::fs::write(
        &old,
        crate::util::with_contract(eddy_tests::COUNTER, "0.2.0"),
    )
    .unwrap();
    let engine = eddy_runtime::engine().unwrap();
    let component = eddy_runtime::WasmComponent::load(&engine, &old).unwrap();
    assert!(component.batched(), "0.2.0's handle-batch is today's");
    assert!(
        component.handles_timers(),
        "the relabelled counter still exports on-timer"
    );
    let (events, text) = crate::util::counter_events(3000, 50, 7);
    let input = d.join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut outputs = Vec::new();
    for (name, path) in [("old", old.to_str().unwrap()), ("new", eddy_tests::COUNTER)] {
        let sub = d.join(name);
        std::fs::create_dir(&sub).unwrap();
        let p = pipeline(&sub, &input, &[("counter", path)], 2);
        let summary = run(&p);
        assert_eq!(summary.lines, 3000, "{name}");
        crate::util::assert_counter_state(&sub.join("state"), &crate::util::reference(&events));
        let mut out = read_jsonl(&sub.join("out.jsonl"));
        out.sort_by_key(|v| v.to_string());
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1]);
}
