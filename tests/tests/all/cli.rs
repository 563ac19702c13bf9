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
            "--simple",
            eddy_tests::COUNTER_SIMPLE,
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
        "wasm simple",
        "run 2: plain",
        "simple/native ratio (medians)",
        "wasm/native ratio (medians)",
        "simple/tuned ratio (medians)",
        "simple/plain program ratio (medians)",
        "simple without the CPU limit",
        "with/without CPU limit ratio, simple (medians)",
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
        bench.contains("      --component <COMPONENT>  The counter component"),
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
