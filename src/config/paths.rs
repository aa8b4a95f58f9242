//! The one check every user path in castra.toml gets (`state_dir`, kernels, initrds,
//! disks, share directories): not empty, and no `~`, which castra does not expand.
//! Resolving against the config's directory is the caller's.

use std::path::PathBuf;

use toml::Spanned;

use super::diagnostic::Problem;

/// A user path from the config: not empty, no `~`.
pub(super) fn check_path(key: &str, p: &Spanned<String>) -> Result<PathBuf, Problem> {
    let text = p.get_ref();
    if text.trim().is_empty() {
        let example = match key {
            "state_dir" => ".castra",
            "kernel" => "vmlinux",
            "initrd" => "initrd.img",
            "host" => "flake",
            _ => "base.qcow2",
        };
        return Err(Problem::new(format!("{key} path is empty"), p.span()).help(format!(
            "for example: {key} = \"{example}\" (relative paths start at the directory of castra.toml)"
        )));
    }
    if text == "~" || text.starts_with("~/") {
        return Err(
            Problem::new(format!("{key} path \"{text}\" starts with '~'"), p.span()).help(
                "'~' is not expanded: write an absolute path or one relative to the directory of castra.toml",
            ),
        );
    }
    Ok(PathBuf::from(text))
}
