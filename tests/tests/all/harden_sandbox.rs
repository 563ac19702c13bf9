//! Hardening of the sandbox: a replacement instance that fails to start,
//! limits a component cannot get around, deterministic randomness.

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_runtime::runner::{self, Shutdown};
use eddy_runtime::wasm;

use crate::util::*;

/// `n` faulty events over `keys` keys; lines in `actions` (1-based) carry
/// that action. The events of each key without an action, per key.
fn faulty_input(n: u64, keys: u64, actions: &[(u64, &str)]) -> (String, BTreeMap<String, u64>) {
    let mut text = String::new();
    let mut plain = BTreeMap::new();
    for line in 1..=n {
        let key = format!("k{}", line % keys);
        match actions.iter().find(|(l, _)| *l == line) {
            Some((_, action)) => {
                text += &format!("{{\"key\":\"{key}\",\"action\":\"{action}\"}}\n");
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
    let (text, plain) = faulty_input(2_000, 17, &[(700, "trap")]);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let name = "faulty-restart";
    let mut p = pipeline(dir.path(), &input, &[(name, eddy_tests::FAULTY)], 2);
    // Nothing is committed before the end: the state cache of the worker
    // whose instance failed holds every write.
    p.checkpoint_interval = Duration::from_secs(600);
    wasm::testing::fail_restarts(name, 2);
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
    let (text, _) = faulty_input(3_000, 5, &[(100, "trap")]);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let name = "faulty-stuck";
    let p = pipeline(dir.path(), &input, &[(name, eddy_tests::FAULTY)], 1);
    wasm::testing::fail_restarts(name, u32::MAX);
    let engine = wasm::engine().unwrap();
    let ops = runner::load_operators(&engine, &p).unwrap();
    let err = runner::run(&p, ops, &Shutdown::new()).unwrap_err();
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
