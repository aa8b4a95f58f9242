//! The source tree as the tidy rules see it: every `.rs` file with its module path, its
//! code with comments and literals blanked, and which of it is test code (a file that is
//! only a `#[cfg(test)]` module, or the `#[cfg(test)] mod tests` at a file's end).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::lexer::{code_only, is_ident};

pub struct File {
    /// Relative to the repository root, with `/` separators: `src/broker/session.rs`.
    pub path: String,
    /// `["broker", "session"]`; empty for `src/lib.rs`. None outside the library.
    pub module: Option<Vec<String>>,
    pub text: String,
    pub code: String,
    /// Byte offset where test code starts (the whole file when it is a test module).
    pub test_from: usize,
    /// Child modules this file declares (`mod name;` or `mod name {`).
    pub children: BTreeSet<String>,
}

impl File {
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
    pub fn lines(&self) -> usize {
        self.text.lines().count()
    }
    pub fn is_test_file(&self) -> bool {
        self.test_from == 0
    }
}

pub struct Tree {
    pub files: Vec<File>,
    /// Module path -> index in `files`.
    pub by_module: BTreeMap<Vec<String>, usize>,
}

impl Tree {
    pub fn load(root: &Path) -> Tree {
        let mut paths = Vec::new();
        for dir in ["src", "tests", "benches"] {
            walk(&root.join(dir), &mut paths);
        }
        paths.sort();
        let mut files: Vec<File> = paths
            .iter()
            .map(|p| {
                let text =
                    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                let code = code_only(&text);
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                // Everything under tests/ is test code; elsewhere, a trailing test module.
                let test_from = if rel.starts_with("tests/") {
                    0
                } else {
                    trailing_test_module(&code).unwrap_or(text.len())
                };
                let children = declared_children(&code);
                File {
                    module: module_of(&rel),
                    path: rel,
                    text,
                    code,
                    test_from,
                    children,
                }
            })
            .collect();
        let by_module: BTreeMap<Vec<String>, usize> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.module.clone().map(|m| (m, i)))
            .collect();
        // Files declared as `#[cfg(test)] mod x;` (and everything under them) are test code.
        let mut test_modules: Vec<Vec<String>> = Vec::new();
        let mut test_paths: Vec<String> = Vec::new();
        for f in &files {
            let Some(m) = &f.module else { continue };
            for decl in test_children(f) {
                match decl {
                    TestDecl::Module(name) => test_modules.push(child_path(m, &name)),
                    TestDecl::Path(p) => test_paths.push(p),
                }
            }
        }
        for f in &mut files {
            let Some(m) = &f.module else { continue };
            if test_modules.iter().any(|t| m.starts_with(t)) || test_paths.contains(&f.path) {
                f.test_from = 0;
            }
        }
        Tree { files, by_module }
    }
}

fn child_path(parent: &[String], child: &str) -> Vec<String> {
    let mut p = parent.to_vec();
    p.push(child.to_owned());
    p
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `[a, b]`, `src/a/mod.rs` -> `[a]`, `src/lib.rs` -> `[]`; binaries and
/// files outside `src/` have none.
fn module_of(rel: &str) -> Option<Vec<String>> {
    let inner = rel.strip_prefix("src/")?.strip_suffix(".rs")?;
    if inner == "main" || inner.starts_with("bin/") {
        return None;
    }
    if inner == "lib" {
        return Some(Vec::new());
    }
    let mut segs: Vec<String> = inner.split('/').map(str::to_owned).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

/// Words of `code` with their byte offsets.
pub fn words(code: &str) -> Vec<(usize, &str)> {
    let b = code.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if is_ident(b[i]) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push((s, &code[s..i]));
        } else {
            i += 1;
        }
    }
    out
}

fn declared_children(code: &str) -> BTreeSet<String> {
    let w = words(code);
    w.windows(2)
        .filter(|p| p[0].1 == "mod")
        .map(|p| p[1].1.to_owned())
        .collect()
}

enum TestDecl {
    /// `#[cfg(test)] mod name;`: the child module `name`.
    Module(String),
    /// `#[cfg(test)] #[path = "x.rs"] mod name;`: that file (relative to the repository).
    Path(String),
}

/// The `mod x;` declarations of `file` that carry `#[cfg(test)]`.
fn test_children(file: &File) -> Vec<TestDecl> {
    let code = &file.code;
    let mut out = Vec::new();
    for (i, _) in code.match_indices("#[cfg(test)]") {
        let attrs_from = i + "#[cfg(test)]".len();
        let rest = skip_attributes(&code[attrs_from..]);
        let decl_at = code.len() - rest.len();
        let Some(decl) = rest.strip_prefix("mod ") else {
            continue;
        };
        let name: String = decl
            .bytes()
            .take_while(|&c| is_ident(c))
            .map(char::from)
            .collect();
        if !decl[name.len()..].trim_start().starts_with(';') {
            continue;
        }
        // The attribute's string is blanked in `code`; read it from the text.
        let attrs = &file.text[attrs_from..decl_at];
        let path = attrs
            .split_once("#[path")
            .and_then(|(_, a)| a.split('"').nth(1));
        out.push(match path {
            Some(p) => {
                let dir = file.path.rsplit_once('/').map_or("", |(d, _)| d);
                TestDecl::Path(format!("{dir}/{p}"))
            }
            None => TestDecl::Module(name),
        });
    }
    out
}

/// `pub mod x`, `pub(crate) mod x` -> `mod x`.
fn skip_visibility(s: &str) -> &str {
    let Some(rest) = s.strip_prefix("pub") else {
        return s;
    };
    let rest = match rest.trim_start().strip_prefix('(') {
        Some(r) => r.split_once(')').map_or("", |(_, after)| after),
        None => rest,
    };
    rest.trim_start()
}

fn skip_attributes(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        match s.strip_prefix("#[") {
            Some(r) => s = r.split_once(']').map_or("", |(_, after)| after),
            None => return skip_visibility(s),
        }
    }
}

/// Offset of an inline `#[cfg(test)] mod name {`: test code runs from there to the end.
fn trailing_test_module(code: &str) -> Option<usize> {
    code.match_indices("#[cfg(test)]")
        .map(|(i, _)| i)
        .find(|&i| {
            let rest = skip_attributes(&code[i + "#[cfg(test)]".len()..]);
            rest.strip_prefix("mod ").is_some_and(|d| {
                let name_len = d.bytes().take_while(|&c| is_ident(c)).count();
                d[name_len..].trim_start().starts_with('{')
            })
        })
}
