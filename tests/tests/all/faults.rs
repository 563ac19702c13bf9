use std::collections::BTreeMap;

use crate::util::*;

const ACTIONS: [(&str, &str); 5] = [
    ("trap", "asked to trap on key"),
    (
        "loop",
        "CPU limit exceeded: the call ran longer than max_call_ms = 200 ms",
    ),
    ("alloc", "memory limit exceeded"),
    ("error", "operator returned an error: asked to fail on key"),
    (
        "big-state",
        "exceeds the limit max_state_value = 1048576 bytes",
    ),
];

/// An operator that traps, loops forever, allocates without bound, fails, or
/// writes an oversized value on some events: the run finishes, exactly those
/// events are dead-lettered with the limit or reason named, none of their
/// writes or emits survive, and every key (the faulty ones included) goes on
/// being handled.
#[test]
fn faults_are_isolated_dead_lettered_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(99);
    let mut text = String::new();
    let mut expected_dead = BTreeMap::new();
    let mut ok_per_key: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..3_000u64 {
        let key = format!("k{}", rng.next() % 40);
        if i % 97 == 13 {
            let (action, reason) = ACTIONS[(i / 97) as usize % ACTIONS.len()];
            text += &format!("{{\"key\":\"{key}\",\"action\":\"{action}\"}}\n");
            expected_dead.insert(i + 1, (key, reason));
        } else {
            text += &format!("{{\"key\":\"{key}\"}}\n");
            *ok_per_key.entry(key).or_default() += 1;
        }
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 2);
    p.operators[0].limits.max_call_ms = 200;
    p.operators[0].limits.max_memory = 16 << 20;
    let s = run(&p);
    assert_eq!(s.operators[0].failed, expected_dead.len() as u64);
    assert_eq!(s.operators[0].handled, 3_000 - expected_dead.len() as u64);

    let dead = read_jsonl(&p.dead_letter);
    assert_eq!(dead.len(), expected_dead.len());
    for d in &dead {
        let line = d["line"].as_u64().unwrap();
        let (key, reason) = &expected_dead[&line];
        assert_eq!(d["key"], key.as_str());
        assert_eq!(d["operator"], "faulty");
        assert!(
            d["error"].as_str().unwrap().contains(reason),
            "line {line}: {}",
            d["error"]
        );
        assert!(
            d["payload"]["action"].is_string(),
            "original payload kept: {d}"
        );
    }

    // Failed events left no state write and no emit behind.
    let state = state_values(&p.state_dir, "faulty", &["n", "big"]);
    for (key, n) in &ok_per_key {
        assert_eq!(state[key][0].as_u64(), Some(*n), "count of {key}");
        assert!(
            state[key][1].is_null(),
            "no oversized value of {key} was kept"
        );
    }
    let mut outs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in read_jsonl(&dir.path().join("out.jsonl")) {
        outs.entry(o["key"].as_str().unwrap().to_string())
            .or_default()
            .push(o["value"]["n"].as_u64().unwrap());
    }
    for (key, n) in &ok_per_key {
        assert_eq!(outs[key], (1..=*n).collect::<Vec<_>>(), "outputs of {key}");
    }
}
