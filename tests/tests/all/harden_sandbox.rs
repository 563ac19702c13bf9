//! Hardening of the sandbox: a replacement instance that fails to start,
//! limits a component cannot get around, deterministic randomness.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_runtime::{engine, load_operators, Shutdown};

use crate::util::*;

/// `n` faulty events over `keys` keys; lines in `actions` (1-based) carry
/// those payload fields (`"action":"trap"`, say). The events of each key
/// without an action, per key.
fn faulty_input(n: u64, keys: u64, actions: &[(u64, &str)]) -> (String, BTreeMap<String, u64>) {
    let mut text = String::new();
    let mut plain = BTreeMap::new();
    for line in 1..=n {
        let key = format!("k{}", line % keys);
        match actions.iter().find(|(l, _)| *l == line) {
            Some((_, fields)) => {
                text += &format!("{{\"key\":\"{key}\",{fields}}}\n");
            }
            None => {
                text += &format!("{{\"key\":\"{key}\"}}\n");
                *plain.entry(key).or_default() += 1;
            }
        }
    }
    (text, plain)
}

/// After a trap, the replacement instance fails to start (twice): the
/// events that found no instance are dead-lettered with the failed start
/// named, a later event starts one, and the pipeline finishes with every
/// other event handled exactly once: no panic, and no uncommitted state
/// lost with the failed instances.
#[test]
fn a_replacement_that_fails_to_start_costs_events_not_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (text, plain) = faulty_input(2_000, 17, &[(700, r#""action":"trap""#)]);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let name = "faulty-restart";
    let mut p = pipeline(dir.path(), &input, &[(name, eddy_tests::FAULTY)], 2);
    // Nothing is committed before the end: the state cache of the worker
    // whose instance failed holds every write.
    p.checkpoint_interval = Duration::from_secs(600);
    eddy_runtime::testing::fail_restarts(name, 2);
    let s = run(&p);

    let dead = read_jsonl(&p.dead_letter);
    assert!(
        dead.iter().any(|d| d["line"] == 700),
        "the trapping event is dead-lettered: {dead:?}"
    );
    assert!(
        dead.iter().any(|d| d["error"]
            .as_str()
            .unwrap()
            .contains("refused by a test hook")),
        "a failed restart is named: {dead:?}"
    );
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(
            e.contains("asked to trap") || e.contains("replacement instance"),
            "{d}"
        );
    }
    assert!(
        dead.len() <= 3,
        "at most the trap and two failed starts: {dead:?}"
    );
    assert_eq!(s.operators[0].failed, dead.len() as u64);
    assert_eq!(s.operators[0].handled, 2_000 - dead.len() as u64);

    // Every event not dead-lettered counted once; the others not at all.
    let mut expected = plain.clone();
    for d in &dead {
        if d["line"] != 700 {
            *expected.get_mut(d["key"].as_str().unwrap()).unwrap() -= 1;
        }
    }
    let state = state_values(&p.state_dir, name, &["n"]);
    for (key, n) in &expected {
        assert_eq!(state[key][0].as_u64(), Some(*n), "count of {key}");
    }
}

/// A replacement that never starts stops the pipeline after a few tries
/// with an error naming the operator and why its start failed.
#[test]
fn a_replacement_that_never_starts_stops_the_pipeline_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = faulty_input(3_000, 5, &[(100, r#""action":"trap""#)]);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let name = "faulty-stuck";
    let p = pipeline(dir.path(), &input, &[(name, eddy_tests::FAULTY)], 1);
    eddy_runtime::testing::fail_restarts(name, u32::MAX);
    let engine = engine().unwrap();
    let ops = load_operators(&engine, &p).unwrap();
    let err = eddy_runtime::run(&p, ops, &Shutdown::new()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("operator `faulty-stuck`"), "{msg}");
    assert!(
        msg.contains("3 replacement instances in a row failed to start"),
        "{msg}"
    );
    assert!(msg.contains("refused by a test hook"), "{msg}");
    // Before it stopped, the events that found no instance (at most two:
    // the third failed start stops it) were dead-lettered with the reason.
    let dead = read_jsonl(&p.dead_letter);
    assert!(!dead.is_empty() && dead.len() <= 3, "{dead:?}");
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(
            e.contains("asked to trap") || e.contains("refused by a test hook"),
            "{d}"
        );
    }
}

/// Dead letters by input line.
fn dead_by_line(p: &eddy_runtime::Pipeline) -> BTreeMap<u64, String> {
    read_jsonl(&p.dead_letter)
        .into_iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every stored record of `operator`: key -> record length.
fn record_lengths(state_dir: &std::path::Path, operator: &str) -> BTreeMap<String, usize> {
    let store = eddy_runtime::Store::open(state_dir).unwrap();
    store
        .scan(operator)
        .unwrap()
        .into_iter()
        .map(|(k, rec)| (k, rec.len()))
        .collect()
}

/// A 1 MiB state name, map field, emitted key or error reason against
/// limits of 16 and 64 bytes, on the batched and the per-event path: the
/// name, field and key are refused (the event dead-lettered naming the
/// limit, none of its writes or emits kept), the reason is cut with a note.
#[test]
fn names_fields_keys_and_reasons_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let triggers: Vec<(u64, &str, &str)> = vec![
        (
            50,
            r#""action":"long-name""#,
            "state name of 1048577 bytes exceeds the limit max_name_bytes = 16 bytes",
        ),
        (
            51,
            r#""action":"long-name","per_event":true"#,
            "state name of 1048577 bytes exceeds the limit max_name_bytes = 16 bytes",
        ),
        (
            60,
            r#""action":"long-field""#,
            "map field of 1048576 bytes exceeds the limit max_name_bytes = 16 bytes",
        ),
        (
            70,
            r#""action":"long-key""#,
            "emitted key of 1048576 bytes exceeds the limit max_emit_key_bytes = 16 bytes",
        ),
        (
            71,
            r#""action":"long-key","per_event":true"#,
            "emitted key of 1048576 bytes exceeds the limit max_emit_key_bytes = 16 bytes",
        ),
        (
            80,
            r#""action":"long-error""#,
            "more bytes cut: max_reason_bytes = 64]",
        ),
        (
            81,
            r#""action":"long-error","per_event":true"#,
            "more bytes cut: max_reason_bytes = 64]",
        ),
    ];
    let actions: Vec<(u64, &str)> = triggers.iter().map(|(l, a, _)| (*l, *a)).collect();
    let (text, plain) = faulty_input(300, 7, &actions);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 2);
    let l = &mut p.operators[0].limits;
    l.max_name = 16;
    l.max_emit_key = 16;
    l.max_reason = 64;
    let s = run(&p);

    let dead = dead_by_line(&p);
    assert_eq!(dead.len(), triggers.len(), "{dead:?}");
    for (line, _, reason) in &triggers {
        let got = &dead[line];
        assert!(got.contains(reason), "line {line}: {got}");
        assert!(got.len() < 400, "line {line}: a short reason: {got}");
    }
    assert_eq!(s.operators[0].failed, triggers.len() as u64);
    let state = state_values(&p.state_dir, "faulty", &["n"]);
    for (key, n) in &plain {
        assert_eq!(state[key][0].as_u64(), Some(*n), "count of {key}");
    }
    for (key, len) in record_lengths(&p.state_dir, "faulty") {
        assert!(len < 200, "{key}: nothing long was stored ({len} bytes)");
    }
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(out.len() as u64, 300 - triggers.len() as u64);
    assert!(out.iter().all(|o| o["key"].as_str().unwrap().len() <= 16));
}

/// An event that emits more than `max_emit_bytes_per_event`, or that
/// rewrites state until the host would hold more than `max_memory_bytes`
/// for it, is dead-lettered naming the limit, on either path, and nothing
/// of it is kept.
#[test]
fn what_one_event_emits_or_holds_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let triggers: Vec<(u64, &str, &str)> = vec![
        (
            20,
            r#""action":"many-emits","count":20,"size":1000"#,
            "over the limit max_emit_bytes_per_event = 10000 bytes",
        ),
        (
            21,
            r#""action":"many-emits","count":20,"size":1000,"per_event":true"#,
            "over the limit max_emit_bytes_per_event = 10000 bytes",
        ),
        (
            30,
            r#""action":"rewrite","count":64,"size":1000000,"per_event":true"#,
            "over the limit max_memory_bytes = 33554432 bytes",
        ),
        (
            31,
            r#""action":"rewrite","count":64,"size":1000000"#,
            "max_memory_bytes = 33554432",
        ),
    ];
    let actions: Vec<(u64, &str)> = triggers.iter().map(|(l, a, _)| (*l, *a)).collect();
    let (text, plain) = faulty_input(200, 7, &actions);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 2);
    let l = &mut p.operators[0].limits;
    l.max_emit_per_event = 10_000;
    l.max_memory = 32 << 20;
    run(&p);

    let dead = dead_by_line(&p);
    assert_eq!(dead.len(), triggers.len(), "{dead:?}");
    for (line, _, reason) in &triggers {
        assert!(dead[line].contains(reason), "line {line}: {}", dead[line]);
    }
    let state = state_values(&p.state_dir, "faulty", &["n", "big"]);
    for (key, n) in &plain {
        assert_eq!(state[key][0].as_u64(), Some(*n), "count of {key}");
        assert!(state[key][1].is_null(), "no rewrite of {key} was kept");
    }
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(
        out.len() as u64,
        200 - triggers.len() as u64,
        "only the `n` emits"
    );
}

/// A key whose state keeps growing stops at `max_key_state_bytes`: from
/// the event that would pass it on, its events are dead-lettered naming
/// the limit, on the per-event path (list items) and the batched path
/// (new values), and its stored record stays within the limit.
#[test]
fn the_state_of_one_key_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..60 {
        let (key, action) = match i % 3 {
            0 => ("list", "grow-list"),
            1 => ("value", "grow-value"),
            _ => ("plain", ""),
        };
        text += &format!("{{\"key\":\"{key}\",\"action\":\"{action}\",\"size\":1000}}\n");
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 2);
    p.operators[0].limits.max_key_state = 4096;
    run(&p);

    let dead = read_jsonl(&p.dead_letter);
    for key in ["list", "value"] {
        let lines: Vec<u64> = dead
            .iter()
            .filter(|d| d["key"] == key)
            .map(|d| d["line"].as_u64().unwrap())
            .collect();
        // Four 1 kB items or values fit in 4 KiB, the fifth does not.
        assert_eq!(lines.len(), 20 - 4, "{key}: {dead:?}");
        let first_failed = lines[0];
        assert!(
            lines.iter().zip(&lines[1..]).all(|(a, b)| b - a == 3),
            "{key}: every event from the first refused one: {lines:?}"
        );
        assert!(first_failed > 3, "{key}");
    }
    for d in &dead {
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .contains("over the limit max_key_state_bytes = 4096 bytes"),
            "{d}"
        );
    }
    let records = record_lengths(&p.state_dir, "faulty");
    assert!(
        records["list"] <= 4096 && records["list"] > 3000,
        "{records:?}"
    );
    assert!(
        records["value"] <= 4096 && records["value"] > 3000,
        "{records:?}"
    );
    let state = state_values(&p.state_dir, "faulty", &["n"]);
    assert_eq!(state["list"][0], 4);
    assert_eq!(state["value"][0], 4);
    assert_eq!(state["plain"][0], 20);
}

/// Per key, the outputs in order.
fn outputs_by_key(path: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in read_jsonl(path) {
        by_key
            .entry(o["key"].as_str().unwrap().to_string())
            .or_default()
            .push(o["value"].to_string());
    }
    by_key
}

/// `wasi:random` is a function of the operator, the key and the input
/// line: the same input gives the same numbers in another run and with
/// another number of workers (events that draw numbers are mixed with
/// events that do not, so batches that draw are replayed per event), and
/// the numbers differ from event to event and key to key.
#[test]
fn random_numbers_are_the_same_in_every_run_and_differ_per_event() {
    let mut text = String::new();
    for line in 1..=600u64 {
        let key = format!("k{}", line % 11);
        if line % 3 == 0 {
            text += &format!("{{\"key\":\"{key}\"}}\n");
        } else {
            text += &format!("{{\"key\":\"{key}\",\"action\":\"random\",\"count\":2}}\n");
        }
    }
    let mut runs = Vec::new();
    for workers in [1, 2, 2] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, &text).unwrap();
        let p = pipeline(
            dir.path(),
            &input,
            &[("faulty", eddy_tests::FAULTY)],
            workers,
        );
        let s = run(&p);
        assert_eq!(s.operators[0].failed, 0);
        assert!(read_jsonl(&p.dead_letter).is_empty());
        runs.push(outputs_by_key(&dir.path().join("out.jsonl")));
    }
    assert_eq!(runs[0], runs[1], "1 worker and 2 workers");
    assert_eq!(runs[1], runs[2], "two runs with 2 workers");

    let numbers: Vec<u64> = runs[0]
        .values()
        .flatten()
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .filter_map(|v| v["random"].as_u64())
        .collect();
    assert_eq!(numbers.len(), 400 * 2);
    let distinct: std::collections::BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(distinct.len(), numbers.len(), "no number repeats");
}

/// Batches too large for one `handle-batch` frame (a quarter of the
/// instance's memory) are split into several frames, and an event too
/// large for a frame alone takes the per-event path: every event is
/// handled once, in order.
#[test]
fn large_batches_are_split_into_frames_the_guest_can_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    for line in 1..=120u64 {
        let key = format!("k{}", line % 3);
        // Some events alone are larger than a frame (2 MiB here).
        let pad = if line % 40 == 0 { 2_200_000 } else { 200_000 };
        text += &format!("{{\"key\":\"{key}\",\"pad\":\"{}\"}}\n", "p".repeat(pad));
        *per_key.entry(key).or_default() += 1;
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 1);
    p.max_line_bytes = 4 << 20;
    p.operators[0].limits.max_memory = 8 << 20;
    let s = run(&p);
    assert_eq!(s.operators[0].failed, 0, "{:?}", read_jsonl(&p.dead_letter));
    let state = state_values(&p.state_dir, "faulty", &["n"]);
    for (key, n) in &per_key {
        assert_eq!(state[key][0].as_u64(), Some(*n), "count of {key}");
    }
    let outs = outputs_by_key(&dir.path().join("out.jsonl"));
    for (key, n) in &per_key {
        let got: Vec<String> = (1..=*n).map(|i| format!("{{\"n\":{i}}}")).collect();
        assert_eq!(outs[key], got, "outputs of {key} in order");
    }
}
