use std::collections::BTreeMap;

use crate::util::*;

/// 200,000 events over 1,000 keys on 2 workers: the committed state and
/// every output line equal a reference computed here, per key and in order.
#[test]
fn counter_state_and_outputs_equal_the_reference() {
    state_and_outputs_equal_the_reference(eddy_tests::COUNTER);
}

/// The same for the hand-tuned counter (`plugins/counter-tuned`), the
/// reference `eddy bench` runs beside the counter.
#[test]
fn tuned_counter_state_and_outputs_equal_the_reference() {
    state_and_outputs_equal_the_reference(eddy_tests::COUNTER_TUNED);
}

fn state_and_outputs_equal_the_reference(component: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = counter_events(200_000, 1_000, 7);
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", component)], 2);
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

/// Amounts of every shape (decimals, exponents, negatives, huge, tiny,
/// strings, missing): each output line is byte for byte what serde_json
/// makes of the running totals, so the SDK's number reading and writing
/// agree exactly with serde_json; an amount that is not a number
/// dead-letters its event.
#[test]
fn counter_numbers_are_exactly_serde_json() {
    numbers_are_exactly_serde_json(eddy_tests::COUNTER);
}

/// The same for the hand-tuned counter, whose own fast paths must agree
/// with serde_json and with the counter.
#[test]
fn tuned_counter_numbers_are_exactly_serde_json() {
    numbers_are_exactly_serde_json(eddy_tests::COUNTER_TUNED);
}

fn numbers_are_exactly_serde_json(component: &str) {
    let amounts = [
        "17",
        "0.1",
        "0.2",
        "12.34",
        "-5",
        "-0.75",
        "1e3",
        "2.5e-3",
        "1E2",
        "0",
        "999999999999999",
        "0.000001",
        "123456789.123456",
        "1e15",
        "9e15",
        "-1e16",
        "3.14159265358979",
        "\"7\"",
        "null",
        "true",
        "-0",
        "0.30000000000000004",
        "1.5",
        "100",
        "1e-7",
        "65536.125",
    ];
    let mut rng = Rng(99);
    let mut text = String::new();
    let mut expected = Vec::new();
    let mut totals: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut refused = Vec::new();
    for i in 0..20_000 {
        let key = format!("k{}", rng.next() % 37);
        // A listed amount, or a random decimal of 1 to 19 digits.
        let random;
        let a = if i % 2 == 0 {
            amounts[rng.next() as usize % amounts.len()]
        } else {
            let digits = 1 + rng.next() % 19;
            let m = rng.next() % 10u64.pow(digits as u32);
            let scale = (rng.next() % (digits + 1)) as usize;
            let t = format!("{m:0w$}", w = digits as usize);
            let (int, frac) = t.split_at(t.len() - scale);
            let int = int.trim_start_matches('0');
            let int = if int.is_empty() { "0" } else { int };
            let sign = if rng.next().is_multiple_of(4) {
                "-"
            } else {
                ""
            };
            random = if frac.is_empty() {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            };
            &random
        };
        // Some events lack the field, some carry it among other fields.
        let line = match i % 3 {
            0 => format!("{{\"key\":\"{key}\",\"amount\":{a}}}"),
            1 => format!("{{\"note\":\"x y\",\"amount\": {a} ,\"key\":\"{key}\"}}"),
            _ => format!("{{\"key\":\"{key}\",\"other\":{a}}}"),
        };
        text += &line;
        text.push('\n');
        let payload: serde_json::Value = serde_json::from_str(&line).unwrap();
        let add = match payload.get("amount") {
            None => 0.0,
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap(),
            Some(_) => {
                refused.push(i as u64 + 1);
                continue;
            }
        };
        let t = totals.entry(key.clone()).or_insert((0, 0.0));
        t.0 += 1;
        t.1 += add;
        expected.push(format!(
            "{{\"key\":{},\"value\":{{\"count\":{},\"sum\":{}}}}}",
            serde_json::to_string(&key).unwrap(),
            t.0,
            serde_json::to_string(&t.1).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, text).unwrap();
    let p = pipeline(dir.path(), &input, &[("counter", component)], 2);
    let s = run(&p);
    assert!(!refused.is_empty());
    assert_eq!(s.operators[0].failed, refused.len() as u64);
    assert_eq!(dead_letter_lines(&p), refused, "dead-lettered input lines");
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    // Workers interleave keys; per key the order is the input's.
    let mut got: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        got.entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push(line);
    }
    let mut want: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for line in &expected {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        want.entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push(line);
    }
    assert_eq!(got, want);
}
