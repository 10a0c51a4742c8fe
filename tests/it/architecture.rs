//! The dependency direction between the crate's top-level modules (docs/architecture.md).
//!
//! Reads `src/`, collects every `crate::<module>` a module's non-test code names, and checks
//! that no module names one of a higher layer and that the folders form no cycle. Loops inside
//! one folder are fine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may name modules of its own layer (as long as no cycle
/// forms) and of the layers below.
const LAYERS: &[&[&str]] = &[
    &["spec", "body"],
    &["error", "router", "store", "openapi"],
    &["tls", "telemetry"],
    &["upstream"],
    &["proxy"],
    &["policy"],
    &["config"],
    &["runtime"],
    &["pipeline"],
    &["server", "admin"],
    &["explain", "demo"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| {
            panic!("module `{module}` is in no layer: add it to LAYERS and to docs/architecture.md")
        })
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules named by `code` as `crate::<name>` (comments and test modules left out).
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // A file's test module is its last item (clippy's `items_after_test_module`, denied in CI),
    // so cutting at it leaves all of the file's non-test code.
    let code = code.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            // `crate::{a::b, c}` names several.
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                group
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or("").trim())
                    .collect()
            } else {
                vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")]
            };
            for name in names {
                if modules.contains(name) {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else {
            continue;
        };
        let code = std::fs::read_to_string(file).expect("read file");
        let entry = edges.entry(from.clone()).or_default();
        for to in named_modules(&code, &modules) {
            if to != from {
                entry.insert(to);
            }
        }
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_names_a_module_of_a_higher_layer() {
    let edges = graph();
    let mut upward = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if layer_of(to) > layer_of(from) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "these modules name a module of a higher layer (see docs/architecture.md):\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_folders_form_no_cycle() {
    if let Some(cycle) = find_cycle(&graph()) {
        panic!("import cycle between folders: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_reader_sees_real_imports() {
    let modules: BTreeSet<String> = ["config", "policy", "spec"]
        .into_iter()
        .map(String::from)
        .collect();
    let code = "use crate::{config::Plan, spec};\n// crate::policy in a comment\nlet x = crate::policy::f();\n#[cfg(test)]\nmod tests { use crate::config; }";
    let named = named_modules(code, &modules);
    assert_eq!(
        named,
        ["config", "policy", "spec"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let only_comment = "// crate::policy\n";
    assert!(named_modules(only_comment, &modules).is_empty());
}
