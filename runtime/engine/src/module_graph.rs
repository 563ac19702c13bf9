//! The engine's module graph has no cycles: a type two modules share lives
//! below both. This test reads the crate's sources, builds the graph of
//! top-level modules from their `crate::…` paths (an item re-exported by
//! `lib.rs` counts as the module it comes from), fails naming a cycle if
//! there is one, and prints the modules in dependency order (run it with
//! `--nocapture` to see the listing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without its comment lines (doc links are not uses).
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

/// The first identifiers of the paths after each `crate::` in `line`
/// (`crate::a::b` gives `a`; `crate::{a, b::{c, d}}` gives `a` and `b`).
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        // `pub(crate)` and friends are not paths.
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            found.push(ident(&item));
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// `module -> modules it uses`, for the crate at `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let module_of = |path: &Path| -> String {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "module_graph")
        .collect();
    // What lib.rs re-exports: `pub use module::{names}`.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut exported = BTreeMap::new();
    let lib_code: Vec<&str> = code(&lib).collect();
    let lib_code = lib_code.join("\n");
    for stmt in lib_code.split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_start_matches("crate::");
        let module = ident(rest);
        let names = rest[module.len()..].trim_start_matches("::");
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.split("::").last().unwrap_or("");
            exported.insert(ident(name), module.clone());
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let from = module_of(file);
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for line in code(&text) {
            for name in crate_paths(line) {
                let to = if modules.contains(&name) {
                    Some(name)
                } else {
                    exported.get(&name).cloned()
                };
                if let Some(to) = to.filter(|to| *to != from) {
                    g.get_mut(&from).unwrap().insert(to);
                }
            }
        }
    }
    g
}

/// A cycle of `g`, as the modules along it, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for d in &g[m] {
            match marks[d] {
                Mark::Open => {
                    let at = path.iter().position(|p| p == d).unwrap();
                    let mut c = path[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = g.keys().map(|k| (k.clone(), Mark::New)).collect();
    for m in g.keys() {
        if marks[m] == Mark::New {
            if let Some(c) = visit(m, g, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The modules of an acyclic `g`, each after everything it uses.
fn layers(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<(usize, String)> {
    fn depth(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        memo: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(&d) = memo.get(m) {
            return d;
        }
        let d = g[m]
            .iter()
            .map(|d| depth(d, g, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(m.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<(usize, String)> = g
        .keys()
        .map(|m| (depth(m, g, &mut memo), m.clone()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    if let Some(c) = cycle(&g) {
        panic!(
            "the engine's modules import each other in a circle: {}; move the type they share to a module below both",
            c.join(" -> ")
        );
    }
    println!("module dependencies (each module after what it uses):");
    for (depth, m) in layers(&g) {
        let deps: Vec<&str> = g[&m].iter().map(String::as_str).collect();
        println!("  [{depth}] {m:<12} -> {}", deps.join(", "));
    }
}

#[test]
fn the_graph_reader_finds_paths_groups_and_cycles() {
    assert_eq!(crate_paths("use crate::a::b;"), ["a"]);
    assert_eq!(
        crate_paths("use crate::{a, b::{c, d}, e::f};"),
        ["a", "b", "e"]
    );
    assert_eq!(crate_paths("pub(crate) fn f(x: crate::x::Y) {}"), ["x"]);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    let mut g = g;
    g.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&g), None);
    let order: Vec<String> = layers(&g).into_iter().map(|(_, m)| m).collect();
    assert_eq!(order, ["c", "d", "b", "a"]);
}
