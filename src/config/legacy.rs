//! Configs written for the original castra: its keys (`version`,
//! `base_image`, `port_forwards`, `[[vms.instances]]`, `*_secs`,
//! `[workflows]`, ...) are recognised before the schema pass and reported as
//! one error that says so and gives each old key's new spelling (the table
//! in docs/CONFIG.md, "Configs from the original castra", is [`LEGACY`]).
//!
//! Pure: it reads the parsed TOML tree and returns at most one problem.

use std::ops::Range;

use toml::de::DeTable;

use super::diagnostic::{Problem, line_col};

/// Where an old key sat, its old name, and its new spelling.
pub struct LegacyKey {
    /// `top`, `vms`, `lifecycle`, `broker`, `project`.
    pub section: &'static str,
    pub key: &'static str,
    pub now: &'static str,
}

const fn legacy(section: &'static str, key: &'static str, now: &'static str) -> LegacyKey {
    LegacyKey { section, key, now }
}

/// Every old key castra recognises, in the order docs/CONFIG.md lists them.
pub const LEGACY: &[LegacyKey] = &[
    legacy("top", "version", "remove it: castra.toml has no version"),
    legacy(
        "top",
        "workflows",
        "`bootstrap = { script = \"setup.sh\" }` per VM, or a project default in `[bootstrap]`",
    ),
    legacy(
        "vms",
        "base_image",
        "`image = { disk = \"path.qcow2\" }` (or `image = \"default\"` for castra's own image)",
    ),
    legacy(
        "vms",
        "overlay",
        "remove it: each VM's overlay is made in the state root, `vms/<vm>/overlay.qcow2`",
    ),
    legacy(
        "vms",
        "port_forwards",
        "`forwards = [\"2222:22\"]` (`[proto:][host_addr:]host_port:guest_port` strings)",
    ),
    legacy(
        "vms",
        "instances",
        "`count = N` on the VM: replicas are NAME-1 .. NAME-N (the original numbered NAME-0 ..)",
    ),
    legacy(
        "vms",
        "role_name",
        "remove it: the VM's `name` is its only name",
    ),
    legacy("vms", "description", "a `# comment` above the VM"),
    legacy(
        "lifecycle",
        "graceful_shutdown_wait_secs",
        "`powerdown_wait = \"20s\"` (a duration string with a unit)",
    ),
    legacy(
        "lifecycle",
        "sigterm_wait_secs",
        "`sigterm_wait = \"5s\"` (a duration string with a unit)",
    ),
    legacy(
        "lifecycle",
        "sigkill_wait_secs",
        "remove it: after SIGKILL castra waits for QEMU to exit",
    ),
    legacy(
        "broker",
        "pidfile",
        "remove it: the state root fixes it, `broker/broker.pid`",
    ),
    legacy(
        "broker",
        "logfile",
        "remove it: the state root fixes it, `broker/broker.log`",
    ),
];

/// One error for a config that uses old keys, or `None`. Returns the spans
/// of the old keys too, so the schema pass does not report them again.
pub(crate) fn check(root: &DeTable<'_>, text: &str) -> Option<(Problem, Vec<Range<usize>>)> {
    // (span of the key, old name, new spelling)
    let mut found: Vec<(Range<usize>, String, String)> = Vec::new();
    let mut look = |section: &str, table: &DeTable<'_>| {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if let Some(l) = LEGACY
                .iter()
                .find(|l| l.section == section && l.key == name)
            {
                found.push((key.span(), name.to_string(), l.now.to_string()));
            } else if let Some(stem) = name.strip_suffix("_secs") {
                // Any other `*_secs` of the original: a duration string now.
                found.push((
                    key.span(),
                    name.to_string(),
                    format!(
                        "remove it: castra has no `{stem}` setting (its durations are strings with a unit, like `sigterm_wait = \"5s\"`)"
                    ),
                ));
            }
        }
    };
    look("top", root);
    for section in ["lifecycle", "broker", "project"] {
        if let Some(t) = root.get(section).and_then(|v| v.get_ref().as_table()) {
            look(section, t);
        }
    }
    if let Some(vms) = root.get("vms").and_then(|v| v.get_ref().as_array()) {
        for t in vms.iter().filter_map(|v| v.get_ref().as_table()) {
            look("vms", t);
        }
    }
    if found.is_empty() {
        return None;
    }
    found.sort_by_key(|(span, _, _)| span.start);
    let notes = found
        .iter()
        .map(|(span, key, now)| {
            let at = line_col(text, span.start);
            let line = at.split(':').next().unwrap_or_default();
            format!("line {line}: `{key}` -> {now}")
        })
        .collect();
    let problem = Problem {
        message: format!(
            "this castra.toml is written for the original castra: {} old key(s) are spelled differently now",
            found.len()
        ),
        span: Some(found[0].0.clone()),
        help: Some(
            "rewrite each key as the notes say (docs/CONFIG.md, \"Configs from the original castra\", has the table); `castra init` writes a fresh example"
                .into(),
        ),
        notes,
    };
    Some((problem, found.into_iter().map(|(s, _, _)| s).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_table_lists_every_legacy_key() {
        let doc = include_str!("../../docs/CONFIG.md");
        for l in LEGACY {
            assert!(
                doc.contains(&format!("| `{}` |", l.key)),
                "docs/CONFIG.md has no row for {}",
                l.key
            );
        }
    }
}
