//! Window aggregates in every SDK: the window count and sum
//! (`plugins/window-sum` in Rust, its twins `plugins/{python,js,c}/window-sum`
//! written with each SDK's window layer and built with `eddy build` in this
//! test run, which picks world `window-operator` from the source) run by the `eddy` binary from the
//! same pipeline file over the same out-of-order input give byte-identical
//! output files in all four languages, for tumbling, hopping and session
//! windows; the Rust output has the known answers written out here.
//!
//! The input has events out of order within the bound, one late event
//! (dead-lettered by the host), an event whose `amount` is not a number
//! (the aggregate fails it: dead-lettered with the SDK's reason, left out
//! of its window while the events around it in the same `add` call count),
//! one without `amount` (counts as 0), an event that bridges two sessions
//! (the aggregate's `merge`; a hopping window's panes are merged too) and
//! amounts whose sums exercise the float formatting
//! (`0.30000000000000004`, `1e-7`, `-0.25`).
//!
//! The Python and JavaScript SDKs' `add` is also run outside a component
//! (by the machine's CPython and Node) with an aggregate that changes its
//! accumulator before failing: the failed event is left out exactly.
//!
//! A language whose toolchain is missing is skipped with a message saying
//! how to install it, except under CI (`CI` set), where that fails the test.

use eddy_build::Lang;

use crate::languages::built;
use crate::util::*;

/// The input: `max_out_of_order = 5`, so the watermark trails the largest
/// time by 5.
const INPUT: &str = r#"{"key":"a","ts":1,"amount":0.1}
{"key":"b","ts":2,"amount":2.5}
{"key":"a","ts":4,"amount":0.2}
{"key":"a","ts":12,"amount":1}
{"key":"a","ts":9,"amount":"lots"}
{"key":"b","ts":8,"amount":3}
{"key":"a","ts":3,"amount":100}
{"key":"c","ts":14,"amount":1.25}
{"key":"b","ts":16}
{"key":"a","ts":18,"amount":0.75}
{"key":"c","ts":27,"amount":2}
{"key":"a","ts":25,"amount":-0.5}
{"key":"b","ts":23,"amount":1e-7}
{"key":"a","ts":26,"amount":0.25}
{"key":"d","ts":28,"amount":4}
{"key":"d","ts":36,"amount":5}
{"key":"d","ts":32,"amount":0.5}
"#;

/// The pipeline file, the same bytes for every language: the component
/// is copied to `window.wasm` beside it.
fn pipeline_file(window: &str) -> String {
    format!(
        r#"workers = 1
control = false

[source]
path = "in.jsonl"
time = "ts"

[source.watermark]
max_out_of_order = 5

[[operator]]
name = "win"
component = "window.wasm"
window = {window}

[sink]
path = "out.jsonl"
dead_letter = "dead-letter.jsonl"

[state]
dir = "state"
"#
    )
}

const TUMBLING: &str = r#"{ kind = "tumbling", size = 10 }"#;
const HOPPING: &str = r#"{ kind = "hopping", size = 10, slide = 5 }"#;
const SESSION: &str = r#"{ kind = "session", gap = 5 }"#;

/// What one run wrote: the output file's bytes and the dead letters'
/// (line, key, error) triples.
struct Ran {
    out: String,
    dead: Vec<(u64, String, String)>,
}

/// Runs `eddy run pipeline.toml` with `component` as `window.wasm` and
/// windows `window` over [`INPUT`].
fn run_window(component: &str, window: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component, dir.path().join("window.wasm")).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), INPUT).unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), pipeline_file(window)).unwrap();
    let o = eddy_in(&["run", "pipeline.toml"], dir.path());
    assert!(o.status.success(), "eddy run failed: {}", stderr(&o));
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let mut dead = read_jsonl(&dir.path().join("dead-letter.jsonl"))
        .into_iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["key"].as_str().unwrap_or_default().to_string(),
                d["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect::<Vec<_>>();
    dead.sort();
    Ran { out, dead }
}

/// The output line of window [`start`, `end`) of `key`.
fn line(key: &str, start: i64, end: i64, count: u64, sum: &str) -> String {
    format!(
        r#"{{"key":"{key}","value":{{"start":{start},"end":{end},"count":{count},"sum":{sum}}}}}"#
    )
}

/// Checks the dead letters of a run (sorted by line): line 5 (`amount` not
/// a number) failed by the aggregate with the SDK's reason, line 7 late.
fn check_dead(what: &str, ran: &Ran) {
    assert_eq!(ran.dead.len(), 2, "{what}: {:?}", ran.dead);
    let (line5, key5, error5) = &ran.dead[0];
    assert_eq!((*line5, key5.as_str()), (5, "a"), "{what}");
    let want = "operator returned an error: cannot read the payload: field `amount` is \"lots\", not a number";
    assert!(error5.starts_with(want), "{what}: {error5}");
    assert_eq!((ran.dead[1].0, ran.dead[1].1.as_str()), (7, "a"), "{what}");
    assert_eq!(
        ran.dead[1].2, "late event: time 3 is below the watermark 7 minus allowed_lateness 0",
        "{what}"
    );
}

/// The Rust aggregate's outputs: every window of the tumbling run, and
/// windows of the hopping and session runs, written out.
fn check_rust(kind: &str, ran: &Ran) {
    check_dead(&format!("Rust {kind}"), ran);
    let lines: Vec<&str> = ran.out.lines().collect();
    let has = |l: String| {
        assert!(
            lines.contains(&l.as_str()),
            "Rust {kind}: no line {l} in\n{}",
            ran.out
        )
    };
    match kind {
        "tumbling" => assert_eq!(
            lines,
            [
                line("a", 0, 10, 2, "0.30000000000000004"),
                line("b", 0, 10, 2, "5.5"),
                line("a", 10, 20, 2, "1.75"),
                line("b", 10, 20, 1, "0.0"),
                line("c", 10, 20, 1, "1.25"),
                line("a", 20, 30, 2, "-0.25"),
                line("b", 20, 30, 1, "1e-7"),
                line("c", 20, 30, 1, "2.0"),
                line("d", 20, 30, 1, "4.0"),
                line("d", 30, 40, 2, "5.5"),
            ],
            "Rust tumbling:\n{}",
            ran.out
        ),
        "hopping" => {
            // [5, 15) holds a's 12 (its 9 failed) and b's 8.
            has(line("a", 5, 15, 1, "1.0"));
            has(line("b", 5, 15, 1, "3.0"));
            // [15, 25) holds a's 18 and b's 16 (no amount) and 23.
            has(line("a", 15, 25, 1, "0.75"));
            has(line("b", 15, 25, 2, "1e-7"));
            // [30, 40) holds d's 36 and 32.
            has(line("d", 30, 40, 2, "5.5"));
            assert_eq!(lines.len(), 21, "Rust hopping:\n{}", ran.out);
        }
        _ => {
            // a's 1 and 4 are one session; 25 and 26 another.
            has(line("a", 1, 9, 2, "0.30000000000000004"));
            has(line("a", 25, 31, 2, "-0.25"));
            // b's 2 and 8 do not meet (2 + 5 < 8).
            has(line("b", 2, 7, 1, "2.5"));
            has(line("b", 8, 13, 1, "3.0"));
            // d's 32 bridges [28, 33) and [36, 41).
            has(line("d", 28, 41, 3, "9.5"));
            assert_eq!(lines.len(), 11, "Rust session:\n{}", ran.out);
        }
    }
}

fn check_lang(lang: Lang) {
    // No `--world`: `eddy build` finds the aggregate in the source and
    // builds for `window-operator`.
    let Some(component) = built(lang, "window-sum", None) else {
        return;
    };
    for (kind, window) in [
        ("tumbling", TUMBLING),
        ("hopping", HOPPING),
        ("session", SESSION),
    ] {
        let want = run_window(eddy_tests::WINDOW_SUM, window);
        check_rust(kind, &want);
        let got = run_window(&component, window);
        let what = format!("{lang:?} {kind}");
        if got.out != want.out {
            let first = got
                .out
                .lines()
                .zip(want.out.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b);
            panic!(
                "{what}: output differs from Rust's ({} vs {} lines); first difference (line, (got, want)): {first:?}\n{}",
                got.out.lines().count(),
                want.out.lines().count(),
                got.out
            );
        }
        check_dead(&what, &got);
        // The late event's reason is the host's: the same text.
        assert_eq!(got.dead[1], want.dead[1], "{what}");
    }
}

#[test]
fn rust_window_sum_gives_the_known_answers() {
    for (kind, window) in [
        ("tumbling", TUMBLING),
        ("hopping", HOPPING),
        ("session", SESSION),
    ] {
        check_rust(kind, &run_window(eddy_tests::WINDOW_SUM, window));
    }
}

#[test]
fn python_window_sum_matches_rust() {
    check_lang(Lang::Python);
}

#[test]
fn javascript_window_sum_matches_rust() {
    check_lang(Lang::Js);
}

#[test]
fn c_window_sum_matches_rust() {
    check_lang(Lang::C);
}

/// Runs `program args` with `env`, when `program` is on `PATH` (else
/// skips, or fails under CI); returns its stdout.
fn run_tool(program: &str, args: &[&str], env: &[(&str, &std::path::Path)]) -> Option<String> {
    if eddy_build::on_path(&[program]).is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run {program}, but it is not on PATH");
        }
        skipped(&format!(
            "{program} not on PATH: the SDK's window layer not run outside a component"
        ));
        return None;
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

fn sdk(lang: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sdk")
        .join(lang)
}

/// The Python SDK's `add`, run by the machine's CPython (the same code the
/// component runs) with an aggregate that changes its accumulator before
/// failing: a failed event is left out (its accumulator rebuilt as it was
/// before it, later events folding into that), a new accumulator starts
/// from `create`, one that does not decode fails its events and comes back
/// as it came; `merge` folds oldest first.
#[test]
fn python_window_add_leaves_a_failed_event_out() {
    let script = r#"
import types
import eddy

class Strings:
    def __init__(self, bytes, ends):
        self.bytes, self.ends = bytes, ends

class Added:
    def __init__(self, accumulators, failed, reasons):
        self.accumulators, self.failed, self.reasons = accumulators, failed, reasons

eddy._wit_batch = types.SimpleNamespace(Strings=Strings)
eddy._wit_window = types.SimpleNamespace(Added=Added)

def col(items):
    data, ends = b"", []
    for i in items:
        data += i.encode()
        ends.append(len(data))
    return Strings(data, ends)

def items(c):
    return [c.bytes[(c.ends[i - 1] if i else 0):e].decode() for i, e in enumerate(c.ends)]

class Keep:
    def create(self):
        return []
    def add(self, acc, event):
        acc.append(event.time)  # changed before failing: the SDK undoes it
        n = event.json().get("n")
        if n is None:
            raise eddy.Error("no n")
        acc[-1] = n
    def merge(self, acc, other):
        acc.extend(other)

adds = types.SimpleNamespace(
    accumulators=col(["[1]", "", "junk"]), fresh=[1], targets=[0, 1, 0, 0, 1, 0, 2],
    payloads=col(['{"n":2}', '{"n":3}', "{}", '{"n":4}', "{}", '{"n":5}', '{"n":6}']),
    times=[10, 11, 12, 13, 14, 15, 16])
r = eddy._run_add(Keep(), adds, None)
print(items(r.accumulators), r.failed, items(r.reasons))
print(eddy.dumps(eddy._merged(Keep(), col(["[1]", "[2,3]"]), None)))
"#;
    let Some(out) = run_tool(
        "python3",
        &["-c", script],
        &[("PYTHONPATH", &sdk("python"))],
    ) else {
        return;
    };
    assert_eq!(
        out,
        "['[1,2,4,5]', '[3]', 'junk'] [2, 4, 6] ['no n', 'no n', 'a window accumulator does not decode: Expecting value: line 1 column 1 (char 0)']\n\
         [1,2,3]\n"
    );
}

/// The same for the JavaScript SDK (`eddy-window.js`, run by Node with the
/// host's `log` import stubbed), and `finish`: a window's start handed over
/// as unsigned (componentize-js 0.23) is read back signed, `null` emits
/// nothing.
#[test]
fn javascript_window_add_leaves_a_failed_event_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hooks.mjs"),
        r#"export async function resolve(specifier, context, next) {
  if (specifier.startsWith('eddy:operator/')) {
    return { url: 'data:text/javascript,export function log() {}', shortCircuit: true };
  }
  return next(specifier, context);
}
"#,
    )
    .unwrap();
    let script = dir.path().join("t.mjs");
    std::fs::write(
        &script,
        r#"import { register } from 'node:module';
register('./hooks.mjs', import.meta.url);
const { aggregate } = await import(process.env.EDDY_SDK + '/eddy-window.js');
const enc = new TextEncoder();
const dec = new TextDecoder();
function col(xs) {
  const bs = xs.map((x) => enc.encode(x));
  const bytes = new Uint8Array(bs.reduce((a, b) => a + b.length, 0));
  const ends = new Uint32Array(bs.length);
  let n = 0;
  bs.forEach((b, i) => { bytes.set(b, n); n += b.length; ends[i] = n; });
  return { bytes, ends };
}
const items = (c) => Array.from(c.ends, (e, i) => dec.decode(c.bytes.subarray(i ? c.ends[i - 1] : 0, e)));
const agg = aggregate({
  accumulator: ['i64'],
  create() { return []; },
  add(acc, e) {
    acc.push(e.time); // changed before failing: the SDK undoes it
    const n = e.json().n;
    if (n === undefined) throw 'no n';
    acc[acc.length - 1] = n;
  },
  merge(acc, other) { acc.push(...other); },
  finish(w, acc) { return acc.length ? { key: w.key, start: w.start, n: acc.length } : null; },
});
agg.init('{}');
const r = agg.add({
  accumulators: col(['[1]', '', 'junk']), fresh: new Uint32Array([1]),
  targets: new Uint32Array([0, 1, 0, 0, 1, 0, 2]),
  payloads: col(['{"n":2}', '{"n":3}', '{}', '{"n":4}', '{}', '{"n":5}', '{"n":6}']),
  times: new BigUint64Array([10n, 11n, 12n, 13n, 14n, 15n, 16n]),
});
console.log(JSON.stringify(items(r.accumulators)), JSON.stringify(Array.from(r.failed)), JSON.stringify(items(r.reasons)));
console.log(dec.decode(agg.merge(col(['[1]', '[2,3]']))));
console.log(dec.decode(agg.finish({ key: 'k', start: 2n ** 64n - 5n, end: 5n }, col(['[1]', '[2]']))));
console.log(String(agg.finish({ key: 'k', start: 0n, end: 5n }, col([]))));
"#,
    )
    .unwrap();
    let Some(out) = run_tool(
        "node",
        &[script.to_str().unwrap()],
        &[("EDDY_SDK", &sdk("js"))],
    ) else {
        return;
    };
    assert_eq!(
        out,
        "[\"[1,2,4,5]\",\"[3]\",\"junk\"] [2,4,6] [\"no n\",\"no n\",\"a window accumulator does not decode: expected value at line 1 column 1\"]\n\
         [1,2,3]\n\
         {\"key\":\"k\",\"start\":-5,\"n\":2}\n\
         undefined\n"
    );
}
