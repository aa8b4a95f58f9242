//! What a file refers to: every path in its `use` trees (groups expanded) and every
//! inline `a::b::c` path in its non-test code, and where an internal one lands: the file
//! of the longest module prefix (`crate::broker::wire::frame::Ack` -> `src/broker/frame.rs`).

use crate::tree::{File, Tree};

/// One path as written, with the byte offset it was written at.
pub struct Ref {
    pub offset: usize,
    pub segments: Vec<String>,
}

impl Ref {
    pub fn written(&self) -> String {
        self.segments.join("::")
    }
}

/// Every path `file` writes outside its test code.
pub fn refs(file: &File) -> Vec<Ref> {
    let code = &file.code[..file.test_from];
    let mut out = Vec::new();
    let mut in_use = vec![false; code.len()];
    let b = code.as_bytes();
    let mut i = 0;
    while let Some(p) = code[i..].find("use ") {
        let at = i + p;
        i = at + 4;
        let starts_item = at == 0 || {
            let before = code[..at].trim_end();
            before.is_empty()
                || before.ends_with([';', '{', '}', ']', ')'])
                || before.ends_with("pub")
        };
        if !starts_item || (at > 0 && crate::lexer::is_ident(b[at - 1])) {
            continue;
        }
        let Some(end) = code[at..].find(';').map(|e| at + e) else {
            break;
        };
        in_use[at..end].iter_mut().for_each(|x| *x = true);
        for segments in expand(&code[at + 4..end]) {
            out.push(Ref {
                offset: at,
                segments,
            });
        }
    }
    // Inline paths: maximal `ident::ident(::ident)*` runs outside use statements.
    let mut j = 0;
    while j < b.len() {
        if in_use[j]
            || !crate::lexer::is_ident(b[j])
            || (j > 0 && (crate::lexer::is_ident(b[j - 1]) || b[j - 1] == b':'))
        {
            j += 1;
            continue;
        }
        let start = j;
        let mut segments = Vec::new();
        loop {
            let s = j;
            while j < b.len() && crate::lexer::is_ident(b[j]) {
                j += 1;
            }
            segments.push(code[s..j].to_owned());
            if code[j..].starts_with("::")
                && b.get(j + 2).is_some_and(|&c| crate::lexer::is_ident(c))
            {
                j += 2;
            } else {
                break;
            }
        }
        // `pub(in crate::broker)` names a visibility, not a dependency.
        let visibility = code[..start]
            .trim_end()
            .strip_suffix("in")
            .is_some_and(|b| b.trim_end().ends_with('('));
        if segments.len() > 1 && !visibility {
            out.push(Ref {
                offset: start,
                segments,
            });
        }
    }
    out
}

/// `crate::a::{b::{self, C}, d as e, f::*}` -> `crate::a::b`, `crate::a::b::C`,
/// `crate::a::d`, `crate::a::f`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(tree);
    let mut pos = 0;
    let mut out = Vec::new();
    parse_tree(&tokens, &mut pos, &[], &mut out);
    out
}

fn tokenize(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let c = b[i];
        if crate::lexer::is_ident(c) {
            let st = i;
            while i < b.len() && crate::lexer::is_ident(b[i]) {
                i += 1;
            }
            out.push(s[st..i].to_owned());
        } else if s[i..].starts_with("::") {
            out.push("::".into());
            i += 2;
        } else {
            if matches!(c, b'{' | b'}' | b',' | b'*') {
                out.push((c as char).to_string());
            }
            i += 1;
        }
    }
    out
}

fn parse_tree(t: &[String], pos: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while let Some(tok) = t.get(*pos) {
        match tok.as_str() {
            "::" => *pos += 1,
            "{" => {
                *pos += 1;
                while t.get(*pos).is_some_and(|x| x != "}") {
                    parse_tree(t, pos, &path, out);
                    if t.get(*pos).is_some_and(|x| x == ",") {
                        *pos += 1;
                    }
                }
                *pos += 1;
                return;
            }
            "*" => {
                *pos += 1;
                break;
            }
            "as" => {
                *pos += 2;
                break;
            }
            "," | "}" => break,
            "self" if path.len() == prefix.len() && !prefix.is_empty() => *pos += 1,
            seg => {
                path.push(seg.to_owned());
                *pos += 1;
            }
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The absolute module path `r` names, if it is inside the crate.
pub fn absolute(file: &File, r: &Ref) -> Option<Vec<String>> {
    let module = file.module.as_ref()?;
    let s = &r.segments;
    match s[0].as_str() {
        "crate" => Some(s[1..].to_vec()),
        "self" => Some(
            module
                .iter()
                .cloned()
                .chain(s[1..].iter().cloned())
                .collect(),
        ),
        "super" => {
            let mut base = module.clone();
            let mut k = 0;
            while s.get(k).is_some_and(|x| x == "super") {
                base.pop()?;
                k += 1;
            }
            Some(base.into_iter().chain(s[k..].iter().cloned()).collect())
        }
        first if file.children.contains(first) => {
            Some(module.iter().chain(s.iter()).cloned().collect())
        }
        _ => None,
    }
}

/// The file an internal path lands in: the longest module prefix that is a file.
pub fn target(tree: &Tree, path: &[String]) -> Option<usize> {
    (0..=path.len())
        .rev()
        .find_map(|n| tree.by_module.get(&path[..n]).copied())
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn paths(tree: &str) -> Vec<String> {
        expand(tree).iter().map(|p| p.join("::")).collect()
    }

    #[test]
    fn use_trees_expand_to_every_path() {
        assert_eq!(
            paths("crate::a::{b::{self, C}, d as e, f::*}"),
            [
                "crate::a::b",
                "crate::a::b::C",
                "crate::a::d",
                "crate::a::f"
            ]
        );
        assert_eq!(paths("super::*"), ["super"]);
        assert_eq!(
            paths("std::{fs, io::{self, Read}}"),
            ["std::fs", "std::io", "std::io::Read"]
        );
    }
}
