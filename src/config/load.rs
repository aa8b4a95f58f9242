//! Loading `castra.toml`: read the file ([`load`]) or take its text
//! ([`load_str`]), parse it with toml's spanned parser, run the `schema`
//! pass, deserialize the `raw` types and `validate` them. Syntax, shape and
//! meaning errors all come back as one located [`ConfigError`].

use super::diagnostic::{ConfigError, Problem};
use super::model::Project;
use super::names::sanitize;
use super::raw::RawConfig;
use super::validate::{Origin, validate};
use super::{legacy, schema};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Reads and validates the config file at `path`. `Project` paths are made
/// absolute (against the current directory, without resolving symlinks);
/// messages name `path` as given.
pub fn load(path: &Path) -> Result<Project, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let absolute = std::path::absolute(path).map_err(read_err)?;
    load_text(&text, path, &absolute)
}

/// Validates config text as if read from `path`: `path` names the file in
/// messages, its parent directory is the root relative paths are resolved
/// against and whose name is the default project name. Pure: a relative
/// `path` gives relative `Project` paths (`castra.toml` -> root `.`, default
/// project name `castra`).
pub fn load_str(text: &str, path: &Path) -> Result<Project, ConfigError> {
    load_text(text, path, path)
}

fn load_text(text: &str, shown: &Path, real: &Path) -> Result<Project, ConfigError> {
    let root_dir = match real.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let default_name = root_dir
        .file_name()
        .map(|n| sanitize(&n.to_string_lossy()))
        .unwrap_or_else(|| "castra".to_string());
    let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
        path: shown.to_path_buf(),
        diagnostics: problems.into_iter().map(|p| p.locate(text)).collect(),
    };
    let from_toml = |e: toml::de::Error| toml_problem(text, &e);

    let table = toml::de::DeTable::parse(text).map_err(|e| invalid(vec![from_toml(e)]))?;
    let mut problems = schema::check(table.get_ref());
    // A config of the original castra: one error naming each old key's new
    // spelling, instead of one "unknown key" per old key.
    if let Some((old, spans)) = legacy::check(table.get_ref(), text) {
        problems.retain(|p| {
            !p.span
                .as_ref()
                .is_some_and(|s| spans.iter().any(|o| o.start == s.start))
        });
        problems.insert(0, old);
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(table))
        .map_err(|e| invalid(vec![from_toml(e)]))?;
    let origin = Origin {
        text,
        config_path: real.to_path_buf(),
        root_dir,
        default_name,
    };
    validate(raw, &origin).map_err(invalid)
}

/// A toml syntax or serde error as a problem; the common ones get a fix.
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim_end();
    let span = e.span();
    let quoted = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .unwrap_or_default();
    let (message, help) = match message {
        "duplicate key" => (
            format!("duplicate key \"{}\"", quoted.trim_matches(['[', ']', ' '])),
            Some("each key appears once per table: remove one of them".to_string()),
        ),
        m if m.starts_with("string values must be quoted") => (
            m.to_string(),
            Some(format!("write \"{quoted}\" with double quotes")),
        ),
        m => (m.to_string(), None),
    };
    Problem {
        message,
        span,
        help,
        notes: Vec::new(),
    }
}
