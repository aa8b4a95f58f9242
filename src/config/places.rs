//! Where a key of `castra.toml` sits, for errors found after loading (a
//! missing kernel, a port another program holds): [`Places`] parses the
//! config text again with toml's spanned parser and maps a key path of one
//! VM (`image.kernel`, `forwards.1`, `shares.0.host`) or of the top level
//! (`broker.port`) to its span, then builds the same rustc-style
//! [`Diagnostic`] the loader prints, so every error about castra.toml names
//! its file and line.
//!
//! It reads nothing but the text it is given; deciding what is wrong is the
//! caller's job.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostic, Problem, render};

/// The config text and the path messages name it by.
#[derive(Debug, Clone)]
pub struct Places {
    shown: PathBuf,
    text: String,
}

/// A key of the config: of one VM instance (replicas map to their entry) or
/// of the top level. Segments are table keys or array indices (`"1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Vm(&'a str, &'a [&'a str]),
    Top(&'a [&'a str]),
}

impl Places {
    /// Read `path` (an unreadable file gives places that locate nothing).
    /// Messages name it relative to the current directory when it is below it.
    pub fn read(path: &Path) -> Places {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let shown = std::env::current_dir()
            .ok()
            .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| path.to_path_buf());
        Places { shown, text }
    }

    /// Places over text already in memory (tests, `load_str` callers).
    pub fn from_text(shown: &Path, text: &str) -> Places {
        Places {
            shown: shown.to_path_buf(),
            text: text.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The span of a key's value, if the file has that key.
    pub fn span(&self, key: Key<'_>) -> Option<Range<usize>> {
        let doc = DeTable::parse(&self.text).ok()?;
        let root = doc.get_ref();
        match key {
            Key::Top(path) => walk_table(root, path),
            Key::Vm(vm, path) => walk_table(vm_entry(root, vm)?, path),
        }
    }

    /// The span of the first of `keys` the file has; else the `name` of the
    /// first VM key's entry (so an error still points at the right VM).
    pub fn first_span(&self, keys: &[Key<'_>]) -> Option<Range<usize>> {
        keys.iter().find_map(|k| self.span(*k)).or_else(|| {
            keys.iter().find_map(|k| match k {
                Key::Vm(vm, _) => self.span(Key::Vm(vm, &["name"])),
                Key::Top(_) => None,
            })
        })
    }

    /// 1-based line of a key (or of its VM's name), for notes (`set on line 4`).
    pub fn line(&self, key: Key<'_>) -> Option<usize> {
        self.first_span(&[key])
            .map(|s| super::diagnostic::locate(&self.text, s).line)
    }

    /// A located diagnostic for a problem with the first of `keys` present.
    pub fn diagnostic(
        &self,
        keys: &[Key<'_>],
        message: String,
        help: String,
        notes: Vec<String>,
    ) -> Diagnostic {
        Problem {
            message,
            span: self.first_span(keys),
            help: Some(help),
            notes,
        }
        .locate(&self.text)
    }

    /// Render diagnostics as the loader does (`error: ...`, `--> file:line:col`).
    pub fn render(&self, diagnostics: &[Diagnostic]) -> String {
        render(&self.shown, diagnostics)
    }
}

/// The `[[vms]]` entry a VM instance comes from: its own name, or
/// `NAME-<n>` of an entry with `count`.
fn vm_entry<'a>(root: &'a DeTable<'a>, vm: &str) -> Option<&'a DeTable<'a>> {
    let entries = root.get("vms")?.get_ref().as_array()?;
    let tables = entries.iter().filter_map(|e| e.get_ref().as_table());
    let mut replica_of = None;
    for t in tables {
        let Some(name) = t.get("name").and_then(|n| n.get_ref().as_str()) else {
            continue;
        };
        if name == vm {
            return Some(t);
        }
        let numbered = vm
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && t.contains_key("count") {
            replica_of = Some(t);
        }
    }
    replica_of
}

fn walk_table(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    walk(table.get(*first)?, rest)
}

fn walk(value: &Spanned<DeValue<'_>>, path: &[&str]) -> Option<Range<usize>> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value.span());
    };
    match value.get_ref() {
        DeValue::Table(t) => walk(t.get(*first)?, rest),
        DeValue::Array(a) => walk(a.get(first.parse::<usize>().ok()?)?, rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[project]
name = "p"

[[vms]]
name = "web"
count = 2
forwards = ["8080:80", "9090:90"]

[[vms]]
name = "db"
shares = [{ host = "data", guest = "/data" }]

[vms.image]
kernel = "vmlinux"

[broker]
port = 7750
"#;

    fn line(key: Key<'_>) -> Option<usize> {
        Places::from_text(Path::new("castra.toml"), TEXT).line(key)
    }

    #[test]
    fn finds_vm_keys_replicas_and_top_keys() {
        assert_eq!(line(Key::Vm("web-2", &["forwards", "1"])), Some(7));
        assert_eq!(line(Key::Vm("web", &["count"])), Some(6));
        assert_eq!(line(Key::Vm("db", &["image", "kernel"])), Some(14));
        assert_eq!(line(Key::Vm("db", &["shares", "0", "host"])), Some(11));
        assert_eq!(line(Key::Top(&["broker", "port"])), Some(17));
        // Absent keys of a VM point at its name; unknown VMs at nothing.
        assert_eq!(line(Key::Vm("db", &["image", "initrd"])), Some(10));
        assert_eq!(line(Key::Vm("nope", &["cpus"])), None);
        let p = Places::from_text(Path::new("castra.toml"), TEXT);
        assert_eq!(p.span(Key::Vm("db", &["image", "initrd"])), None);
        let first = p.first_span(&[Key::Vm("db", &["bootstrap"]), Key::Top(&["broker", "port"])]);
        assert_eq!(first, p.span(Key::Top(&["broker", "port"])));
        // "web-2" without count on "web" is not a replica of it.
        assert_eq!(line(Key::Vm("db-1", &["cpus"])), None);
    }

    #[test]
    fn renders_like_the_loader() {
        let p = Places::from_text(Path::new("castra.toml"), TEXT);
        let d = p.diagnostic(
            &[Key::Vm("db", &["image", "kernel"])],
            "vm \"db\": image.kernel vmlinux does not exist".into(),
            "fix the path".into(),
            vec![],
        );
        insta::assert_snapshot!(p.render(&[d]), @r#"
        error: vm "db": image.kernel vmlinux does not exist
           --> castra.toml:14:10
           |
        14 | kernel = "vmlinux"
           |          ^^^^^^^^^
           = help: fix the path
        "#);
    }
}
