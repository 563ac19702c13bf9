use std::collections::BTreeMap;

use crate::util::*;

/// 200,000 events over 1,000 keys on 2 workers: the committed state and
/// every output line equal a reference computed here, per key and in order.
#[test]
fn counter_state_and_outputs_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(200_000, 1_000, 7);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", eddy_tests::COUNTER)], 2);
    let s = run(&p);
    assert_eq!(s.lines, 200_000);
    assert_eq!(s.operators[0].handled, 200_000);
    assert_eq!(s.operators[0].failed, 0);

    let expected = reference(&events);
    assert_counter_state(&p.state_dir, &expected);

    // Outputs: per key, counts 1, 2, 3, ... in input order, with running sums.
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(out.len(), events.len(), "one output per event");
    let mut amounts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (k, a) in &events {
        amounts.entry(k).or_default().push(*a);
    }
    let mut seen: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in &out {
        let k = line["key"].as_str().unwrap().to_string();
        let e = seen.entry(k.clone()).or_insert((0, 0));
        e.1 += amounts[k.as_str()][e.0 as usize];
        e.0 += 1;
        assert_eq!(line["value"]["count"].as_u64(), Some(e.0), "{line}");
        assert_eq!(line["value"]["sum"].as_f64(), Some(e.1 as f64), "{line}");
    }
    assert_eq!(seen, expected);
}

/// The same input gives the same final state with 1 and with 3 workers.
#[test]
fn worker_count_does_not_change_results() {
    let (events, text) = counter_events(30_000, 500, 11);
    let expected = reference(&events);
    for workers in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, &text).unwrap();
        let p = pipeline(
            dir.path(),
            &input,
            &[("counter", eddy_tests::COUNTER)],
            workers,
        );
        run(&p);
        assert_counter_state(&p.state_dir, &expected);
    }
}
