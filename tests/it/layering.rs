//! The crate's imports flow one way: no module of `src/` reaches, through `use` lines or
//! `crate::`/`super::` paths, a module that reaches it back. Read from the source text, so a
//! new cycle fails the suite the moment it is written, with the cycle named.
//!
//! Nodes are files (`src/registry/remote.rs` is `registry::remote`); a reference to
//! `crate::a::b::Item` is an edge to the longest module path that exists (`a::b`, else `a`).
//! Unit-test files (`tests.rs`, `#[cfg(test)] mod tests { ... }` blocks) are left out: tests
//! reach into the module they test. `mod x;` declarations are not edges; uses are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/registry/remote.rs` -> `registry::remote`; `src/proxy/mod.rs` -> `proxy`;
/// `src/lib.rs` and `src/main.rs` -> `` (the root, which may use anything).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The source without `#[cfg(test)]`-gated inline modules and without comments.
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the gated item: a `mod x;` line, or a block up to its matching brace.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                depth += next.matches('{').count() as i32 - next.matches('}').count() as i32;
                opened |= next.contains('{');
                if (opened && depth <= 0) || (!opened && next.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every module path a file refers to: `use` trees expanded, and inline `crate::`/`super::`
/// paths. Paths are absolute (`a::b::Item`) after resolving `super` against `module`.
fn references(module: &str, text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements, with brace groups expanded.
    for stmt in text.split(';') {
        let Some(at) = stmt.find("use ") else {
            continue;
        };
        // Only a statement that starts with `use` (or `pub use`, `pub(crate) use`).
        let lead = stmt[..at]
            .rsplit(['\n', '{', '}'])
            .next()
            .unwrap_or("")
            .trim();
        if !matches!(lead, "" | "pub" | "pub(crate)" | "pub(super)") {
            continue;
        }
        let tree: String = stmt[at + 4..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        expand(&tree, "", &mut paths);
    }
    // Inline paths such as `crate::probe::Served` in an expression or a type.
    for start in ["crate::", "super::"] {
        let mut rest = text;
        while let Some(i) = rest.find(start) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            paths.push(tail[..end].trim_end_matches(':').to_string());
            rest = &tail[end..];
        }
    }
    paths
        .into_iter()
        .filter_map(|p| resolve(module, &p))
        .collect()
}

fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => out.push(format!("{prefix}{tree}")),
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut from = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[from..i], &format!("{prefix}{head}"), out);
                        from = i + 1;
                    }
                    _ => {}
                }
            }
            if from < inner.len() {
                expand(&inner[from..], &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// `crate::a::b` -> `a::b`; `super::x` from `a::b` -> `a::x`; anything else (std, other
/// crates, `self::`) -> None.
fn resolve(module: &str, path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    match segments.first() {
        Some(&"crate") => {
            base.clear();
            segments.remove(0);
        }
        Some(&"super") => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop()?;
            }
        }
        _ => return None,
    }
    base.extend(segments);
    Some(base.join("::"))
}

/// The import graph of `src/`: files as nodes, or (with `top`) top-level modules.
fn import_graph(top: bool) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "tests.rs"));

    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from.is_empty() {
            continue; // lib.rs / main.rs: the root gathers everything.
        }
        let text = without_tests_and_comments(&std::fs::read_to_string(file).unwrap());
        for target in references(&from, &text) {
            // The longest existing module path the reference names.
            let mut parts: Vec<&str> = target.split("::").collect();
            let node = loop {
                let candidate = parts.join("::");
                if modules.contains(&candidate) || parts.is_empty() {
                    break candidate;
                }
                parts.pop();
            };
            let (from, node) = if top {
                let first = |m: &str| m.split("::").next().unwrap_or("").to_string();
                (first(&from), first(&node))
            } else {
                (from.clone(), node)
            };
            if !node.is_empty() && node != from {
                edges.entry(from).or_default().insert(node);
            }
        }
    }
    let modules = if top {
        modules
            .iter()
            .map(|m| m.split("::").next().unwrap_or("").to_string())
            .collect()
    } else {
        modules
    };
    (modules, edges)
}

/// The cycles of a graph, one per back edge found by a depth-first search.
fn cycles(
    modules: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<String>> {
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    cycles.push(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in modules {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            visit(node, edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

#[test]
fn src_has_no_import_cycle() {
    let (modules, edges) = import_graph(false);
    let cycles = cycles(&modules, &edges);
    assert!(
        cycles.is_empty(),
        "import cycles in src/ (a -> b means a uses b):\n{}",
        cycles
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The same at the level of the crate's top modules: `upstream` may use `probe`'s types or
/// `probe` may use `upstream`'s, not both, even through submodules.
#[test]
fn top_level_modules_have_no_import_cycle() {
    let (modules, edges) = import_graph(true);
    let cycles = cycles(&modules, &edges);
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules of src/ (a -> b means a uses b):\n{}",
        cycles
            .iter()
            .map(|c| c.join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_cycle_finder_sees_a_cycle() {
    // The parser itself: a two-module cycle written the three ways the crate writes paths.
    let a = references(
        "a",
        "use crate::b::{Thing, other::More};\nfn f() { super::c::g() }",
    );
    assert!(a.contains(&"b::Thing".to_string()), "{a:?}");
    assert!(a.contains(&"b::other::More".to_string()), "{a:?}");
    let nested = references("x::y", "use super::z::W; fn f() -> crate::q::R { todo!() }");
    assert!(nested.contains(&"x::z::W".to_string()), "{nested:?}");
    assert!(nested.contains(&"q::R".to_string()), "{nested:?}");
    let stripped = without_tests_and_comments(
        "use a;\n#[cfg(test)]\nmod tests {\n use crate::z;\n}\n// crate::c\nuse b;\n",
    );
    assert!(
        !stripped.contains("crate::z") && !stripped.contains("crate::c"),
        "{stripped}"
    );
    assert!(stripped.contains("use b;"));
}
