//! `eddy inspect COMPONENT`: what a file is, what it imports and exports,
//! which contract it targets, and whether this eddy can load it (and if
//! not, why), without running it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sha2::Digest as _;

/// Show what a component is: the contract version and world it targets,
/// its imports and exports, its size and SHA-256 (the version id `eddy
/// status` shows), and whether this eddy can load it, and if not, why.
#[derive(Args)]
pub struct InspectArgs {
    /// The component file (`.wasm`).
    component: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What `eddy inspect` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The file inspected.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of its bytes, 64 hex digits: the version id.
    pub sha256: String,
    /// `component`, `core module` or `not WebAssembly`.
    pub kind: &'static str,
    /// The Eddy contract its imports name (`eddy:operator@X.Y.Z`), if any.
    pub contract: Option<String>,
    /// The WIT world its exports match (`operator`, `batched-operator`,
    /// `migrating-operator`, `timer-operator`, `batched-timer-operator`,
    /// `full-operator`), or a description of another world.
    pub world: String,
    /// Top-level imports of the component, by name.
    pub imports: Vec<String>,
    /// Top-level exports of the component, by name.
    pub exports: Vec<String>,
    /// Whether this eddy loads it as an operator.
    pub loads: bool,
    /// Why not, or what it runs as.
    pub verdict: String,
}

/// Runs `eddy inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let report = inspect(&a.component)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    // The exit code says whether it loads, so scripts can check.
    if !report.loads {
        std::process::exit(1);
    }
    Ok(())
}

/// Inspects the file at `path`.
pub fn inspect(path: &Path) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = hex(&sha2::Sha256::digest(&bytes));
    let kind = match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => "core module",
        Some([0, b'a', b's', b'm', ..]) => "component",
        _ => "not WebAssembly",
    };
    let (imports, exports, parse_error) = match kind {
        "component" => match names(&bytes) {
            Ok((i, e)) => (i, e, None),
            Err(e) => (Vec::new(), Vec::new(), Some(format!("{e:#}"))),
        },
        _ => (Vec::new(), Vec::new(), None),
    };
    let contract = imports.iter().chain(&exports).find_map(|n| {
        let rest = n.strip_prefix("eddy:operator/")?;
        let (_, version) = rest.split_once('@')?;
        Some(format!("eddy:operator@{version}"))
    });
    let exports_ = |name: &str| exports.iter().any(|e| e == name);
    let window = exports_("add") && exports_("finish") && !exports_("handle");
    let world = match (kind, &contract) {
        ("component", Some(_)) if window => "window-operator".to_string(),
        ("component", Some(_)) => match (
            exports_("handle-batch"),
            exports_("migrate"),
            exports_("on-timer"),
        ) {
            (true, true, true) => "full-operator",
            (false, true, false) => "migrating-operator",
            (true, _, true) => "batched-timer-operator",
            (false, _, true) => "timer-operator",
            (true, _, false) => "batched-operator",
            (false, _, false) => "operator",
        }
        .to_string(),
        ("component", None) if exports.iter().any(|e| e.starts_with("wasi:cli/run@")) => {
            "a WASI command (wasi:cli/command), not an Eddy operator".to_string()
        }
        ("component", None) => {
            "not an Eddy operator (it imports no eddy:operator interface)".into()
        }
        _ => "-".into(),
    };
    let engine = eddy_runtime::engine().context("starting the WebAssembly engine")?;
    let (loads, verdict) = match (
        parse_error,
        eddy_runtime::WasmComponent::load(&engine, path),
    ) {
        (Some(e), _) => (false, format!("not a valid component: {e}")),
        (None, Err(_)) if window => match eddy_runtime::WasmWindow::load(&engine, path, "-", "eddy inspect") {
            Ok(_) => (
                true,
                format!(
                    "loads as a window aggregate of {} (declare its operator a window in the pipeline file: window = {{ kind = ... }})",
                    eddy_runtime::CONTRACT
                ),
            ),
            Err(e) => (false, e.to_string()),
        },
        (None, Ok(c)) => (
            true,
            format!(
                "loads as an operator of {} ({}{}{})",
                eddy_runtime::CONTRACT,
                match c.batched() {
                    true => "batched path",
                    false => "per event",
                },
                match c.migrates() {
                    true => ", exports migrate",
                    false => "",
                },
                match c.handles_timers() {
                    true => ", handles timers",
                    false => "",
                }
            ),
        ),
        (None, Err(e)) => (false, e.to_string()),
    };
    Ok(Report {
        path: path.display().to_string(),
        bytes: bytes.len() as u64,
        sha256,
        kind,
        contract,
        world,
        imports,
        exports,
        loads,
        verdict,
    })
}

/// The report as text.
pub fn text(r: &Report) -> String {
    let list = |v: &[String]| match v.is_empty() {
        true => "  (none)\n".to_string(),
        false => v.iter().map(|n| format!("  {n}\n")).collect(),
    };
    format!(
        "{}\n  kind      {}\n  size      {} bytes\n  sha256    {}\n  contract  {}\n  world     {}\nimports:\n{}exports:\n{}loads: {}\n  {}\n",
        r.path,
        r.kind,
        r.bytes,
        r.sha256,
        r.contract.as_deref().unwrap_or("-"),
        r.world,
        list(&r.imports),
        list(&r.exports),
        if r.loads { "yes" } else { "no" },
        r.verdict
    )
}

/// The top-level import and export names of a component.
fn names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>)> {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    // Nested modules and components have their own imports and exports:
    // only the outermost ones are the component's.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.context("parsing the component")? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(s) if depth == 0 => {
                for i in s {
                    let i = i.context("reading an import")?;
                    imports.push(named(i.name.full_name().into_owned(), &i.ty));
                }
            }
            Payload::ComponentExportSection(s) if depth == 0 => {
                for e in s {
                    let e = e.context("reading an export")?;
                    exports.push(match e.kind {
                        wasmparser::ComponentExternalKind::Type => {
                            format!("{} (type)", e.name.full_name())
                        }
                        _ => e.name.full_name().into_owned(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// An import's name, marked when it is a type rather than an interface or
/// a function.
fn named(name: String, ty: &wasmparser::ComponentTypeRef) -> String {
    match ty {
        wasmparser::ComponentTypeRef::Type(_) => format!("{name} (type)"),
        _ => name,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
