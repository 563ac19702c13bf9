//! `eddy new NAME --lang LANG`: the project builds with `eddy build .` and
//! its pipeline runs with `eddy run pipeline.toml`, giving the expected
//! output and dead-lettering the event whose amount is not a number.

use std::path::{Path, PathBuf};

use eddy_build::Lang;

use crate::util::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn new_builds_and_runs(lang: Lang, name: &str) {
    // componentize-js comes from plugins/js/node_modules (tests/run-tests.sh).
    let js_tools = repo().join("plugins").join("js");
    if let Some(missing) = eddy_build::missing_toolchain(lang, &js_tools) {
        if std::env::var_os("CI").is_some() {
            panic!("CI must test `eddy new --lang {lang:?}`, but: {missing}");
        }
        skipped(&format!("`eddy new --lang {lang:?}` not tested: {missing}"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lang_arg = format!("{lang:?}").to_lowercase();
    let o = eddy_in(&["new", name, "--lang", &lang_arg], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let project = dir.path().join(name);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("eddy build .\n  eddy run pipeline.toml"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let mut path = vec![js_tools.join("node_modules").join(".bin")];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let o = std::process::Command::new(eddy_bin())
        .args(["build", "."])
        .env("PATH", std::env::join_paths(path).unwrap())
        // Rust: one target directory for every run of this test.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("eddy-new-target"),
        )
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(o.status.success(), "eddy build: {}", stderr(&o));
    assert!(project.join(format!("{name}.wasm")).is_file());

    let o = eddy_in(&["run", "-q", "pipeline.toml"], &project);
    assert!(o.status.success(), "eddy run: {}", stderr(&o));
    let want = std::fs::read_to_string(project.join("expected-output.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    assert_eq!(want, eddy_cli::NEW_EXPECTED_OUTPUT);
    let dead = read_jsonl(&project.join("dead-letter.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], 5);
    assert_eq!(dead[0]["operator"], name);
    assert!(
        dead[0]["error"].as_str().unwrap().contains("ten"),
        "{:?}",
        dead[0]
    );
}

#[test]
fn new_rust_project_builds_and_runs() {
    new_builds_and_runs(Lang::Rust, "my-rust-op");
}

#[test]
fn new_python_project_builds_and_runs() {
    new_builds_and_runs(Lang::Python, "my_python_op");
}

#[test]
fn new_javascript_project_builds_and_runs() {
    new_builds_and_runs(Lang::Js, "my-js-op");
}

#[test]
fn new_c_project_builds_and_runs() {
    new_builds_and_runs(Lang::C, "my-c-op");
}

/// Names that cannot be a directory, a crate and a component are refused
/// with the rule; an existing directory is not overwritten.
#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["My-Op", "1op", "op/x", "op x", ""] {
        let o = eddy_in(&["new", bad, "--lang", "c"], dir.path());
        assert!(!o.status.success(), "{bad:?}");
        assert!(
            stderr(&o).contains("use lowercase letters, digits"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let o = eddy_in(&["new", "taken", "--lang", "python"], dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        1
    );
}
