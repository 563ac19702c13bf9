use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eddy_runtime::{Overrides, Pipeline};

use crate::util::*;

fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Output lines grouped by key, in order within each key (the order across
/// keys depends on worker scheduling; within a key it is fixed).
fn by_key(lines: Vec<serde_json::Value>) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for l in lines {
        m.entry(l["key"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(l);
    }
    m
}

/// Runs `examples/<name>/pipeline.toml` with the freshly built operators and
/// compares output and dead letters with the example's expected files.
fn check_example(name: &str, ops: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        operators: ops
            .iter()
            .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
            .collect(),
        output: Some(dir.path().join("out.jsonl").display().to_string()),
        state_dir: Some(dir.path().join("state")),
        dead_letter: Some(dir.path().join("dead.jsonl")),
        ..Default::default()
    };
    let p = Pipeline::load(Some(&example_dir(name).join("pipeline.toml")), overrides).unwrap();
    run(&p);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    let expected = read_jsonl(&example_dir(name).join("expected-output.jsonl"));
    assert!(!expected.is_empty());
    assert_eq!(by_key(out), by_key(expected), "output of example {name}");
    let mut dead = read_jsonl(&dir.path().join("dead.jsonl"));
    // Operator failures name the component version (its content hash),
    // which depends on the build: check its form, then compare the rest.
    for d in dead.iter_mut().filter(|d| d.get("operator").is_some()) {
        let v = d
            .as_object_mut()
            .unwrap()
            .remove("version")
            .expect("version in an operator dead letter");
        assert!(
            v.as_str().is_some_and(
                |v| v.len() == 64 && v.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
            ),
            "{v}"
        );
    }
    let expected_dead = read_jsonl(&example_dir(name).join("expected-dead-letter.jsonl"));
    assert_eq!(dead, expected_dead, "dead letters of example {name}");
}

#[test]
fn counter_example() {
    check_example("counter", &[("counter", eddy_tests::COUNTER)]);
}

/// Spend and count velocity per card over a hopping window (one minute,
/// every 10 s) kept by the host over the `fraud-window` aggregate.
#[test]
fn fraud_example() {
    check_example("fraud", &[("fraud", eddy_tests::FRAUD_WINDOW)]);
}

#[test]
fn recommend_example() {
    check_example(
        "recommend",
        &[
            ("views", eddy_tests::VIEWS),
            ("recommend", eddy_tests::RECOMMEND),
        ],
    );
}

/// Per-user sessions closed by 30 minutes without a view: a window
/// aggregate (world `window-operator`) declared `window = { kind =
/// "session", .. }`; a view that bridges two open sessions merges them, a
/// late one is dead-lettered.
#[test]
fn sessions_example() {
    check_example("sessions", &[("sessions", eddy_tests::SESSIONS)]);
}

#[test]
fn tracking_example() {
    check_example("tracking", &[("tracking", eddy_tests::TRACKING)]);
}

#[test]
fn trading_example() {
    check_example("trading", &[("trading", eddy_tests::TRADING)]);
}

#[test]
fn forecast_example() {
    check_example("forecast", &[("forecast", eddy_tests::FORECAST)]);
}
