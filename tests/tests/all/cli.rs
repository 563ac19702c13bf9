use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::util::*;

use crate::util::eddy_in as eddy;

/// Each bad component gets a message naming the file and what is wrong, and
/// a non-zero exit.
#[test]
fn bad_components_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"key\":\"a\"}\n").unwrap();
    std::fs::write(d.join("notes.txt"), "hello, I am text").unwrap();
    std::fs::write(d.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    // An empty component: valid, but it exports nothing of the operator world.
    std::fs::write(d.join("empty.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    // The counter as a component built against a contract this eddy does
    // not know would look.
    let old = with_contract(eddy_tests::COUNTER, "0.9.0");
    std::fs::write(d.join("old.wasm"), old).unwrap();
    let cases = [
        (
            "missing.wasm",
            "component missing.wasm: cannot read the file: No such file or directory",
        ),
        ("notes.txt", "component notes.txt: not a WebAssembly file"),
        (
            "core.wasm",
            "component core.wasm: a core WebAssembly module, not a component",
        ),
        (
            "empty.wasm",
            "component empty.wasm: not an eddy operator (world `eddy:operator@0.3.0/operator`)",
        ),
        (
            "old.wasm",
            "component old.wasm: built against eddy:operator@0.9.0, but this eddy implements eddy:operator@0.3.0 (and still loads 0.1.0 and 0.2.0): build it again from its source with this eddy",
        ),
    ];
    for (file, message) in cases {
        let o = eddy(
            &[
                "run",
                "--operator",
                &format!("op={file}"),
                "--input",
                "in.jsonl",
            ],
            d,
        );
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{file}: got {:?}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

/// A pipeline file with a typo names the field and the line.
#[test]
fn bad_pipeline_file_names_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "[source]\npath = \"in.jsonl\"\n\n[[operator]]\nname = \"c\"\ncompnent = \"c.wasm\"\n",
    )
    .unwrap();
    let o = eddy(&["run", "p.toml"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("pipeline file p.toml")
            && e.contains("line 6")
            && e.contains("unknown field `compnent`"),
        "{e}"
    );
}

/// Events on stdin, results on stdout; then a second eddy on the same state
/// directory while the first runs is refused.
#[test]
fn stdin_to_stdout_and_a_locked_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let mut first = Command::new(eddy_bin())
        .args([
            "run",
            "--operator",
            &operator,
            "--state",
            "st",
            "--workers",
            "2",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = first.stdin.take().unwrap();
    stdin
        .write_all(b"{\"key\":\"a\",\"amount\":2}\n{\"key\":\"a\",\"amount\":3}\n")
        .unwrap();
    stdin.flush().unwrap();

    // Results arrive while the input is still open.
    let mut stdout = BufReader::new(first.stdout.take().unwrap());
    let mut out = String::new();
    for _ in 0..2 {
        stdout.read_line(&mut out).unwrap();
    }
    assert_eq!(
        out,
        "{\"key\":\"a\",\"value\":{\"count\":1,\"sum\":2.0}}\n{\"key\":\"a\",\"value\":{\"count\":2,\"sum\":5.0}}\n"
    );

    // While the first one holds the state directory:
    let o = eddy(
        &[
            "run",
            "--operator",
            &operator,
            "--state",
            "st",
            "--input",
            "-",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("state directory st is in use by another running eddy"),
        "{}",
        stderr(&o)
    );

    drop(stdin);
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A state directory that is a file, that holds something other than an
/// eddy database, or that a newer eddy wrote: each refused with the reason,
/// and the file left as it was.
#[test]
fn unusable_state_directories_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("in.jsonl"), "{\"key\":\"a\",\"amount\":1}\n").unwrap();
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let run = |state: &str| {
        eddy(
            &[
                "run",
                "--operator",
                &operator,
                "--input",
                "in.jsonl",
                "--state",
                state,
            ],
            d,
        )
    };

    std::fs::write(d.join("afile"), "not a directory").unwrap();
    let o = run("afile");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("state directory afile is not a directory"),
        "{}",
        stderr(&o)
    );

    std::fs::create_dir(d.join("garbage")).unwrap();
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(d.join("garbage/state.redb"), &junk).unwrap();
    let o = run("garbage");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("state directory garbage: garbage/state.redb is not an eddy state database or is corrupt"), "{e}");
    assert_eq!(
        std::fs::read(d.join("garbage/state.redb")).unwrap(),
        junk,
        "the file is left untouched"
    );

    // A state directory from a future format version.
    assert!(run("future").status.success());
    {
        let db = redb::Database::open(d.join("future/state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("format", b"99".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let o = run("future");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("state directory future was written by an incompatible version (state format 99, this eddy reads 2)"), "{e}");
}

/// Random bytes and mangled pipeline files never panic the decoder or the
/// pipeline parser (a short, always-on fuzz; `fuzz/` has the cargo-fuzz
/// targets for long runs).
#[test]
fn random_input_never_panics_the_decoder_or_the_pipeline_parser() {
    use eddy_runtime::decode;
    use eddy_runtime::{Overrides, Pipeline};
    let mut rng = Rng(1);
    let seeds: [&[u8]; 4] = [
        br#"{"key":"k1","amount":12.5,"ts":17,"nested":{"a":[1,2,{"b":null}]}}"#,
        br#"{"key":42,"ts":"x"}"#,
        b"[source]\npath = \"in.jsonl\"\nkey = \"card\"\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\nconfig = { a = 1, b = [1, 2] }\n[state]\ncheckpoint_interval_ms = 5\n",
        b"workers = 2\n[sink]\npath = \"-\"\n",
    ];
    for round in 0..20_000 {
        let input = mutated(&mut rng, seeds[round % seeds.len()]);
        let _ = decode(&input, "key", Some("ts"));
        if let Ok(text) = std::str::from_utf8(&input) {
            let _ = Pipeline::from_toml(text, std::path::Path::new("p.toml"), Overrides::default());
        }
    }
}

/// `eddy bench` on a small run: every configuration runs the requested
/// number of times and the report gives medians and both ratios.
#[test]
fn bench_reports_each_run_and_the_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let o = eddy(
        &[
            "bench",
            "--component",
            eddy_tests::COUNTER,
            "--tuned",
            eddy_tests::COUNTER_TUNED,
            "--events",
            "20000",
            "--keys",
            "500",
            "--workers",
            "2",
            "--repeat",
            "2",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        "run 2: native",
        "wasm tuned",
        "run 2: plain",
        "wasm/native ratio (medians)",
        "tuned/native ratio (medians)",
        "wasm/tuned ratio (medians)",
        "wasm/plain program ratio (medians)",
        "wasm without the CPU limit",
        "tuned without the CPU limit",
        "with/without CPU limit ratio, wasm (medians)",
        "with/without CPU limit ratio, tuned (medians)",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    // Operator path: two runs; end to end: two runs of the plain program
    // and of each of the three operators.
    assert_eq!(out.matches("run 1:").count(), 5, "{out}");
    assert_eq!(out.matches("(20000 events,").count(), 8, "{out}");
    let o = eddy(&["bench", "--repeat", "0"], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--repeat"), "{}", stderr(&o));
}

/// `eddy run --operator` and `eddy bench --component` are the flags; the
/// `--plugin` that older versions took still works for both, hidden from
/// `--help`. No command's help says "plugin" (the `plugins/` folder of the
/// example operators aside).
#[test]
fn the_flags_say_operator_and_component_and_the_old_plugin_flag_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("in.jsonl"),
        "{\"key\":\"a\",\"amount\":2}\n{\"key\":\"a\",\"amount\":3}\n",
    )
    .unwrap();
    let operator = format!("counter={}", eddy_tests::COUNTER);
    for (flag, state) in [("--operator", "new"), ("--plugin", "old")] {
        let o = eddy(
            &[
                "run", "--quiet", flag, &operator, "--input", "in.jsonl", "--output", "-",
                "--state", state,
            ],
            d,
        );
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "{\"key\":\"a\",\"value\":{\"count\":1,\"sum\":2.0}}\n{\"key\":\"a\",\"value\":{\"count\":2,\"sum\":5.0}}\n",
            "{flag}"
        );
    }
    for flag in ["--component", "--plugin"] {
        let o = eddy(
            &[
                "bench",
                flag,
                eddy_tests::COUNTER,
                "--events",
                "1000",
                "--keys",
                "10",
                "--no-e2e",
                "--wasm-only",
                "--repeat",
                "1",
            ],
            d,
        );
        assert!(o.status.success(), "{flag}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.starts_with(&format!("compiled {} in ", eddy_tests::COUNTER)),
            "{flag}: {out}"
        );
    }

    let help = |args: &[&str]| {
        let o = eddy(args, d);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let run = help(&["run", "--help"]);
    assert!(
        run.contains("      --operator <NAME=PATH>\n          An operator: its name and its component, NAME=PATH.wasm;"),
        "{run}"
    );
    assert!(
        run.contains("eddy run --operator counter=counter.wasm"),
        "{run}"
    );
    let bench = help(&["bench", "--help"]);
    assert!(
        bench.contains("      --component <COMPONENT>\n          The counter component, written the way the README teaches"),
        "{bench}"
    );
    for command in [
        "run",
        "build",
        "status",
        "swap",
        "rollback",
        "bench",
        "bench-swap",
        "bench-langs",
    ] {
        let text = help(&[command, "--help"])
            .to_lowercase()
            .replace("plugins/", "");
        assert!(!text.contains("plugin"), "eddy {command} --help:\n{text}");
    }
    let text = help(&["--help"]).to_lowercase();
    assert!(!text.contains("plugin"), "eddy --help:\n{text}");
}

/// `eddy inspect`'s verdicts: an operator loads (exit 0) and shows its
/// contract, world, exports and SHA-256; a core module, a component of
/// another world and a text file do not (exit 1), each with the reason.
#[test]
fn inspect_gives_each_file_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(d.join("notes.txt"), "hello, I am text").unwrap();
    let inspect = |path: &str| {
        let o = eddy(&["inspect", "--json", path], d);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", stderr(&o)));
        (o.status.code(), report)
    };

    let (code, r) = inspect(eddy_tests::COUNTER);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["kind"], "component");
    assert_eq!(r["loads"], true);
    assert_eq!(r["contract"], eddy_runtime::CONTRACT);
    // The Rust SDK exports everything: the batched path, migrate and
    // on-timer.
    assert_eq!(r["world"], "full-operator");
    let bytes = std::fs::read(eddy_tests::COUNTER).unwrap();
    assert_eq!(r["bytes"], bytes.len() as u64);
    // The SHA-256 is the version id `eddy status` shows.
    assert_eq!(r["sha256"], eddy_runtime::component_hash(&bytes));
    let exports: Vec<&str> = r["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for e in ["init", "handle", "handle-batch", "migrate", "on-timer"] {
        assert!(exports.contains(&e), "{e} not in {exports:?}");
    }
    let imports = r["imports"].as_array().unwrap();
    let state = format!(
        "eddy:operator/state@{}",
        eddy_runtime::CONTRACT.split_once('@').unwrap().1
    );
    assert!(imports.iter().any(|i| *i == *state), "{imports:?}");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .starts_with("loads as an operator of "),
        "{r:#}"
    );
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .ends_with("(batched path, exports migrate, handles timers)"),
        "{r:#}"
    );

    let (code, r) = inspect(eddy_tests::HELLO_CLI);
    assert_eq!(code, Some(1));
    assert_eq!(r["loads"], false);
    assert_eq!(
        r["world"],
        "a WASI command (wasi:cli/command), not an Eddy operator"
    );
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains("not an eddy operator"),
        "{r:#}"
    );

    let (code, r) = inspect("core.wasm");
    assert_eq!(code, Some(1));
    assert_eq!(r["kind"], "core module");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains("a core WebAssembly module, not a component"),
        "{r:#}"
    );

    let (code, r) = inspect("notes.txt");
    assert_eq!(code, Some(1));
    assert_eq!(r["kind"], "not WebAssembly");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly file"),
        "{r:#}"
    );

    // A missing file: an error naming it, and a failure.
    let o = eddy(&["inspect", "missing.wasm"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.wasm"), "{}", stderr(&o));
}

/// `eddy completions bash` is a script bash loads, after which `eddy`
/// completes its commands; `eddy man` renders pages `man` formats, one per
/// command with `--dir`.
#[test]
fn completions_and_man_pages_work_with_the_shell_and_man() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = eddy(&["completions", "bash"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(d.join("eddy.bash"), &o.stdout).unwrap();
    // Load it and ask for the completions of `eddy ins`.
    let script = "source ./eddy.bash\n\
         COMP_WORDS=(eddy ins); COMP_CWORD=1; COMP_LINE='eddy ins'; COMP_POINT=8\n\
         _eddy eddy ins eddy\n\
         printf '%s\\n' \"${COMPREPLY[@]}\"";
    let o = Command::new("bash")
        .args(["-c", script])
        .current_dir(d)
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "inspect");

    let o = eddy(&["completions", "tcsh"], d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tcsh"), "{}", stderr(&o));

    let o = eddy(&["man", "--dir", "man1"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    for page in ["eddy", "eddy-run", "eddy-swap", "eddy-inspect"] {
        let path = d.join("man1").join(format!("{page}.1"));
        let o = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("COLUMNS", "100")
            .output()
            .expect("man runs");
        assert!(o.status.success(), "{page}: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("NAME") && text.contains(page),
            "{page}:\n{text}"
        );
    }
    let run = std::fs::read_to_string(d.join("man1/eddy-run.1")).unwrap();
    assert!(run.contains("progress\\-interval\\-ms"), "{run}");
    let o = eddy(&["man"], d);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(".ie"));
}

/// Logs: `--log-format json` writes one JSON object per line, and an
/// operator's log line names the operator, its version and the key;
/// `--log-level` (or `RUST_LOG`) filters; a bad filter is an error naming
/// it.
#[test]
fn operator_log_lines_carry_operator_version_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The first event uses map state, so this instance handles the rest
    // per event, where the host knows each event's key.
    std::fs::write(
        d.join("in.jsonl"),
        "{\"key\":\"a\",\"per_event\":true}\n{\"key\":\"a\",\"action\":\"log\"}\n{\"key\":\"b\",\"action\":\"log\"}\n",
    )
    .unwrap();
    let operator = format!("faulty={}", eddy_tests::FAULTY);
    let run = |extra: &[&str], state: &str| {
        let mut args = vec![
            "run",
            "-q",
            "-w",
            "1",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            state,
        ];
        args.extend_from_slice(extra);
        eddy(&args, d)
    };
    let o = run(&["--log-format", "json"], "s1");
    assert!(o.status.success(), "{}", stderr(&o));
    let version = &eddy_runtime::component_hash(&std::fs::read(eddy_tests::FAULTY).unwrap())[..12];
    let logs: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .filter(|v: &serde_json::Value| v["target"] == "eddy_runtime::operator::host::log")
        .collect();
    let got: Vec<(&str, &str, &str, &str, &str)> = logs
        .iter()
        .map(|v| {
            (
                v["level"].as_str().unwrap(),
                v["operator"].as_str().unwrap(),
                v["span"]["version"].as_str().unwrap(),
                v["key"].as_str().unwrap(),
                v["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("WARN", "faulty", version, "a", "count 2 reached"),
            ("WARN", "faulty", version, "b", "count 1 reached"),
        ]
    );

    // A level above warn hides them, by flag or by RUST_LOG.
    let o = run(&["--log-level", "error"], "s2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("reached"), "{}", stderr(&o));
    let o = Command::new(eddy_bin())
        .args([
            "run",
            "-q",
            "-w",
            "1",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
        ])
        .args(["--output", "out.jsonl", "--state", "s3"])
        .env("RUST_LOG", "error")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("reached"), "{}", stderr(&o));
    // Text lines carry the version too.
    let o = run(&[], "s4");
    assert!(
        stderr(&o).contains(&format!("version=\"{version}\"")),
        "{}",
        stderr(&o)
    );

    let o = run(&["--log-level", "warn,["], "s5");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--log-level \"warn,[\""),
        "{}",
        stderr(&o)
    );
}

/// On the batched path too (`handle-batch`, many events in one call), an
/// operator's log lines carry the key of the event that logged them: a
/// batch that logs is replayed event by event, with nothing of its result
/// applied twice.
#[test]
fn operator_log_lines_on_the_batched_path_carry_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut text = String::new();
    let mut want = Vec::new();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for i in 0..60u64 {
        let key = format!("k{}", i % 7);
        let n = counts.entry(key.clone()).or_default();
        *n += 1;
        if i % 9 == 4 {
            text += &format!("{{\"key\":\"{key}\",\"action\":\"log\"}}\n");
            want.push((key, format!("count {n} reached")));
        } else {
            text += &format!("{{\"key\":\"{key}\"}}\n");
        }
    }
    std::fs::write(d.join("in.jsonl"), text).unwrap();
    let operator = format!("faulty={}", eddy_tests::FAULTY);
    let o = eddy(
        &[
            "run",
            "-q",
            "-w",
            "1",
            "--log-format",
            "json",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            "st",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<(String, String)> = stderr(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .filter(|v| v["target"] == "eddy_runtime::operator::host::log")
        .map(|v| {
            assert_eq!(v["operator"], "faulty");
            (
                v["key"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Every event counted once: each key's outputs are 1, 2, .., n.
    let mut outs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for l in std::fs::read_to_string(d.join("out.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        outs.entry(v["key"].as_str().unwrap().to_string())
            .or_default()
            .push(v["value"]["n"].as_u64().unwrap());
    }
    let expected: std::collections::BTreeMap<String, Vec<u64>> = counts
        .iter()
        .map(|(k, n)| (k.clone(), (1..=*n).collect()))
        .collect();
    assert_eq!(outs, expected);
}

/// `eddy state get|scan` read a stopped pipeline's committed state as JSON:
/// exactly what the counter wrote, per key; a missing key, name or
/// operator is an error naming it; a running pipeline's directory is
/// refused with the reason; a directory without state is not created.
#[test]
fn state_get_and_scan_show_the_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut text = String::new();
    let mut want: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for i in 0..500u64 {
        let key = format!("user-{}", i % 25);
        text += &format!("{{\"key\":\"{key}\",\"amount\":{}}}\n", i % 13);
        let t = want.entry(key).or_default();
        t.0 += 1;
        t.1 += (i % 13) as f64;
    }
    std::fs::write(d.join("in.jsonl"), text).unwrap();
    let operator = format!("counter={}", eddy_tests::COUNTER);
    let o = eddy(
        &[
            "run",
            "-q",
            "--operator",
            &operator,
            "--input",
            "in.jsonl",
            "--output",
            "out.jsonl",
            "--state",
            "st",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = eddy(
        &[
            "state", "scan", "counter", "--state", "st", "--limit", "1000",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: std::collections::BTreeMap<String, (u64, f64)> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = &v["state"]["values"]["totals"];
            (
                v["key"].as_str().unwrap().to_string(),
                (t["count"].as_u64().unwrap(), t["sum"].as_f64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, want);

    let o = eddy(
        &[
            "state", "get", "counter", "user-7", "totals", "--state", "st",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"count": want["user-7"].0, "sum": want["user-7"].1})
    );

    // A prefix and a limit: the first keys in key order, and a note that
    // more follow.
    let o = eddy(
        &[
            "state", "scan", "counter", "--state", "st", "--prefix", "user-1", "--limit", "3",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let keys: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["user-1", "user-10", "user-11"]);
    assert!(stderr(&o).contains("more keys follow"), "{}", stderr(&o));

    for (args, error) in [
        (
            vec!["get", "counter", "user-99"],
            "operator \"counter\" has no committed state for key \"user-99\"",
        ),
        (
            vec!["get", "counter", "user-1", "nope"],
            "has no value, map or list named \"nope\" (it has: totals)",
        ),
        (
            vec!["scan", "nobody"],
            "operator \"nobody\" has no committed state",
        ),
    ] {
        let mut all = vec!["state"];
        all.extend(args);
        all.extend(["--state", "st"]);
        let o = eddy(&all, d);
        assert_eq!(o.status.code(), Some(1), "{all:?}");
        assert!(stderr(&o).contains(error), "{all:?}: {}", stderr(&o));
    }
    let o = eddy(&["state", "scan", "counter", "--state", "elsewhere"], d);
    assert!(
        stderr(&o).contains("elsewhere: no state there"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("elsewhere").exists());

    // A running pipeline answers the same queries itself (as of its last
    // checkpoint); one that serves no control socket keeps its state to
    // itself: refused, saying so.
    let start = |extra: &[&str]| {
        let child = Command::new(eddy_bin())
            .args([
                "run",
                "-q",
                "--follow",
                "--operator",
                &operator,
                "--input",
                "in.jsonl",
            ])
            .args(["--state", "st"])
            .args(if extra.is_empty() {
                &["--output", "out2.jsonl"][..]
            } else {
                extra
            })
            .current_dir(d)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // With --no-control there is no socket to wait for.
        while extra.is_empty() && !d.join("st/control.sock").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pipeline did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child
    };
    let stop = |mut child: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        assert!(child.wait().unwrap().success());
    };
    let child = start(&[]);
    let got = eddy(
        &[
            "state", "get", "counter", "user-7", "totals", "--state", "st",
        ],
        d,
    );
    let scan = eddy(
        &[
            "state", "scan", "counter", "--state", "st", "--prefix", "user-1", "--limit", "3",
        ],
        d,
    );
    let unknown = eddy(&["state", "scan", "nobody", "--state", "st"], d);
    stop(child);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.stdout).unwrap(),
        serde_json::json!({"count": want["user-7"].0, "sum": want["user-7"].1})
    );
    assert!(scan.status.success(), "{}", stderr(&scan));
    assert_eq!(scan.stdout, o_scan_first_three(d));
    assert!(
        stderr(&scan).contains("more keys follow"),
        "{}",
        stderr(&scan)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no operator named `nobody` in this pipeline (it runs: counter)"),
        "{}",
        stderr(&unknown)
    );

    let child = start(&["--no-control", "--output", "out3.jsonl"]);
    // No socket to wait for: the output file appears once the state
    // directory is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !d.join("out3.jsonl").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pipeline did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = eddy(&["state", "get", "counter", "user-7", "--state", "st"], d);
    stop(child);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("keeps it to itself: stop it first"),
        "{}",
        stderr(&o)
    );
}

/// `eddy state scan counter --prefix user-1 --limit 3` on the stopped
/// state directory `d/st`, as printed.
fn o_scan_first_three(d: &std::path::Path) -> Vec<u8> {
    let o = eddy(
        &[
            "state", "scan", "counter", "--state", "st", "--prefix", "user-1", "--limit", "3",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    o.stdout
}
