//! Builds an Eddy operator written in C into a WebAssembly component.
//!
//! The steps, each named in the error when it fails:
//!
//! 1. **wit**: load the WIT package in `wit_dir` and select `world`;
//! 2. **bindings**: generate the C bindings for that world, named after
//!    `operator` whatever the world (`operator.h`, `operator.c` and
//!    `operator_component_type.o`, an object file carrying the component
//!    type) into a temporary directory;
//! 3. **clang**: compile and link the operator's sources with the bindings
//!    into a `wasm32-wasi` (WASI preview 1) *reactor* core module, with
//!    `EDDY_HANDLE_BATCH` defined when the world exports `handle-batch`
//!    and `EDDY_ON_TIMER` when it exports `on-timer` (eddy.h then
//!    implements them), and `EDDY_WINDOW` for a window aggregate (world
//!    `window-operator`, which exports `add`: eddy.h then has only the
//!    parts that world can use, and `EDDY_EXPORT_WINDOW`);
//! 4. **component**: turn the core module into a component, adapting its
//!    preview 1 imports to WASI preview 2 with the reactor adapter, and write
//!    it to `out`.
//!
//! Needs `clang` with the WebAssembly target and a WASI libc. On Debian and
//! Ubuntu: `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32`.
//! `WASI_SYSROOT` overrides where the WASI libc is looked for (for example a
//! wasi-sdk's `share/wasi-sysroot`); `CLANG` overrides the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// The apt packages that provide the C toolchain, for error messages.
const APT_HINT: &str = "install the C toolchain for WebAssembly, on Debian/Ubuntu: \
     `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32`";

/// Builds the C `sources` into the component `out`, against world `world` of
/// the WIT package in `wit_dir`.
///
/// `include_dirs` are passed to clang as `-I` (the generated bindings'
/// directory always is, so sources can `#include "operator.h"`). The sources
/// implement the world's exports as the generated header declares them.
/// Clang's warnings are printed to stderr; when it fails, the error carries
/// its stderr.
pub fn build_c(
    sources: &[PathBuf],
    include_dirs: &[PathBuf],
    wit_dir: &Path,
    world: &str,
    out: &Path,
) -> Result<()> {
    if sources.is_empty() {
        bail!("no C sources to build");
    }

    // 1. WIT.
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("wit: cannot load WIT from {}", wit_dir.display()))?;
    let world_id = resolve
        .select_world(&[pkg], Some(world))
        .with_context(|| format!("wit: no world `{world}` in {}", wit_dir.display()))?;
    let exports = |name: &str| {
        resolve.worlds[world_id]
            .exports
            .keys()
            .any(|k| matches!(k, wit_parser::WorldKey::Name(n) if n == name))
    };
    let batched = exports("handle-batch");
    let on_timer = exports("on-timer");
    let window = exports("add");
    share_anonymous_types(&mut resolve, world_id);

    // 2. Bindings.
    let tmp = tempfile::Builder::new()
        .prefix("eddy-build-c-")
        .tempdir()
        .context("bindings: cannot create a temporary directory")?;
    let gen_dir = tmp.path().join("bindings");
    std::fs::create_dir(&gen_dir).context("bindings: cannot create the bindings directory")?;
    let mut files = wit_bindgen_core::Files::default();
    // Whatever the world, the bindings are named after `operator`
    // (`operator.h`, `operator_string_t`, `exports_operator_handle`), so
    // eddy.h serves every world; it exports `handle-batch` and `on-timer`
    // when the world has them.
    wit_bindgen_c::Opts {
        rename_world: Some("operator".into()),
        ..Default::default()
    }
    .build()
    .generate(&mut resolve, world_id, &mut files)
    .context("bindings: cannot generate C bindings")?;
    let mut generated = Vec::new();
    for (name, bytes) in files.iter() {
        let path = gen_dir.join(name);
        std::fs::write(&path, bytes)
            .with_context(|| format!("bindings: cannot write {}", path.display()))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            generated.push(path);
        }
    }

    // 3. Compile and link with clang.
    let clang = find_clang()?;
    let module_path = tmp.path().join("module.wasm");
    let mut cmd = Command::new(&clang);
    // Debian's libc.a carries DWARF, which would triple the size; the `name`
    // section stays for readable backtraces.
    let flags = ["-mexec-model=reactor", "-O2", "-Wall", "-Wl,--strip-debug"];
    cmd.arg("--target=wasm32-wasi").args(flags);
    if batched {
        // eddy.h then exports `handle-batch` too.
        cmd.arg("-DEDDY_HANDLE_BATCH=1");
    }
    if on_timer {
        // eddy.h then exports `on-timer`, calling `eddy_on_timer`.
        cmd.arg("-DEDDY_ON_TIMER=1");
    }
    if window {
        // A window aggregate: eddy.h leaves out the keyed operator's parts
        // (state, emits, timers), whose imports this world lacks, and
        // offers EDDY_EXPORT_WINDOW.
        cmd.arg("-DEDDY_WINDOW=1");
    }
    if let Some(sysroot) = wasi_sysroot()? {
        cmd.arg(format!("--sysroot={}", sysroot.display()));
    }
    cmd.arg("-I").arg(&gen_dir);
    for dir in include_dirs {
        cmd.arg("-I").arg(dir);
    }
    cmd.args(sources)
        .args(&generated)
        .arg("-o")
        .arg(&module_path);
    let output = cmd
        .output()
        .with_context(|| format!("clang: cannot run {}", clang.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let hint = if stderr.contains("undefined symbol: exports_") && window {
            "\n(the world's exports are missing: with eddy.h, end one source file with \
             `EDDY_EXPORT_WINDOW(...)` (see eddy.h, \"window aggregates\"))"
        } else if stderr.contains("undefined symbol: exports_") {
            "\n(the world's exports are missing: with eddy.h, end one source file with \
             `EDDY_EXPORT_OPERATOR(my_init, my_handle)`)"
        } else {
            ""
        };
        bail!(
            "clang: compiling and linking failed ({}):\n{}{hint}",
            output.status,
            stderr.trim_end()
        );
    }
    if !stderr.trim().is_empty() {
        eprintln!("{}", stderr.trim_end());
    }

    // 4. Component.
    let module = std::fs::read(&module_path)
        .with_context(|| format!("clang: no module at {}", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("component: the module does not carry the component type")?
        .validate(true)
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("component: cannot use the WASI preview 1 reactor adapter")?
        .encode()
        .context("component: cannot encode the component")?;
    std::fs::write(out, component)
        .with_context(|| format!("component: cannot write {}", out.display()))?;
    Ok(())
}

/// Makes the world's functions share one type for equal anonymous types.
///
/// wit-bindgen-c names an anonymous type by its structure
/// (`operator_result_void_string_t`), so a world that includes another and
/// declares a function of its own with the same anonymous type (`on-timer`
/// of `timer-operator` returns the `result<_, string>` that `init` and
/// `handle` of the included `operator` do, but as a type of its own) would
/// get that C type defined twice. Pointing every world-level function at
/// the first of equal anonymous types changes nothing else: the types are
/// the same structure.
fn share_anonymous_types(resolve: &mut wit_parser::Resolve, world: wit_parser::WorldId) {
    use wit_parser::{Type, WorldItem};
    let types = &resolve.types;
    let world = &mut resolve.worlds[world];
    let mut seen: Vec<wit_parser::TypeId> = Vec::new();
    for item in world.imports.values_mut().chain(world.exports.values_mut()) {
        let WorldItem::Function(f) = item else {
            continue;
        };
        let params = f.params.iter_mut().map(|p| &mut p.ty);
        for ty in params.chain(f.result.iter_mut()) {
            let Type::Id(id) = *ty else { continue };
            if types[id].name.is_some() {
                continue;
            }
            match seen.iter().find(|&&s| types[s].kind == types[id].kind) {
                Some(&first) => *ty = Type::Id(first),
                None => seen.push(id),
            }
        }
    }
}

/// Finds clang: `$CLANG`, else `clang`, else `clang-19` down to `clang-14`
/// on `PATH`.
pub(crate) fn find_clang() -> Result<PathBuf> {
    if let Some(c) = std::env::var_os("CLANG").filter(|c| !c.is_empty()) {
        return Ok(PathBuf::from(c));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let names =
        std::iter::once("clang".to_string()).chain((14..=19).rev().map(|v| format!("clang-{v}")));
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(anyhow!(
        "clang: no `clang` (or `clang-14` .. `clang-19`) on PATH; {APT_HINT}"
    ))
}

/// The `--sysroot` to pass, if any: `$WASI_SYSROOT`; none when the WASI libc
/// is installed where Debian's clang finds it by itself
/// (`/usr/lib/wasm32-wasi`); else a wasi-sdk style sysroot.
pub(crate) fn wasi_sysroot() -> Result<Option<PathBuf>> {
    if let Some(dir) = std::env::var_os("WASI_SYSROOT").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!("clang: WASI_SYSROOT={} is not a directory", dir.display());
        }
        return Ok(Some(dir));
    }
    if Path::new("/usr/lib/wasm32-wasi/libc.a").is_file() {
        return Ok(None);
    }
    for dir in [
        "/usr/share/wasi-sysroot",
        "/opt/wasi-sdk/share/wasi-sysroot",
    ] {
        if Path::new(dir).join("lib/wasm32-wasi/libc.a").is_file() {
            return Ok(Some(PathBuf::from(dir)));
        }
    }
    bail!("clang: no WASI libc found (set WASI_SYSROOT to a wasi sysroot); {APT_HINT}")
}
