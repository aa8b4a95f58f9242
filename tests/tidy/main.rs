//! The tidy test: the architecture docs/ARCHITECTURE.md states, held by `cargo test`
//! (rust-analyzer's `tidy.rs` idea). It reads the source tree, no VMs, and fails naming
//! the file and line and how to fix it when a layer points up, files import each other in
//! a circle, a pure file does I/O, a header is missing, a file grows past the size limit,
//! unfinished code (the todo and unimplemented macros) or an ignored test is left in, or
//! a file is missing from the code map.

mod graph;
mod imports;
mod lexer;
mod rules;
mod tree;

use std::path::Path;

use rules::{IMPURE, Rules};
use tree::Tree;

/// Non-test files stay under this many lines; split by responsibility past it.
const MAX_LINES: usize = 600;

fn load() -> (Tree, Rules) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    (Tree::load(root), Rules::load(root))
}

fn fail(rule: &str, problems: Vec<String>, fix: &str) {
    assert!(
        problems.is_empty(),
        "tidy: {rule} ({} found)\n  {}\nfix: {fix}\n",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn layers_point_down() {
    let (tree, rules) = load();
    let mut problems = Vec::new();
    for e in graph::edges(&tree) {
        let (from, to) = (&tree.files[e.from], &tree.files[e.to]);
        let top = |f: &tree::File| {
            f.module
                .as_ref()
                .and_then(|m| m.first().cloned())
                .unwrap_or_default()
        };
        let (a, b) = (top(from), top(to));
        if a == b {
            continue;
        }
        let (Some(la), Some(lb)) = (rules.layer_of(&a), rules.layer_of(&b)) else {
            let missing = if rules.layer_of(&a).is_none() { &a } else { &b };
            problems.push(format!(
                "{}:{}: module `{missing}` is in no layer",
                from.path, e.line
            ));
            continue;
        };
        if la >= lb {
            let how = if la == lb {
                "a peer on the same layer"
            } else {
                "a layer above it"
            };
            problems.push(format!(
                "{}:{}: `{a}` uses `{}` in `{b}`, {how}",
                from.path, e.line, e.written
            ));
        }
    }
    fail(
        "imports that point up the layers (docs/ARCHITECTURE.md, ```tidy-layers)",
        problems,
        "move what both sides need down to the lower module (or a module below both), or return plain data to the caller",
    );
}

#[test]
fn no_import_circles() {
    let (tree, _) = load();
    let edges = graph::edges(&tree);
    let problems: Vec<String> = graph::circles(tree.files.len(), &edges)
        .into_iter()
        .map(|circle| {
            let names: Vec<&str> = circle
                .files
                .iter()
                .map(|&f| tree.files[f].path.as_str())
                .collect();
            let cycles: Vec<String> = circle
                .cycles
                .iter()
                .map(|cycle| {
                    let steps: Vec<String> = cycle
                        .iter()
                        .map(|e| {
                            format!("{}:{} uses {}", tree.files[e.from].path, e.line, e.written)
                        })
                        .collect();
                    steps.join(" -> ")
                })
                .collect();
            format!(
                "{} files in one circle: {}\n    {}",
                names.len(),
                names.join(", "),
                cycles.join("\n    ")
            )
        })
        .collect();
    fail(
        "files that import each other, directly or through a circle",
        problems,
        "move the shared constants/types down into a file both can use, or turn the call back into a channel or a returned value",
    );
}

#[test]
fn pure_files_do_no_io() {
    let (tree, rules) = load();
    let mut problems = Vec::new();
    for path in &rules.pure {
        let Some(file) = tree.files.iter().find(|f| &f.path == path) else {
            problems.push(format!(
                "{path}: listed as pure in docs/ARCHITECTURE.md but does not exist"
            ));
            continue;
        };
        for r in imports::refs(file) {
            let written = r.written();
            let hit = IMPURE.iter().find(|(p, _)| {
                written == *p || written.starts_with(&format!("{p}::")) || written.ends_with(p)
            });
            if let Some((p, what)) = hit {
                problems.push(format!(
                    "{}:{}: `{written}` ({what}: `{p}`)",
                    file.path,
                    file.line_of(r.offset)
                ));
            }
        }
    }
    fail(
        "pure files that reach the outside world (docs/ARCHITECTURE.md, ```tidy-pure)",
        problems,
        "pass the value in from the caller (a path's contents, a time, a socket's bytes) and keep the I/O in the caller",
    );
}

#[test]
fn every_file_has_a_header() {
    let (tree, _) = load();
    let problems: Vec<String> = tree
        .files
        .iter()
        .filter(|f| !f.text.trim_start().starts_with("//!"))
        .map(|f| format!("{}:1: no `//!` header", f.path))
        .collect();
    fail(
        "files without a `//!` header",
        problems,
        "start the file with `//!` lines saying what it is for",
    );
}

#[test]
fn files_stay_small() {
    let (tree, _) = load();
    let problems: Vec<String> = tree
        .files
        .iter()
        .filter(|f| !f.is_test_file() && f.lines() > MAX_LINES)
        .map(|f| {
            format!(
                "{}:{}: {} lines (limit {MAX_LINES})",
                f.path,
                MAX_LINES + 1,
                f.lines()
            )
        })
        .collect();
    fail(
        "non-test files past the size limit",
        problems,
        "split the file by responsibility into a folder of smaller modules (tests may move to a `*_tests.rs` file)",
    );
}

#[test]
fn nothing_is_left_unfinished() {
    let (tree, _) = load();
    let mut problems = Vec::new();
    for f in &tree.files {
        for needle in [
            concat!("todo", "!"),
            concat!("unimplemented", "!"),
            concat!("#[", "ignore"),
        ] {
            for (at, _) in f.code.match_indices(needle) {
                let word_start = at == 0 || !lexer::is_ident(f.code.as_bytes()[at - 1]);
                if word_start {
                    problems.push(format!("{}:{}: `{needle}`", f.path, f.line_of(at)));
                }
            }
        }
    }
    fail(
        "unfinished code or ignored tests",
        problems,
        "finish it, or delete it; a test that cannot run here fails or is compiled out by a documented feature",
    );
}

#[test]
fn every_file_is_on_the_map() {
    let (tree, _) = load();
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .unwrap();
    let named = |word: &str| {
        map.match_indices(word).any(|(at, _)| {
            let before = map[..at]
                .bytes()
                .next_back()
                .is_none_or(|b| !lexer::is_ident(b));
            let after = map[at + word.len()..]
                .bytes()
                .next()
                .is_none_or(|b| !lexer::is_ident(b));
            before && after
        })
    };
    let problems: Vec<String> = tree
        .files
        .iter()
        .filter_map(|f| {
            let path = Path::new(&f.path);
            let stem = path.file_stem()?.to_str()?;
            // A folder's root file is named by its folder.
            let word = match stem {
                "mod" | "main" | "lib" => path.parent()?.file_name()?.to_str()?,
                s => s,
            };
            (!named(word)).then(|| format!("{}:1: `{word}` is not in docs/ARCHITECTURE.md", f.path))
        })
        .collect();
    fail(
        "files the architecture map does not mention",
        problems,
        "add the file, with what it is for, to the code map in docs/ARCHITECTURE.md",
    );
}
