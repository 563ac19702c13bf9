//! Builds the example operators in `plugins/` for wasm32-wasip2 (with
//! `CARGO_TARGET_DIR` under `OUT_DIR`, so the host build is untouched) and
//! writes their paths as constants for the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &[
    "counter",
    "fraud",
    "views",
    "recommend",
    "tracking",
    "faulty",
    "counter_v2",
    "counter_v3",
    "refuse",
    "migrate_fails",
    "hello-cli",
    "malformed",
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    ensure_target();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.join("plugins-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("running cargo to build plugins/");
    assert!(
        status.success(),
        "building plugins/ for {TARGET} failed (see the output above)"
    );
    let mut consts = String::new();
    for name in PLUGINS {
        let path = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{name}.wasm"));
        assert!(path.exists(), "{} was not built", path.display());
        consts += &format!(
            "/// The `{name}` example operator.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string()
        );
    }
    std::fs::write(out.join("plugins.rs"), consts).unwrap();
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
