//! Timers in every SDK: the package-delay operator (`tests/fixtures/delay`
//! in Rust, its twins in `tests/fixtures/{python,js,c}/delay`, built with
//! `eddy build` in this test run) run by the `eddy` binary over the same
//! input with an event-time field gives the same output bytes and dead
//! letters in all four languages, the expected ones written out in
//! `tests/fixtures/delay/`: a package with no scan for `max_gap` raises a
//! delay alert from its timer (`on-timer`, which reads the watermark), a
//! scan re-sets the timer (`timers.get` shows the deadline it replaces,
//! `timers.list` the pending one) and withdraws a raised alert, a delivery
//! clears it (`timers.clear`); under `late = "deliver"` a late scan says so
//! (`timers.late`). Each twin is checked on its default world
//! (`timer-operator` for Python, `batched-timer-operator` for JavaScript
//! and C) and on the other one, so timer calls are also made from the
//! batched path, which hands the event to the per-event one (checked
//! in-process: the SDK stops the batch, it does not trap).
//!
//! A failing timer handler: its firing is dead-lettered with the reason and
//! the timer, and its state write and emit are discarded (the next scan of
//! that package is a plain scan, not a withdrawn alert). An operator that
//! sets timers but defines no handler (`tests/fixtures/*/untimed`) builds,
//! and each firing is dead-lettered with the SDK's message saying what to
//! define.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eddy_build::Lang;
use eddy_runtime::{EventRef, Limits, OpCtx, Operator, TimerUse, WasmComponent};

use crate::languages::built;
use crate::util::*;

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/delay")
        .join(file)
}

/// The other timer world of `lang`'s SDK (the default is the first).
fn timer_worlds(lang: Lang) -> [Option<&'static str>; 2] {
    match eddy_build::default_world(lang) {
        "timer-operator" => [None, Some("batched-timer-operator")],
        _ => [None, Some("timer-operator")],
    }
}

/// Runs `eddy run` on a pipeline of `component` as operator `delay` (one
/// worker, time field `ts`, `max_gap` 100, late events delivered when
/// `late`) over the fixture `input`; returns the run's directory.
fn run_delay(component: &str, input: &str, late: bool) -> tempfile::TempDir {
    let text = std::fs::read_to_string(fixture(input)).unwrap();
    run_text(component, &text, late)
}

/// [`run_delay`] over the input `text`.
fn run_text(component: &str, text: &str, late: bool) -> tempfile::TempDir {
    let watermark = match late {
        true => "\n[source.watermark]\nlate = \"deliver\"\n",
        false => "",
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.jsonl"), text).unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"workers = 1

[source]
path = "events.jsonl"
key = "package"
time = "ts"
{watermark}
[[operator]]
name = "delay"
component = {component:?}
config = {{ max_gap = 100 }}

[sink]
path = "out.jsonl"
dead_letter = "dead-letter.jsonl"

[state]
dir = "state"
"#
        ),
    )
    .unwrap();
    let o = eddy_in(&["run", "pipeline.toml"], dir.path());
    assert!(o.status.success(), "eddy run failed: {}", stderr(&o));
    dir
}

/// The dead letters of a run, without the component version (which depends
/// on the build; checked to be a SHA-256).
fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let mut dead = read_jsonl(&dir.join("dead-letter.jsonl"));
    for d in &mut dead {
        let v = d
            .as_object_mut()
            .unwrap()
            .remove("version")
            .expect("an operator dead letter names the version");
        assert!(v.as_str().is_some_and(|v| v.len() == 64), "version {v}");
    }
    dead
}

/// Runs `component` over the fixture `input` and asserts the output bytes
/// and the dead letters are the expected ones (`expected-<what>...`).
fn check_delay(
    what: &str,
    component: &str,
    input: &str,
    expected: &str,
    late: bool,
) -> tempfile::TempDir {
    let dir = run_delay(component, input, late);
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let want =
        std::fs::read_to_string(fixture(&format!("expected-{expected}output.jsonl"))).unwrap();
    if out != want {
        let first = out
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b);
        panic!(
            "{what}: output differs from the expected ({} vs {} lines); first difference (line, (got, want)): {first:?}\n{out}",
            out.lines().count(),
            want.lines().count()
        );
    }
    assert_eq!(
        dead_letters(dir.path()),
        read_jsonl(&fixture(&format!("expected-{expected}dead-letter.jsonl"))),
        "{what}: dead letters"
    );
    dir
}

/// The delay example's run: alerts raised, withdrawn and cleared, two
/// events dead-lettered (no time, no location); the state left is the
/// packages not delivered: their last scan and raised alert.
fn check_tracking(what: &str, component: &str) {
    let dir = check_delay(what, component, "events.jsonl", "", false);
    let state = state_values(&dir.path().join("state"), "delay", &["last", "alerted"]);
    let want: std::collections::BTreeMap<String, Vec<serde_json::Value>> = [
        (
            "p5",
            vec![
                serde_json::json!({"location": "Oslo", "ts": 260}),
                serde_json::json!(360),
            ],
        ),
        (
            "p6",
            vec![
                serde_json::json!({"location": "Lisbon", "ts": 410}),
                serde_json::json!(510),
            ],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(state, want, "{what}: state");
}

/// A handler that fails after writing state and emitting: dead-lettered
/// with its reason and timer, nothing of it kept.
fn check_failing(what: &str, component: &str) {
    let dir = check_delay(what, component, "failing.jsonl", "failing-", false);
    let state = state_values(&dir.path().join("state"), "delay", &["alerted"]);
    assert_eq!(
        state.keys().collect::<Vec<_>>(),
        ["p9"],
        "{what}: only p9 has state (p8 was delivered)"
    );
    assert_eq!(state["p9"], vec![serde_json::json!(220)], "{what}");
}

/// `component` (built with `handle-batch`), handed the first events of
/// the delay input in one batch in-process (as a worker does), stops the
/// batch at the first event, whose timer call needs the per-event path,
/// rather than trapping (after a trap the host replays the batch per event
/// but stays on the batched path): no event handled batched, none failed,
/// the batched path left.
fn check_stops_batch(what: &str, component: &str) {
    let engine = eddy_runtime::engine().unwrap();
    let component = Arc::new(WasmComponent::load(&engine, Path::new(component)).unwrap());
    assert!(component.batched(), "{what}: no handle-batch");
    let lines = [
        ("p1", r#"{"package":"p1","location":"Rotterdam","ts":0}"#, 0),
        ("p2", r#"{"package":"p2","location":"Hamburg","ts":10}"#, 10),
        ("p1", r#"{"package":"p1","location":"Antwerp","ts":50}"#, 50),
    ];
    let events: Vec<EventRef<'_>> = lines
        .iter()
        .enumerate()
        .map(|(i, (key, line, ts))| EventRef {
            key,
            value: line.as_bytes(),
            time: Some(*ts),
            line: i as u64 + 1,
        })
        .collect();
    let mut ctx = OpCtx::new("delay".into(), None, Limits::default());
    // As a worker does for a first operator that exports `on-timer`.
    ctx.set_timer_use(TimerUse::Allowed);
    let mut op = component.instantiate(ctx, r#"{"max_gap":100}"#).unwrap();
    assert!(op.batching(), "{what}: starts on the batched path");
    let mut failed = Vec::new();
    op.handle_many(&events, &mut |i, r, _| {
        if let Err(e) = r {
            failed.push((i, format!("{e:?}")));
        }
    })
    .unwrap();
    assert_eq!(failed, vec![], "{what}: failed events");
    assert_eq!(op.batched_events(), 0, "{what}: events handled batched");
    assert!(
        !op.batching(),
        "{what}: still on the batched path (the timer call trapped instead of stopping the batch)"
    );
}

/// Under `late = "deliver"`, the scan that arrives late (time 50 after
/// 100) says so; its timer, already past, fires at the next advance.
fn check_late(what: &str, component: &str) {
    check_delay(what, component, "late.jsonl", "late-", true);
}

fn check_lang(lang: Lang) {
    for world in timer_worlds(lang) {
        let Some(component) = built(lang, "delay", world) else {
            return;
        };
        let what = format!("{lang:?} delay ({})", world.unwrap_or("default world"));
        check_tracking(&what, &component);
        check_failing(&what, &component);
        check_late(&what, &component);
        if world.unwrap_or(eddy_build::default_world(lang)) == "batched-timer-operator" {
            check_stops_batch(&what, &component);
        }
    }
}

/// The `untimed` operator of `lang` sets timer `t` of each key at the
/// event's time and has no handler: each firing is dead-lettered with the
/// SDK's message, which ends with `hint`, and the run goes on.
fn check_untimed(lang: Lang, hint: &str) {
    let Some(component) = built(lang, "untimed", None) else {
        return;
    };
    let dir = run_text(
        &component,
        "{\"package\":\"a\",\"ts\":5}\n{\"package\":\"b\",\"ts\":7}\n",
        false,
    );
    let error = |key: &str| {
        format!(
            "operator returned an error: timer `t` of key `{key}` fired, but this operator does not handle timers ({hint})"
        )
    };
    assert_eq!(
        dead_letters(dir.path()),
        vec![
            // Fired by line 2's advance of the watermark to 7.
            serde_json::json!({"error": error("a"), "key": "a", "line": 2, "operator": "delay",
                "timer": {"name": "t", "at": 5}}),
            // Fired at the end of the input.
            serde_json::json!({"error": error("b"), "key": "b", "line": 2, "operator": "delay",
                "timer": {"name": "t", "at": 7}}),
        ],
        "{lang:?} untimed"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn python_operator_without_on_timer_dead_letters_its_timers() {
    check_untimed(Lang::Python, "define `on_timer(self, timer)`");
}

#[test]
fn javascript_operator_without_on_timer_dead_letters_its_timers() {
    check_untimed(Lang::Js, "give `operator()` an `onTimer(timer, settings)`");
}

#[test]
fn c_operator_without_on_timer_dead_letters_its_timers() {
    check_untimed(
        Lang::C,
        "define `eddy_error eddy_on_timer(const eddy_timer *)`",
    );
}

/// The Python SDK's `timers.set`, run by the machine's CPython (the same
/// code the component runs), refuses a time that is not an int of 64 bits
/// with an error naming the timer and the value, before any host call
/// (componentize-py would truncate a float or fail with its own words).
#[test]
fn python_timer_times_must_be_64_bit_ints() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let script = r#"
import eddy
for at in [1.5, True, 1 << 63, -(1 << 63) - 1, "5"]:
    try:
        eddy.timers.set("t", at)
        print("accepted", at)
    except eddy.Error as e:
        print("error:", e)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", &sdk)
        .output()
        .expect("python3 runs (the suite's setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "error: timers.set('t'): the time must be an int, got 1.5\n\
         error: timers.set('t'): the time must be an int, got True\n\
         error: timers.set('t'): the time 9223372036854775808 does not fit 64 bits\n\
         error: timers.set('t'): the time -9223372036854775809 does not fit 64 bits\n\
         error: timers.set('t'): the time must be an int, got '5'\n"
    );
}

#[test]
fn rust_delay_timers_give_the_expected_output() {
    check_tracking("Rust delay", eddy_tests::DELAY);
    check_late("Rust delay", eddy_tests::DELAY);
    check_stops_batch("Rust delay", eddy_tests::DELAY);
}

#[test]
fn rust_failing_timer_handler_is_dead_lettered_and_undone() {
    check_failing("Rust delay", eddy_tests::DELAY);
}

#[test]
fn python_delay_timers_match_rust() {
    check_lang(Lang::Python);
}

#[test]
fn javascript_delay_timers_match_rust() {
    check_lang(Lang::Js);
}

#[test]
fn c_delay_timers_match_rust() {
    check_lang(Lang::C);
}
