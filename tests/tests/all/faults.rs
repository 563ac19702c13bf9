use std::collections::BTreeMap;

use crate::util::*;

const ACTIONS: [(&str, &str); 6] = [
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
    (
        "big-emit",
        "emitted value of 2097154 bytes exceeds the limit max_emit = 1048576 bytes",
    ),
];

/// An operator that traps, loops forever, allocates without bound, fails,
/// writes an oversized value or emits an oversized payload on some events: the run finishes, exactly those
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

/// An operator sees no environment, no file system, no network and a clock
/// stopped at the epoch.
#[test]
fn operators_get_no_environment_files_network_or_clock() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"key\":\"p\",\"action\":\"probe\"}\n").unwrap();
    std::env::set_var("EDDY_TEST_SECRET", "visible?");
    let p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 1);
    run(&p);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let probe = &out.last().unwrap()["value"];
    assert_eq!(probe["env"], 0, "{probe}");
    assert_eq!(probe["now"], 0, "{probe}");
    assert_eq!(probe["net"], false, "{probe}");
    assert_ne!(probe["fs"], "readable", "{probe}");
}

/// Two operators of a chain keep separate state even with the same state
/// names: the same counter twice, re-keyed by the same key, counts every
/// event once in each.
#[test]
fn operators_of_a_chain_do_not_share_state() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(5_000, 50, 8);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(
        dir.path(),
        &input,
        &[
            ("first", eddy_tests::COUNTER),
            ("second", eddy_tests::COUNTER),
        ],
        2,
    );
    run(&p);
    let expected = reference(&events);
    for op in ["first", "second"] {
        let got = state_values(&p.state_dir, op, &["totals"]);
        assert_eq!(got.len(), expected.len());
        for (k, (count, _)) in &expected {
            assert_eq!(
                got[k][0]["count"].as_u64(),
                Some(*count),
                "{op}: count of {k}"
            );
        }
    }
}

/// `cpu_limit = false` (trusted code): a long call that the CPU limit
/// dead-letters runs to its end instead, on the same input.
#[test]
fn with_the_cpu_limit_off_a_long_call_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // Hundreds of milliseconds of arithmetic, against a 20 ms limit.
    std::fs::write(
        &input,
        "{\"key\":\"a\"}\n{\"key\":\"a\",\"action\":\"busy\",\"size\":400000000}\n{\"key\":\"a\"}\n",
    )
    .unwrap();
    for cpu_limit in [true, false] {
        let sub = dir.path().join(format!("limit-{cpu_limit}"));
        std::fs::create_dir(&sub).unwrap();
        let mut p = pipeline(&sub, &input, &[("faulty", eddy_tests::FAULTY)], 1);
        p.operators[0].limits.max_call_ms = 20;
        p.operators[0].limits.cpu_limit = cpu_limit;
        let s = run(&p);
        let dead = std::fs::read_to_string(&p.dead_letter).unwrap_or_default();
        let state = state_values(&p.state_dir, "faulty", &["n"]);
        if cpu_limit {
            assert_eq!(s.operators[0].failed, 1, "{dead}");
            assert!(dead.contains("CPU limit exceeded"), "{dead}");
            assert_eq!(state["a"][0].as_u64(), Some(2));
        } else {
            assert_eq!(s.operators[0].failed, 0, "{dead}");
            assert_eq!(s.operators[0].handled, 3);
            assert_eq!(state["a"][0].as_u64(), Some(3));
        }
    }
}
