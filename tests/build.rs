//! Builds the example operators in `plugins/` and the test-only operators in
//! `tests/fixtures/` for wasm32-wasip2 (each workspace with its own
//! `CARGO_TARGET_DIR` under `OUT_DIR`, so the host build is untouched) and
//! writes their paths as constants for the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspaces to build, relative to the repository root: their folder,
/// the folder of their target directory under `OUT_DIR`, what they hold,
/// and the components the tests use.
const WORKSPACES: &[(&str, &str, &str, &[&str])] = &[
    (
        "plugins",
        "plugins-target",
        "example operator",
        &[
            "counter",
            "counter_tuned",
            "fraud",
            "views",
            "recommend",
            "tracking",
            "trading",
            "forecast",
            "window_sum",
            "sessions",
            "fraud_window",
        ],
    ),
    (
        "tests/fixtures",
        "fixtures-target",
        "test operator",
        &[
            "faulty",
            "counter_v2",
            "counter_v3",
            "refuse",
            "migrate_fails",
            "hello-cli",
            "malformed",
            "timers",
            "delay",
            "window_faulty",
            "history",
            "catalog",
        ],
    ),
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    for dir in ["plugins", "tests/fixtures", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    ensure_target();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut consts = String::new();
    for (dir, target, what, components) in WORKSPACES {
        let target_dir = out.join(target);
        build(&root.join(dir).join("Cargo.toml"), &target_dir, dir);
        for name in *components {
            let path = target_dir
                .join(TARGET)
                .join("release")
                .join(format!("{name}.wasm"));
            assert!(path.exists(), "{} was not built", path.display());
            consts += &format!(
                "/// The `{name}` {what} (`{dir}/`).\npub const {}: &str = {:?};\n",
                name.to_uppercase().replace('-', "_"),
                path.display().to_string()
            );
        }
    }
    std::fs::write(out.join("plugins.rs"), consts).unwrap();
}

/// Builds the workspace of `manifest` for wasm32-wasip2 into `target_dir`.
fn build(manifest: &Path, target_dir: &Path, dir: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {dir}/: {e}"));
    assert!(
        status.success(),
        "building {dir}/ for {TARGET} failed (see the output above)"
    );
}

/// Installs the wasm32-wasip2 target with rustup when it is missing.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let present = libdir
        .ok()
        .filter(|o| o.status.success())
        .map(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).exists())
        .unwrap_or(false);
    if !present {
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed"
        );
    }
}
