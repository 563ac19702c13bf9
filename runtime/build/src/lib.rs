//! `eddy build`: builds an operator from its source directory into a
//! component, whatever the language: Rust (a Cargo package), Python
//! (componentize-py), JavaScript (componentize-js) or C (clang with
//! wasi-libc, bindings and component encoding done here).
//!
//! The contract (`wit/`) and the thin per-language SDK files (`eddy.py`,
//! `eddy.js`, `eddy.h`, from `sdk/`) are built into the `eddy` binary, so a
//! user needs only their operator's source and the language's own toolchain.
//!
//! # Layout
//!
//! - this file: [`BuildArgs`] and [`run`] (the command), language detection,
//!   the embedded files ([`WIT`], [`PYTHON_SDK`], [`JS_SDK_FILES`], [`C_SDK`]) and
//!   the Rust, Python and JavaScript builds.
//! - [`build_c`]: the C build (bindings, clang, component encoding).

pub mod build_c;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// The contract's files, as in `wit/`.
pub const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../../wit/world.wit")),
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("state.wit", include_str!("../../../wit/state.wit")),
    ("output.wit", include_str!("../../../wit/output.wit")),
    ("log.wit", include_str!("../../../wit/log.wit")),
    ("batch.wit", include_str!("../../../wit/batch.wit")),
    ("timers.wit", include_str!("../../../wit/timers.wit")),
    ("window.wit", include_str!("../../../wit/window.wit")),
];

/// The Python SDK module (`import eddy`).
pub const PYTHON_SDK: &str = include_str!("../../../sdk/python/eddy.py");
/// The JavaScript SDK module for keyed operators (`import ... from
/// '../eddy.js'`).
pub const JS_SDK: &str = include_str!("../../../sdk/js/eddy.js");
/// The JavaScript SDK module for window aggregates (`import ... from
/// '../eddy-window.js'`, world `window-operator`).
pub const JS_WINDOW_SDK: &str = include_str!("../../../sdk/js/eddy-window.js");
/// What [`JS_SDK`] and [`JS_WINDOW_SDK`] share (shapes, JSON, errors, log,
/// events, config): `eddy-json.js`, which both import.
pub const JS_JSON_SDK: &str = include_str!("../../../sdk/js/eddy-json.js");
/// The JavaScript SDK's files, by name, laid out side by side.
pub const JS_SDK_FILES: &[(&str, &str)] = &[
    ("eddy.js", JS_SDK),
    ("eddy-window.js", JS_WINDOW_SDK),
    ("eddy-json.js", JS_JSON_SDK),
];
/// The C SDK header (`#include "eddy.h"`).
pub const C_SDK: &str = include_str!("../../../sdk/c/eddy.h");

/// The world `eddy build` builds an operator in `lang` against when
/// `--world` is not given: `batched-timer-operator` (the SDK's
/// `handle-batch` and timer handler) for JavaScript and C, where the
/// batched path is faster; `timer-operator` (per-event `handle` and the
/// timer handler) for Python, where it is not (measured in
/// docs/performance.md). Every SDK exports `on-timer` in these worlds,
/// answering a timer with an error when the operator defines no handler,
/// as the Rust SDK does. Rust operators choose theirs through the SDK.
pub fn default_world(lang: Lang) -> &'static str {
    match lang {
        Lang::Js | Lang::C => "batched-timer-operator",
        Lang::Python | Lang::Rust => "timer-operator",
    }
}

/// The world `eddy build` builds the operator in `dir` for when `--world`
/// is not given: `window-operator` when its source exports a window
/// aggregate (a `.py` file that calls `export_window(`, a `.js` or `.mjs`
/// file that names `eddy-window.js`, a `.c` file that uses
/// `EDDY_EXPORT_WINDOW(`), else [`default_world`].
pub fn world_for(lang: Lang, dir: &Path) -> Result<&'static str> {
    let (exts, marker): (&[&str], &str) = match lang {
        Lang::Python => (&["py"], "export_window("),
        Lang::Js => (&["js", "mjs"], "eddy-window.js"),
        Lang::C => (&["c"], "EDDY_EXPORT_WINDOW("),
        Lang::Rust => return Ok(default_world(lang)),
    };
    for ext in exts {
        for f in files(dir, ext)? {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            if text.contains(marker) {
                return Ok("window-operator");
            }
        }
    }
    Ok(default_world(lang))
}

/// Source languages `eddy build` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Cargo package using `eddy-sdk` (`cdylib`), built for wasm32-wasip2.
    Rust,
    /// `app.py` (or one `.py` file), built with componentize-py.
    Python,
    /// An ES module (`index.js`, `<dir>.js` or one `.js` file), built with
    /// componentize-js.
    Js,
    /// `.c` files, built with clang and wasi-libc.
    C,
}

/// Build an operator from source into a WebAssembly component.
///
/// The language is found from the directory: `Cargo.toml` (Rust), `app.py`
/// or one `.py` file (Python), `index.js`, `<dir name>.js` or one `.js` file
/// (JavaScript),
/// `.c` files (C). Needs the language's toolchain: Rust's `wasm32-wasip2`
/// target (installed with rustup when missing), `componentize-py`
/// (`pip install componentize-py==0.25.1`), `componentize-js` (`npm install
/// @bytecodealliance/componentize-js@0.23.0`), or clang with wasi-libc
/// (`apt-get install clang lld wasi-libc libclang-rt-dev-wasm32`).
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The operator's source directory.
    pub dir: PathBuf,
    /// Where to write the component [default: the directory's name with
    /// `.wasm`, in the current directory].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The source language, when the directory holds more than one.
    #[arg(long)]
    pub lang: Option<Lang>,
    /// The world to build against [default: `window-operator` for a
    /// window aggregate, else `batched-timer-operator` for JavaScript and
    /// C, `timer-operator` for Python]. The Python,
    /// JavaScript and C SDKs implement `batched-timer-operator`: `init`,
    /// `handle`, the batched fast path `handle-batch` and the timer handler
    /// `on-timer`; `timer-operator` leaves `handle-batch` out (in Python the
    /// per-event path is the faster one); `batched-operator` and `operator`
    /// leave `on-timer` out too (such a component cannot set timers).
    /// `full-operator` adds `migrate`, which the operator must then export
    /// itself; `migrating-operator` is `operator` with `migrate`.
    /// `window-operator` builds a window aggregate (Python
    /// `eddy.export_window`, JavaScript `aggregate` from `eddy-window.js`,
    /// C `EDDY_EXPORT_WINDOW`), and is the default for a source that uses
    /// one of those. Rust operators choose theirs through the SDK.
    #[arg(long)]
    pub world: Option<String>,
}

impl Lang {
    /// The language's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        }
    }
}

/// Runs `eddy build`.
pub fn run(a: BuildArgs) -> Result<()> {
    let dir = &a.dir;
    if !dir.is_dir() {
        bail!(
            "{}: not a directory (give the operator's source directory)",
            dir.display()
        );
    }
    let lang = match a.lang {
        Some(l) => l,
        None => detect(dir)?,
    };
    let out = match &a.output {
        Some(o) => o.clone(),
        None => {
            let name = dir
                .canonicalize()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "operator".into());
            PathBuf::from(format!("{name}.wasm"))
        }
    };
    let t = Instant::now();
    let world = match a.world.as_deref() {
        Some(w) => w,
        None => world_for(lang, dir)?,
    };
    build(lang, dir, world, &out)?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "eddy: built {} ({}, {:.1} MB) from {} in {:.1}s",
        out.display(),
        lang.name(),
        size as f64 / 1e6,
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the operator in `dir`, written in `lang`, against `world`, into
/// the component `out`.
pub fn build(lang: Lang, dir: &Path, world: &str, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let out_abs = absolute(out)?;
    match lang {
        Lang::Rust => rust(dir, &out_abs),
        Lang::Python => python(dir, world, &out_abs),
        Lang::Js => js(dir, world, &out_abs),
        Lang::C => c(dir, world, &out_abs),
    }
}

/// Finds the language of the sources in `dir`.
pub fn detect(dir: &Path) -> Result<Lang> {
    let mut found = Vec::new();
    if dir.join("Cargo.toml").is_file() {
        found.push(Lang::Rust);
    }
    if !files(dir, "py")?.is_empty() {
        found.push(Lang::Python);
    }
    if !files(dir, "js")?.is_empty() {
        found.push(Lang::Js);
    }
    if !files(dir, "c")?.is_empty() {
        found.push(Lang::C);
    }
    match found[..] {
        [one] => Ok(one),
        [] => bail!(
            "{}: no operator source found (looked for Cargo.toml, *.py, *.js, *.c)",
            dir.display()
        ),
        _ => bail!(
            "{}: sources of several languages ({found:?}); choose one with --lang",
            dir.display()
        ),
    }
}

/// Files of `dir` (not recursive) ending in `.ext`, sorted.
fn files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == ext) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Writes the contract and the SDK files into a temporary directory:
/// `<tmp>/wit/*.wit` and `<tmp>/sdk/<sdk file>`.
fn scratch(sdk: Option<(&str, &str)>) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir(tmp.path().join("wit"))?;
    for (name, text) in WIT {
        std::fs::write(tmp.path().join("wit").join(name), text)?;
    }
    std::fs::create_dir(tmp.path().join("sdk"))?;
    if let Some((name, text)) = sdk {
        std::fs::write(tmp.path().join("sdk").join(name), text)?;
    }
    Ok(tmp)
}

/// Whether `world` of the WIT package in `wit_dir` exports `function`.
fn world_exports(wit_dir: &Path, world: &str, function: &str) -> Result<bool> {
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("cannot load WIT from {}", wit_dir.display()))?;
    let id = resolve
        .select_world(&[pkg], Some(world))
        .with_context(|| format!("no world `{world}` in the contract"))?;
    Ok(resolve.worlds[id]
        .exports
        .keys()
        .any(|k| matches!(k, wit_parser::WorldKey::Name(n) if n == function)))
}

/// Runs `cmd`, failing with its output when it fails.
fn run_tool(mut cmd: Command, what: &str) -> Result<()> {
    let output = cmd
        .output()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The first of `names` found on `PATH`.
pub fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// What is missing to build `lang` on this machine, with how to install
/// it; `None` when its toolchain is there. `dir` is where the sources are
/// (JavaScript tools may sit in a `node_modules` above it).
pub fn missing_toolchain(lang: Lang, dir: &Path) -> Option<String> {
    match lang {
        Lang::Rust => on_path(&["cargo"])
            .is_none()
            .then(|| "cargo not found: install Rust with rustup (https://rustup.rs)".into()),
        Lang::Python => on_path(&["componentize-py"]).is_none().then(|| {
            "componentize-py not found on PATH: install it with `pip install componentize-py==0.25.1`"
                .into()
        }),
        Lang::Js => componentize_js(dir).err().map(|e| e.to_string()),
        Lang::C => c_toolchain().err().map(|e| e.to_string()),
    }
}

// ---- Rust ---------------------------------------------------------------------

const RUST_TARGET: &str = "wasm32-wasip2";

/// Installs the wasm32-wasip2 target with rustup when it is missing.
pub fn ensure_rust_target() -> Result<()> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", RUST_TARGET])
        .output();
    let present = libdir
        .ok()
        .filter(|o| o.status.success())
        .map(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).exists())
        .unwrap_or(false);
    if !present {
        let mut cmd = Command::new("rustup");
        cmd.args(["target", "add", RUST_TARGET]);
        run_tool(
            cmd,
            "installing the wasm32-wasip2 target (`rustup target add wasm32-wasip2`)",
        )?;
    }
    Ok(())
}

fn rust(dir: &Path, out: &Path) -> Result<()> {
    ensure_rust_target()?;
    let manifest = dir.join("Cargo.toml").canonicalize()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", RUST_TARGET])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build of {} failed (see above)", manifest.display());
    }
    // The component is the artifact of the package whose manifest this is.
    let mut found = None;
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || msg["manifest_path"].as_str().map(Path::new) != Some(manifest.as_path())
        {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    let Some(wasm) = found else {
        bail!(
            "cargo built {} but produced no .wasm file: is it a `cdylib` crate using eddy-sdk?",
            manifest.display()
        );
    };
    std::fs::copy(&wasm, out)
        .with_context(|| format!("copying {} to {}", wasm.display(), out.display()))?;
    Ok(())
}

// ---- Python -------------------------------------------------------------------

fn python(dir: &Path, world: &str, out: &Path) -> Result<()> {
    let tool = on_path(&["componentize-py"]).context(
        "componentize-py not found on PATH: install it with `pip install componentize-py==0.25.1`",
    )?;
    let module = if dir.join("app.py").is_file() {
        "app".to_string()
    } else {
        match &files(dir, "py")?[..] {
            [one] => one.file_stem().unwrap().to_string_lossy().into_owned(),
            _ => bail!(
                "{}: several .py files and no app.py: name the operator's module app.py",
                dir.display()
            ),
        }
    };
    let tmp = scratch(Some(("eddy.py", PYTHON_SDK)))?;
    let mut cmd = Command::new(tool);
    // No __pycache__ left in the user's source directory.
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.arg("-d")
        .arg(tmp.path().join("wit"))
        .args(["-w", world, "componentize", "--stub-wasi"])
        .arg("-p")
        .arg(dir)
        .arg("-p")
        .arg(tmp.path().join("sdk"))
        .arg(&module)
        .arg("-o")
        .arg(out);
    run_tool(cmd, "componentize-py")
}

// ---- JavaScript -----------------------------------------------------------------

/// The `componentize-js` program: in a `node_modules/.bin` at or above
/// `dir`, or on `PATH`.
fn componentize_js(dir: &Path) -> Result<PathBuf> {
    let start = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for d in start.ancestors() {
        let p = d.join("node_modules/.bin/componentize-js");
        if p.is_file() {
            return Ok(p);
        }
    }
    on_path(&["componentize-js"]).with_context(|| {
        format!(
            "componentize-js not found (in node_modules/.bin at or above {}, or on PATH): install it with `npm install @bytecodealliance/componentize-js@0.23.0`",
            dir.display()
        )
    })
}

/// The JavaScript operator's main module in `dir`: `index.js`, else
/// `<dir name>.js`, else the directory's only `.js` file.
fn js_main(dir: &Path) -> Result<PathBuf> {
    let js = files(dir, "js")?;
    let name = dir
        .canonicalize()?
        .file_name()
        .map(|n| format!("{}.js", n.to_string_lossy()));
    for want in ["index.js".to_string()].into_iter().chain(name) {
        if let Some(p) = js
            .iter()
            .find(|p| p.file_name().is_some_and(|f| f == want.as_str()))
        {
            return Ok(p.clone());
        }
    }
    match &js[..] {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{}: several .js files and no index.js or <dir name>.js: which is the operator?",
            dir.display()
        ),
    }
}

fn js(dir: &Path, world: &str, out: &Path) -> Result<()> {
    let tool = componentize_js(dir)?;
    let main = js_main(dir)?;
    // componentize-js lets the engine read only files under its working
    // directory: lay out `<tmp>/eddy.js` (with `eddy-window.js` and
    // `eddy-json.js`) and the operator's files in `<tmp>/op/`, so `import
    // ... from '../eddy.js'` (how the operators in plugins/js import the
    // SDK) resolves.
    let tmp = scratch(None)?;
    for (name, text) in JS_SDK_FILES {
        std::fs::write(tmp.path().join(name), text)?;
    }
    let op = tmp.path().join("op");
    std::fs::create_dir(&op)?;
    for f in files(dir, "js")?.into_iter().chain(files(dir, "mjs")?) {
        std::fs::copy(&f, op.join(f.file_name().unwrap()))
            .with_context(|| format!("copying {}", f.display()))?;
    }
    let main = Path::new("op").join(main.file_name().unwrap());
    // The world's `handle-batch` and `on-timer` are eddy.js's `handleBatch`
    // and `onTimer`, which run the handlers the operator module gave
    // `operator()`: an entry module re-exports the module and those, so the
    // operator's source stays as it is (an explicit export wins over the
    // same name from `export *`).
    let wit_dir = tmp.path().join("wit");
    let sdk_exports: Vec<&str> = [("handle-batch", "handleBatch"), ("on-timer", "onTimer")]
        .into_iter()
        .filter_map(|(wit, js)| match world_exports(&wit_dir, world, wit) {
            Ok(true) => Some(Ok(js)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    let entry = if sdk_exports.is_empty() {
        main
    } else {
        std::fs::write(
            tmp.path().join("main.js"),
            format!(
                "export * from './op/{}';\nexport {{ {} }} from './eddy.js';\n",
                main.file_name().unwrap().to_string_lossy(),
                sdk_exports.join(", ")
            ),
        )?;
        PathBuf::from("main.js")
    };
    let mut cmd = Command::new(tool);
    cmd.current_dir(tmp.path())
        .arg(entry)
        .args(["--wit", "wit", "--world-name", world])
        .args([
            "--disable",
            "stdio",
            "random",
            "clocks",
            "http",
            "fetch-event",
        ])
        .arg("--out")
        .arg(out);
    run_tool(cmd, "componentize-js")
}

// ---- C --------------------------------------------------------------------------

fn c_toolchain() -> Result<()> {
    build_c::find_clang()?;
    build_c::wasi_sysroot()?;
    Ok(())
}

fn c(dir: &Path, world: &str, out: &Path) -> Result<()> {
    let sources = files(dir, "c")?;
    let tmp = scratch(Some(("eddy.h", C_SDK)))?;
    build_c::build_c(
        &sources,
        &[dir.to_path_buf(), tmp.path().join("sdk")],
        &tmp.path().join("wit"),
        world,
        out,
    )
}
